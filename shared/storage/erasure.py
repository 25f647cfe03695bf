"""Erasing what a conversation or a caller left behind.

A request's blobs live under `<owner>/<conversation or _>/<request id>/` (see
`request_prefix`), so the requests of a conversation or a caller are found by listing a
prefix, whether or not the conversation's turns still exist (an expired conversation's
requests are erased as well). Erasure goes in an order that can be retried: the caller of
these functions purges the requests' Durable histories first; then `erase` deletes the
blobs, the request-id claims and the turns, the turns' `meta` entity first.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Settings
from shared.storage import blob_store
from shared.storage.conversations import conversation_store


@dataclass(frozen=True)
class Scope:
    """What to erase: one conversation of an owner, or everything of an owner."""

    owner: str
    conversation_id: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.owner}/{self.conversation_id}/" if self.conversation_id else f"{self.owner}/"


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
    store.delete_prefix(scope.prefix)
    for rid in request_ids:
        store.delete(f"request-ids/{rid}")
    conversations = conversation_store(settings)
    if scope.conversation_id:
        conversations.delete(scope.owner, scope.conversation_id)
        return
    conversations.delete_owner(scope.owner)
    store.delete_prefix(f"idempotency/{scope.owner}/")
    cache = blob_store(settings, settings.talk_cache_container)
    for kind in ("llm", "tts"):
        cache.delete_prefix(f"{kind}/{scope.owner}/")
