"""Cached speech and replies in Blob Storage, shared by every instance.

Greetings, confirmations and fixed phrases repeat all the time in a voice app, and every
ElevenLabs character costs money and latency. An entry's key covers everything that
changes the result; its body's SHA-256 travels in the blob's metadata, so a damaged entry
is noticed, dropped and replaced. A cache that fails never fails the request: it is logged
and the provider is asked as if the cache were empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings
from shared.errors import TalkError
from shared.lazy import load_once
from shared.storage import BlobStore, blob_store

log = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


def cache_key(kind: str, identity: dict[str, Any], text: str, *, scope: str = "") -> str:
    """`kind/[scope/]<sha256>` over the identity of what makes the result and the normalised
    text. A scope (the caller) keeps an entry to the caller that made it."""
    document = json.dumps({"identity": identity, "text": normalise(text)}, sort_keys=True)
    digest = hashlib.sha256(document.encode()).hexdigest()
    return f"{kind}/{scope}/{digest}" if scope else f"{kind}/{digest}"


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


class ResponseCache:
    def __init__(self, store: BlobStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s

    def get(self, key: str) -> bytes | None:
        try:
            stored = self._store.fetch(key)
        except TalkError as error:
            log.warning("Cache unavailable, asking the provider: %s", error.message)
            return None
        if stored is None:
            return None
        age_s = (datetime.now(UTC) - stored.last_modified).total_seconds()
        if age_s > self._ttl_s:
            return None
        if stored.metadata.get("sha256") != hashlib.sha256(stored.data).hexdigest():
            log.warning("Cache entry %s is damaged: replacing it", key)
            self._forget(key)
            return None
        return stored.data

    def put(self, key: str, data: bytes, content_type: str) -> None:
        metadata = {"sha256": hashlib.sha256(data).hexdigest()}
        try:
            # Concurrent misses all try: the first write wins. What an earlier write left
            # may be expired or damaged, though, and then it is replaced.
            written = self._store.put(key, data, content_type, metadata=metadata, overwrite=False)
            if not written and self.get(key) is None:
                self._store.put(key, data, content_type, metadata=metadata)
        except TalkError as error:
            log.warning("Cache unavailable, not storing %s: %s", key, error.message)

    def _forget(self, key: str) -> None:
        try:
            self._store.delete(key)
        except TalkError as error:
            log.warning("Cache unavailable, cannot drop %s: %s", key, error.message)


@load_once
def response_cache(settings: Settings) -> ResponseCache | None:
    """The cache, or None where there is no storage to keep it in."""
    if not (
        settings.storage_connection or settings.storage_blob_uri or settings.storage_account_name
    ):
        return None
    store = blob_store(settings, settings.talk_cache_container)
    return ResponseCache(store, settings.cache_ttl_hours * 3600)
