"""`python -m talk --url` against the app served over real HTTP, as the smoke test uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, run_cli
from tests.functions_server import FUNCTION_KEY, FunctionsServer


@pytest.fixture
def server(app_settings, host):
    with FunctionsServer(host) as functions:
        yield functions


def test_a_spoken_question_like_the_android_app(server, tmp_path: Path) -> None:
    done = run_cli(
        str(SAMPLE), "--url", server.url, "--key", FUNCTION_KEY, "--json", "-v", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["transcript"].startswith("What is a good way to relax")
    assert result["providers"] == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}
    mp3 = (tmp_path / "reply.mp3").read_bytes()
    assert result["audio_bytes"] == len(mp3)
    assert "Backend response code: 200" in done.stderr
    assert f"MP3 bytes={len(mp3)}" in done.stderr


def test_a_written_question_with_the_key_in_the_environment(server, tmp_path: Path) -> None:
    done = run_cli(
        "--text",
        "Hello!",
        "--url",
        server.url,
        "--json",
        cwd=tmp_path,
        TALK_FUNCTION_KEY=FUNCTION_KEY,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["transcript"] is None


def test_a_wrong_key_is_a_failure(server, tmp_path: Path) -> None:
    done = run_cli("--text", "Hi", "--url", server.url, "--key", "wrong", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: Backend error (401): Unauthorized"


def test_bad_audio_is_bad_input(server, tmp_path: Path) -> None:
    upload = tmp_path / "notes.m4a"
    upload.write_bytes(b"not audio " * 100)
    done = run_cli(str(upload), "--url", server.url, "--key", FUNCTION_KEY, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: Backend error (422): the data is not audio in a supported format"
    )


def test_an_unreachable_backend_is_one_line(tmp_path: Path) -> None:
    done = run_cli("--text", "Hi", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot reach http://127.0.0.1:9: ConnectionError"
