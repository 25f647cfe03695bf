"""`python -m talk --stream`: the reply heard as it is made, from the streaming app that
`make serve` serves beside the main one (`POST /talk/stream`), and in-process."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.audio import decode_audio
from talk.remote import StreamEvent, server_sent_events
from tests.conftest import SAMPLE, run_cli
from tests.stubs import Reply, StubServer
from tests.test_serve import banner_value, read_banner, start_server, stop
from tools.azurite import free_port

# Short replies: each test waits for the local model to finish one.
QUICK = {"REPLY_MAX_SENTENCES": "2", "LLM_MAX_TOKENS": "60"}
FIRST_AUDIO = re.compile(r"^first audio after (\d+) ms; total (\d+) ms$", re.MULTILINE)
DONE_KEYS = {
    "request_id",
    "transcript",
    "text",
    "language",
    "audio_bytes",
    "timings_ms",
    "providers",
    "cache",
    "conversation_id",
    "turn_saved",
}


@dataclass
class Servers:
    url: str  # the main app
    stream_url: str  # the streaming app
    key: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    tmp_path = tmp_path_factory.mktemp("serve-stream")
    port = free_port()
    process = start_server(
        tmp_path, port, PYTHON_ENABLE_INIT_INDEXING="1", STREAM_PORT="0", **QUICK
    )
    try:
        banner = read_banner(process)
        [stream_url] = [
            line.rsplit(" at ", 1)[1]
            for line in banner
            if line.startswith("Streaming app (POST /talk/stream) at ")
        ]
        key = banner_value(banner, "Function key")
        yield Servers(f"http://127.0.0.1:{port}", stream_url, key)
    finally:
        if process.poll() is None:
            stop(process)


def stream(url: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m talk --stream` against the streaming app at `url`."""
    return run_cli(*args, "--url", url, "--stream", cwd=cwd, **env)


def assert_mp3(path: Path, size: int) -> None:
    mp3 = path.read_bytes()
    assert len(mp3) == size > 0
    assert decode_audio(mp3, max_bytes=10_000_000, max_seconds=120).duration_s > 0.5


def test_a_spoken_question_streams_into_one_mp3(servers: Servers, tmp_path: Path) -> None:
    out = tmp_path / "f.mp3"
    args = (str(SAMPLE), "--key", servers.key, "--out", str(out))
    done = stream(servers.stream_url, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "You said:  What is a good way to relax after a long day?"
    assert lines[1].startswith("Reply:     ")
    [(first, total)] = FIRST_AUDIO.findall(done.stdout)
    assert 0 < int(first) <= int(total)
    [size] = re.findall(rf"^Wrote {re.escape(str(out))} \((\d+) bytes of MP3\)$", done.stdout, re.M)
    assert_mp3(out, int(size))


def test_json_is_the_done_event_and_the_turn_is_recorded(servers: Servers, tmp_path: Path) -> None:
    key = {"TALK_FUNCTION_KEY": servers.key}
    done = stream(servers.stream_url, "--text", "Hello there!", "--json", cwd=tmp_path, **key)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == DONE_KEYS | {"first_audio_ms"}
    assert result["transcript"] is None
    assert result["providers"] == {"stt": None, "llm": "local", "tts": "piper"}
    assert result["first_audio_ms"] > 0
    assert set(result["timings_ms"]) >= {"stt", "llm", "tts", "first_audio", "total"}
    assert_mp3(tmp_path / "reply.mp3", result["audio_bytes"])
    # The main app answers for the streamed turn as for any other.
    recorded = requests.get(
        f"{servers.url}/talk/{result['request_id']}",
        headers={"x-functions-key": servers.key},
        timeout=30,
    )
    assert recorded.status_code == 200, recorded.text
    assert recorded.json()["text"] == result["text"]


@pytest.mark.parametrize(
    ("make_args", "exit_code", "says"),
    [
        pytest.param(
            lambda s, d: [s.stream_url, "--text", "Hi", "--key", "wrong"],
            1,
            "error: Backend error (401): Unauthorized",
            id="wrong-key",
        ),
        pytest.param(
            lambda s, d: [s.stream_url, _written(d / "n.m4a", b"not audio " * 100), "--key", s.key],
            2,
            "error: Backend error (422): the data is not audio in a supported format",
            id="not-audio",
        ),
        pytest.param(
            lambda s, d: [s.url, "--text", "Hi", "--key", s.key],
            1,
            "error: Backend error (404): {url} has no /talk/stream "
            "(the streaming app has an address of its own)",
            id="the-main-app",
        ),
    ],
)
def test_an_error_before_the_first_byte_is_one_line(
    servers: Servers, tmp_path: Path, make_args, exit_code: int, says: str
) -> None:
    url, *args = make_args(servers, tmp_path)
    done = stream(url, *args, cwd=tmp_path)
    assert done.returncode == exit_code
    assert done.stderr.strip() == says.format(url=servers.url)
    assert done.stdout == ""
    assert not (tmp_path / "reply.mp3").exists()


def _written(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


META = _sse("meta", {"request_id": "r1", "transcript": None, "language": "en"})
SAID = _sse("text", {"seq": 1, "text": "Hello."}) + _sse(
    "audio", {"seq": 1, "audio_base64": base64.b64encode(b"\xff\xf3" * 50).decode()}
)


@pytest.mark.parametrize(
    ("pieces", "says"),
    [
        pytest.param(
            [META, SAID, _sse("error", {"code": "provider_error", "error": "elevenlabs: 503"})],
            "error: provider_error: elevenlabs: 503",
            id="error-event",
        ),
        pytest.param(
            [META, SAID], "error: incomplete: the stream ended before the reply did", id="no-done"
        ),
        pytest.param(
            [META, SAID, None],
            "error: incomplete: the connection broke before the reply ended",
            id="dropped",
        ),
    ],
)
def test_an_error_after_the_first_byte_is_one_line(
    tmp_path: Path, pieces: list[bytes | None], says: str
) -> None:
    sse = {"Content-Type": "text/event-stream"}
    answer = Reply(200, headers=sse, pieces=[(0.0, piece) for piece in pieces])
    with StubServer(lambda request: answer) as backend:
        done = stream(backend.url, "--text", "Hi", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == says
    assert done.stdout == "Reply:     Hello.\n"
    assert (tmp_path / "reply.mp3").read_bytes() == b"\xff\xf3" * 50  # what was said


def test_in_process_streaming(tmp_path: Path) -> None:
    done = run_cli("--text", "Good morning!", "--stream", cwd=tmp_path, **QUICK)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Reply:     ")
    assert "  first_audio " in done.stdout  # the Timings line
    [(first, total)] = FIRST_AUDIO.findall(done.stdout)
    assert 0 < int(first) <= int(total)
    [size] = re.findall(r"^Wrote reply.mp3 \((\d+) bytes of MP3\)$", done.stdout, re.M)
    assert_mp3(tmp_path / "reply.mp3", int(size))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param([], "error: send audio or text", id="no-input"),
        pytest.param(
            ["--text", "Hi", "--conversation-id", "c1"],
            "error: --stream keeps no conversation in-process: use it with --url",
            id="conversation",
        ),
    ],
)
def test_in_process_streaming_refuses_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    done = run_cli(*args, "--stream", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == says
    assert not (tmp_path / "reply.mp3").exists()


def test_in_process_streaming_refuses_a_budgeted_remote_stt(tmp_path: Path) -> None:
    """Nothing is counted in-process: a daily budget on the paid STT would not hold."""
    done = run_cli(
        "--text",
        "Hi",
        "--stream",
        cwd=tmp_path,
        STT_PROVIDER="huggingface",
        STT_DAILY_SECONDS_BUDGET="60",
        AzureWebJobsStorage="UseDevelopmentStorage=true",
        HF_API_TOKEN="hf_test_token_0123456789abcdef",
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --stream without --url counts nothing against STT_DAILY_SECONDS_BUDGET: "
        "use --url, or run without the budget"
    )


def test_server_sent_events_are_read_as_the_standard_has_them() -> None:
    lines = [
        b": a comment",
        b"event: text",
        b'data: {"seq": 1,',
        b'data:  "text": "Hyv\xc3\xa4\xc3\xa4 y\xc3\xb6t\xc3\xa4."}',
        b"id: 7",
        b"",
        b"",
        b'data: {"n": 2}',
        b"",
        b"event: done",
    ]
    assert list(server_sent_events(lines)) == [
        StreamEvent("text", {"seq": 1, "text": "Hyvää yötä."}),
        StreamEvent("message", {"n": 2}),
    ]
