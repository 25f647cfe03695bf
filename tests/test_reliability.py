"""No lost requests: idempotent retries, crashed activities, missing secrets, and load."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.llm.llamacpp import load_llama
from shared.stt.fasterwhisper import load_whisper_model
from shared.tts.piper import load_piper
from tests.conftest import QUESTIONS, phone_upload, reset_app_caches
from tests.test_functions import android_upload, body_of, get_result, post, request_blobs
from tools.azurite import free_port
from tools.devhost.durable import app_durable_host, max_concurrent_activities

LOADERS = (load_whisper_model, load_llama, load_piper)


def test_a_retried_request_with_its_idempotency_key_gets_the_same_answer(
    app_settings, host
) -> None:
    body, content_type = android_upload(phone_upload(QUESTIONS[1], "m4a"))
    first = post(host, body, content_type, **{"Idempotency-Key": "app-attempt-42"})
    again = post(host, body, content_type, **{"Idempotency-Key": "app-attempt-42"})
    assert first.status_code == again.status_code == 200
    assert body_of(first) == {**body_of(again), "timings_ms": body_of(first)["timings_ms"]}
    assert len(host.started) == 1
    other = post(host, body, content_type, **{"Idempotency-Key": "another-attempt"})
    assert body_of(other)["request_id"] != body_of(first)["request_id"]
    assert len(host.started) == 2


def test_concurrent_retries_start_one_orchestration(app_settings, host) -> None:
    payload = b'{"text": "Tell me something cheerful."}'
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(
                lambda _: post(host, payload, "application/json", **{"Idempotency-Key": "same"}),
                range(4),
            )
        )
    assert {r.status_code for r in responses} == {200}
    assert len({body_of(r)["request_id"] for r in responses}) == 1
    assert len(host.started) == 1


def test_a_crashed_activity_is_retried_and_the_client_still_gets_its_reply(
    app_settings,
) -> None:
    with app_durable_host(crash_once=frozenset({"transcribe", "synthesize"})) as crashing:
        body, content_type = android_upload(phone_upload(QUESTIONS[0], "m4a"))
        response = post(crashing, body, content_type)
    assert response.status_code == 200, response.get_body()[:300]
    assert crashing.activity_calls == [
        "transcribe",
        "transcribe",
        "generate",
        "synthesize",
        "synthesize",
    ]
    rid = body_of(response)["request_id"]
    assert request_blobs(rid)["input.m4a"]  # the upload stays until it has been answered


def test_an_unreachable_key_vault_leaves_health_up_and_talk_says_what_is_missing(
    app_settings, host, caplog
) -> None:
    from tests.test_functions import _health

    app_settings.setenv("KEY_VAULT_URL", f"https://127.0.0.1:{free_port()}")
    app_settings.setenv("LLM_PROVIDER", "huggingface")
    app_settings.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{free_port()}/msi/token")
    app_settings.setenv("IDENTITY_HEADER", "x")
    reset_app_caches()
    assert _health().status_code == 200
    ready = _health(ready=True)
    assert ready.status_code == 503
    assert body_of(ready)["checks"]["secrets"].startswith("missing: HF_API_TOKEN; Key Vault")
    response = post(host, b'{"text": "Hello?"}', "application/json")
    assert response.status_code == 503
    error = body_of(response)["error"]
    assert error.startswith("huggingface needs HF_API_TOKEN, which is not set")
    assert "Key Vault unreachable" in error
    assert host.activity_calls == ["generate"]  # a missing key is not retried


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_32_concurrent_requests_are_all_answered_with_each_model_loaded_once(
    app_settings, host, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    app_settings.setenv("TALK_WAIT_SECONDS", "30")
    reset_app_caches()
    for loader in LOADERS:
        loader.clear()
    uploads = [android_upload(phone_upload(q, "m4a")) for q in QUESTIONS]
    started = time.monotonic()
    barrier = threading.Barrier(32)

    def ask(index: int) -> tuple[int, str, dict]:
        body, content_type = uploads[index % len(uploads)]
        barrier.wait()
        # 32 phones (the same recording from one phone would be one turn), each a patient
        # client that asks for a 202 and collects its reply.
        phone = {"X-Forwarded-For": f"198.51.100.{index}:50000", "Prefer": "respond-async"}
        response = post(host, body, content_type, **phone)
        answer = body_of(response)
        rid = answer["request_id"]
        while response.status_code == 202:  # a patient client collects its reply
            time.sleep(1)
            response = get_result(host, rid)
            answer = body_of(response)
        return response.status_code, rid, answer

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in results] == [200] * 32
    assert len({rid for _, rid, _ in results}) == 32
    assert all(base64.b64decode(answer["audio_base64"]) for _, _, answer in results)
    assert [loader.load_count for loader in LOADERS] == [1, 1, 1]
    report = {
        "concurrent_requests": 32,
        "activity_slots": max_concurrent_activities(),
        "seconds": round(elapsed, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    print(f"\nload: {json.dumps(report)}")
