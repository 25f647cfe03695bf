"""`python -m talk --url`: ask a deployed backend as the Android app does, and follow a
`202` (it asks for one with `Prefer: respond-async`) to the reply; with `--stream`, ask the
streaming app's `POST /talk/stream` and read its Server-Sent Events as they come.

Needs nothing but `requests` besides `shared.answer` and `shared.errors`: the deploy's smoke
test imports it with only those installed."""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import requests

from shared.answer import TalkResult
from shared.errors import BadInput, TalkError

log = logging.getLogger("talk")

# The Android app's OkHttp timeouts.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 90
_POLL_LIMIT_S = 300
SSE = "text/event-stream"


class BackendError(TalkError):
    """The backend answered with an error status."""


class BackendRefused(BadInput):
    """The backend refused the request itself (400, 413, 415, 422)."""


class StreamFailed(TalkError):
    """The stream ended with an `error` event (or without its `done`) after it began."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event of `/talk/stream`: `meta`, `text`, `audio` or `done`."""

    name: str
    data: dict[str, Any]

    @property
    def mp3(self) -> bytes:
        """An `audio` event's piece of the reply's MP3 stream."""
        return base64.b64decode(self.data["audio_base64"])


@dataclass(frozen=True)
class StreamResult:
    done: dict[str, Any]  # the `done` event: /talk's JSON answer without the audio
    first_audio_ms: int | None  # from sending the request to the first `audio` event
    total_ms: int  # from sending the request to the `done` event


class Question(TypedDict, total=False):
    """What a client asks: a recording or written words, and the optional fields."""

    audio_file: Path | None
    text: str | None
    voice: str | None
    language: str | None
    conversation_id: str | None


def ask_backend(url: str, *, key: str | None, **question: Unpack[Question]) -> TalkResult:
    base = url.rstrip("/")
    # A slow reply is a 202 to follow, not the 504 that clients which cannot follow get.
    headers = _headers(key, "application/json", Prefer="respond-async")
    session = requests.Session()
    try:
        response = session.post(
            f"{base}/talk",
            headers=headers,
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            **_body(question),
        )
        response = _collect(session, base, response, headers)
    except OSError as error:  # requests' connection errors
        log.debug("Cannot reach %s: %s", base, type(error).__name__)
        raise TalkError(f"cannot reach {base}") from None
    log.info("Backend response code: %d", response.status_code)
    if response.status_code != 200:
        raise _backend_error(response)
    return _result(response.json())


def stream_backend(
    url: str,
    *,
    key: str | None,
    on_event: Callable[[StreamEvent], None] | None = None,
    **question: Unpack[Question],
) -> StreamResult:
    """Ask the streaming app at `url` (its base address) and hand each event to `on_event`
    as it arrives. What is wrong before the first byte raises what `ask_backend` raises;
    an `error` event, a lost connection or a stream that ends without `done` afterwards
    raises StreamFailed."""
    base = url.rstrip("/")
    body = _body(question)
    started = time.perf_counter()
    try:
        response = requests.post(
            f"{base}/talk/stream",
            headers=_headers(key, SSE),
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            stream=True,
            **body,
        )
    except requests.RequestException as error:
        log.debug("Cannot reach %s: %s", base, type(error).__name__)
        raise TalkError(f"cannot reach {base}") from None
    with response:
        log.info("Backend response code: %d", response.status_code)
        if response.status_code == 404 and not response.content:  # the host's: no such route
            raise BackendError(
                f"Backend error (404): {base} has no /talk/stream "
                "(the streaming app has an address of its own)"
            )
        if response.status_code != 200:
            raise _backend_error(response)
        if not response.headers.get("Content-Type", "").startswith(SSE):
            raise BackendError(f"Backend error: the answer is not {SSE}")
        try:
            streamed = follow(server_sent_events(response.iter_lines()), started, on_event)
            log.info("MP3 bytes=%s", streamed.done.get("audio_bytes"))
            return streamed
        except requests.RequestException as error:
            log.debug("The stream from %s broke: %s", base, type(error).__name__)
            raise StreamFailed(
                "incomplete", "the connection broke before the reply ended"
            ) from None
        except ValueError:  # an event that is not UTF-8 JSON
            raise StreamFailed("bad_event", "the backend sent an event that is not JSON") from None


def follow(
    events: Iterable[StreamEvent],
    started: float,
    on_event: Callable[[StreamEvent], None] | None,
) -> StreamResult:
    """A streamed turn's events (a backend's, or one run in-process) handed on as they
    come, timed from `started`: the `done` event's result, or StreamFailed."""
    first_audio_ms: int | None = None
    for event in events:
        if event.name == "error":
            raise _stream_error(event.data)
        if event.name == "audio" and first_audio_ms is None:
            first_audio_ms = ms_since(started)
        if on_event is not None:
            on_event(event)
        if event.name == "done":
            return StreamResult(event.data, first_audio_ms, ms_since(started))
    raise StreamFailed("incomplete", "the stream ended before the reply did")


def server_sent_events(lines: Iterable[bytes]) -> Iterator[StreamEvent]:
    """The events in an `text/event-stream`'s lines (UTF-8, as the standard has it): each
    `event:` with its `data:` lines, JSON; comments and other fields are passed over."""
    name, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8")
        if not line:
            if data:
                yield StreamEvent(name, json.loads("\n".join(data)))
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def _headers(key: str | None, accept: str, **extra: str) -> dict[str, str]:
    headers = {"Accept": accept, **extra}
    if key:
        headers["x-functions-key"] = key
    return headers


def _body(question: Question) -> dict[str, Any]:
    """The question as `requests.post` takes it: a recording as a multipart upload framed as
    the Android app frames it, or written words as JSON; the same for `/talk` and
    `/talk/stream`."""
    given = {k: question.get(k) for k in ("voice", "language", "conversation_id")}
    fields = {k: v for k, v in given.items() if v}
    audio_file, text = question.get("audio_file"), question.get("text")
    if audio_file is not None:
        content_type = mimetypes.guess_type(audio_file.name)[0] or "application/octet-stream"
        if audio_file.suffix.lower() in (".m4a", ".mp4"):
            content_type = "audio/mp4"  # what the app sends for its recordings
        try:
            audio = audio_file.read_bytes()
        except OSError as error:
            raise BadInput(f"cannot read {audio_file}: {error.strerror}") from None
        return {"data": fields, "files": {"audio": (audio_file.name, audio, content_type)}}
    if text:
        return {"json": {"text": text, **fields}}
    raise BadInput("send audio or text")


def _collect(
    session: requests.Session, base: str, response: requests.Response, headers: dict[str, str]
) -> requests.Response:
    """Follow a 202 to `Location` until the reply is ready, as a patient client would."""
    deadline = time.monotonic() + _POLL_LIMIT_S
    while response.status_code == 202 and time.monotonic() < deadline:
        time.sleep(float(response.headers.get("Retry-After", "2")))
        location = response.headers["Location"]
        response = session.get(
            location if location.startswith("http") else f"{base}{location}",
            headers=headers,
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        )
    return response


def _backend_error(response: requests.Response) -> TalkError:
    try:
        body = response.json()
        message, code = str(body.get("error", "")), body.get("code")
    except (ValueError, AttributeError):
        message, code = response.reason or "", None
    status = response.status_code
    refused = 400 <= status < 500 and status not in (401, 403, 404, 429)
    error = (BackendRefused if refused else BackendError)(f"Backend error ({status}): {message}")
    error.status = status
    if isinstance(code, str):
        error.code = code  # the backend's own word for it, e.g. budget_exhausted
    return error


def _stream_error(data: dict[str, Any]) -> StreamFailed:
    retry_after = data.get("retry_after")
    return StreamFailed(
        str(data.get("code", "error")),
        str(data.get("error", "the reply failed")),
        retry_after if isinstance(retry_after, int) else None,
    )


def _result(body: dict[str, Any]) -> TalkResult:
    mp3 = base64.b64decode(body["audio_base64"])
    log.info("MP3 bytes=%d", len(mp3))
    return TalkResult(
        request_id=body["request_id"],
        transcript=body.get("transcript"),
        text=body["text"],
        language=body.get("language"),
        mp3=mp3,
        timings_ms=body.get("timings_ms", {}),
        providers=body.get("providers", {}),
        conversation_id=body.get("conversation_id"),
        cache=body.get("cache", []),
    )


def ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
