"""Erasing what a conversation or a caller left behind.

A request's blobs live under `<owner>/<conversation or _>/<request id>/` (see
`request_prefix`), so the requests of a conversation or a caller are found by listing a
prefix, whether or not the conversation's turns still exist (an expired conversation's
requests are erased as well). Erasure goes in an order that can be retried: the caller of
these functions purges the requests' Durable histories first; then `erase` deletes the
blobs, the request-id claims and the turns, the turns' `meta` entity first.

An erasure wins its races with requests through a tombstone, written before anything is
listed (`begin`): a request notes the tombstones that could concern it (`marks`) before
it reads a conversation's history, and looks again (`raced`) after storing itself and
before its orchestration starts, and each activity before it writes. A tombstone that
appeared or changed in between means an erasure began: the request removes what it
stored and is refused (`Erased`), so nothing it read or stored outlives the erasure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from shared.config import Settings
from shared.errors import BadInput
from shared.storage import blob_store, turns
from shared.storage.conversations import conversation_store

Marks = dict[str, str | None]  # tombstone name: its ETag (None: there is none)


class Erased(BadInput):
    """An erasure of the caller or the conversation began while this request ran: final
    for this request, which is removed (send it again)."""

    status = 409
    code = "erased"


@dataclass(frozen=True)
class Scope:
    """What to erase: one conversation of an owner, or everything of an owner."""

    owner: str
    conversation_id: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.owner}/{self.conversation_id}/" if self.conversation_id else f"{self.owner}/"


def tombstone(owner: str, conversation_id: str | None = None) -> str:
    return f"erasures/{owner}/{conversation_id}" if conversation_id else f"erasures/{owner}"


def begin(scope: Scope, settings: Settings) -> None:
    """Mark `scope` as being erased, before anything of it is listed or deleted."""
    document = json.dumps({"at": time.time()}).encode()
    name = tombstone(scope.owner, scope.conversation_id)
    blob_store(settings).put(name, document, "application/json")


def marks(
    owner: str, conversation_id: str | None, settings: Settings, *, whole_owner: bool
) -> Marks:
    """The tombstones a request of `owner` (in `conversation_id`) could race with, as they
    are now. `whole_owner`: whether the owner can be erased at all (a signed-in caller)."""
    names = [tombstone(owner)] if whole_owner else []
    if conversation_id:
        names.append(tombstone(owner, conversation_id))
    store = blob_store(settings)
    return {name: stored.etag if (stored := store.fetch(name)) else None for name in names}


def raced(noted: Marks, settings: Settings) -> bool:
    """Whether an erasure began since `noted` was taken."""
    store = blob_store(settings)
    for name, etag in noted.items():
        stored = store.fetch(name)
        if (stored.etag if stored else None) != etag:
            return True
    return False


def check_not_raced(noted: Marks, settings: Settings) -> None:
    """Erased, if an erasure began since `noted` was taken: for a write that must not
    outlive it."""
    if noted and raced(noted, settings):
        raise Erased("this request's data is being erased; send the question again")


def starting(request_id: str, settings: Settings, grace_s: float) -> bool:
    """Whether a request with no orchestration yet claimed its id less than `grace_s`
    ago: it may still start one (it will find the tombstone, or be running when asked
    again)."""
    claim = blob_store(settings).fetch(f"request-ids/{request_id}")
    return claim is not None and time.time() - claim.last_modified.timestamp() < grace_s


def request_ids(scope: Scope, settings: Settings) -> list[str]:
    """The requests in `scope` (from their blob names `<owner>/<conversation>/<id>/...`)."""
    names = blob_store(settings).names(scope.prefix)
    return sorted({parts[2] for name in names if len(parts := name.split("/")) >= 4})


def exists(scope: Scope, settings: Settings) -> bool:
    """Whether anything of `scope` is left: turns, or any request's blobs."""
    store = conversation_store(settings)
    if scope.conversation_id and store.turns(scope.owner, scope.conversation_id) is not None:
        return True
    return bool(blob_store(settings).names(scope.prefix))


def erase(scope: Scope, request_ids: list[str], settings: Settings) -> None:
    """Delete the blobs and turns of `scope` (its requests' histories already purged): the
    uploads and replies, the request-id claims, and the conversation or conversations; for
    a whole owner also its idempotency records and cached replies and speech."""
    store = blob_store(settings)
    # What lies outside the prefix first: the prefix is how a retried erasure finds them.
    for rid in request_ids:
        store.delete(f"request-ids/{rid}")
        store.delete(turns.index_name(rid))  # a streamed turn's index
    store.delete_prefix(scope.prefix)
    conversations = conversation_store(settings)
    if scope.conversation_id:
        conversations.delete(scope.owner, scope.conversation_id)
        return
    conversations.delete_owner(scope.owner)
    store.delete_prefix(f"idempotency/{scope.owner}/")
    cache = blob_store(settings, settings.talk_cache_container)
    for kind in ("llm", "tts"):
        cache.delete_prefix(f"{kind}/{scope.owner}/")
