"""Conversation memory: the last turns of a conversation, so a reply can build on them.

One interface, two stores: Azure Table Storage (the Function App's storage account, one
partition per conversation) and, for `python -m talk` without storage, JSON files.

Each turn is its own table entity with a unique, time-ordered row key and is only ever
inserted, never rewritten: concurrent turns in one conversation cannot overwrite each
other, so none is lost. A conversation keeps at most `CONVERSATION_MAX_TURNS` turns and
expires `CONVERSATION_TTL_HOURS` after its last one.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shared.config import Settings
from shared.errors import BadInput
from shared.lazy import load_once
from shared.storage import StorageUnavailable, table_service

if TYPE_CHECKING:
    from azure.data.tables import TableClient

T = TypeVar("T")
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Turn:
    request_id: str
    question: str
    reply: str
    language: str | None
    at: str  # ISO 8601, UTC

    @property
    def at_ms(self) -> int:
        return round(datetime.fromisoformat(self.at).timestamp() * 1000)


def validate_conversation_id(value: str | None) -> str | None:
    """A client's conversation id, checked: it becomes a storage key."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _CONVERSATION_ID.match(value):
        raise BadInput("conversation_id must be 1 to 64 letters, digits, '-' or '_'")
    return value


def new_turn(request_id: str, question: str, reply: str, language: str | None) -> Turn:
    return Turn(request_id, question, reply, language, datetime.now(UTC).isoformat())


class ConversationStore(Protocol):
    def turns(self, conversation_id: str) -> list[Turn]:
        """The conversation's turns, oldest first; empty if unknown or expired."""
        ...

    def append(self, conversation_id: str, turn: Turn) -> None: ...

    def delete(self, conversation_id: str) -> bool:
        """Forget the conversation; False if there was nothing to forget."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be read."""
        ...


class TableConversationStore:
    def __init__(self, table: TableClient, max_turns: int, ttl_s: float) -> None:
        self._table = table
        self._max_turns = max_turns
        self._ttl_s = ttl_s
        self._created = False
        self._lock = threading.Lock()

    def turns(self, conversation_id: str) -> list[Turn]:
        entities = self._call(
            lambda: list(
                self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": conversation_id}
                )
            ),
            missing_table=list,
        )
        turns = sorted((_turn_from(e) for e in entities), key=lambda t: (t.at, t.request_id))
        if turns and time.time() * 1000 - turns[-1].at_ms > self._ttl_s * 1000:
            self.delete(conversation_id)
            return []
        return turns

    def append(self, conversation_id: str, turn: Turn) -> None:
        entity = {
            "PartitionKey": conversation_id,
            "RowKey": f"{turn.at_ms:013d}-{turn.request_id}",
            **{k: v for k, v in asdict(turn).items() if v is not None},
        }
        self._call(lambda: self._insert(entity), create_table=True)
        turns = self.turns(conversation_id)
        for old in turns[: max(0, len(turns) - self._max_turns)]:
            self._call(
                lambda old=old: self._table.delete_entity(
                    conversation_id, f"{old.at_ms:013d}-{old.request_id}"
                )
            )

    def _insert(self, entity: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError

        # Already there: the same turn saved again by a retried activity.
        with contextlib.suppress(ResourceExistsError):
            self._table.create_entity(entity)

    def delete(self, conversation_id: str) -> bool:
        keys = self._call(
            lambda: [
                e["RowKey"]
                for e in self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": conversation_id}, select=["RowKey"]
                )
            ],
            missing_table=list,
        )
        for key in keys:
            self._call(lambda key=key: self._table.delete_entity(conversation_id, key))
        return bool(keys)

    def check(self) -> None:
        # An entity query: what Storage Table Data Contributor allows (`entities/read`).
        # A table that does not exist yet counts as reachable: the first turn creates it.
        self._call(
            lambda: next(iter(self._table.list_entities(results_per_page=1)), None),
            missing_table=lambda: None,
        )

    def _call(
        self,
        work: Callable[[], T],
        *,
        create_table: bool = False,
        missing_table: Callable[[], T] | None = None,
    ) -> T | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            try:
                return work()
            except ResourceNotFoundError:
                if missing_table is not None:
                    return missing_table()
                if not create_table:
                    return None
                self._ensure_table()
                return work()
        except AzureError as error:
            raise StorageUnavailable(f"conversation storage: {type(error).__name__}") from None

    def _ensure_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._lock:
            if not self._created:
                with contextlib.suppress(ResourceExistsError):
                    self._table.create_table()
                self._created = True


class FileConversationStore:
    """Conversations as JSON files, for the command line without Azure Storage."""

    def __init__(self, folder: Path, max_turns: int, ttl_s: float) -> None:
        self._folder = folder
        self._max_turns = max_turns
        self._ttl_s = ttl_s
        self._lock = threading.Lock()

    def _path(self, conversation_id: str) -> Path:
        return self._folder / f"{conversation_id}.json"

    def turns(self, conversation_id: str) -> list[Turn]:
        path = self._path(conversation_id)
        try:
            turns = [Turn(**t) for t in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            return []
        if turns and time.time() * 1000 - turns[-1].at_ms > self._ttl_s * 1000:
            path.unlink(missing_ok=True)
            return []
        return turns

    def append(self, conversation_id: str, turn: Turn) -> None:
        with self._lock:
            turns = [*self.turns(conversation_id), turn][-self._max_turns :]
            self._folder.mkdir(parents=True, exist_ok=True)
            path = self._path(conversation_id)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps([asdict(t) for t in turns]), encoding="utf-8")
            temporary.replace(path)

    def check(self) -> None:
        pass  # local files: nothing to reach

    def delete(self, conversation_id: str) -> bool:
        path = self._path(conversation_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed


def _turn_from(entity: dict[str, Any]) -> Turn:
    return Turn(
        request_id=entity["request_id"],
        question=entity["question"],
        reply=entity["reply"],
        language=entity.get("language"),
        at=entity["at"],
    )


@load_once
def conversation_store(settings: Settings) -> ConversationStore:
    """Table Storage when the app has storage configured, JSON files otherwise."""
    ttl_s = settings.conversation_ttl_hours * 3600
    if settings.storage_configured:
        table = table_service(settings).get_table_client(settings.conversation_table)
        return TableConversationStore(table, settings.conversation_max_turns, ttl_s)
    folder = Path(settings.conversation_dir).expanduser()
    return FileConversationStore(folder, settings.conversation_max_turns, ttl_s)
