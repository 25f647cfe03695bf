"""The Function App's HTTP functions, called with real `HttpRequest` objects.

Storage is a real Azurite; the Durable extension is `LocalDurableHost`, which the real
Durable client talks to over HTTP and which runs the app's real orchestrator (through the
SDK's replay engine) and real activities on the embedded models.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import azure.functions as func
import numpy as np
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, generate_account_sas
from urllib3 import encode_multipart_formdata

from health.api import health, health_ready
from shared.audio import decode_audio
from shared.config import get_settings
from shared.storage import blob_store
from talk.api import talk_result, talk_start
from tests.conftest import (
    QUESTIONS,
    closed_port_connection_string,
    phone_upload,
    reset_app_caches,
    run_async,
)
from tests.stubs import Reply, StubServer, chat_completion
from tests.test_pipeline import LOADERS
from tools.devhost.durable import LocalDurableHost, app_durable_host
from tools.phone_audio import encode

TALK_START = talk_start.build().get_user_function()
TALK_RESULT = talk_result.build().get_user_function()
HEALTH = health.build().get_user_function()
HEALTH_READY = health_ready.build().get_user_function()
ANSWER_KEYS = {
    "request_id",
    "text",
    "audio_base64",
    "audio_format",
    "transcript",
    "language",
    "timings_ms",
    "providers",
    "cache",
}


def post(
    host: LocalDurableHost,
    body: bytes,
    content_type: str | None,
    params: dict[str, str] | None = None,
    **headers: str,
):
    all_headers = {**({"Content-Type": content_type} if content_type else {}), **headers}
    request = func.HttpRequest(
        method="POST",
        url="http://localhost/talk",
        headers=all_headers,
        params=params or {},
        body=body,
    )
    return run_async(TALK_START(req=request, client=host.client_binding()))


def get_result(host: LocalDurableHost, request_id: str, **headers: str):
    request = func.HttpRequest(
        method="GET",
        url=f"http://localhost/talk/{request_id}",
        headers=headers,
        params={},
        route_params={"request_id": request_id},
        body=b"",
    )
    return run_async(TALK_RESULT(req=request, client=host.client_binding()))


def android_upload(audio: bytes) -> tuple[bytes, str]:
    """The Android app's request: multipart, part `audio`, `recording.m4a`, `audio/mp4`."""
    return encode_multipart_formdata({"audio": ("recording.m4a", audio, "audio/mp4")})


def body_of(response: func.HttpResponse) -> dict:
    return json.loads(response.get_body())


def stored(name: str) -> bytes:
    return blob_store(get_settings()).get(name)


def request_blobs(request_id: str, owner: str = "shared") -> dict[str, bytes]:
    """A request's blobs by file name (`input.m4a`, `reply-<random>.mp3`, ...)."""
    store = blob_store(get_settings())
    return {
        name.rsplit("/", 1)[1]: store.get(name)
        for name in store.names(f"{owner}/")
        if name.split("/")[2] == request_id
    }


# --- /health ---------------------------------------------------------------------------------


def _health(ready: bool = False) -> func.HttpResponse:
    route = "health/ready" if ready else "health"
    request = func.HttpRequest(
        method="GET", url=f"http://localhost/{route}", headers={}, params={}, body=b""
    )
    return (HEALTH_READY if ready else HEALTH)(request)


def test_health_answers_without_loading_any_model(app_settings) -> None:
    for loader in LOADERS:
        loader.clear()
    response = _health()
    assert response.status_code == 200
    assert body_of(response) == {"status": "ok"}
    assert not any(loader.loaded for loader in LOADERS)


def test_readiness_checks_storage_and_names_providers(app_settings) -> None:
    response = _health(ready=True)
    assert response.status_code == 200, response.get_body()
    assert body_of(response) == {
        "status": "ok",
        "checks": {"config": "ok", "secrets": "ok", "storage": "ok"},
        "providers": {"stt": "faster-whisper", "llm": "local", "tts": "piper"},
    }


def data_role_connection(azurite: str) -> str:
    """A credential as narrow as the app's data roles in Azure: containers, blobs, tables
    and entities, but no account-level (service) calls such as get_service_properties."""
    endpoints = dict(part.split("=", 1) for part in azurite.split(";") if part)
    sas = generate_account_sas(
        endpoints["AccountName"],
        endpoints["AccountKey"],
        resource_types="co",  # container and object; not service
        permission="rwdlacu",
        expiry=datetime.now(UTC) + timedelta(hours=1),
        services="bt",
    )
    return (
        f"BlobEndpoint={endpoints['BlobEndpoint']};TableEndpoint={endpoints['TableEndpoint']};"
        f"SharedAccessSignature={sas}"
    )


def test_readiness_needs_no_more_than_the_apps_data_roles(app_settings, azurite) -> None:
    restricted = data_role_connection(azurite)
    # The restriction is real: the account-level call an earlier probe made is refused.
    with pytest.raises(HttpResponseError, match="resource type"):
        BlobServiceClient.from_connection_string(restricted).get_service_properties()
    app_settings.setenv("AzureWebJobsStorage", restricted)
    reset_app_caches()
    response = _health(ready=True)
    assert response.status_code == 200, response.get_body()
    assert body_of(response)["checks"]["storage"] == "ok"
    # ... and /talk itself works under it.
    with app_durable_host() as host:
        answered = post(host, b'{"text": "Hello?"}', "application/json")
    assert answered.status_code == 200, answered.get_body()


def test_readiness_fails_when_storage_or_a_key_is_missing(app_settings) -> None:
    app_settings.setenv("AzureWebJobsStorage", closed_port_connection_string())
    app_settings.setenv("LLM_PROVIDER", "huggingface")
    app_settings.setenv("HF_API_TOKEN", "")
    reset_app_caches()
    response = _health(ready=True)
    assert response.status_code == 503
    body = body_of(response)
    assert body["status"] == "unavailable"
    assert body["checks"]["secrets"] == "missing: HF_API_TOKEN"
    assert body["checks"]["storage"].startswith("storage unreachable")
    assert body["providers"]["llm"] == "huggingface"


def test_a_broken_setting_makes_readiness_fail_but_liveness_answer(app_settings) -> None:
    app_settings.setenv("MAX_AUDIO_BYTES", "lots")
    reset_app_caches()
    assert _health().status_code == 200
    response = _health(ready=True)
    assert response.status_code == 503
    assert body_of(response)["checks"]["config"] == (
        "MAX_AUDIO_BYTES must be a whole number, got 'lots'"
    )


# --- POST /talk: validation before any work ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "says"),
    [
        (b"hello", "text/plain", {}, 415, "content type text/plain is not supported"),
        (b"hello", None, {}, 415, "content type none is not supported"),
        (b"{}", "application/json", {}, 400, "send audio"),
        (b"[1, 2]", "application/json", {}, 400, "must be an object"),
        (b'{"text": 5}', "application/json", {}, 400, "text must be a string"),
        (b'{"text": "hi"', "application/json", {}, 400, "malformed"),
        (b"", "audio/mp4", {}, 400, "the audio part is empty"),
        (b'{"text": "hi"}', "application/json", {"Accept": "text/html"}, 406, "Accept"),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    app_settings, host, body, content_type, headers, status, says
) -> None:
    response = post(host, body, content_type, **headers)
    assert response.status_code == status
    answer = body_of(response)
    assert says in answer["error"]
    assert len(answer["request_id"]) == 32
    assert not host.started


def test_audio_over_the_byte_limit_is_413(app_settings, host) -> None:
    app_settings.setenv("MAX_AUDIO_BYTES", "1000")
    reset_app_caches()
    body, content_type = android_upload(phone_upload(QUESTIONS[0], "m4a"))
    response = post(host, body, content_type)
    assert response.status_code == 413
    assert "limit" in body_of(response)["error"]
    assert not host.started


def test_storage_down_is_503_and_nothing_starts(app_settings, host) -> None:
    app_settings.setenv("AzureWebJobsStorage", closed_port_connection_string())
    reset_app_caches()
    body, content_type = android_upload(phone_upload(QUESTIONS[0], "m4a"))
    response = post(host, body, content_type)
    assert response.status_code == 503
    assert body_of(response)["error"] == "storage is unavailable, retry shortly"
    assert not host.started


# --- POST /talk: answers ------------------------------------------------------------------


def test_the_android_apps_request_end_to_end(app_settings, host, caplog) -> None:
    caplog.set_level(logging.INFO, logger="talk")
    audio = phone_upload(QUESTIONS[0], "m4a")
    body, content_type = android_upload(audio)
    response = post(host, body, content_type)

    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "application/json"
    answer = body_of(response)
    assert set(answer) == ANSWER_KEYS
    rid = answer["request_id"]
    assert answer["transcript"].lower().startswith("what is a good way to relax")
    assert answer["language"] == "en"
    assert answer["audio_format"] == "mp3"
    assert answer["providers"] == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}
    mp3 = base64.b64decode(answer["audio_base64"])
    assert decode_audio(mp3, max_bytes=10**7, max_seconds=120).duration_s > 0.5

    # The upload landed in Blob Storage, as sent, and so did the reply, under the owner.
    blobs = request_blobs(rid)
    assert blobs.pop("input.m4a") == audio
    [(reply_name, reply)] = blobs.items()
    assert reply_name.startswith("reply-") and reply == mp3
    assert host.activity_calls == ["transcribe", "generate", "synthesize"]

    timing = response.headers["Server-Timing"]
    for stage in ("stt", "llm", "tts", "total"):
        assert f"{stage};dur={answer['timings_ms'][stage]}" in timing
    # And what the HTTP function itself spent, by phase.
    phases = dict(entry.split(";dur=") for entry in timing.split(", "))
    assert {"accept", "start", "wait", "read"} <= set(phases)
    assert (
        sum(float(phases[p]) for p in ("accept", "start", "wait", "read"))
        <= float(phases["total"]) + 2
    )
    assert response.headers["X-Request-Id"] == rid
    assert f"[{rid}] Backend response code: 200" in caplog.text
    assert f"[{rid}] MP3 bytes={len(mp3)}" in caplog.text


def test_the_apps_json_text_request(app_settings, host) -> None:
    response = post(host, b'{"text": "Tell me a kind word.", "voice": "Kim"}', "application/json")
    assert response.status_code == 200, response.get_body()
    answer = body_of(response)
    assert answer["transcript"] is None
    assert answer["text"]
    assert host.activity_calls == ["generate", "synthesize"]


def test_form_fields_without_audio_are_a_text_request(app_settings, host) -> None:
    body, content_type = encode_multipart_formdata({"prompt": "Say something cheerful."})
    response = post(host, body, content_type)
    assert response.status_code == 200, response.get_body()
    assert body_of(response)["transcript"] is None


def test_raw_audio_body_with_mp3_accept_gets_mp3_bytes(app_settings, host) -> None:
    audio = phone_upload(QUESTIONS[2], "ogg")
    response = post(host, audio, "audio/ogg", Accept="audio/mpeg")
    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "audio/mpeg"
    mp3 = response.get_body()
    assert decode_audio(mp3, max_bytes=10**7, max_seconds=120).duration_s > 0.5
    rid = response.headers["X-Request-Id"]
    assert unquote(response.headers["X-Transcript"]).lower().startswith("how many minutes")
    assert unquote(response.headers["X-Reply-Text"])
    assert "tts;dur=" in response.headers["Server-Timing"]
    assert request_blobs(rid)["input.ogg"] == audio


def test_speechless_audio_is_422_without_retries(app_settings, host) -> None:
    silence = encode(np.zeros(48_000, np.int16), 16_000, "m4a")
    body, content_type = android_upload(silence)
    response = post(host, body, content_type)
    assert response.status_code == 422
    assert body_of(response)["error"].startswith("no speech found")
    assert host.activity_calls == ["transcribe"]


def test_undecodable_audio_is_422(app_settings, host) -> None:
    body, content_type = android_upload(b"this is not audio at all " * 50)
    response = post(host, body, content_type)
    assert response.status_code == 422
    assert body_of(response)["error"] == "the data is not audio in a supported format"


def test_a_provider_hiccup_is_retried_within_the_stage(app_settings, host) -> None:
    with StubServer(chat_completion("Happy to help. Have a lovely day.")) as chat:
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{chat.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        app_settings.setenv("HTTP_BACKOFF_SECONDS", "0.01")
        reset_app_caches()
        chat.script = [Reply.json(503, {})]
        response = post(host, b'{"text": "Hello?"}', "application/json")
    assert response.status_code == 200, response.get_body()
    assert body_of(response)["text"] == "Happy to help. Have a lovely day."
    assert len(chat.requests) == 2  # the provider client's own retry
    assert host.activity_calls == ["generate", "synthesize"]


def test_a_429_storm_costs_at_most_three_provider_calls_per_stage(app_settings, host) -> None:
    with StubServer(chat_completion("unused")) as chat:
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{chat.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        reset_app_caches()
        chat.script = [Reply.json(429, {}, **{"Retry-After": "0"})] * 20
        response = post(host, b'{"text": "Hello?"}', "application/json")
    assert response.status_code == 503
    assert body_of(response)["error"] == "openai: HTTP 429"
    # HTTP_RETRIES (2) inside the activity, and no activity retries on top of them.
    assert len(chat.requests) == 3
    assert host.activity_calls == ["generate"]


def collect(host: LocalDurableHost, rid: str) -> func.HttpResponse:
    """`GET /talk/{id}` until the reply is there, as a client told where it will be does."""
    deadline = time.monotonic() + 60
    while (result := get_result(host, rid)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return result


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Prefer": "respond-async"}, {}),
        ({"Prefer": "wait=1, Respond-Async"}, {}),
        ({}, {"async": "1"}),
    ],
    ids=["prefer", "prefer-with-wait", "query"],
)
def test_a_slow_answer_is_202_for_a_client_that_asks_for_it(
    app_settings, host, headers: dict[str, str], params: dict[str, str]
) -> None:
    app_settings.setenv("TALK_WAIT_SECONDS", "0.01")
    reset_app_caches()
    body = b'{"text": "What should I cook tonight?"}'
    response = post(host, body, "application/json", params, **headers)
    assert response.status_code == 202
    rid = body_of(response)["request_id"]
    assert response.headers["Location"] == f"/talk/{rid}"
    assert int(response.headers["Retry-After"]) > 0

    result = collect(host, rid)
    assert result.status_code == 200, result.get_body()
    answer = body_of(result)
    assert set(answer) == ANSWER_KEYS
    assert answer["request_id"] == rid
    assert get_result(host, rid, Accept="audio/mpeg").get_body() == base64.b64decode(
        answer["audio_base64"]
    )


def test_a_slow_answer_is_an_error_the_app_shows_then_collected(app_settings, host, caplog):
    """The Android app plays any 2xx: without `Prefer: respond-async` a late reply is a
    504 it shows as "Backend error (504)", and the reply is still made and kept."""
    app_settings.setenv("TALK_WAIT_SECONDS", "0.01")
    reset_app_caches()
    with caplog.at_level(logging.INFO, logger="talk"):
        response = post(host, b'{"text": "What should I cook tonight?"}', "application/json")
    assert response.status_code == 504
    error = body_of(response)
    assert error["code"] == "reply_pending"
    rid = error["request_id"]
    assert response.headers["Location"] == f"/talk/{rid}"
    assert f"GET /talk/{rid}" in error["error"]
    assert int(response.headers["Retry-After"]) > 0
    assert "not answered in time: answering 504" in caplog.text

    result = collect(host, rid)
    assert result.status_code == 200, result.get_body()
    assert body_of(result)["request_id"] == rid


def test_a_prefer_wait_shorter_than_talk_wait_seconds_is_honoured(app_settings, host) -> None:
    started = time.monotonic()
    response = post(
        host, b'{"text": "Tell me a story."}', "application/json", Prefer="respond-async, wait=0"
    )
    assert response.status_code == 202
    assert time.monotonic() - started < 2  # not TALK_WAIT_SECONDS (60)
    assert collect(host, body_of(response)["request_id"]).status_code == 200


@pytest.mark.parametrize("request_id", ["deadbeef" * 4, "../../x", "DEADBEEF" * 4, "0" * 40])
def test_unknown_request_ids_are_404(app_settings, host, request_id: str) -> None:
    response = get_result(host, request_id)
    assert response.status_code == 404
    assert body_of(response)["error"] == "unknown request id"
