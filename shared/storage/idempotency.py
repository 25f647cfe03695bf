"""`Idempotency-Key` records: a retried `POST /talk` gets the first attempt's answer.

A request without the header is recorded too, under a key made of its caller and body
(`duplicate_key`): the Android app sends a timed-out request again as it was, and that
copy joins the first turn instead of paying for a second one.

A record belongs to its owner and key (the key hashed, so no client text becomes a blob
name) and holds the request id it was claimed for and a fingerprint of the request (the
audio's and the fields' SHA-256). The same key with another request is refused; a claim
whose orchestration never started (the instance crashed in between) or whose request
failed for a transient reason is taken over by the next retry, under the record's ETag,
so two retries cannot both take it over.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from shared.errors import BadInput
from shared.storage import BlobStore
from shared.storage.conversations import NEW

MAX_KEY_CHARS = 255


class IdempotencyKeyReused(BadInput):
    status = 422
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Claim:
    request_id: str
    fingerprint: str
    claimed_at: float  # epoch seconds
    etag: str | None
    mine: bool  # True when this call made the claim


def validate_key(key: str | None) -> str | None:
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise BadInput(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
    return key


def fingerprint(audio: bytes | None, fields: dict[str, Any]) -> str:
    """What makes two requests the same request: the audio and every field."""
    document = {
        "audio": hashlib.sha256(audio).hexdigest() if audio is not None else None,
        "fields": fields,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def duplicate_window(
    *, spoken: bool, conversation_id: str | None, signed_in: bool, window_s: float
) -> float | None:
    """How long after its answer a request without a key is still joined by a copy of
    it (0: only while it is being answered; None: never).

    A recording is never sent twice by two people, so its copy within `window_s` is a
    retry. Written words can be: in a conversation the same words again after the answer
    are the next turn, not a retry; and in key mode, where callers are told apart only by
    address, two people behind one carrier address who start a conversation with the same
    words must not share it."""
    if window_s <= 0:
        return None
    if spoken:
        return window_s
    if conversation_id == NEW:
        return window_s if signed_in else None
    return 0.0 if conversation_id else window_s


def duplicate_key(retry_scope: str, print_: str) -> str:
    """The key a request without `Idempotency-Key` is recorded under: the same body from
    the same caller. Keys clients send are printable, so the NULs keep the two apart."""
    return f"\0duplicate\0{retry_scope}\0{print_}"


class IdempotencyRecords:
    def __init__(self, store: BlobStore) -> None:
        self._store = store

    @staticmethod
    def name(owner: str, key: str) -> str:
        return f"idempotency/{owner}/{hashlib.sha256(key.encode()).hexdigest()}"

    def claim(self, owner: str, key: str, request_id: str, print_: str) -> Claim:
        """Claim `key` for `request_id`, or the claim that is there already."""
        name = self.name(owner, key)
        now = time.time()
        body = _record(request_id, print_, now)
        if etag := self._store.put(name, body, "application/json", overwrite=False):
            return Claim(request_id, print_, now, etag, mine=True)
        existing = self._read(name)
        if existing is None:  # deleted in between: claim again
            return self.claim(owner, key, request_id, print_)
        return existing

    def take_over(self, owner: str, key: str, old: Claim, request_id: str) -> Claim | None:
        """Replace a dead claim with `request_id`; None if another retry replaced it first."""
        name = self.name(owner, key)
        now = time.time()
        body = _record(request_id, old.fingerprint, now)
        if etag := self._store.replace_if_unchanged(name, body, "application/json", old.etag):
            return Claim(request_id, old.fingerprint, now, etag, mine=True)
        return None

    def confirm(self, owner: str, key: str, claim: Claim) -> Claim | None:
        """`claim` again (with its new ETag) if it still holds, made sure of just before
        its request starts; None when a retry took it over meanwhile, and then this slow
        first attempt must not start its request too."""
        body = _record(claim.request_id, claim.fingerprint, claim.claimed_at)
        name = self.name(owner, key)
        if etag := self._store.replace_if_unchanged(name, body, "application/json", claim.etag):
            return Claim(claim.request_id, claim.fingerprint, claim.claimed_at, etag, mine=True)
        return None

    def current(self, owner: str, key: str) -> Claim | None:
        return self._read(self.name(owner, key))

    def release(self, owner: str, key: str, claim: Claim) -> None:
        """Drop a claim whose request could not start, so a retry starts afresh; only this
        very claim, never one a retry has taken over since."""
        self._store.delete(self.name(owner, key), etag=claim.etag)

    def _read(self, name: str) -> Claim | None:
        stored = self._store.fetch(name)
        if stored is None:
            return None
        record = json.loads(stored.data)
        return Claim(
            record["request_id"],
            record["fingerprint"],
            record["claimed_at"],
            stored.etag,
            mine=False,
        )


def _record(request_id: str, print_: str, at: float) -> bytes:
    document = {"request_id": request_id, "fingerprint": print_, "claimed_at": at}
    return json.dumps(document).encode()
