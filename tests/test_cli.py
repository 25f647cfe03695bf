from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from shared.audio import decode_audio
from tests.conftest import QUESTIONS, SAMPLE, phone_upload, run_cli
from tools.phone_audio import PHONE_FORMATS, encode

JSON_KEYS = {
    "request_id",
    "transcript",
    "text",
    "language",
    "audio_bytes",
    "audio_format",
    "timings_ms",
    "providers",
    "cache",
}


def test_the_sample_gets_a_spoken_reply(tmp_path: Path) -> None:
    done = run_cli(str(SAMPLE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "You said:  What is a good way to relax after a long day?" in done.stdout
    assert "Reply:     " in done.stdout
    mp3 = (tmp_path / "reply.mp3").read_bytes()
    assert decode_audio(mp3, max_bytes=10_000_000, max_seconds=120).duration_s > 0.5


@pytest.mark.parametrize("extension", PHONE_FORMATS)
def test_json_output_for_every_phone_format(extension: str, tmp_path: Path) -> None:
    upload = tmp_path / f"question.{extension}"
    upload.write_bytes(phone_upload(QUESTIONS[2], extension))
    out = tmp_path / "answer.mp3"
    done = run_cli(str(upload), "--json", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == JSON_KEYS
    assert result["transcript"].lower().startswith("how many minutes")
    assert result["text"]
    assert result["language"] == "en"
    assert result["audio_format"] == "mp3"
    assert result["audio_bytes"] == len(out.read_bytes()) > 0
    assert set(result["timings_ms"]) == {"stt", "llm", "tts", "total"}
    assert result["providers"] == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}


def test_text_question_has_a_null_transcript(tmp_path: Path) -> None:
    done = run_cli("--text", "Good morning!", "--voice", "Kim", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["transcript"] is None
    assert result["providers"]["stt"] is None
    assert (tmp_path / "reply.mp3").stat().st_size == result["audio_bytes"]


def _bad_upload(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "says"),
    [
        pytest.param(lambda d: [], "send audio or text", id="no-input"),
        pytest.param(lambda d: [_bad_upload(d, "e.m4a", b"")], "empty", id="empty"),
        pytest.param(
            lambda d: [_bad_upload(d, "r.m4a", random.Random(5000).randbytes(5000))],
            "not audio",
            id="random",
        ),
        pytest.param(
            lambda d: [_bad_upload(d, "t.mp3", b"just some text\n" * 100)],
            "not audio",
            id="text-named-mp3",
        ),
        pytest.param(
            lambda d: [_bad_upload(d, "h.m4a", phone_upload(QUESTIONS[0], "m4a")[:5000])],
            "truncated",
            id="truncated-m4a",
        ),
        pytest.param(
            lambda d: [_bad_upload(d, "s.wav", encode(np.zeros(48_000, np.int16), 16_000, "wav"))],
            "no speech",
            id="silence",
        ),
        pytest.param(lambda d: [str(d / "missing.m4a")], "cannot read", id="missing-file"),
    ],
)
def test_bad_input_exits_2_with_one_line(make_args, says: str, tmp_path: Path) -> None:
    done = run_cli(*make_args(tmp_path), "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and says in lines[0]
    assert not (tmp_path / "reply.mp3").exists()


def test_over_the_limits_from_settings_exits_2(tmp_path: Path) -> None:
    upload = _bad_upload(tmp_path, "q.m4a", phone_upload(QUESTIONS[0], "m4a"))
    (tmp_path / "settings.env").write_text("MAX_AUDIO_BYTES=1000\n")
    done = run_cli(upload, "--env-file", "settings.env", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: audio is {Path(upload).stat().st_size} bytes; the limit is 1000 bytes"
    )


def test_a_broken_setting_exits_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "settings.env").write_text("LLM_MAX_TOKENS=many\n")
    done = run_cli("--text", "hi", "--env-file", "settings.env", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: LLM_MAX_TOKENS must be a whole number, got 'many'"
