"""Turns answered by streaming, recorded so the rest of the API treats them as any turn.

A `/talk` turn is a Durable orchestration, whose status the Durable extension keeps. A
streamed turn runs inside its HTTP request, so it keeps its own: an index,
`streams/<request id>` (its owner, where its blobs are, and its state), and its outcome
(the JSON answer's fields, or the error) as `result.json` beside the request's other blobs,
under the owner's prefix, so erasing a conversation or a caller erases it too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings
from shared.storage import blob_store

RUNNING, DONE, FAILED = "running", "done", "failed"
CLIENT_CLOSED = "client_closed"  # the error code of a turn whose client went away


@dataclass(frozen=True)
class TurnStatus:
    """What a retry, a poll or an erasure needs to know of a turn, however it runs."""

    exists: bool
    done: bool = False
    failed_transiently: bool = False  # ended without an answer, or with a 5xx
    ended_at: datetime | None = None


# A turn still "running" this long after its last word died with its instance: a retry
# may take its key over, and an erasure need not wait for it.
STALE_S = 600.0


@dataclass(frozen=True)
class StreamedTurn:
    request_id: str
    owner: str
    prefix: str
    state: str
    at: float  # epoch seconds of the last change

    @property
    def running(self) -> bool:
        return self.state == RUNNING and time.time() - self.at < STALE_S

    @property
    def ended_at(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


def index_name(request_id: str) -> str:
    return f"streams/{request_id}"


def begin(request_id: str, owner: str, prefix: str, settings: Settings) -> None:
    _write(StreamedTurn(request_id, owner, prefix, RUNNING, time.time()), settings)


def finish(turn: StreamedTurn, outcome: dict[str, Any], settings: Settings) -> None:
    """Record how the turn ended: `outcome` is the answer's fields, or `{"error": ...}`."""
    store = blob_store(settings)
    body = json.dumps(outcome, ensure_ascii=False).encode()
    store.put(f"{turn.prefix}result.json", body, "application/json", overwrite=True)
    state = FAILED if "error" in outcome else DONE
    _write(StreamedTurn(turn.request_id, turn.owner, turn.prefix, state, time.time()), settings)


def find(request_id: str, settings: Settings) -> StreamedTurn | None:
    stored = blob_store(settings).fetch(index_name(request_id))
    if stored is None:
        return None
    try:
        fields = json.loads(stored.data)
        return StreamedTurn(request_id, **fields)
    except (ValueError, TypeError):
        return None


def outcome(turn: StreamedTurn, settings: Settings) -> dict[str, Any] | None:
    stored = blob_store(settings).fetch(f"{turn.prefix}result.json")
    return json.loads(stored.data) if stored is not None else None


def _write(turn: StreamedTurn, settings: Settings) -> None:
    fields = {"owner": turn.owner, "prefix": turn.prefix, "state": turn.state, "at": turn.at}
    blob_store(settings).put(
        index_name(turn.request_id),
        json.dumps(fields).encode(),
        "application/json",
        overwrite=True,
    )


def turn_status(request_id: str, settings: Settings) -> TurnStatus:
    """The streamed turn's status (not existing, for any other turn)."""
    turn = find(request_id, settings)
    if turn is None:
        return TurnStatus(exists=False)
    if turn.running:
        return TurnStatus(True)
    # Failed, or died with its instance (still "running", long ago): a retry may start afresh.
    failed = turn.state != DONE and _failed_transiently(outcome(turn, settings))
    return TurnStatus(True, True, failed, turn.ended_at)


def _failed_transiently(ended: dict[str, Any] | None) -> bool:
    """Whether a retry may start afresh: no outcome, a 5xx, or a client that went away (the
    retry is that client, whose connection dropped: it never got an answer)."""
    if not ended:
        return True
    error = ended.get("error", {})
    return error.get("status", 500) >= 500 or error.get("code") == CLIENT_CLOSED
