"""The orchestrator through the Durable SDK's replay engine, episode by episode."""

from __future__ import annotations

import json

import pytest

from shared.errors import ProviderError
from shared.storage import StorageUnavailable
from talk.orchestration import TransientStageFailure, talk_orchestrator
from tools.devhost.durable import (
    CALL_ACTIVITY_WITH_RETRY,
    History,
    activity_failure,
    replay,
    scheduled_actions,
)

ORCHESTRATOR = talk_orchestrator.build().get_user_function()
RID = "0123abcd" * 4
PREFIX = f"shared/_/{RID}/"
AUDIO_JOB = {
    "request_id": RID,
    "owner": "shared",
    "blob_prefix": PREFIX,
    "text": None,
    "voice": "Kim",
    "language": "en",
    "system_prompt": None,
    "conversation": None,
    "audio_blob": f"{PREFIX}input.m4a",
}
HEARD = {
    "text": "How are you?",
    "language": "en",
    "audio_seconds": 1.5,
    "elapsed_ms": 300,
    "provider": "faster-whisper",
}
REPLY = {"text": "I am well, thank you.", "elapsed_ms": 400, "provider": "local", "cached": False}
SPEECH = {
    "blob": f"{PREFIX}reply-0a1b2c3d.mp3",
    "bytes": 12345,
    "elapsed_ms": 200,
    "provider": "piper",
    "cached": False,
}


def run_episode(history: History) -> tuple[dict, list[dict]]:
    state = replay(ORCHESTRATOR, history)
    return state, scheduled_actions(state)


def complete(history: History, name: str, task_input: str, result: dict) -> None:
    history.orchestrator_started()
    history.task_completed(history.task_scheduled(name, task_input), result)


def test_activities_run_in_order_with_retry_options_and_small_inputs() -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)
    state, actions = run_episode(history)
    assert not state["isDone"]
    [transcribe] = actions
    assert transcribe["actionType"] == CALL_ACTIVITY_WITH_RETRY
    assert transcribe["functionName"] == "transcribe"
    assert transcribe["retryOptions"] == {
        "firstRetryIntervalInMilliseconds": 500,
        "maxNumberOfAttempts": 3,
    }
    assert json.loads(transcribe["input"]) == {
        "request_id": RID,
        "blob": f"{PREFIX}input.m4a",  # a blob name, never audio bytes
        "language": "en",
        "erasure_marks": None,
    }

    complete(history, "transcribe", transcribe["input"], HEARD)
    state, actions = run_episode(history)
    generate = actions[-1]
    assert [a["functionName"] for a in actions] == ["transcribe", "generate"]
    assert json.loads(generate["input"]) == {
        "request_id": RID,
        "owner": "shared",
        "question": "How are you?",
        "system_prompt": None,
        "history": [],
        "in_conversation": False,
        "language": "en",
        "spender": None,
        "erasure_marks": None,
    }

    complete(history, "generate", generate["input"], REPLY)
    state, actions = run_episode(history)
    synthesize = actions[-1]
    assert synthesize["functionName"] == "synthesize"
    assert json.loads(synthesize["input"]) == {
        "request_id": RID,
        "owner": "shared",
        "blob_prefix": PREFIX,
        "text": "I am well, thank you.",
        "voice": "Kim",
        "language": "en",
        "spender": None,
        "erasure_marks": None,
    }

    complete(history, "synthesize", synthesize["input"], SPEECH)
    state, _ = run_episode(history)
    assert state["isDone"]
    output = state["output"]
    assert output == {
        "request_id": RID,
        "transcript": "How are you?",
        "text": "I am well, thank you.",
        "language": "en",
        "audio_blob": f"{PREFIX}reply-0a1b2c3d.mp3",
        "audio_bytes": 12345,
        "timings_ms": {"stt": 300, "llm": 400, "tts": 200, "total": output["timings_ms"]["total"]},
        "providers": {"stt": "faster-whisper", "llm": "local", "tts": "piper"},
        "conversation_id": None,
        "turn_saved": None,
        "cache": [],
    }
    assert output["timings_ms"]["total"] >= 0


def test_a_text_question_skips_transcription() -> None:
    job = {**AUDIO_JOB, "audio_blob": None, "text": "Tell me something nice."}
    history = History("talk_orchestrator", RID, job)
    _, [first] = run_episode(history)
    assert first["functionName"] == "generate"
    assert json.loads(first["input"])["question"] == "Tell me something nice."
    complete(history, "generate", first["input"], REPLY)
    _, actions = run_episode(history)
    complete(history, "synthesize", actions[-1]["input"], SPEECH)
    state, _ = run_episode(history)
    assert state["output"]["transcript"] is None
    assert state["output"]["providers"]["stt"] is None
    assert state["output"]["timings_ms"]["stt"] == 0


def test_the_language_heard_is_the_language_of_the_reply_and_its_voice() -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)  # the app says "en"
    _, [transcribe] = run_episode(history)
    complete(history, "transcribe", transcribe["input"], {**HEARD, "language": "fi"})
    _, actions = run_episode(history)
    assert json.loads(actions[-1]["input"])["language"] == "fi"
    complete(history, "generate", actions[-1]["input"], REPLY)
    _, actions = run_episode(history)
    assert json.loads(actions[-1]["input"])["language"] == "fi"
    complete(history, "synthesize", actions[-1]["input"], SPEECH)
    state, _ = run_episode(history)
    assert state["output"]["language"] == "fi"


def test_a_text_question_is_answered_in_the_language_the_app_names() -> None:
    job = {**AUDIO_JOB, "audio_blob": None, "text": "Kerro jotain mukavaa.", "language": "fi"}
    history = History("talk_orchestrator", RID, job)
    _, [generate] = run_episode(history)
    assert json.loads(generate["input"])["language"] == "fi"


def test_a_conversation_brings_its_history_and_saves_the_turn() -> None:
    conversation = {"id": "c" * 32, "new": False, "history": [["Hi, I am Sara.", "Hello Sara!"]]}
    job = {**AUDIO_JOB, "audio_blob": None, "text": "Who am I?", "conversation": conversation}
    history = History("talk_orchestrator", RID, job)
    _, [generate] = run_episode(history)  # no activity spent on loading the history
    assert json.loads(generate["input"])["history"] == [["Hi, I am Sara.", "Hello Sara!"]]
    complete(history, "generate", generate["input"], REPLY)
    _, actions = run_episode(history)
    complete(history, "synthesize", actions[-1]["input"], SPEECH)
    _, actions = run_episode(history)
    save = actions[-1]
    assert save["functionName"] == "save_turn"
    saved = json.loads(save["input"])
    assert {k: saved[k] for k in ("owner", "conversation_id", "new", "question")} == {
        "owner": "shared",
        "conversation_id": "c" * 32,
        "new": False,
        "question": "Who am I?",
    }
    complete(history, "save_turn", save["input"], {"saved": True})
    state, _ = run_episode(history)
    assert state["output"]["conversation_id"] == "c" * 32
    assert state["output"]["turn_saved"] is True


def test_a_turn_that_cannot_be_saved_does_not_throw_the_reply_away() -> None:
    conversation = {"id": "c" * 32, "new": True, "history": []}
    job = {**AUDIO_JOB, "audio_blob": None, "text": "Hi", "conversation": conversation}
    history = History("talk_orchestrator", RID, job)
    _, [generate] = run_episode(history)
    complete(history, "generate", generate["input"], REPLY)
    _, actions = run_episode(history)
    complete(history, "synthesize", actions[-1]["input"], SPEECH)
    _, actions = run_episode(history)
    outage = TransientStageFailure(StorageUnavailable("storage is unavailable, retry shortly"))
    for _ in range(3):  # the save is retried as every activity is, then given up
        _fail(history, "save_turn", actions[-1]["input"], outage)
    state, _ = run_episode(history)
    assert state["isDone"]
    assert state["output"]["text"] == "I am well, thank you."
    assert state["output"]["audio_blob"] == SPEECH["blob"]
    assert state["output"]["turn_saved"] is False


def test_a_permanent_failure_ends_the_orchestration_without_retries() -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)
    _, [transcribe] = run_episode(history)
    no_speech = {"status": 422, "code": "no_speech", "message": "no speech found in 5.0 s of audio"}
    complete(history, "transcribe", transcribe["input"], {"error": no_speech})
    state, actions = run_episode(history)
    assert state["isDone"]
    assert [a["functionName"] for a in actions] == ["transcribe"]
    assert state["output"] == {"request_id": RID, "error": no_speech}


def _fail(history: History, name: str, task_input: str, error: Exception) -> None:
    history.orchestrator_started()
    task_id = history.task_scheduled(name, task_input)
    history.task_failed(task_id, *activity_failure(name, error))
    history.retry_timer(0.5)


def test_a_transient_failure_is_retried_and_then_succeeds() -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)
    _, [transcribe] = run_episode(history)
    complete(history, "transcribe", transcribe["input"], HEARD)
    _, actions = run_episode(history)
    outage = TransientStageFailure(ProviderError("huggingface", "HTTP 503", status=503))
    _fail(history, "generate", actions[-1]["input"], outage)
    state, actions = run_episode(history)
    assert not state["isDone"]  # waiting on the retry
    complete(history, "generate", actions[-1]["input"], REPLY)
    state, actions = run_episode(history)
    assert actions[-1]["functionName"] == "synthesize"


def test_a_transient_failure_that_outlasts_the_retries_keeps_its_status() -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)
    _, [transcribe] = run_episode(history)
    complete(history, "transcribe", transcribe["input"], HEARD)
    _, actions = run_episode(history)
    outage = TransientStageFailure(ProviderError("huggingface", "HTTP 429", status=503))
    for _ in range(3):
        _fail(history, "generate", actions[-1]["input"], outage)
    state, _ = run_episode(history)
    assert state["isDone"]
    assert state["output"] == {
        "request_id": RID,
        "error": {"status": 503, "code": "provider_error", "message": "huggingface: HTTP 429"},
    }


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("text")])
def test_an_unexpected_crash_is_a_generic_502_without_internals(error: Exception) -> None:
    history = History("talk_orchestrator", RID, AUDIO_JOB)
    _, [transcribe] = run_episode(history)
    for _ in range(3):
        _fail(history, "transcribe", transcribe["input"], error)
    state, _ = run_episode(history)
    assert state["output"]["error"] == {
        "status": 502,
        "code": "processing_failed",
        "message": "the request could not be processed",
    }
