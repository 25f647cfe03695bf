"""Benchmark tasks that need a fresh process: `python -m bench.child TASK JOB_JSON`.

Each prints one JSON line. Storage comes from `AzureWebJobsStorage` (the parent's Azurite).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not ru_maxrss: Linux carries that over from
    the parent across fork and exec, so a child would report the benchmark's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def stt_rss(job: dict[str, Any]) -> dict[str, Any]:
    from shared.config import Settings
    from shared.pipeline import transcribe
    from shared.stt import get_transcriber

    settings = Settings(stt_engine=job["engine"], whisper_model=job["model"])
    started = time.perf_counter()
    get_transcriber(settings)
    load_ms = (time.perf_counter() - started) * 1000
    for clip in job["clips"]:
        transcribe(Path(clip).read_bytes(), request_id="rss", settings=settings)
    return {"peak_rss_mb": _peak_rss_mb(), "load_ms": round(load_ms, 1)}


def cold_start(job: dict[str, Any]) -> dict[str, Any]:
    import psutil

    born = psutil.Process().create_time()
    import azure.functions as func

    import function_app  # noqa: F401 - the import is what is measured
    from health.api import health

    request = func.HttpRequest(method="GET", url="/health", headers={}, params={}, body=b"")
    assert health.build().get_user_function()(request).status_code == 200
    health_ms = (time.time() - born) * 1000
    from shared.stt.fasterwhisper import load_whisper_model

    models_loaded = load_whisper_model.loaded
    answer = _first_talk(Path(job["clip"]).read_bytes())
    return {
        "health_ms": round(health_ms, 1),
        "models_loaded_at_health": models_loaded,
        "talk_ms": round((time.time() - born) * 1000, 1),
        "talk_status": answer,
    }


def _first_talk(audio: bytes) -> int:
    import azure.functions as func
    from urllib3 import encode_multipart_formdata

    from talk.api import talk_start
    from tests.conftest import run_async
    from tools.devhost.durable import app_durable_host

    body, content_type = encode_multipart_formdata({"audio": ("recording.m4a", audio, "audio/mp4")})
    with app_durable_host() as host:
        request = func.HttpRequest(
            method="POST",
            url="/talk",
            headers={"Content-Type": content_type},
            params={},
            body=body,
        )
        start = talk_start.build().get_user_function()
        response = run_async(start(req=request, client=host.client_binding()))
    return response.status_code


def throughput(job: dict[str, Any]) -> dict[str, Any]:
    import statistics

    from shared.config import get_settings
    from shared.llm.llamacpp import load_llama
    from shared.pipeline import new_request_id
    from shared.security.identity import SHARED_OWNER
    from shared.storage import blob_store, request_prefix
    from shared.stt.fasterwhisper import load_whisper_model
    from shared.tts.piper import load_piper
    from talk.orchestration import generate_activity, synthesize_activity, transcribe_activity

    transcribe = transcribe_activity.build().get_user_function()
    generate = generate_activity.build().get_user_function()
    synthesize = synthesize_activity.build().get_user_function()
    clips = [Path(path).read_bytes() for path in job["clips"]]
    store = blob_store(get_settings())

    def one_request(index: int) -> float:
        started = time.perf_counter()
        rid = new_request_id()
        prefix = request_prefix(SHARED_OWNER, None, rid)
        blob = f"{prefix}input.m4a"
        store.put(blob, clips[index % len(clips)], "audio/mp4")
        heard = transcribe({"request_id": rid, "blob": blob, "language": None})
        question = {"request_id": rid, "owner": SHARED_OWNER, "question": heard["text"]}
        reply = generate({**question, "system_prompt": None})
        said = {"request_id": rid, "owner": SHARED_OWNER, "text": reply["text"], "voice": None}
        synthesize({**said, "blob_prefix": prefix})
        return (time.perf_counter() - started) * 1000

    one_request(0)  # load and warm every model first
    levels = {}
    for level in job["levels"]:
        started = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            latencies = list(pool.map(one_request, range(job["per_level"])))
        elapsed = time.perf_counter() - started
        levels[str(level)] = {
            "requests_per_minute": round(job["per_level"] / elapsed * 60, 1),
            "latency_ms": {"p50": round(statistics.median(latencies), 1)},
        }
    loads = {
        "whisper": load_whisper_model.load_count,
        "llm": load_llama.load_count,
        "piper": load_piper.load_count,
    }
    return {"levels": levels, "peak_rss_mb": _peak_rss_mb(), "model_loads": loads}


def end_to_end(job: dict[str, Any]) -> dict[str, Any]:
    from bench.end_to_end import end_to_end as measure

    return measure(job)


def polling(job: dict[str, Any]) -> dict[str, Any]:
    from bench.end_to_end import polling as measure

    return measure(job)


def telemetry(job: dict[str, Any]) -> dict[str, Any]:
    from bench.telemetry import telemetry as measure

    return measure(job)


def first_audio(job: dict[str, Any]) -> dict[str, Any]:
    from bench.first_audio import first_audio as measure

    return measure(job)


TASKS = {
    "stt_rss": stt_rss,
    "cold_start": cold_start,
    "throughput": throughput,
    "end_to_end": end_to_end,
    "polling": polling,
    "telemetry": telemetry,
    "first_audio": first_audio,
}

if __name__ == "__main__":
    task, job = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(TASKS[task](job)))
