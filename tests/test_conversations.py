"""Conversations: the assistant remembers the last turns, in Azure Table Storage (Azurite)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import azure.functions as func
import pytest

from shared.config import Settings
from shared.llm import build_messages
from shared.storage import table_service
from shared.storage.conversations import (
    FileConversationStore,
    TableConversationStore,
    new_turn,
)
from talk.api import talk_conversation
from tests.conftest import CHAT_REPLY, run_async, run_cli
from tests.stubs import StubServer, chat_completion
from tests.test_functions import body_of, post, request_blobs
from tools.devhost.durable import LocalDurableHost

CONVERSATION = talk_conversation.build().get_user_function()
STUB_REPLY = CHAT_REPLY
JSON = "application/json"
OWNER = "shared"


def _conversation(
    host: LocalDurableHost, method: str, conversation_id: str, **headers: str
) -> func.HttpResponse:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost/talk/conversations/{conversation_id}",
        headers=headers,
        params={},
        route_params={"conversation_id": conversation_id},
        body=b"",
    )
    return run_async(CONVERSATION(req=request, client=host.client_binding()))


def start_conversation(host: LocalDurableHost, question: str) -> str:
    first = post(host, json.dumps({"text": question, "conversation_id": "new"}).encode(), JSON)
    assert first.status_code == 200, first.get_body()
    return body_of(first)["conversation_id"]


def test_the_second_question_reaches_the_model_with_the_first(chat, host) -> None:
    conversation_id = start_conversation(host, "My name is Sara.")
    assert re.fullmatch(r"[0-9a-f]{32}", conversation_id)  # issued by the server
    second = post(
        host, b'{"text": "What is my name?"}', JSON, **{"X-Conversation-Id": conversation_id}
    )
    assert second.status_code == 200, second.get_body()
    assert body_of(second)["conversation_id"] == conversation_id
    # The history goes to the model as its own turns, never inside the system prompt.
    messages = chat.requests[1].body["messages"]
    assert messages[0]["role"] == "system" and "Sara" not in messages[0]["content"]
    assert messages[1:] == [
        {"role": "user", "content": "My name is Sara."},
        {"role": "assistant", "content": STUB_REPLY},
        {"role": "user", "content": "What is my name?"},
    ]
    assert host.activity_calls.count("save_turn") == 2
    assert "load_history" not in host.activity_calls

    shown = _conversation(host, "GET", conversation_id)
    assert shown.status_code == 200
    turns = body_of(shown)["turns"]
    assert [(t["question"], t["reply"]) for t in turns] == [
        ("My name is Sara.", STUB_REPLY),
        ("What is my name?", STUB_REPLY),
    ]
    assert all(t["at"] and t["request_id"] for t in turns)


def test_without_a_conversation_nothing_is_remembered(chat, host) -> None:
    post(host, b'{"text": "My name is Sara."}', JSON)
    post(host, b'{"text": "What is my name?"}', JSON)
    assert len(chat.requests[1].body["messages"]) == 2  # system and the question only
    assert "save_turn" not in host.activity_calls


@pytest.mark.parametrize("chosen", ["sara-1", "default", "a", "0" * 32])
def test_an_id_the_server_did_not_issue_is_unknown_never_new(chat, host, chosen) -> None:
    refused = post(host, json.dumps({"text": "Hi", "conversation_id": chosen}).encode(), JSON)
    assert refused.status_code == 404
    assert body_of(refused)["error"] == "unknown conversation"
    assert not host.started
    assert _conversation(host, "GET", chosen).status_code == 404


def test_delete_erases_turns_blobs_and_histories(chat, host) -> None:
    conversation_id = start_conversation(host, "Remember me.")
    rid = host.started[0]
    assert request_blobs(rid)  # the request's blobs, under the conversation
    assert rid in host.instances
    assert _conversation(host, "DELETE", conversation_id).status_code == 204
    assert not request_blobs(rid)
    assert rid not in host.instances  # its Durable history is purged
    assert _conversation(host, "GET", conversation_id).status_code == 404
    assert _conversation(host, "DELETE", conversation_id).status_code == 404
    gone = post(host, b'{"text": "Still there?"}', JSON, **{"X-Conversation-Id": conversation_id})
    assert gone.status_code == 404


def test_malformed_ids_are_refused(chat, host) -> None:
    # The routes know only ids the server issued: anything else is no conversation.
    bad = _conversation(host, "GET", "no/slashes")
    assert bad.status_code == 404
    assert body_of(bad)["error"] == "unknown conversation"
    refused = post(host, b'{"text": "Hi", "conversation_id": "a b"}', JSON)
    assert refused.status_code == 400


def _table_store(azurite: str, table: str | None = None, **changes) -> TableConversationStore:
    """A store on a table of its own, or on `table` (another store's, seen differently)."""
    settings = Settings(
        storage_connection=azurite, conversation_table=table or "turns" + str(time.time_ns())
    )
    client = table_service(settings).get_table_client(settings.conversation_table)
    return TableConversationStore(client, changes.get("max_turns", 50), changes.get("ttl_s", 3600))


def test_ten_parallel_turns_in_one_conversation_all_land(azurite) -> None:
    store = _table_store(azurite)
    store.start(OWNER, "busy")
    start = threading.Barrier(10)

    def turn(index: int) -> None:
        start.wait()
        store.append(OWNER, "busy", new_turn(f"{index:08x}", f"question {index}", "reply", "en"))

    threads = [threading.Thread(target=turn, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(t.question for t in store.turns(OWNER, "busy")) == sorted(
        f"question {i}" for i in range(10)
    )


def test_a_conversation_keeps_its_last_turns_and_expires(azurite) -> None:
    table = "turns" + str(time.time_ns())
    store = _table_store(azurite, table, max_turns=3)
    store.start(OWNER, "short")
    for index in range(5):
        store.append(OWNER, "short", new_turn(f"{index:08x}", f"q{index}", "r", None))
    assert [t.question for t in store.turns(OWNER, "short")] == ["q2", "q3", "q4"]
    # The same table with a one-second expiry: however long the turns above took to save.
    expiring = _table_store(azurite, table, max_turns=3, ttl_s=1.0)
    time.sleep(1.2)
    assert expiring.turns(OWNER, "short") is None
    assert store.delete(OWNER, "short") is False  # expiry removed it


def test_the_daily_sweep_deletes_expired_conversations_unread(azurite) -> None:
    store = _table_store(azurite, ttl_s=2.0)
    store.start(OWNER, "old")
    store.append(OWNER, "old", new_turn("0" * 32, "q", "r", None))
    time.sleep(2.2)
    store.start(OWNER, "fresh")
    assert store.sweep() == 1
    assert store.delete(OWNER, "old") is False  # already gone, never read
    assert store.turns(OWNER, "fresh") == []


def test_a_turn_for_a_conversation_that_is_gone_is_not_saved(azurite) -> None:
    store = _table_store(azurite)
    assert store.append(OWNER, "never-issued", new_turn("1" * 32, "q", "r", None)) is False
    assert store.turns(OWNER, "never-issued") is None


def test_a_saved_turn_saved_again_is_stored_once(azurite) -> None:
    store = _table_store(azurite)
    store.start(OWNER, "retry")
    turn = new_turn("0000abcd", "Hello?", "Hi!", "en")
    store.append(OWNER, "retry", turn)
    store.append(OWNER, "retry", turn)  # a retried save_turn activity
    assert len(store.turns(OWNER, "retry")) == 1


def test_the_oldest_turns_are_trimmed_to_fit_the_context() -> None:
    history = [(f"question {i} " + "x" * 100, f"reply {i} " + "y" * 100) for i in range(10)]
    messages = build_messages("Be kind.", "And now?", history, room=700)
    kept = [m["content"] for m in messages if m["role"] == "user"][:-1]
    assert kept == [history[i][0] for i in (7, 8, 9)]
    assert sum(len(m["content"]) for m in messages) <= 700


def test_file_store_for_the_command_line(tmp_path: Path) -> None:
    store = FileConversationStore(tmp_path, max_turns=2, ttl_s=3600)
    store.start(OWNER, "cli")
    for index in range(3):
        store.append(OWNER, "cli", new_turn(f"{index:08x}", f"q{index}", "r", "en"))
    assert [t.question for t in store.turns(OWNER, "cli")] == ["q1", "q2"]
    assert store.delete(OWNER, "cli") and store.turns(OWNER, "cli") is None


def test_the_command_remembers_a_conversation(tmp_path: Path) -> None:
    with StubServer(chat_completion(STUB_REPLY)) as server:
        env = {
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": f"{server.url}/v1",
            "LLM_MODEL": "stub",
            "CONVERSATION_DIR": str(tmp_path / "conversations"),
        }
        for question in ("My name is Sara.", "What is my name?"):
            done = run_cli(
                "--text", question, "--conversation-id", "cli-1", "--json", cwd=tmp_path, **env
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["conversation_id"] == "cli-1"
    assert [m["content"] for m in server.requests[1].body["messages"][1:]] == [
        "My name is Sara.",
        STUB_REPLY,
        "What is my name?",
    ]
