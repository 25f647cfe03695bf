"""Hostile and broken input through the real `/talk` function and `python -m talk`.

Every case must end in its 4xx with `{"error", "request_id"}` (or, where the input is fine
but oddly named, a normal answer): never a 500, never a traceback.
"""

from __future__ import annotations

import functools
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata

from shared.audio import decode_audio
from shared.config import Settings
from shared.errors import TalkError
from shared.talk_input import parse_talk_input
from tests.conftest import QUESTIONS, phone_upload, run_cli, zero_frame_wav
from tests.test_functions import android_upload, body_of, post, request_blobs
from tools.phone_audio import encode

LIMITS = {"max_bytes": 10_000_000, "max_seconds": 120.0}


def _noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _m4a() -> bytes:
    return phone_upload(QUESTIONS[0], "m4a")


def _corrupt_moov() -> bytes:
    data = bytearray(_m4a())
    at = data.find(b"moov")
    data[at + 8 : at + 200] = bytes(192)
    return bytes(data)


def _noise_in_the_middle() -> bytes:
    data = bytearray(_m4a())
    data[100:2000] = _noise(1900, 7)
    return bytes(data)


def _absurd_wav(offset_in_fmt: int, fmt: str, value: int) -> bytes:
    data = bytearray(encode(np.zeros(16_000, np.int16), 16_000, "wav"))
    struct.pack_into(fmt, data, data.find(b"fmt ") + 8 + offset_in_fmt, value)
    return bytes(data)


@functools.cache
def _ten_minutes_of_silence(extension: str) -> bytes:
    """Compresses to a few KB and decodes to 10 minutes: a decompression bomb."""
    return encode(np.zeros(16_000 * 600, np.int16), 16_000, extension)


def _silence() -> bytes:
    return encode(np.zeros(48_000, np.int16), 16_000, "m4a")


def _white_noise() -> bytes:
    samples = np.random.default_rng(3).normal(0, 0.2, 48_000).clip(-1, 1) * 32767
    return encode(samples.astype(np.int16), 16_000, "m4a")


def _multipart(fields: dict) -> tuple[bytes, str]:
    return encode_multipart_formdata(fields)


def _nested_json(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


Case = tuple[Callable[[], tuple[bytes, str | None]], dict[str, str], int, str]

CASES: dict[str, Case] = {
    # bodies and content types
    "empty body, no type": (lambda: (b"", None), {}, 415, "not supported"),
    "empty JSON object": (lambda: (b"{}", "application/json"), {}, 400, "send audio"),
    "text/plain": (lambda: (b"hello", "text/plain"), {}, 415, "not supported"),
    "text/html": (lambda: (b"<p>hi</p>", "text/html"), {}, 415, "not supported"),
    # random bytes with every audio content type
    **{
        f"random bytes as {kind}": (
            lambda kind=kind: (_noise(8192, 11), kind),
            {},
            422,
            "not audio",
        )
        for kind in (
            "audio/mp4",
            "audio/ogg",
            "audio/mpeg",
            "audio/wav",
            "audio/webm",
            "audio/3gpp",
            "audio/flac",
            "audio/aac",
        )
    },
    # broken containers
    "truncated m4a": (lambda: android_upload(_m4a()[:4000]), {}, 422, "truncated"),
    "m4a with a zeroed moov": (lambda: android_upload(_corrupt_moov()), {}, 422, "no audio"),
    "m4a with noise inside": (lambda: android_upload(_noise_in_the_middle()), {}, 422, "damaged"),
    "wav with zero frames": (lambda: (zero_frame_wav(), "audio/wav"), {}, 400, "no samples"),
    "wav with sample rate 0": (lambda: (_absurd_wav(4, "<I", 0), "audio/wav"), {}, 422, "damaged"),
    "wav with 65535 channels": (
        lambda: (_absurd_wav(2, "<H", 65535), "audio/wav"),
        {},
        422,
        "damaged",
    ),
    "wav with 0 bits per sample": (
        lambda: (_absurd_wav(14, "<H", 0), "audio/wav"),
        {},
        422,
        "damaged",
    ),
    # limits
    "10 minutes of FLAC silence": (
        lambda: android_upload(_ten_minutes_of_silence("flac")),
        {},
        413,
        "limit",
    ),
    "10 minutes of Opus silence (no declared length)": (
        lambda: (_ten_minutes_of_silence("ogg"), "audio/ogg"),
        {},
        413,
        "limit",
    ),
    # no speech
    "silence": (lambda: android_upload(_silence()), {}, 422, "no speech"),
    "white noise": (lambda: android_upload(_white_noise()), {}, 422, "no speech"),
    # multipart
    "multipart without audio or text": (
        lambda: _multipart({"voice": "Kim"}),
        {},
        400,
        "send audio",
    ),
    "multipart with two audio parts": (
        lambda: _multipart(
            [("audio", ("a.m4a", _m4a(), "audio/mp4")), ("audio", ("b.m4a", _m4a(), "audio/mp4"))]
        ),
        {},
        400,
        "one audio part",
    ),
    "multipart audio field that is not a file": (
        lambda: _multipart({"audio": "not a file"}),
        {},
        400,
        "must be a file",
    ),
    "multipart without a boundary": (
        lambda: (b"--x\r\n\r\n", "multipart/form-data"),
        {},
        400,
        "malformed",
    ),
    "multipart cut in the middle": (
        lambda: (lambda b, t: (b[: len(b) // 2], t))(*android_upload(_m4a())),
        {},
        400,
        "malformed",
    ),
    # JSON
    "JSON array": (lambda: (b"[1, 2]", "application/json"), {}, 400, "must be an object"),
    "JSON string": (lambda: (b'"hi"', "application/json"), {}, 400, "must be an object"),
    "JSON number": (lambda: (b"42", "application/json"), {}, 400, "must be an object"),
    "JSON nested 30000 deep": (
        lambda: (_nested_json(30_000), "application/json"),
        {},
        400,
        "malformed",
    ),
    "JSON with non-string text": (
        lambda: (b'{"text": {"a": 1}}', "application/json"),
        {},
        400,
        "must be a string",
    ),
    "JSON with 1 MB of text": (
        lambda: (json.dumps({"text": "a" * 1_000_000}).encode(), "application/json"),
        {},
        413,
        "limit",
    ),
    "JSON with invalid UTF-8": (
        lambda: (b'{"text": "\xff\xfe"}', "application/json"),
        {},
        400,
        "UTF-8",
    ),
    "JSON with a bogus language": (
        lambda: (b'{"text": "hi", "language": "english!!"}', "application/json"),
        {},
        400,
        "language",
    ),
    "JSON with a huge system prompt": (
        lambda: (
            json.dumps({"text": "hi", "system_prompt": "x" * 5_000}).encode(),
            "application/json",
        ),
        {},
        413,
        "system_prompt",
    ),
    # headers
    "Accept that allows neither JSON nor MP3": (
        lambda: (b'{"text": "hi"}', "application/json"),
        {"Accept": "image/png"},
        406,
        "Accept",
    ),
    "Idempotency-Key that is far too long": (
        lambda: (b'{"text": "hi"}', "application/json"),
        {"Idempotency-Key": "k" * 1000},
        400,
        "Idempotency-Key",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_hostile_request_gets_its_4xx(case: str, app_settings, host) -> None:
    make, headers, status, says = CASES[case]
    body, content_type = make()
    response = post(host, body, content_type, **headers)
    assert response.status_code == status, response.get_body()[:300]
    answer = body_of(response)
    assert says in answer["error"]
    assert len(answer["request_id"]) == 32
    assert "Traceback" not in response.get_body().decode()


@pytest.mark.parametrize(
    "filename", ["../../x.m4a", "a" * 5000 + ".m4a", "bad\x00\r\nname.m4a", "…名前.M4A", ""]
)
def test_a_hostile_file_name_never_reaches_storage(filename: str, app_settings, host) -> None:
    audio = _m4a()
    body, content_type = encode_multipart_formdata({"audio": (filename, audio, "audio/mp4")})
    response = post(host, body, content_type)
    assert response.status_code == 200, response.get_body()[:300]
    rid = body_of(response)["request_id"]
    assert request_blobs(rid)["input.m4a"] == audio  # the name is ours, not the client's


def test_an_unknown_voice_gets_the_default_voice(app_settings, host) -> None:
    response = post(host, b'{"text": "Hello!", "voice": "Nobody"}', "application/json")
    assert response.status_code == 200


# --- the command --------------------------------------------------------------------------

CLI_CASES = {
    "random.m4a": lambda: _noise(5000, 5),
    "truncated.m4a": lambda: _m4a()[:4000],
    "zero-frames.wav": zero_frame_wav,
    "bomb.flac": lambda: _ten_minutes_of_silence("flac"),
    "silence.m4a": _silence,
    "absurd.wav": lambda: _absurd_wav(2, "<H", 65535),
    "empty.mp3": lambda: b"",
}


@pytest.mark.parametrize("name", CLI_CASES)
def test_the_command_refuses_hostile_files_in_one_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(CLI_CASES[name]())
    done = run_cli(str(path), "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: ")


# --- properties ---------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "audio/mp4",
        "audio/ogg",
        "text/plain",
        "application/json; charset=utf-16",
    ]
)
SMALL = Settings(max_audio_bytes=4096, max_text_chars=100)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content_type=CONTENT_TYPES, body=st.binary(max_size=6000))
def test_the_request_parser_only_ever_raises_typed_errors(content_type, body) -> None:
    try:
        parsed = parse_talk_input(content_type, body, SMALL)
    except TalkError as error:
        assert 400 <= error.status < 500
        return
    assert parsed.audio is not None or (parsed.text and parsed.text.strip())
    assert parsed.audio is None or len(parsed.audio) <= SMALL.max_audio_bytes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.dictionaries(
        st.sampled_from(["text", "prompt", "voice", "language", "system_prompt", "other"]),
        st.one_of(st.text(max_size=200), st.integers(), st.none(), st.lists(st.integers())),
    )
)
def test_any_json_object_is_parsed_or_refused_cleanly(fields) -> None:
    body = json.dumps(fields).encode()
    try:
        parse_talk_input("application/json", body, SMALL)
    except TalkError as error:
        assert error.status in (400, 413)


@functools.cache
def _valid_uploads() -> list[bytes]:
    return [phone_upload(QUESTIONS[0], extension) for extension in ("m4a", "ogg", "wav", "mp3")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 3),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=20),
)
def test_the_decoder_survives_cut_and_corrupted_uploads(which, cut, flips) -> None:
    data = bytearray(_valid_uploads()[which])
    data = data[: max(1, int(len(data) * cut))] if cut < 1 else data
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    try:
        decoded = decode_audio(bytes(data), **LIMITS)
    except TalkError as error:
        assert 400 <= error.status < 500
        return
    assert decoded.samples.dtype == np.float32
    assert decoded.duration_s <= LIMITS["max_seconds"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_the_decoder_only_ever_raises_typed_errors_on_random_bytes(data: bytes) -> None:
    try:
        decode_audio(data, **LIMITS)
    except TalkError as error:
        assert 400 <= error.status < 500
