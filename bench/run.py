"""`make bench`: the voice round trip measured side by side, on this machine, in one run.

Sections, each on the same fixed questions (spoken by the embedded voice and encoded as the
Android app uploads them: MPEG-4/AAC at 16 kHz):

- stt: the original backend's engine (openai-whisper, float32, greedy with temperature
  fallback, no VAD) against the default (faster-whisper int8 with Silero VAD), on the same
  tiny.en weights, interleaved, after warm-up; latency, real-time factor, word error rate
  and, in a fresh process each, peak RSS;
- stt_models: the default multilingual Whisper `base` against the English-only `tiny.en`,
  both faster-whisper, interleaved: on the English questions latency, real-time factor,
  word error rate, peak RSS and load time in a fresh process; and the one-off cost of
  putting `base` back together from its two packages;
- speech_quality: both models on recordings of real people (English and Finnish, as
  recorded, as a 32 kbit/s phone upload, and with noise) and on synthetic voices: error
  rates, refusals, the language heard (`bench/speech_quality.py`);
- round_trip: warm STT + LLM + TTS + MP3 through the pipeline, for both STT engines on
  `tiny.en`, and for the default (`base`);
- decoding: an upload decoded in this process and in a capped child process, interleaved;
- stt_cost: the CPU time of one transcription of 25, 60 and 112 s of speech against the
  hardest uploads of the same length found (one phrase repeated, shuffled babble);
- cold_start: a fresh process from `import function_app` to the first `/health` answer and
  to the first `/talk` answer (Azurite storage, the Durable stand-in of the tests);
- throughput: requests per minute with 1, 2 and 4 concurrent requests through the three
  activities, in a fresh process, with its peak RSS and how many times each model loaded;
- end_to_end: `POST /talk` over real HTTP (what `make serve` runs: the host's front, the
  Durable stand-in, Azurite) against `shared.pipeline.talk` in-process, interleaved, with
  loopback providers of fixed latency (a chat API, 300 ms; ElevenLabs, 200 ms), and where
  the time the HTTP path adds goes;
- request_checks: what establishing the caller (function key or bearer token), counting its
  rate limits in Table Storage, claiming the request id, parsing the app's multipart upload
  (against Werkzeug's form parser, which refused long recordings), the check for a
  request sent again (the body's SHA-256 and the record's two writes), the erasure
  tombstones and a caller's share of a daily budget add to each `POST /talk`;
- polling: how soon `POST /talk` notices a turn's end and how many status reads that
  costs, for fast-polling windows of 2, 3, 5 and 10 s on a 2.5 s and a 5.5 s turn;
- telemetry: the same HTTP path with tracing on and off, each upload both ways in a row,
  and the run's spans and metrics summarised as the operations workbook charts them.
- first_audio: JSON `POST /talk` (time to the whole answer) against `POST /talk/stream`
  (time to the first `audio` event and to `done`), the same uploads interleaved, with
  loopback providers that stream as the real ones do and with the embedded models; the
  split of the first audio's time, and the streamed reply's audio length against the same
  reply spoken whole (`bench/first_audio.py`, which also runs alone).

Results go to bench/results/latest.{json,md,png}, end_to_end.png and workbook.png. Nothing
here asserts a number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from bench.end_to_end import percentiles
from bench.first_audio import bench_first_audio, first_audio_markdown
from bench.speech_quality import bench_speech_quality, speech_quality_markdown
from shared.config import Settings
from shared.errors import TalkError
from shared.pipeline import TalkRequest, talk, transcribe
from tools.azurite import running_azurite
from tools.phone_audio import encode, speak

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUESTIONS = (
    "What is a good way to relax after a long day?",
    "Please remind me to call my mother tomorrow morning.",
    "How many minutes should I boil an egg?",
    "Can you recommend a good book for a rainy weekend?",
    "What should I cook for dinner tonight?",
    "How do I stay focused when I work from home?",
)
FINNISH_QUESTIONS = (
    "Mihin aikaan apteekki sulkeutuu sunnuntaisin?",
    "Mihin aikaan aurinko nousee huomenna?",
    "Kerro minulle hyvä resepti illalliseksi.",
    "Miten voin rentoutua pitkän päivän jälkeen?",
    "Muistuta minua soittamaan äidille huomenna aamulla.",
    "Mikä on Suomen pääkaupunki?",
)
PACKAGES = (
    "faster-whisper",
    "ctranslate2",
    "openai-whisper",
    "torch",
    "llama_cpp_python",
    "piper-tts",
    "onnxruntime",
    "av",
    "lameenc",
)
_NORMALISE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def embedded(**changes: Any) -> Settings:
    # Greedy replies: the same question gets the same reply in every configuration, so the
    # LLM and TTS stages compare like with like.
    base = Settings(llm_provider="local", tts_provider="piper", llm_temperature=0.0)
    return replace(base, **changes)


def make_clips(count: int) -> list[tuple[str, bytes, float]]:
    """(question, m4a upload, seconds of speech) for the first `count` questions."""
    clips = []
    for question in QUESTIONS[:count]:
        pcm, rate = speak(question)
        clips.append((question, encode(pcm, rate, "m4a"), len(pcm) / rate))
    return clips


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return round(
        jiwer.wer(
            references,
            hypotheses,
            reference_transform=_NORMALISE,
            hypothesis_transform=_NORMALISE,
        ),
        4,
    )


# --- speech to text -----------------------------------------------------------------------


def bench_stt(clips: list, repeats: int, checkpoint: Path) -> dict[str, Any]:
    engines = {
        "openai-whisper (original)": embedded(
            stt_engine="openai-whisper", whisper_model=str(checkpoint)
        ),
        "faster-whisper (ours)": embedded(whisper_model="tiny.en"),
    }
    results: dict[str, Any] = compare_stt(engines, clips, repeats)
    original, ours = engines
    results["speed_ratio"] = round(
        results[original]["latency_ms"]["p50"] / results[ours]["latency_ms"]["p50"], 2
    )
    return results


def compare_stt(
    configurations: dict[str, Settings], clips: list, repeats: int
) -> dict[str, dict[str, Any]]:
    """Latency, real-time factor and word error rate of each configuration, interleaved
    (the same noise for all) after warm-up, and each one's peak RSS in a fresh process."""
    for settings in configurations.values():
        transcribe(clips[0][1], request_id="warmup", settings=settings)
    latencies: dict[str, list[float]] = {name: [] for name in configurations}
    rtf: dict[str, list[float]] = {name: [] for name in configurations}
    heard: dict[str, list[str]] = {name: [] for name in configurations}
    for _ in range(repeats):
        for _question, audio, seconds in clips:
            for name, settings in configurations.items():
                started = time.perf_counter()
                text = transcribe(audio, request_id="bench", settings=settings).text
                elapsed = time.perf_counter() - started
                latencies[name].append(elapsed * 1000)
                rtf[name].append(elapsed / seconds)
                heard[name].append(text)
    references = [q for _ in range(repeats) for q, _, _ in clips]
    return {
        name: {
            "latency_ms": percentiles(latencies[name]),
            "real_time_factor_p50": round(statistics.median(rtf[name]), 3),
            "word_error_rate": word_error_rate(references, heard[name]),
            **_stt_process(settings, clips),
        }
        for name, settings in configurations.items()
    }


def _stt_process(settings: Settings, clips: list) -> dict[str, float]:
    """Peak RSS of a fresh process that loads one engine and transcribes every clip, and how
    long the load took."""
    with tempfile.TemporaryDirectory() as folder:
        job = {
            "engine": settings.stt_engine,
            "model": settings.whisper_model,
            "clips": _clip_files(Path(folder), clips),
        }
        result = _child("stt_rss", job)
        return {"peak_rss_mb": result["peak_rss_mb"], "load_ms": result["load_ms"]}


def _clip_files(folder: Path, clips: list) -> list[str]:
    """The clips as files, for a child process to read."""
    paths = []
    for index, (_, audio, _) in enumerate(clips):
        path = folder / f"{index}.m4a"
        path.write_bytes(audio)
        paths.append(str(path))
    return paths


def bench_stt_models(clips: list, repeats: int) -> dict[str, Any]:
    """Whisper base (the default) against tiny.en, interleaved, on the same uploads."""
    from shared.stt.models import base_model_dir

    models = {"tiny.en": embedded(whisper_model="tiny.en"), "base": embedded()}
    english = compare_stt(models, clips, repeats)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        base_model_dir(Settings(model_cache_dir=cache))
        assembly_ms = round((time.perf_counter() - started) * 1000, 1)
    return {
        "english": english,
        "base_assembly_ms": assembly_ms,
        "speed_ratio": round(
            english["base"]["latency_ms"]["p50"] / english["tiny.en"]["latency_ms"]["p50"], 2
        ),
    }


# --- the round trip -----------------------------------------------------------------------


def bench_round_trip(clips: list, repeats: int, checkpoint: Path) -> dict[str, Any]:
    configurations = {
        "original STT (openai-whisper)": embedded(
            stt_engine="openai-whisper", whisper_model=str(checkpoint)
        ),
        "ours (faster-whisper)": embedded(whisper_model="tiny.en"),
        "ours, default model (base)": embedded(),
    }
    results = {}
    for name, settings in configurations.items():
        talk(TalkRequest(audio=clips[0][1]), settings)  # warm up every model
        stages: dict[str, list[float]] = {"stt": [], "llm": [], "tts": [], "total": []}
        for _ in range(repeats):
            for _question, audio, _seconds in clips:
                timings = talk(TalkRequest(audio=audio), settings).timings_ms
                for stage, values in stages.items():
                    values.append(timings[stage])
        results[name] = {stage: percentiles(values) for stage, values in stages.items()}
    return results


def bench_cache_hits(clips: list, repeats: int, storage: str) -> dict[str, Any]:
    """The round trip of a question asked again: speech and reply served from the cache."""
    settings = embedded(storage_connection=storage, llm_cache="on", tts_cache="on")
    stages: dict[str, list[float]] = {"stt": [], "llm": [], "tts": [], "total": []}
    for _question, audio, _seconds in clips:
        talk(TalkRequest(audio=audio), settings)  # the first time: a miss that fills it
        for _ in range(repeats):
            result = talk(TalkRequest(audio=audio), settings)
            assert result.cache == ["llm", "tts"], result.cache
            for stage, values in stages.items():
                values.append(result.timings_ms[stage])
    return {stage: percentiles(values) for stage, values in stages.items()}


# --- fresh processes ----------------------------------------------------------------------


def _child(task: str, job: dict[str, Any], storage: str = "") -> dict[str, Any]:
    """Run `task` in a fresh interpreter and return the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AzureWebJobsStorage": storage}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", task, json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        raise RuntimeError(f"bench child {task} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def bench_cold_start(clip: bytes, storage: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".m4a") as upload:
        upload.write(clip)
        upload.flush()
        return _child("cold_start", {"clip": upload.name}, storage)


def bench_with_stand_ins(
    task: str, clips: list, storage: str, repeats: int, llm_delay_s: float, tts_delay_s: float
) -> dict[str, Any]:
    """A child task (`end_to_end`, `telemetry`) with loopback providers of fixed latency."""
    with tempfile.TemporaryDirectory() as folder:
        job = {
            "clips": _clip_files(Path(folder), clips),
            "repeats": repeats,
            "llm_delay_s": llm_delay_s,
            "tts_delay_s": tts_delay_s,
        }
        return _child(task, job, storage)


def bench_polling(clips: list, storage: str, quick: bool) -> dict[str, Any]:
    """The fast-polling window of `POST /talk` (`FAST_POLL_WINDOW_S`) at 2, 3, 5 and 10 s,
    on turns of about 2.5, 4 and 5.5 s (chat and voice stand-ins slow enough for that),
    each in a fresh process."""
    turns = [(1.2, 0.8)] if quick else [(1.2, 0.8), (2.2, 1.0), (3.5, 1.5)]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for llm_delay_s, tts_delay_s in turns:
            job = {
                "clips": _clip_files(Path(folder), clips),
                "repeats": 1 if quick else 4,
                "windows": [2.0, 10.0] if quick else [2.0, 3.0, 5.0, 10.0],
                "llm_delay_s": llm_delay_s,
                "tts_delay_s": tts_delay_s,
            }
            turn = f"turn with chat {llm_delay_s:g} s and voice {tts_delay_s:g} s"
            results[turn] = _child("polling", job, storage)["windows"]
    return {"turns": results}


def bench_throughput(
    clips: list, storage: str, levels: list[int], per_level: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        job = {"clips": _clip_files(Path(folder), clips), "levels": levels, "per_level": per_level}
        return _child("throughput", job, storage)


# --- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": versions,
    }


def markdown(results: dict[str, Any]) -> str:
    stt = results["stt"]
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"{results['clips']} questions x {results['repeats']} runs.",
    ]
    lines += table(
        ["STT engine", "p50 ms", "p95 ms", "real-time factor", "WER", "peak RSS MB"],
        (
            [
                name,
                *_p50_p95(row["latency_ms"]),
                row["real_time_factor_p50"],
                f"{row['word_error_rate']:.1%}",
                row["peak_rss_mb"],
            ]
            for name, row in stt.items()
            if name != "speed_ratio"
        ),
    )
    lines += ["", f"Speed ratio (p50): faster-whisper is {stt['speed_ratio']}x openai-whisper."]
    models = results["stt_models"]
    lines += table(
        [
            "Whisper model, English",
            "p50 ms",
            "p95 ms",
            "real-time factor",
            "WER",
            "peak RSS MB",
            "load ms",
        ],
        (
            [
                name,
                *_p50_p95(row["latency_ms"]),
                row["real_time_factor_p50"],
                f"{row['word_error_rate']:.1%}",
                row["peak_rss_mb"],
                row["load_ms"],
            ]
            for name, row in models["english"].items()
        ),
    )
    lines += [
        "",
        f"base takes {models['speed_ratio']}x the time of tiny.en (p50); putting base back "
        f"together from its packages, once per instance: {models['base_assembly_ms']} ms.",
    ]
    lines += speech_quality_markdown(results["speech_quality"])
    lines += table(
        ["round trip", "STT p50/p95", "LLM p50/p95", "TTS p50/p95", "total p50/p95 ms"],
        (
            [name, *(f"{row[s]['p50']} / {row[s]['p95']}" for s in ("stt", "llm", "tts", "total"))]
            for name, row in results["round_trip"].items()
        ),
    )
    lines += table(
        ["decoding an upload", "p50 ms", "p95 ms"],
        ([name, *_p50_p95(row)] for name, row in results["decoding"].items()),
    )
    cold = results["cold_start"]
    lines += [
        "",
        f"Cold start (fresh process): first `/health` answer {cold['health_ms']} ms "
        f"(models loaded: {cold['models_loaded_at_health']}); first `/talk` answer "
        f"{cold['talk_ms']} ms.",
    ]
    throughput = results["throughput"]
    lines += table(
        ["concurrent requests", "requests/min", "p50 ms per request"],
        (
            [level, row["requests_per_minute"], row["latency_ms"]["p50"]]
            for level, row in throughput["levels"].items()
        ),
    )
    lines += [
        "",
        f"Throughput process: peak RSS {throughput['peak_rss_mb']} MB with all three models; "
        f"model loads {throughput['model_loads']}.",
    ]
    lines += end_to_end_markdown(results["end_to_end"])
    lines += table(
        ["what a `POST /talk` now does besides the pipeline", "p50 ms", "p95 ms"],
        ([name, *_p50_p95(row)] for name, row in results["request_checks"].items()),
    )
    lines += ["", "What one transcription can cost (CPU-seconds, default settings):", ""]
    lines += table(
        ["recording", "upload", "CPU s", "times the speech's", "outcome"],
        (
            [length, name, entry["cpu_s"], entry["times_benign"], entry["outcome"]]
            for length, row in results["stt_cost"].items()
            for name, entry in row.items()
        ),
    )
    for turn, windows in results["polling"]["turns"].items():
        lines += ["", f"Noticing the end of a {turn} (`FAST_POLL_WINDOW_S`):", ""]
        lines += table(
            ["fast window", "noticed after p50 ms", "p95 ms", "status reads per request"],
            (
                [window, *_p50_p95(row["end_noticed_after_ms"]), row["status_reads_per_request"]]
                for window, row in windows.items()
            ),
        )
    lines += telemetry_markdown(results["telemetry"])
    lines += first_audio_markdown(results["first_audio"])
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """A Markdown table, after a blank line."""
    return ["", _cells(header), "|" + "---|" * len(header), *map(_cells, rows)]


def _cells(row: Iterable[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in row) + " |"


def _p50_p95(latency: dict[str, Any]) -> list[Any]:
    return [latency["p50"], latency["p95"]]


def telemetry_markdown(telemetry: dict[str, Any]) -> list[str]:
    return [
        "",
        f"Tracing ({telemetry['requests_per_setting']} `POST /talk` each way, same uploads, "
        "alternating):",
        *table(
            ["tracing", "p50 ms", "p95 ms"],
            [
                ["on", *_p50_p95(telemetry["traced"])],
                ["off", *_p50_p95(telemetry["not traced"])],
            ],
        ),
        "",
        f"Overhead: {telemetry['overhead_ms_p50']} ms p50 (ratio {telemetry['ratio_p50']}); "
        f"{telemetry['spans_per_turn']} spans per turn.",
    ]


def workbook_chart(workbook: dict[str, Any], path: Path) -> None:
    """The operations workbook's layout, drawn from a local run's spans and metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    latency = workbook["latency_ms"]
    names = [n for n in ("talk.stt", "talk.llm", "talk.tts", "POST /talk") if n in latency]
    stages, requests, spoken, summary = axes.flat
    stages.barh(names, [latency[n]["p95"] for n in names], color="#c6d4ea", label="p95")
    stages.barh(names, [latency[n]["p50"] for n in names], color="#4c72b0", label="p50")
    stages.invert_yaxis()
    stages.set_xlabel("ms")
    stages.set_title("Stage latency p50 / p95 (spans)")
    stages.legend(frameon=False)
    codes = {label.split("code=")[1].split(",")[0]: n for label, n in workbook["requests"].items()}
    requests.bar(list(codes), list(codes.values()), color="#dd8452")
    requests.set_title("Requests by code (talk.requests)")
    requests.tick_params(axis="x", labelrotation=20)
    chars = {label.split("=")[-1]: n for label, n in workbook["tts_characters"].items()}
    spoken.bar(list(chars), list(chars.values()), color="#55a868")
    spoken.set_title("Characters spoken, by provider (talk.tts.characters)")
    summary.axis("off")
    summary.set_title("At a glance")
    rows = [
        ("cache hit ratio (talk.cache.lookups)", f"{workbook['cache_hit_ratio']:.0%}"),
        ("cold starts (talk.cold_starts)", f"{workbook['cold_starts']:g}"),
        ("median turn (POST /talk)", f"{workbook['median_turn_ms']:g} ms"),
    ]
    for index, (label, value) in enumerate(rows):
        summary.text(0.02, 0.8 - 0.22 * index, label, fontsize=11)
        summary.text(0.98, 0.8 - 0.22 * index, value, fontsize=13, ha="right", weight="bold")
    figure.suptitle("Talk operations: the workbook's charts, from a local run")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def end_to_end_markdown(end_to_end: dict[str, Any]) -> list[str]:
    providers = end_to_end["providers"]
    return [
        "",
        f"End to end ({end_to_end['requests']} requests per path, providers answering after "
        f"{providers['llm_delay_ms']:g} ms (chat) and {providers['tts_delay_ms']:g} ms "
        "(ElevenLabs)):",
        *table(
            ["path", "p50 ms", "p95 ms"],
            ([name, *_p50_p95(row)] for name, row in end_to_end["paths"].items()),
        ),
        "",
        f"Added by the HTTP + Durable path (p50 against p50): {end_to_end['added_ms_p50']} ms; "
        f"status reads per request: {end_to_end['status_reads_per_request']}.",
        *table(["where the added time goes", "p50 ms"], end_to_end["added_split_ms_p50"].items()),
    ]


def end_to_end_chart(end_to_end: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = end_to_end["added_split_ms_p50"]
    figure, (paths, parts) = plt.subplots(
        2, 1, figsize=(8, 6), gridspec_kw={"height_ratios": [1, 2.4]}
    )
    names = list(end_to_end["paths"])
    paths.barh(names, [end_to_end["paths"][n]["p50"] for n in names], color="#4c72b0")
    paths.set_xlabel("p50 per request (ms)")
    paths.set_title("What the HTTP + Durable path adds to the same pipeline")
    parts.barh(list(split), list(split.values()), color="#dd8452")
    parts.invert_yaxis()
    parts.set_xlabel("added time, p50 per part (ms)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["round_trip"])
    figure, axes = plt.subplots(figsize=(8, 3.6))
    left = [0.0] * len(names)
    for stage, colour in (("stt", "#4c72b0"), ("llm", "#dd8452"), ("tts", "#55a868")):
        values = [results["round_trip"][n][stage]["p50"] for n in names]
        axes.barh(names, values, left=left, color=colour, label=stage.upper())
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_xlabel("warm round trip, p50 per stage (ms)")
    axes.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    axes.set_title(f"Voice round trip on {results['machine']['cores']} CPU cores")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def adversarial_speech(seconds: float) -> dict[str, bytes]:
    """Recordings of `seconds` as the app makes them: varied speech, and the two hardest
    things found to transcribe: one phrase over and over (Whisper's fallback ladder runs
    on every window) and the same speech cut in 0.3 s pieces and shuffled (babble)."""
    from tests.conftest import MONOLOGUE, app_recording, spoken

    pcm, rate = spoken(QUESTIONS[0])
    phrase = np.concatenate([pcm, np.zeros(rate // 4, dtype=np.int16)])
    pieces = [
        piece
        for line in MONOLOGUE
        for piece in np.array_split(
            spoken(line)[0], max(1, len(spoken(line)[0]) * 10 // (3 * rate))
        )
    ]
    np.random.default_rng(0).shuffle(pieces)

    def tiled(samples: np.ndarray) -> bytes:
        repeats = int(np.ceil(seconds * rate / len(samples)))
        return encode(np.tile(samples, repeats)[: int(seconds * rate)], rate, "m4a")

    return {
        "speech": app_recording(seconds),
        "one phrase repeated": tiled(phrase),
        "babble": tiled(np.concatenate(pieces)),
    }


def bench_stt_cost(lengths: list[float]) -> dict[str, Any]:
    """The CPU time one transcription takes (default settings), benign against the hardest
    uploads found, at each length: what one request can make the service spend."""
    import resource

    settings = Settings()

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    transcribe(make_clips(1)[0][1], request_id="warm", settings=settings)
    results: dict[str, Any] = {}
    for seconds in lengths:
        row: dict[str, Any] = {}
        for name, upload in adversarial_speech(seconds).items():
            started = cpu_s()
            try:
                transcribe(upload, request_id="cost", settings=settings)
                outcome = "transcript"
            except TalkError as error:
                outcome = error.code
            row[name] = {"cpu_s": round(cpu_s() - started, 1), "outcome": outcome}
        benign = row["speech"]["cpu_s"] or 0.1
        for entry in row.values():
            entry["times_benign"] = round(entry["cpu_s"] / benign, 1)
        results[f"{seconds:g} s"] = row
    return results


def bench_decoding(clips: list, repeats: int) -> dict[str, Any]:
    """The decoder's guards cost nothing measurable; what costs is running it in a child
    process (a pipe each way, the samples pickled back): both, interleaved, on the same
    uploads, after warm-up."""
    from shared.audio import IsolatedDecoder, decode_audio

    decoder = IsolatedDecoder(workers=1)
    limits = {"max_bytes": 10_000_000, "max_seconds": 120.0}
    try:
        decoder.decode(clips[0][1], **limits)  # start the child
        timings: dict[str, list[float]] = {"in this process": [], "in a child process": []}
        for _ in range(repeats * 5):
            for _, upload, _ in clips:
                for name, decode in (
                    ("in this process", decode_audio),
                    ("in a child process", decoder.decode),
                ):
                    started = time.perf_counter()
                    decode(upload, **limits)
                    timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        decoder.close()
    return {name: percentiles(values) for name, values in timings.items()}


def bench_request_checks(storage: str, repeats: int) -> dict[str, Any]:
    """What establishing the caller and counting its requests adds to each `POST /talk`,
    against the same Azurite and a loopback OpenID Connect issuer: each check alone, and
    storing a request with and without the create-only id claim that now goes with it."""
    import asyncio

    from shared.security.budget import TTS_CHARACTERS as TTS
    from shared.security.budget import Share, budgets
    from shared.security.identity import identify
    from shared.security.ratelimit import admit
    from shared.storage import blob_store, erasure
    from shared.storage.idempotency import IdempotencyRecords, duplicate_key, fingerprint
    from shared.talk_input import parse_talk_input
    from tests.client_framing import okhttp
    from tests.conftest import app_recording
    from tests.oidc import AUDIENCE, SCOPE, Issuer

    upload = make_clips(1)[0][1]
    # A 20 s recording in the app's framing: the size at which the old parser began to fail.
    content_type, form = okhttp(app_recording(20.0), "recording_1.m4a", "audio/mp4")
    timings: dict[str, list[float]] = {}

    def timed(name: str, work: Any) -> None:
        started = time.perf_counter()
        work()
        timings.setdefault(name, []).append((time.perf_counter() - started) * 1000)

    with Issuer() as issuer:
        key_mode = Settings(storage_connection=storage)
        jwt_mode = replace(
            key_mode,
            auth_mode="jwt",
            auth_issuer=issuer.url,
            auth_audience=AUDIENCE,
            auth_required_scope=SCOPE,
        )
        limits = {"rate_limit_per_minute": 10**6, "rate_limit_per_day": 10**6}
        jwt_mode = replace(jwt_mode, **limits, rate_limit_per_address_per_minute=10**6)
        key_mode = replace(key_mode, rate_limit_per_address_per_minute=10**6)
        phone = {"x-forwarded-for": "203.0.113.7:50000"}
        signed_in = {"authorization": f"Bearer {issuer.token('alice')}"}
        store = blob_store(key_mode)
        identify(signed_in, jwt_mode)  # the issuer's keys, read once
        admit(identify(phone, key_mode), key_mode)  # the table, created once
        admit(identify(signed_in, jwt_mode), jwt_mode)
        store.put("bench/warm", b"", "text/plain")

        records = IdempotencyRecords(store)
        owner = "u" + "0" * 32
        tally = budgets(key_mode)
        share = Share("spender", 0.1)

        def duplicate_check(index: int) -> None:
            parsed = parse_talk_input(content_type, form, key_mode)
            print_ = fingerprint(parsed.audio, parsed.fields())
            key = duplicate_key(f"203.0.113.{index % 250}", print_ + str(index))
            claim = records.claim("bench", key, f"b{index}", print_)
            records.confirm("bench", key, claim)

        def werkzeug_form() -> None:
            from werkzeug.formparser import parse_form_data

            environ = {
                "REQUEST_METHOD": "POST",
                "CONTENT_TYPE": content_type,
                "CONTENT_LENGTH": str(len(form)),
                "wsgi.input": io.BytesIO(form),
            }
            parse_form_data(environ, max_form_memory_size=None)

        async def store_request(index: int, claimed: bool) -> None:
            writes = [asyncio.to_thread(store.put, f"bench/{index}/input.m4a", upload, "x")]
            if claimed:
                writes.append(asyncio.to_thread(store.put, f"request-ids/b{index}", b"", "x"))
            await asyncio.gather(*writes)

        for index in range(20 * repeats):  # interleaved
            timed("identify, key mode", lambda: identify(phone, key_mode))
            timed("identify, jwt mode (token checked)", lambda: identify(signed_in, jwt_mode))
            timed(
                "rate limit per address (key mode)",
                lambda: admit(identify(phone, key_mode), key_mode),
            )
            timed(
                "rate limits per caller, minute and day (jwt mode)",
                lambda: admit(identify(signed_in, jwt_mode), jwt_mode),
            )
            timed(
                "store the upload",
                lambda index=index: asyncio.run(store_request(2 * index, False)),
            )
            timed(
                "store the upload and claim its id (concurrently)",
                lambda index=index: asyncio.run(store_request(2 * index + 1, True)),
            )
            timed(
                "parse the app's 20 s upload (multipart, per-part limits)",
                lambda: parse_talk_input(content_type, form, key_mode),
            )
            timed("the same with Werkzeug's form parser, no memory limit", werkzeug_form)
            timed(
                "parse it, then the duplicate check (SHA-256, claim, confirm)",
                lambda index=index: duplicate_check(index),
            )
            timed(
                "erasure tombstone noted, then looked at again (jwt mode)",
                lambda: erasure.raced(
                    erasure.marks(owner, None, key_mode, whole_owner=True), key_mode
                ),
            )
            timed(
                "the same in a conversation (two tombstones)",
                lambda: erasure.raced(
                    erasure.marks(owner, "c" * 32, key_mode, whole_owner=True), key_mode
                ),
            )
            timed(
                "daily budget checked and charged",
                lambda: (tally.check(TTS, 10**12), tally.charge(TTS, 10**12, 40)),
            )
            timed(
                "the same with the caller's share of it",
                lambda: (tally.check(TTS, 10**12, share), tally.charge(TTS, 10**12, 40, share)),
            )
    return {name: percentiles(values) for name, values in timings.items()}


def run(quick: bool, out: Path) -> dict[str, Any]:
    from tools.convert_whisper import bundled_model_dir, convert

    clips = make_clips(1 if quick else len(QUESTIONS))
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "tiny.en.pt"
        convert(bundled_model_dir(), checkpoint)
        results = {
            "machine": machine(),
            "clips": len(clips),
            "repeats": repeats,
            "stt": bench_stt(clips, repeats, checkpoint),
            "stt_models": bench_stt_models(clips, repeats),
            "speech_quality": bench_speech_quality(quick),
            "round_trip": bench_round_trip(clips, repeats, checkpoint),
            "decoding": bench_decoding(clips, repeats),
            "stt_cost": bench_stt_cost([25.0] if quick else [25.0, 60.0, 112.0]),
        }
    # The app's storage in Azure is always there: Azurite starts outside the measurements.
    with running_azurite() as storage:
        results["round_trip"]["repeated question (cache hits)"] = bench_cache_hits(
            clips, repeats, storage
        )
        results["cold_start"] = bench_cold_start(clips[0][1], storage)
        results["request_checks"] = bench_request_checks(storage, repeats)
        for task in ("end_to_end", "telemetry"):
            results[task] = bench_with_stand_ins(
                task, clips, storage, repeats, llm_delay_s=0.3, tts_delay_s=0.2
            )
        results["polling"] = bench_polling(clips[:1], storage, quick)
        results["first_audio"] = bench_first_audio(clips, storage, repeats)
        results["throughput"] = bench_throughput(
            clips, storage, levels=[1, 2] if quick else [1, 2, 4], per_level=2 if quick else 8
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    chart(results, out / "latest.png")
    end_to_end_chart(results["end_to_end"], out / "end_to_end.png")
    workbook_chart(results["telemetry"]["workbook"], out / "workbook.png")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the voice round trip.")
    parser.add_argument("--quick", action="store_true", help="one question, one run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    results = run(args.quick, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
