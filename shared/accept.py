"""Accepting a request: everything `POST /talk` and `POST /talk/stream` do before any work.

In order: the caller, its rate limits (before anything is parsed or stored), the body, the
erasure tombstones it concerns, its conversation, the `Idempotency-Key` or the implicit
duplicate check, and the request stored under a fresh id (create-only) before anything
runs, so nothing the user sent is lost. Either the request is `Accepted` (the caller starts
its turn) or it `Joined` an earlier turn, whose answer is the answer.

Turns are looked up through a `StatusOf`, since `/talk` runs them as Durable
orchestrations and `/talk/stream` in its own process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings, get_settings
from shared.errors import TalkError
from shared.security.identity import Caller, identify
from shared.security.ratelimit import admit, spender
from shared.storage import BlobStore, blob_store, erasure, request_prefix
from shared.storage.conversations import NEW, open_conversation
from shared.storage.erasure import Erased
from shared.storage.idempotency import (
    Claim,
    IdempotencyKeyReused,
    IdempotencyRecords,
    duplicate_key,
    duplicate_window,
    fingerprint,
    validate_key,
)
from shared.storage.turns import TurnStatus
from shared.talk_input import TalkInput, parse_talk_input
from shared.telemetry import current_trace

log = logging.getLogger("talk")

# How long a claimed Idempotency-Key may wait for its turn to appear before a retry
# decides the first attempt died and takes the claim over.
CLAIM_GRACE_S = 10.0
# A stored request starts its turn within this, or not at all: well inside the grace an
# erasure gives it, clock skew between instances included.
START_WITHIN_S = 5.0


class RequestIdCollision(TalkError):
    status = 503
    code = "collision"


# May raise StorageUnavailable when the turns cannot be looked up.
StatusOf = Callable[[str], Awaitable[TurnStatus]]


@dataclass(frozen=True)
class Joined:
    """The request is a retry, or a copy, of the turn `request_id`: answer with that."""

    request_id: str
    how: str  # for the log line


@dataclass
class Accepted:
    """A stored request, ready to start as `job` (the turn's whole input)."""

    request_id: str
    job: dict[str, Any]
    caller: Caller
    talk_input: TalkInput
    settings: Settings
    stored: str  # the blob that holds the request
    stored_at: float  # monotonic
    claim: Claim | None
    key: str | None

    def too_late(self) -> bool:
        """Whether it is too late to start: an erasure takes a stored request without a turn
        for a dead one after CLAIM_GRACE_S, and one this late might start after it."""
        return time.monotonic() - self.stored_at > START_WITHIN_S

    async def abandon(self) -> None:
        """It will not start: remove what it stored and free its key for a retry."""
        await forget_stored(blob_store(self.settings), self.stored, self.request_id)
        await self.release()

    async def release(self) -> None:
        """Free the key for a retry (the turn did not start)."""
        if self.claim is not None and self.key is not None:
            await release(self.settings, self.caller, self.key, self.claim)


async def accept(
    headers: Mapping[str, str],
    body: bytes,
    rid: str,
    status_of: StatusOf,
    *,
    endpoint: str = "talk",
) -> Accepted | Joined:
    """Accept the request `headers` and `body` as `rid`; a TalkError says why not (and
    nothing of it is kept). `endpoint` is part of what makes two requests the same: a
    retry joins a turn of its own endpoint only (each answers in its own way, and the
    streaming app cannot see `/talk`'s turns)."""
    settings = get_settings()
    caller = await asyncio.to_thread(identify, headers, settings)
    # Counted before anything is parsed, stored or sent to a provider.
    await asyncio.to_thread(admit, caller, settings)
    key = validate_key(headers.get("Idempotency-Key"))
    claim: Claim | None = None
    try:
        # Parsing a body of megabytes takes a while: not on the loop every request shares.
        talk_input = await asyncio.to_thread(
            parse_talk_input,
            headers.get("Content-Type"),
            body,
            settings,
            headers.get("X-Conversation-Id"),
        )
        if talk_input.system_prompt and settings.client_system_prompt == "ignore":
            log.info("[%s] system_prompt from the client not used (CLIENT_SYSTEM_PROMPT)", rid)
        # Before the history is read: an erasure that begins from here on is noticed.
        existing = talk_input.conversation_id if talk_input.conversation_id != NEW else None
        noted = await asyncio.to_thread(
            erasure.marks, caller.owner, existing, settings, whole_owner=caller.authenticated
        )
        conversation = await asyncio.to_thread(
            open_conversation, caller.owner, talk_input.conversation_id, settings
        )
        store = blob_store(settings)
        records = IdempotencyRecords(store)
        # Without a key of the client's, the same body from the same caller is a retry for
        # a while: the Android app sends a request that timed out again, as it was.
        window = (
            None
            if key
            else duplicate_window(
                spoken=talk_input.audio is not None,
                conversation_id=talk_input.conversation_id,
                signed_in=caller.authenticated,
                window_s=settings.duplicate_window_seconds,
            )
        )
        if key or window is not None:
            fields = talk_input.fields()
            if endpoint != "talk":  # /talk's own fingerprints stay as they were
                fields = {**fields, "endpoint": endpoint}
            print_ = await asyncio.to_thread(fingerprint, talk_input.audio, fields)
            key = key or duplicate_key(caller.retry_scope, print_)
            claim = await asyncio.to_thread(records.claim, caller.owner, key, rid, print_)
            if not claim.mine:
                if claim.fingerprint != print_:
                    raise IdempotencyKeyReused("this Idempotency-Key was used for another request")
                claim = await _settle_claim(status_of, records, caller, key, claim, rid, window)
                if not claim.mine:
                    how = (
                        "sent again within DUPLICATE_WINDOW_SECONDS"
                        if window is not None
                        else "retried with its Idempotency-Key"
                    )
                    return Joined(claim.request_id, how)
        prefix = request_prefix(caller.owner, conversation.id if conversation else None, rid)
        job: dict[str, Any] = {
            "request_id": rid,
            "owner": caller.owner,
            "blob_prefix": prefix,
            "text": talk_input.text,
            "voice": talk_input.voice,
            "language": talk_input.language,
            # In `ignore` mode the client's prompt is not even kept in the request's history.
            "system_prompt": talk_input.system_prompt
            if settings.client_system_prompt != "ignore"
            else None,
            "conversation": asdict(conversation) if conversation else None,
            "trace": current_trace(),
            "erasure_marks": noted,
            # Whose share of the paid budgets the turn spends: only when there are any.
            "spender": await asyncio.to_thread(spender, caller, settings)
            if settings.budgeted
            else None,
        }
        if talk_input.audio is not None:
            job["audio_blob"] = f"{prefix}input.{talk_input.audio_extension}"
            payload, content_type = talk_input.audio, "application/octet-stream"
        else:
            job["audio_blob"] = None
            payload, content_type = b"{}", "application/json"
        stored = job["audio_blob"] or f"{prefix}request.json"
        await store_request(store, rid, stored, payload, content_type)
        stored_at = time.monotonic()
        if noted and await asyncio.to_thread(erasure.raced, noted, settings):
            # An erasure began while this was accepted: it may have missed what was just
            # stored, or this may hold what it erased. Nothing of it is kept.
            await forget_stored(store, stored, rid)
            log.info("[%s] request lost its race with an erasure: removed", rid)
            raise Erased("what this request concerns was being erased; send it again")
        if claim is not None:
            confirmed = await asyncio.to_thread(records.confirm, caller.owner, key, claim)
            if confirmed is None:  # a retry took the key over while this one was slow
                current = await asyncio.to_thread(records.current, caller.owner, key)
                if current is not None:
                    await forget_stored(store, stored, rid)
                    return Joined(current.request_id, "overtaken by its retry")
            claim = confirmed
    except TalkError:
        if claim is not None and claim.mine and key is not None:  # a retry starts afresh
            await release(settings, caller, key, claim)
        raise
    return Accepted(rid, job, caller, talk_input, settings, stored, stored_at, claim, key)


async def store_request(
    store: BlobStore, rid: str, name: str, payload: bytes, content_type: str
) -> None:
    """Store the request before its turn starts, so nothing the user sent is lost.

    Both writes are create-only: `request-ids/<id>` claims the id across all owners (it is
    the Durable instance id too), and the request itself lands under its owner's prefix.
    A request id issued twice would overwrite nothing; it is refused instead.
    """
    claimed, stored = await asyncio.gather(
        asyncio.to_thread(store.put, f"request-ids/{rid}", b"", "text/plain", overwrite=False),
        asyncio.to_thread(store.put, name, payload, content_type, overwrite=False),
    )
    if claimed and stored:
        return
    if stored:  # ours, under an id that is not
        await asyncio.to_thread(store.delete, name)
    log.error("[%s] request id collision: nothing overwritten", rid)
    raise RequestIdCollision("the request could not be stored, retry it")


async def forget_stored(store: BlobStore, name: str, rid: str) -> None:
    """Delete a request that will not start: what it stored, and its id's claim."""
    await asyncio.gather(
        asyncio.to_thread(store.delete, name),
        asyncio.to_thread(store.delete, f"request-ids/{rid}"),
    )


async def release(settings: Settings, caller: Caller, key: str, claim: Claim) -> None:
    records = IdempotencyRecords(blob_store(settings))
    try:
        await asyncio.to_thread(records.release, caller.owner, key, claim)
    except TalkError as error:
        log.warning("Could not release an Idempotency-Key: %s", error.message)


async def _settle_claim(
    status_of: StatusOf,
    records: IdempotencyRecords,
    caller: Caller,
    key: str,
    claim: Claim,
    rid: str,
    window: float | None,
) -> Claim:
    """The claim a retry follows: the first attempt's (answer its request), or this
    retry's own (`mine`, as `rid`) when the first never started its turn or failed for a
    transient reason, which a retry may fix, so its answer is not replayed; or, for a
    duplicate without a key, when the first was answered more than `window` s ago."""
    while True:
        status = await status_of(claim.request_id)
        if status.exists and not status.failed_transiently and not _ended_before(status, window):
            return claim
        if not status.exists and time.time() - claim.claimed_at < CLAIM_GRACE_S:
            await asyncio.sleep(0.25)  # the first attempt may still be starting it
            continue
        taken = await asyncio.to_thread(records.take_over, caller.owner, key, claim, rid)
        if taken is not None:
            log.info("[%s] took over the Idempotency-Key of %s", rid, claim.request_id)
            return taken
        # Another retry took it over first, or it was released: follow what is there now.
        claim = await asyncio.to_thread(records.claim, caller.owner, key, rid, claim.fingerprint)
        if claim.mine:
            return claim


def _ended_before(status: TurnStatus, window: float | None) -> bool:
    """Whether the turn ended more than `window` seconds ago (never, without one)."""
    if window is None or not status.done or status.ended_at is None:
        return False
    return (datetime.now(UTC) - status.ended_at).total_seconds() > window
