"""First audio: `POST /talk/stream` against JSON `POST /talk`, side by side in one run.

The same uploads (the bench's spoken questions, encoded as the app uploads them) go to both
paths, interleaved (the order alternating), after warm-up, over real HTTP: what `make serve`
runs, the main app's front with the Durable stand-in and Azurite, and the streaming app's
front (`stream_app.py`) beside it (both with TCP_NODELAY, as Kestrel sends). For JSON
`/talk` the time is to the whole answer; for the stream, to the first `audio` event (a
client can start playing) and to `done`.

Two sets of providers, each in a fresh process:

- loopback stand-ins that stream as the real ones do. The chat API (OpenAI-compatible) sends
  its first token after 250 ms, then one every 20 ms; asked for a whole completion
  (`"stream": false`) it answers after the same total time. ElevenLabs: speech at
  15 characters a second, made at 10x real time; `/stream` sends its first piece after
  150 ms and the rest as it is made (a quarter second of audio at a time), the whole call
  answers when all of it is made (150 ms + a tenth of the speech's length). The MP3 is real
  `mp3_22050_32` (LAME, a tone as long as the text's speech);
- the embedded models (faster-whisper `base`, SmolLM2 via llama.cpp, greedy, and Piper).

The first audio's time is split from the client's arrival times of the `meta`, first `text`
and first `audio` events and the `done` event's `timings_ms["stt"]`: accept and HTTP (to
`meta`, less STT), STT, the LLM to the first sentence (`meta` to the first `text`) and the
TTS's first piece (the first `text` to the first `audio`).

Then each streamed reply's audio (its `audio` events joined) is decoded (PyAV) and its
length compared with the same reply text spoken whole by the same voice.

Run alone: `PYTHONPATH=. .venv/bin/python -m bench.first_audio` (Azurite started for it);
`make bench` runs it as its `first_audio` section.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import io
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.end_to_end import percentiles, stand_in_settings

# The chat stand-in's reply: three sentences (REPLY_MAX_SENTENCES), one token a word.
REPLY = (
    "It is lovely to hear from you. A short walk and a cup of tea help most days end "
    "well. Try to put your phone away an hour before bed, and let the day go."
)
CHAT_FIRST_TOKEN_S = 0.25
CHAT_PER_TOKEN_S = 0.02
TTS_FIRST_PIECE_S = 0.15
SPEECH_CHARS_PER_S = 15.0  # about 160 words a minute
TTS_SPEED = 10.0  # seconds of speech made per second
PIECE_S = 0.25  # audio per streamed piece after the first
MP3_RATE, MP3_KBPS = 22_050, 32
KEY = "bench-function-key-0123456789abcdef"
TARGETS_MS = {"loopback providers": 900, "embedded models": 1000}
COMMON_ENV = {
    # Every request takes the whole path: nothing from the cache, the same upload sent
    # again is a new turn, and the limits never refuse the bench.
    "LLM_CACHE": "off",
    "TTS_CACHE": "off",
    "DUPLICATE_WINDOW_SECONDS": "0",
    "RATE_LIMIT_PER_ADDRESS_PER_MINUTE": "1000000",
    "PYTHON_ENABLE_INIT_INDEXING": "1",  # the streaming app's setting, as in Azure
    # The whole answer, however long a loaded machine takes, rather than a 504 to follow.
    "TALK_WAIT_SECONDS": "230",
}


# --- the provider stand-ins ---------------------------------------------------------------


def chat_tokens(text: str) -> list[str]:
    """The reply as the stand-in streams it: a token a word, with its leading space."""
    return re.findall(r"\s*\S+", text)


def _chat_chunk(content: str | None = None, *, finish: str | None = None, usage: int = 0) -> bytes:
    if usage:
        chunk: dict[str, Any] = {"choices": [], "usage": {"total_tokens": usage}}
    else:
        delta = {"content": content} if content is not None else {}
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chat_answer(request: Any) -> Any:
    """The chat API: a token stream (first token after 250 ms, then 20 ms each) when asked
    for one, else the whole completion after the stream's whole time."""
    from tools.devhost.loopback import Reply

    tokens = chat_tokens(REPLY)
    usage = 40 + len(tokens)
    if isinstance(request.body, dict) and request.body.get("stream"):
        pieces = [(CHAT_FIRST_TOKEN_S, _chat_chunk(tokens[0]))]
        pieces += [(CHAT_PER_TOKEN_S, _chat_chunk(token)) for token in tokens[1:]]
        pieces += [
            (0.0, _chat_chunk(finish="stop")),
            (0.0, _chat_chunk(usage=usage)),
            (0.0, b"data: [DONE]\n\n"),
        ]
        return Reply(200, pieces=pieces, headers={"Content-Type": "text/event-stream"})
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": len(tokens), "total_tokens": usage},
    }
    reply = Reply.json(200, completion)
    reply.delay_s = CHAT_FIRST_TOKEN_S + CHAT_PER_TOKEN_S * (len(tokens) - 1)
    return reply


@functools.lru_cache(maxsize=64)
def spoken_mp3(text: str) -> bytes:
    """Real `mp3_22050_32` as long as `text` takes to say (a tone, wavering as a voice)."""
    from shared.tts.mp3 import encode_mp3

    seconds = max(0.3, len(text) / SPEECH_CHARS_PER_S)
    t = np.arange(int(seconds * MP3_RATE)) / MP3_RATE
    pitch = 180 + 40 * np.sin(2 * np.pi * 3 * t)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / MP3_RATE) * 32767
    return encode_mp3(wave.astype(np.int16).tobytes(), MP3_RATE, MP3_KBPS)


def speech_answer(request: Any) -> Any:
    """ElevenLabs: `/stream` sends the first piece after 150 ms and the rest as it is made
    (10x real time); the whole call answers when all of it is made."""
    from tools.devhost.loopback import Reply

    text = request.body.get("text", "") if isinstance(request.body, dict) else ""
    mp3 = spoken_mp3(text)
    made_s = len(text) / SPEECH_CHARS_PER_S / TTS_SPEED
    headers = {"Content-Type": "audio/mpeg"}
    if not request.path.endswith("/stream"):
        return Reply(200, mp3, headers, delay_s=TTS_FIRST_PIECE_S + made_s)
    size = int(PIECE_S * MP3_KBPS * 1000 / 8)  # bytes in a quarter second at 32 kbps
    chunks = [mp3[at : at + size] for at in range(0, len(mp3), size)]
    pace = made_s / max(1, len(chunks) - 1) if len(chunks) > 1 else 0.0
    pieces = [(TTS_FIRST_PIECE_S, chunks[0]), *((pace, chunk) for chunk in chunks[1:])]
    return Reply(200, pieces=pieces, headers=headers)


@contextlib.contextmanager
def providers(kind: str) -> Iterator[dict[str, Any]]:
    """The providers of `kind` set up in this process's environment, as an operator would;
    yields their description."""
    if kind == "embedded models":
        os.environ.update(
            {**COMMON_ENV, "LLM_PROVIDER": "local", "TTS_PROVIDER": "piper", "LLM_TEMPERATURE": "0"}
        )
        yield {"stt": "faster-whisper base", "llm": "SmolLM2 (llama.cpp, greedy)", "tts": "Piper"}
        return
    from tools.devhost.loopback import LoopbackServer

    with (
        LoopbackServer(chat_answer, record=False) as chat,
        LoopbackServer(speech_answer, record=False) as speech,
    ):
        os.environ.update(
            {
                **COMMON_ENV,
                **stand_in_settings(chat.url, speech.url),
                "ELEVENLABS_OUTPUT_FORMAT": "mp3_22050_32",
            }
        )
        yield {
            "stt": "faster-whisper base",
            "llm": f"chat stand-in: first token {CHAT_FIRST_TOKEN_S * 1000:g} ms, then "
            f"{CHAT_PER_TOKEN_S * 1000:g} ms a token ({len(chat_tokens(REPLY))} tokens); "
            "whole completion after the same time",
            "tts": f"ElevenLabs stand-in: first piece {TTS_FIRST_PIECE_S * 1000:g} ms, speech "
            f"at {SPEECH_CHARS_PER_S:g} chars/s made at {TTS_SPEED:g}x real time; "
            "whole call after all of it is made",
        }


# --- the two paths ------------------------------------------------------------------------


@contextlib.contextmanager
def serving() -> Iterator[tuple[Callable[[bytes], dict], Callable[[bytes], dict]]]:
    """Both Function Apps as `make serve` runs them; yields a JSON `/talk` client and a
    `/talk/stream` client, each posting an upload as the app does."""
    from tools.devhost.durable import app_durable_host
    from tools.devhost.functions import FunctionsHttpHost

    durable = app_durable_host()
    main = FunctionsHttpHost(durable, key=KEY, master_key=KEY)
    streaming = FunctionsHttpHost(durable, key=KEY, master_key=KEY, entry="stream_app")
    for front in (main, streaming):
        # TCP_NODELAY, as the Functions host's Kestrel sends: without it the stream's first
        # chunk (the headers went just before) waits on the client's delayed ACK, and `meta`
        # alone arrives about 40 ms late (what follows does not: the turn goes on meanwhile).
        front.server.RequestHandlerClass.disable_nagle_algorithm = True
    headers = {"x-functions-key": KEY, "X-Forwarded-For": "203.0.113.7:50000"}
    with durable, main, streaming, requests.Session() as session:

        def whole(upload: bytes) -> dict[str, Any]:
            started = time.perf_counter()
            response = session.post(
                f"{main.url}/talk",
                files={"audio": ("recording.m4a", upload, "audio/mp4")},
                headers={**headers, "Accept": "application/json"},
                timeout=120,
            )
            response.raise_for_status()
            answer = response.json()
            answer["client_ms"] = (time.perf_counter() - started) * 1000
            return answer

        def streamed(upload: bytes) -> dict[str, Any]:
            started = time.perf_counter()
            events: list[tuple[str, dict[str, Any], float]] = []
            with session.post(
                f"{streaming.url}/talk/stream",
                files={"audio": ("recording.m4a", upload, "audio/mp4")},
                headers={**headers, "Accept": "text/event-stream"},
                stream=True,
                timeout=120,
            ) as response:
                response.raise_for_status()
                buffer = b""
                for data in response.iter_content(chunk_size=None):
                    at = (time.perf_counter() - started) * 1000
                    buffer += data
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        events.append((*_sse_event(block), at))
            return _stream_outcome(events)

        yield whole, streamed


def _sse_event(block: bytes) -> tuple[str, dict[str, Any]]:
    name, data = "message", []
    for line in block.decode().splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return name, json.loads("\n".join(data))


def _stream_outcome(events: list[tuple[str, dict[str, Any], float]]) -> dict[str, Any]:
    """The client's times of the events that matter (ms), the reply's audio and `done`."""
    first: dict[str, float] = {}
    audio = []
    done: dict[str, Any] = {}
    for name, data, at in events:
        first.setdefault(name, at)
        if name == "audio":
            audio.append(base64.b64decode(data["audio_base64"]))
        elif name == "done":
            done = data
        elif name == "error":
            raise RuntimeError(f"/talk/stream failed: {data}")
    if not done or "audio" not in first or "text" not in first:
        raise RuntimeError(f"/talk/stream gave no whole reply: {[e[0] for e in events]}")
    return {"at": first, "mp3": b"".join(audio), "done": done}


def mp3_seconds(mp3: bytes) -> float:
    """How long `mp3` plays, decoded (PyAV)."""
    import av

    with av.open(io.BytesIO(mp3), format="mp3") as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


# --- the measurement (in a fresh process) -------------------------------------------------


def first_audio(job: dict[str, Any]) -> dict[str, Any]:
    with providers(job["providers"]) as described, other_work() as others:
        result = _measure(job, [Path(path).read_bytes() for path in job["clips"]])
    target = TARGETS_MS[job["providers"]]
    first = result["stream_first_audio_ms"]["p50"]
    return {
        "providers": described,
        **result,
        "target_first_audio_p50_ms": target,
        "first_audio_target_met": first <= target,
        "half_of_json_met": result["first_audio_over_json_p50"] <= 0.5,
        "other_work": others,
    }


@contextlib.contextmanager
def other_work() -> Iterator[dict[str, float]]:
    """How busy the machine was with other work meanwhile: the CPU time of every other
    process (`/proc/stat` less this process's own; Azurite's too), in cores, and the load
    average."""
    import resource

    def busy_s() -> float:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def own_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    found: dict[str, float] = {"load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    started, busy, own = time.perf_counter(), busy_s(), own_s()
    yield found
    wall = time.perf_counter() - started
    found["other_processes_cores"] = round(((busy_s() - busy) - (own_s() - own)) / wall, 2)
    found["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)


def _measure(job: dict[str, Any], uploads: list[bytes]) -> dict[str, Any]:
    with serving() as (whole, streamed):
        for upload in uploads[:1]:  # warm up every model and connection on both paths
            whole(upload)
            streamed(upload)
        json_ms, first_ms, done_ms, server_first_ms = [], [], [], []
        parts: dict[str, list[float]] = {}
        replies: list[tuple[dict[str, Any], dict[str, Any]]] = []
        turn = 0
        for _ in range(job["repeats"]):
            for upload in uploads:  # interleaved, the order alternating
                turn += 1
                if turn % 2:
                    answer, stream = whole(upload), streamed(upload)
                else:
                    stream, answer = streamed(upload), whole(upload)
                json_ms.append(answer["client_ms"])
                at, timings = stream["at"], stream["done"]["timings_ms"]
                first_ms.append(at["audio"])
                done_ms.append(at["done"])
                server_first_ms.append(timings["first_audio"])
                split = {
                    "accept, upload and HTTP (to meta, less STT)": at["meta"] - timings["stt"],
                    "STT": timings["stt"],
                    "LLM to the first sentence (meta to first text)": at["text"] - at["meta"],
                    "TTS first piece (first text to first audio)": at["audio"] - at["text"],
                }
                for name, value in split.items():
                    parts.setdefault(name, []).append(value)
                replies.append((answer, stream))
        lengths = _lengths(replies)
    json_p, first_p = percentiles(json_ms), percentiles(first_ms)
    return {
        "requests": len(json_ms),
        "json_talk_ms": json_p,
        "stream_first_audio_ms": first_p,
        "stream_done_ms": percentiles(done_ms),
        "server_first_audio_ms": percentiles(server_first_ms),
        "first_audio_over_json_p50": round(first_p["p50"] / json_p["p50"], 2),
        "done_over_json_p50": round(statistics.median(done_ms) / json_p["p50"], 2),
        "split_ms_p50": {name: round(statistics.median(v), 1) for name, v in parts.items()},
        "audio_length": lengths,
    }


def _lengths(replies: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Each distinct streamed reply's audio against the same text spoken whole by the same
    voice (after the timed requests), and whether `/talk` gave the same reply."""
    from shared.config import get_settings
    from shared.providers import default_secrets
    from shared.tts import get_synthesizer

    settings = get_settings()
    ratios, seen = [], {}
    same_text = 0
    for answer, stream in replies:
        done = stream["done"]
        same_text += answer["text"] == done["text"]
        if done["text"] in seen:
            continue
        voice = get_synthesizer(settings, default_secrets(settings), done["language"])
        spoken_whole = voice.synthesize(done["text"], voice=None, language=done["language"])
        streamed_s, whole_s = mp3_seconds(stream["mp3"]), mp3_seconds(spoken_whole)
        seen[done["text"]] = (streamed_s, whole_s)
        ratios.append(streamed_s / whole_s)
    return {
        "replies_compared": len(ratios),
        "streamed_over_whole_min": round(min(ratios), 3),
        "streamed_over_whole_max": round(max(ratios), 3),
        "within_5_percent": f"{sum(abs(r - 1) <= 0.05 for r in ratios)}/{len(ratios)}",
        "streamed_s_p50": round(statistics.median(s for s, _ in seen.values()), 2),
        "whole_s_p50": round(statistics.median(w for _, w in seen.values()), 2),
        "same_reply_as_json_talk": f"{same_text}/{len(replies)}",
    }


# --- from the bench -----------------------------------------------------------------------


def bench_first_audio(clips: list, storage: str, repeats: int) -> dict[str, Any]:
    """Both sets of providers, each in a fresh process, on the same uploads."""
    from bench.run import _child, _clip_files

    with tempfile.TemporaryDirectory() as folder:
        files = _clip_files(Path(folder), clips)
        return {
            kind: _child(
                "first_audio", {"clips": files, "repeats": repeats, "providers": kind}, storage
            )
            for kind in TARGETS_MS
        }


def first_audio_markdown(results: dict[str, Any]) -> list[str]:
    from bench.run import table

    lines = ["", "First audio: JSON `POST /talk` against `POST /talk/stream`, same uploads:"]
    lines += table(
        [
            "providers",
            "requests",
            "/talk whole answer p50 / p95 ms",
            "/talk/stream first audio p50 / p95 ms",
            "stream done p50 / p95 ms",
            "first audio / /talk (p50)",
            "target p50 ms",
        ],
        (
            [
                kind,
                row["requests"],
                _pair(row["json_talk_ms"]),
                _pair(row["stream_first_audio_ms"]),
                _pair(row["stream_done_ms"]),
                row["first_audio_over_json_p50"],
                row["target_first_audio_p50_ms"],
            ]
            for kind, row in results.items()
        ),
    )
    kinds = list(results)
    others = (f"{kind} {results[kind]['other_work']['other_processes_cores']}" for kind in kinds)
    cores = os.cpu_count()
    lines += ["", f"Other processes' CPU meanwhile (cores of {cores}): {'; '.join(others)}."]
    lines += table(
        ["first audio, split (p50 ms)", *kinds],
        (
            [part, *(results[kind]["split_ms_p50"][part] for kind in kinds)]
            for part in results[kinds[0]]["split_ms_p50"]
        ),
    )
    lines += table(
        ["streamed audio against the reply spoken whole", *kinds],
        (
            [label, *(results[kind]["audio_length"][key] for kind in kinds)]
            for label, key in (
                ("replies compared", "replies_compared"),
                ("streamed / whole, min", "streamed_over_whole_min"),
                ("streamed / whole, max", "streamed_over_whole_max"),
                ("within 5 %", "within_5_percent"),
                ("same reply text as /talk", "same_reply_as_json_talk"),
            )
        ),
    )
    return lines


def _pair(latency: dict[str, float]) -> str:
    return f"{latency['p50']} / {latency['p95']}"


def main() -> None:
    from bench.run import QUESTIONS, machine, make_clips
    from tools.azurite import running_azurite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=len(QUESTIONS), help="questions to ask")
    parser.add_argument("--repeats", type=int, default=3, help="times each is asked")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    clips = make_clips(args.clips)
    with running_azurite() as storage:
        results = {"machine": machine(), **bench_first_audio(clips, storage, args.repeats)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    info = results.pop("machine")
    print(f"Machine: {info['cpu']}, {info['cores']} cores; {len(clips)} questions x {args.repeats}")
    print("\n".join(first_audio_markdown(results)))


if __name__ == "__main__":
    main()
