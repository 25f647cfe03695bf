"""The latency the backend adds: `POST /talk` over real HTTP against the same pipeline
in-process, on the same uploads, interleaved, after warm-up.

Both paths use the same loopback providers of fixed latency: an OpenAI-compatible chat API
(`LLM_PROVIDER=openai`) and an ElevenLabs stand-in, so what differs is only what the
backend adds around the three stages. The HTTP path is what `make serve` runs: the host's
HTTP front with its function-key check, the app's HTTP function, the Durable stand-in
running the real orchestrator and activities, and Azurite. The in-process path is
`shared.pipeline.talk`. Where the added time goes comes from the HTTP function's own
`Server-Timing` phases and the Durable stand-in's timeline of each orchestration.

Runs in a fresh process (`python -m bench.child end_to_end`): it sets the providers in its
own environment, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import requests

STAGES = ("transcribe", "generate", "synthesize")
STAGE_TIMING = {"transcribe": "stt", "generate": "llm", "synthesize": "tts"}
REPLY = "It is lovely to hear from you. A short walk and a cup of tea help most days end well."


def _provider_stand_ins(llm_delay_s: float, tts_delay_s: float) -> tuple[Any, Any]:
    from shared.tts.mp3 import encode_mp3
    from tests.stubs import StubServer, chat_completion, elevenlabs_speech

    seconds = np.arange(4 * 22_050) / 22_050  # four seconds of speech-sized MP3
    tone = (0.3 * np.sin(2 * np.pi * 220 * seconds) * 32767).astype(np.int16)
    mp3 = encode_mp3(tone.tobytes(), 22_050, 32)
    chat, speech = chat_completion(REPLY), elevenlabs_speech(mp3)
    return (
        StubServer(lambda request: replace(chat(request), delay_s=llm_delay_s)),
        StubServer(lambda request: replace(speech(request), delay_s=tts_delay_s)),
    )


def _split(
    client_ms: float, phases: dict[str, float], timings: dict[str, int], timeline: list
) -> dict[str, float]:
    """The HTTP path's time beyond the three stages, part by part, in the order a request
    meets them (ms)."""
    at = dict(timeline)

    def between(first: str, then: str) -> float:
        return (at[then] - at[first]) * 1000

    parts = {
        "HTTP front and transport": client_ms
        - sum(phases[p] for p in ("accept", "start", "wait", "read")),
        "accept: caller, limits, parsing, storing the upload": phases["accept"],
        # The stand-in notes the start request while `start` is still answering it.
        "orchestration start": phases["start"] + between("requested", "transcribe begins"),
    }
    for index, stage in enumerate(STAGES):
        if index:
            parts[f"{stage}: scheduled"] = between(f"{STAGES[index - 1]} ends", f"{stage} begins")
        ran = between(f"{stage} begins", f"{stage} ends")
        parts[f"{stage}: around the stage"] = ran - timings[STAGE_TIMING[stage]]
    parts["orchestration end"] = between("synthesize ends", "done")
    parts["end noticed by the HTTP function"] = phases["wait"] - between("requested", "done")
    parts["reading the reply back"] = phases["read"]
    return parts


def server_timing(response: requests.Response) -> dict[str, float]:
    """The answer's `Server-Timing` durations by name (ms)."""
    entries = response.headers["Server-Timing"].split(", ")
    return {name: float(value) for name, value in (e.split(";dur=") for e in entries)}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1)}


def stand_in_settings(chat_url: str, speech_url: str) -> dict[str, str]:
    """The settings that send the model's and the voice's calls to loopback stand-ins."""
    return {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": f"{chat_url}/v1",
        "LLM_MODEL": "bench",
        "TTS_PROVIDER": "elevenlabs",
        "ELEVENLABS_BASE_URL": speech_url,
        "ELEVENLABS_API_KEY": "sk_bench_0123456789abcdef",
    }


@contextlib.contextmanager
def stand_in_providers(job: dict[str, Any], **settings: str) -> Iterator[None]:
    """The chat API and ElevenLabs as loopback stand-ins of fixed latency, set up in this
    process's environment as an operator would; `settings` add to it."""
    chat, speech = _provider_stand_ins(job["llm_delay_s"], job["tts_delay_s"])
    with chat, speech:
        os.environ.update(
            {
                **stand_in_settings(chat.url, speech.url),
                # Every request takes the whole path: nothing is answered from the cache,
                # and the same upload sent again is a new turn, not a duplicate (what that
                # check costs is in request_checks).
                "LLM_CACHE": "off",
                "TTS_CACHE": "off",
                "DUPLICATE_WINDOW_SECONDS": "0",
                "RATE_LIMIT_PER_ADDRESS_PER_MINUTE": "1000000",
                **settings,
            }
        )
        yield


@contextlib.contextmanager
def serving() -> Iterator[tuple[Any, Callable[[bytes], requests.Response]]]:
    """What `make serve` runs, on this process's settings: the Durable stand-in and the
    HTTP front; with a function that posts an upload as the Android app does."""
    from tools.devhost.durable import app_durable_host
    from tools.devhost.functions import FunctionsHttpHost

    key = "bench-function-key-0123456789abcdef"
    durable = app_durable_host()
    with durable, FunctionsHttpHost(durable, key=key, master_key=key) as front:
        session = requests.Session()  # one connection, kept alive, as the app's HTTP client

        def post(upload: bytes) -> requests.Response:
            return session.post(
                f"{front.url}/talk",
                files={"audio": ("recording.m4a", upload, "audio/mp4")},
                headers={"x-functions-key": key, "X-Forwarded-For": "203.0.113.7:50000"},
                timeout=120,
            )

        yield durable, post


def end_to_end(job: dict[str, Any]) -> dict[str, Any]:
    with stand_in_providers(job):
        return _measure(job, [Path(path).read_bytes() for path in job["clips"]])


def _measure(job: dict[str, Any], uploads: list[bytes]) -> dict[str, Any]:
    from shared.config import get_settings
    from shared.pipeline import TalkRequest, talk

    settings = get_settings()
    with serving() as (durable, post):

        def over_http(upload: bytes) -> tuple[float, dict[str, float]]:
            started = time.perf_counter()
            response = post(upload)
            client_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            answer = response.json()
            phases = server_timing(response)
            timeline = durable.timeline[answer["request_id"]]
            return client_ms, _split(client_ms, phases, answer["timings_ms"], timeline)

        def in_process(upload: bytes) -> float:
            started = time.perf_counter()
            talk(TalkRequest(audio=upload), settings)
            return (time.perf_counter() - started) * 1000

        over_http(uploads[0])  # warm up every model and connection on both paths
        in_process(uploads[0])
        http_ms: list[float] = []
        local_ms: list[float] = []
        parts: dict[str, list[float]] = {}
        for _ in range(job["repeats"]):
            for upload in uploads:  # interleaved: the same noise for both paths
                client_ms, split = over_http(upload)
                http_ms.append(client_ms)
                for name, value in split.items():
                    parts.setdefault(name, []).append(value)
                local_ms.append(in_process(upload))
        status_reads = durable.status_reads / (len(http_ms) + 1)
    http, local = percentiles(http_ms), percentiles(local_ms)
    return {
        "providers": {
            "llm_delay_ms": job["llm_delay_s"] * 1000,
            "tts_delay_ms": job["tts_delay_s"] * 1000,
        },
        "requests": len(http_ms),
        "paths": {
            "in-process pipeline (shared.pipeline.talk)": local,
            "POST /talk over HTTP (Durable stand-in)": http,
        },
        "added_ms_p50": round(http["p50"] - local["p50"], 1),
        "added_split_ms_p50": {
            name: round(statistics.median(values), 1) for name, values in parts.items()
        },
        "status_reads_per_request": round(status_reads, 1),
    }


def polling(job: dict[str, Any]) -> dict[str, Any]:
    """How long `POST /talk` takes to notice a turn's end, and how many status reads that
    costs, for each fast-polling window in `job["windows"]`, the same uploads for every
    window, on a turn of `job["llm_delay_s"]` and `job["tts_delay_s"]` provider time."""
    from talk import api

    uploads = [Path(path).read_bytes() for path in job["clips"]]
    noticed: dict[float, list[float]] = {window: [] for window in job["windows"]}
    reads = dict.fromkeys(job["windows"], 0)
    with stand_in_providers(job), serving() as (durable, post):
        post(uploads[0]).raise_for_status()  # warm up
        for _ in range(job["repeats"]):
            for upload in uploads:
                for window in job["windows"]:  # interleaved: the same noise for each
                    api.FAST_POLL_WINDOW_S = window
                    before = durable.status_reads
                    response = post(upload)
                    response.raise_for_status()
                    reads[window] += durable.status_reads - before
                    at = dict(durable.timeline[response.json()["request_id"]])
                    waited = server_timing(response)["wait"]
                    noticed[window].append(waited - (at["done"] - at["requested"]) * 1000)
    return {
        "windows": {
            f"{window:g} s": {
                "end_noticed_after_ms": percentiles(values),
                "status_reads_per_request": round(reads[window] / len(values), 1),
            }
            for window, values in noticed.items()
        }
    }
