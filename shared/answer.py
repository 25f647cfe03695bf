"""The answer to one question, as the pipeline makes it and a remote client reads it.

Apart from the pipeline so that a client of a deployed backend (`talk.remote`, the deploy's
smoke test) needs nothing but `requests`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TalkResult:
    request_id: str
    transcript: str | None
    text: str
    language: str | None
    mp3: bytes
    timings_ms: dict[str, int]
    providers: dict[str, str | None]
    conversation_id: str | None = None
    cache: list[str] = field(default_factory=list)
