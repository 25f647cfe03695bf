"""The Function App as the Functions host would index it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import azure.functions as func

from tests.conftest import ROOT


def test_the_app_indexes_every_function_with_its_bindings() -> None:
    # A fresh interpreter: get_functions() may be called once per app object.
    script = (
        "import json, function_app;"
        "print(json.dumps({f.get_function_name(): sorted(b.type for b in f.get_bindings())"
        " for f in function_app.app.get_functions()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == {
        "health": ["http", "httpTrigger"],
        "health_ready": ["http", "httpTrigger"],
        "health_speech": ["http", "httpTrigger"],
        "talk_start": ["durableClient", "http", "httpTrigger"],
        "talk_result": ["durableClient", "http", "httpTrigger"],
        "talk_conversation": ["durableClient", "http", "httpTrigger"],
        "talk_forget_me": ["durableClient", "http", "httpTrigger"],
        "talk_orchestrator": ["orchestrationTrigger"],
        "transcribe": ["activityTrigger"],
        "generate": ["activityTrigger"],
        "synthesize": ["activityTrigger"],
        "save_turn": ["activityTrigger"],
        "daily_cleanup": ["durableClient", "timerTrigger"],
    }


def test_routes_and_auth_levels() -> None:
    from health.api import health, health_ready, health_speech
    from talk.api import talk_conversation, talk_forget_me, talk_result, talk_start

    def trigger(builder) -> dict:
        [binding] = [b for b in builder.build().get_bindings() if b.type == "httpTrigger"]
        return binding.get_dict_repr()

    assert trigger(health)["route"] == "health"
    assert trigger(health)["authLevel"] == func.AuthLevel.ANONYMOUS
    assert trigger(talk_start)["route"] == "talk"
    assert trigger(talk_start)["authLevel"] == func.AuthLevel.FUNCTION
    assert trigger(talk_result)["route"] == "talk/{request_id}"
    assert trigger(talk_result)["authLevel"] == func.AuthLevel.FUNCTION
    assert trigger(talk_conversation)["route"] == "talk/conversations/{conversation_id}"
    assert trigger(talk_conversation)["authLevel"] == func.AuthLevel.FUNCTION
    assert trigger(talk_forget_me)["route"] == "talk/me"
    assert trigger(talk_forget_me)["authLevel"] == func.AuthLevel.FUNCTION
    # Readiness names providers and missing secrets: not for the key that ships in the app.
    assert trigger(health_ready)["route"] == "health/ready"
    assert trigger(health_ready)["authLevel"] == func.AuthLevel.ADMIN
    # The self-check runs the models on what it is sent: operators only, too.
    assert trigger(health_speech)["route"] == "health/speech"
    assert trigger(health_speech)["authLevel"] == func.AuthLevel.ADMIN


def test_host_json_serves_the_original_paths_and_throttles_overload() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    http = host["extensions"]["http"]
    assert http["routePrefix"] == ""
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    # An overloaded instance answers 429 instead of queueing without bound.
    assert http["dynamicThrottlesEnabled"] is True
    assert 0 < http["maxConcurrentRequests"] <= http["maxOutstandingRequests"]
    # Each activity holds a model's inference buffers: a bounded number at once.
    assert 1 <= host["extensions"]["durableTask"]["maxConcurrentActivityFunctions"] <= 8


def test_local_settings_sample_is_complete_and_safe() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    for secret in ("HF_API_TOKEN", "ELEVENLABS_API_KEY", "LLM_API_KEY"):
        assert not values.get(secret)


def test_azure_functions_doctor_finds_no_failure(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("azure-functions-doctor")),
            "doctor",
            "--path",
            str(ROOT),
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert json.loads(summary.read_text())["failed"] == 0
