"""Conversations: the assistant remembers the last turns, in Azure Table Storage (Azurite)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import azure.functions as func
import pytest

from shared.config import Settings
from shared.conversations import (
    FileConversationStore,
    TableConversationStore,
    conversation_store,
    new_turn,
)
from shared.llm import build_messages
from shared.storage import table_service
from talk.api import talk_conversation
from tests.conftest import reset_app_caches, run_cli
from tests.stubs import StubServer, chat_completion
from tests.test_functions import body_of, post

CONVERSATION = talk_conversation.build().get_user_function()
STUB_REPLY = "Nice to meet you, Sara."


@pytest.fixture
def chat(app_settings):
    """The reply comes from a chat stub, so the messages the model got can be read back."""
    with StubServer(chat_completion(STUB_REPLY)) as server:
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{server.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        reset_app_caches()
        conversation_store.clear()
        yield server
    conversation_store.clear()


def _conversation(method: str, conversation_id: str) -> func.HttpResponse:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost/talk/conversations/{conversation_id}",
        headers={},
        params={},
        route_params={"conversation_id": conversation_id},
        body=b"",
    )
    return CONVERSATION(request)


def test_the_second_question_reaches_the_model_with_the_first(chat, host) -> None:
    first = post(
        host, b'{"text": "My name is Sara.", "conversation_id": "sara-1"}', "application/json"
    )
    assert first.status_code == 200, first.get_body()
    assert body_of(first)["conversation_id"] == "sara-1"
    second = post(
        host, b'{"text": "What is my name?"}', "application/json", **{"X-Conversation-Id": "sara-1"}
    )
    assert second.status_code == 200, second.get_body()
    assert body_of(second)["conversation_id"] == "sara-1"
    assert chat.requests[1].body["messages"][1:] == [
        {"role": "user", "content": "My name is Sara."},
        {"role": "assistant", "content": STUB_REPLY},
        {"role": "user", "content": "What is my name?"},
    ]
    assert host.activity_calls.count("load_history") == 2
    assert host.activity_calls.count("save_turn") == 2

    shown = _conversation("GET", "sara-1")
    assert shown.status_code == 200
    turns = body_of(shown)["turns"]
    assert [(t["question"], t["reply"]) for t in turns] == [
        ("My name is Sara.", STUB_REPLY),
        ("What is my name?", STUB_REPLY),
    ]
    assert all(t["at"] and t["request_id"] for t in turns)


def test_without_a_conversation_nothing_is_remembered(chat, host) -> None:
    post(host, b'{"text": "My name is Sara."}', "application/json")
    post(host, b'{"text": "What is my name?"}', "application/json")
    assert len(chat.requests[1].body["messages"]) == 2  # system and the question only
    assert "load_history" not in host.activity_calls


def test_delete_forgets_and_unknown_or_bad_ids_are_refused(chat, host) -> None:
    post(host, b'{"text": "Remember me.", "conversation_id": "gone"}', "application/json")
    assert _conversation("DELETE", "gone").status_code == 204
    assert _conversation("GET", "gone").status_code == 404
    assert _conversation("DELETE", "gone").status_code == 404
    assert _conversation("GET", "never-seen").status_code == 404
    bad = _conversation("GET", "no/slashes")
    assert bad.status_code == 400
    assert "conversation_id" in body_of(bad)["error"]
    refused = post(host, b'{"text": "Hi", "conversation_id": "a b"}', "application/json")
    assert refused.status_code == 400


def _table_store(azurite: str, **changes) -> TableConversationStore:
    settings = Settings(
        storage_connection=azurite, conversation_table="turns" + str(time.time_ns())
    )
    table = table_service(settings).get_table_client(settings.conversation_table)
    return TableConversationStore(table, changes.get("max_turns", 50), changes.get("ttl_s", 3600))


def test_ten_parallel_turns_in_one_conversation_all_land(azurite) -> None:
    store = _table_store(azurite)
    start = threading.Barrier(10)

    def turn(index: int) -> None:
        start.wait()
        store.append("busy", new_turn(f"{index:08x}", f"question {index}", "reply", "en"))

    threads = [threading.Thread(target=turn, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(t.question for t in store.turns("busy")) == sorted(
        f"question {i}" for i in range(10)
    )


def test_a_conversation_keeps_its_last_turns_and_expires(azurite) -> None:
    store = _table_store(azurite, max_turns=3, ttl_s=1.0)
    for index in range(5):
        store.append("short", new_turn(f"{index:08x}", f"q{index}", "r", None))
    assert [t.question for t in store.turns("short")] == ["q2", "q3", "q4"]
    time.sleep(1.2)
    assert store.turns("short") == []
    assert store.delete("short") is False  # expiry removed it


def test_a_saved_turn_saved_again_is_stored_once(azurite) -> None:
    store = _table_store(azurite)
    turn = new_turn("0000abcd", "Hello?", "Hi!", "en")
    store.append("retry", turn)
    store.append("retry", turn)  # a retried save_turn activity
    assert len(store.turns("retry")) == 1


def test_the_oldest_turns_are_trimmed_to_fit_the_context() -> None:
    history = [(f"question {i} " + "x" * 100, f"reply {i} " + "y" * 100) for i in range(10)]
    messages = build_messages("Be kind.", "And now?", history, budget_chars=700)
    kept = [m["content"] for m in messages if m["role"] == "user"][:-1]
    assert kept == [history[i][0] for i in (7, 8, 9)]
    assert sum(len(m["content"]) for m in messages) <= 700


def test_file_store_for_the_command_line(tmp_path: Path) -> None:
    store = FileConversationStore(tmp_path, max_turns=2, ttl_s=3600)
    for index in range(3):
        store.append("cli", new_turn(f"{index:08x}", f"q{index}", "r", "en"))
    assert [t.question for t in store.turns("cli")] == ["q1", "q2"]
    assert store.delete("cli") and store.turns("cli") == []


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
