"""Conversation memory: the last turns of a conversation, so a reply can build on them.

A conversation belongs to its owner (see `shared.security.identity`) and exists only once
the server has issued it: a client starts one with `conversation_id: "new"` and gets a
random id back; any other id is unknown unless this owner was issued it. One interface,
two stores: Azure Table Storage (the Function App's storage account, one partition per
owner and conversation) and, for `python -m talk` without storage, JSON files.

In the table, a conversation is a `meta` entity (when it was issued, its last turn) and
one entity per turn with a unique, time-ordered row key. Turns are only ever inserted,
never rewritten: concurrent turns in one conversation cannot overwrite each other, so
none is lost. A conversation keeps at most `CONVERSATION_MAX_TURNS` turns and is deleted
`CONVERSATION_TTL_HOURS` after its last one: when it is next read, or by the daily sweep.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shared.config import Settings
from shared.errors import BadInput, NotFound
from shared.lazy import load_once
from shared.storage import table_service, unavailable

if TYPE_CHECKING:
    from azure.data.tables import TableClient

T = TypeVar("T")
NEW = "new"  # what a client sends to start a conversation
META = "meta"
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ISSUED_ID = re.compile(r"^[0-9a-f]{32}$")  # what new_conversation_id makes


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


def new_conversation_id() -> str:
    """128 random bits: a conversation id no one can guess."""
    return secrets.token_hex(16)


def issued_conversation_id(value: str | None) -> str:
    """A conversation id as the server issues them (32 hex digits), else NotFound: no
    other name (`_`, the folder of requests without a conversation, or one a client made
    up) can reach another conversation's data."""
    if value is None or not _ISSUED_ID.match(value):
        raise NotFound("unknown conversation")
    return value


def validate_conversation_id(value: str | None) -> str | None:
    """A client's conversation id, checked: it becomes part of a storage key."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _CONVERSATION_ID.match(value):
        raise BadInput("conversation_id must be 1 to 64 letters, digits, '-' or '_'")
    return value


def new_turn(request_id: str, question: str, reply: str, language: str | None) -> Turn:
    return Turn(request_id, question, reply, language, datetime.now(UTC).isoformat())


class ConversationStore(Protocol):
    def start(self, owner: str, conversation_id: str) -> None:
        """Record a conversation the server issued (again: nothing changes)."""
        ...

    def turns(self, owner: str, conversation_id: str) -> list[Turn] | None:
        """The turns, oldest first; None if this owner has no such conversation (any more)."""
        ...

    def append(self, owner: str, conversation_id: str, turn: Turn) -> bool:
        """Add a turn; False if the conversation is gone (deleted or expired meanwhile)."""
        ...

    def delete(self, owner: str, conversation_id: str) -> bool:
        """Forget the conversation; False if there was nothing to forget."""
        ...

    def delete_owner(self, owner: str) -> list[str]:
        """Forget every conversation of `owner`; the ids forgotten."""
        ...

    def sweep(self) -> int:
        """Delete the conversations that expired; how many."""
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

    def start(self, owner: str, conversation_id: str) -> None:
        now = datetime.now(UTC).isoformat()
        meta = {"PartitionKey": _partition(owner, conversation_id), "RowKey": META}
        self._call(lambda: self._insert({**meta, "created": now, "last_at": now}), create=True)

    def turns(self, owner: str, conversation_id: str) -> list[Turn] | None:
        partition = _partition(owner, conversation_id)
        entities = self._call(
            lambda: list(
                self._table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
            ),
            missing_table=list,
        )
        meta = next((e for e in entities if e["RowKey"] == META), None)
        if meta is None:
            return None
        if _age_s(meta["last_at"]) > self._ttl_s:
            self._delete_partition(partition)
            return None
        turns = [_turn_from(e) for e in entities if e["RowKey"] != META]
        return sorted(turns, key=lambda t: (t.at, t.request_id))

    def append(self, owner: str, conversation_id: str, turn: Turn) -> bool:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        partition = _partition(owner, conversation_id)
        if self._call(lambda: self._meta(partition)) is None:
            return False
        row = _row(turn)
        entity = {"PartitionKey": partition, "RowKey": row}
        entity |= {k: v for k, v in asdict(turn).items() if v is not None}
        self._call(lambda: self._insert(entity))
        touched = {"PartitionKey": partition, "RowKey": META, "last_at": turn.at}
        try:
            self._call(lambda: self._table.update_entity(touched, mode=UpdateMode.MERGE), raw=True)
        except ResourceNotFoundError:  # deleted while this turn was being saved
            self._call(lambda: self._table.delete_entity(partition, row))
            return False
        turns = self.turns(owner, conversation_id) or []
        for old in turns[: max(0, len(turns) - self._max_turns)]:
            self._call(lambda old=old: self._table.delete_entity(partition, _row(old)))
        return True

    def delete(self, owner: str, conversation_id: str) -> bool:
        return self._delete_partition(_partition(owner, conversation_id)) > 0

    def delete_owner(self, owner: str) -> list[str]:
        # Partition keys are "<owner>-<conversation>"; "." sorts right after "-".
        query = "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @meta"
        parameters = {"low": f"{owner}-", "high": f"{owner}.", "meta": META}
        metas = self._call(
            lambda: list(self._table.query_entities(query, parameters=parameters)),
            missing_table=list,
        )
        for meta in metas:
            self._delete_partition(meta["PartitionKey"])
        return [meta["PartitionKey"].split("-", 1)[1] for meta in metas]

    def sweep(self) -> int:
        metas = self._call(
            lambda: list(self._table.query_entities("RowKey eq @meta", parameters={"meta": META})),
            missing_table=list,
        )
        expired = [m["PartitionKey"] for m in metas if _age_s(m["last_at"]) > self._ttl_s]
        for partition in expired:
            self._delete_partition(partition)
        return len(expired)

    def check(self) -> None:
        # An entity query: what Storage Table Data Contributor allows (`entities/read`).
        # A table that does not exist yet counts as reachable: the first turn creates it.
        self._call(
            lambda: next(iter(self._table.list_entities(results_per_page=1)), None),
            missing_table=lambda: None,
        )

    def _meta(self, partition: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return dict(self._table.get_entity(partition, META))
        except ResourceNotFoundError:
            return None

    def _insert(self, entity: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError

        # Already there: the same turn saved again by a retried activity.
        with contextlib.suppress(ResourceExistsError):
            self._table.create_entity(entity)

    def _delete_partition(self, partition: str) -> int:
        keys = self._call(
            lambda: [
                e["RowKey"]
                for e in self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"]
                )
            ],
            missing_table=list,
        )
        # The meta first: a turn saved meanwhile finds its conversation gone and takes
        # itself back (see `append`), and any turn inserted before that is listed again.
        for key in sorted(keys, key=lambda k: k != META):
            self._call(lambda key=key: self._table.delete_entity(partition, key))
        if keys:
            self._delete_partition(partition)
        return len(keys)

    def _call(
        self,
        work: Callable[[], T],
        *,
        create: bool = False,
        missing_table: Callable[[], T] | None = None,
        raw: bool = False,
    ) -> T:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            try:
                return work()
            except ResourceNotFoundError:
                if raw:
                    raise
                if missing_table is not None:
                    return missing_table()
                if not create:
                    return None  # type: ignore[return-value]
                self._ensure_table()
                return work()
        except ResourceNotFoundError:
            raise
        except AzureError as error:
            raise unavailable("conversation storage", error) from None

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

    def _path(self, owner: str, conversation_id: str) -> Path:
        return self._folder / f"{_partition(owner, conversation_id)}.json"

    def start(self, owner: str, conversation_id: str) -> None:
        with self._lock:
            if self.turns(owner, conversation_id) is None:
                self._write(owner, conversation_id, [])

    def turns(self, owner: str, conversation_id: str) -> list[Turn] | None:
        path = self._path(owner, conversation_id)
        try:
            turns = [Turn(**t) for t in json.loads(path.read_text(encoding="utf-8"))]
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError, TypeError):
            return None
        if age > self._ttl_s:
            path.unlink(missing_ok=True)
            return None
        return turns

    def append(self, owner: str, conversation_id: str, turn: Turn) -> bool:
        with self._lock:
            turns = self.turns(owner, conversation_id)
            if turns is None:
                return False
            if turn not in turns:
                self._write(owner, conversation_id, [*turns, turn][-self._max_turns :])
            return True

    def delete(self, owner: str, conversation_id: str) -> bool:
        path = self._path(owner, conversation_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def delete_owner(self, owner: str) -> list[str]:
        deleted = []
        for path in self._folder.glob(f"{owner}-*.json"):
            path.unlink(missing_ok=True)
            deleted.append(path.stem.split("-", 1)[1])
        return deleted

    def sweep(self) -> int:
        expired = [
            p for p in self._folder.glob("*.json") if time.time() - p.stat().st_mtime > self._ttl_s
        ]
        for path in expired:
            path.unlink(missing_ok=True)
        return len(expired)

    def check(self) -> None:
        pass  # local files: nothing to reach

    def _write(self, owner: str, conversation_id: str, turns: list[Turn]) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        path = self._path(owner, conversation_id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps([asdict(t) for t in turns]), encoding="utf-8")
        temporary.replace(path)


def _partition(owner: str, conversation_id: str) -> str:
    return f"{owner}-{conversation_id}"


def _row(turn: Turn) -> str:
    return f"{turn.at_ms:013d}-{turn.request_id}"


def _age_s(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()


def _turn_from(entity: dict[str, Any]) -> Turn:
    return Turn(
        request_id=entity["request_id"],
        question=entity["question"],
        reply=entity["reply"],
        language=entity.get("language"),
        at=entity["at"],
    )


@dataclass(frozen=True)
class OpenConversation:
    """The conversation a request continues (or starts), with the turns its reply builds on."""

    id: str
    new: bool
    history: list[tuple[str, str]]


def open_conversation(
    owner: str, requested: str | None, settings: Settings
) -> OpenConversation | None:
    """`new` starts a conversation with a fresh id; any other id must be one this owner was
    issued and still has (NotFound otherwise, never a new conversation)."""
    if requested is None:
        return None
    if requested == NEW:
        return OpenConversation(new_conversation_id(), True, [])
    turns = conversation_store(settings).turns(owner, requested)
    if turns is None:
        raise NotFound("unknown conversation")
    recent = turns[-settings.conversation_turns :]
    return OpenConversation(requested, False, [(t.question, t.reply) for t in recent])


@load_once
def conversation_store(settings: Settings) -> ConversationStore:
    """Table Storage when the app has storage configured, JSON files otherwise."""
    ttl_s = settings.conversation_ttl_hours * 3600
    if settings.storage_configured:
        table = table_service(settings).get_table_client(settings.conversation_table)
        return TableConversationStore(table, settings.conversation_max_turns, ttl_s)
    folder = Path(settings.conversation_dir).expanduser()
    return FileConversationStore(folder, settings.conversation_max_turns, ttl_s)
