"""Hostile input, second round: decode bombs, demuxer abuse, oversized bodies, leaking
secrets and vague failures. Every upload is built here from bytes; the decoder's cost is
measured in a child process of its own (wall time and peak memory per input)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from urllib3 import encode_multipart_formdata

from shared.config import get_settings
from shared.storage import blob_store
from tests import hostile_audio
from tests.conftest import ROOT, reset_app_caches, run_cli
from tests.stubs import StubServer, chat_completion
from tests.test_functions import android_upload, body_of, get_result, post

JSON = "application/json"


def _flac_rates(rates: list[int]) -> dict[str, bytes]:
    return {
        f"FLAC declaring {rate} Hz": hostile_audio.flac(
            sample_rate=rate, block_size=65535, frames=8, total_samples=0
        )
        for rate in rates
    }


ATTACKS: dict[str, tuple[bytes, str]] = {
    # The reported bomb: 8.3 KB, 4 Hz, 65,535-sample blocks, no declared length.
    "the 4 Hz FLAC bomb": (
        hostile_audio.flac(sample_rate=4, block_size=65535, frames=1000, total_samples=0),
        "undecodable_audio",
    ),
    **{
        name: (data, "undecodable_audio")
        for name, data in _flac_rates([1, 2, 1000, 4000, 7999, 192_001, 655_350]).items()
    },
    "FLAC frames declaring 4 Hz under a 44.1 kHz header": (
        hostile_audio.flac(
            sample_rate=44_100, block_size=65535, frames=100, total_samples=0, frame_rate=4
        ),
        "undecodable_audio",
    ),
    "FLAC of huge blocks and no declared length (hours at 8 kHz)": (
        hostile_audio.flac(sample_rate=8_000, block_size=65535, frames=2000, total_samples=0),
        "audio_too_long",
    ),
    "FLAC declaring 10 s and holding 16 minutes": (
        hostile_audio.flac(sample_rate=8_000, block_size=65535, frames=120, total_samples=80_000),
        "audio_too_long",
    ),
    "FLAC with no frames": (
        hostile_audio.flac(sample_rate=16_000, frames=0, total_samples=0),
        "empty_audio",
    ),
    **{
        f"WAV declaring {rate} Hz": (hostile_audio.wav(sample_rate=rate), "undecodable_audio")
        for rate in (1, 4, 4000, 7999, 192_001, 4_000_000)
    },
    "WAV with an empty data chunk": (
        hostile_audio.wav(sample_rate=16_000, seconds=0.0, declared_bytes=0),
        "empty_audio",
    ),
    **{
        f"Ogg FLAC declaring {rate} Hz": (
            hostile_audio.ogg_flac(sample_rate=rate, block_size=65535, frames=4, total_samples=0),
            "undecodable_audio",
        )
        for rate in (4, 7999, 192_001)
    },
    "an HLS playlist": (hostile_audio.HLS_PLAYLIST, "undecodable_audio"),
    "an SDP description": (hostile_audio.SDP, "undecodable_audio"),
    "an ffconcat list of a local file": (hostile_audio.FFCONCAT, "undecodable_audio"),
    "a text file named .m4a": (
        b"Dear diary, today I recorded nothing.\n" * 50,
        "undecodable_audio",
    ),
    "an MPEG frame sync followed by noise": (
        b"\xff\xfb\x90\x00" + b"\x55" * 5000,
        "truncated_audio",
    ),
}

# Decodes each upload in a fresh child: prints a JSON line of code, wall time and the peak
# resident memory the decode added (VmHWM is reset before each by /proc/self/clear_refs).
_MEASURE = """
import json, sys, time
from pathlib import Path
from shared.audio import decode_audio
from shared.errors import TalkError

def hwm_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

for path in sys.argv[1:]:
    data = Path(path).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    before = hwm_mb()
    started = time.monotonic()
    try:
        decode_audio(data, max_bytes=10_000_000, max_seconds=120)
        code = "ok"
    except TalkError as error:
        code = error.code
    print(json.dumps({"code": code, "seconds": time.monotonic() - started,
                      "peak_mb": hwm_mb() - before}), flush=True)
"""


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("attacks")
    paths = []
    for index, (data, _) in enumerate(ATTACKS.values()):
        path = folder / f"{index}.bin"
        path.write_bytes(data)
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    return {name: json.loads(line) for name, line in zip(ATTACKS, lines, strict=True)}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_is_refused_quickly_and_in_bounded_memory(decoded, name: str) -> None:
    result = decoded[name]
    assert result["code"] == ATTACKS[name][1]
    assert result["seconds"] < 2
    assert result["peak_mb"] < 300


def test_no_upload_up_to_the_byte_limit_costs_more_than_the_limits(tmp_path: Path) -> None:
    # The worst legal-looking upload: 10 MB of FLAC frames at the lowest accepted rate,
    # whose header claims nothing. It stops at the duration limit, as cheaply as the rest.
    bomb = hostile_audio.flac(
        sample_rate=8_000, block_size=65535, frames=1_500_000 // 9, total_samples=0
    )
    assert len(bomb) <= 10_000_000
    path = tmp_path / "bomb.flac"
    path.write_bytes(bomb)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["code"] == "audio_too_long"
    assert result["seconds"] < 5 and result["peak_mb"] < 300


# --- through POST /talk -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["the 4 Hz FLAC bomb", "an SDP description", "an ffconcat list of a local file"]
)
def test_attacks_through_talk_are_422_and_quick(app_settings, host, name: str) -> None:
    started = time.monotonic()
    response = post(host, *android_upload(ATTACKS[name][0]))
    assert response.status_code == 422
    assert body_of(response)["code"] == "undecodable_audio"
    assert time.monotonic() - started < 5
    assert host.activity_calls == ["transcribe"]


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        pytest.param(
            json.dumps({"text": "x" * 9_000_000}).encode(), JSON, "without audio", id="9MB-json"
        ),
        pytest.param(
            b"text=" + b"y" * 10_000_000,
            "application/x-www-form-urlencoded",
            "without audio",
            id="10MB-urlencoded",
        ),
        pytest.param(
            *encode_multipart_formdata({"text": "z" * 200_000}), "text fields", id="big-form-field"
        ),
    ],
)
def test_big_text_bodies_are_413_before_parsing(app_settings, host, body, content_type, says):
    started = time.monotonic()
    response = post(host, body, content_type)
    assert response.status_code == 413
    assert body_of(response)["code"] == "text_too_long"
    assert says in body_of(response)["error"]
    assert time.monotonic() - started < 2
    assert not host.started


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "hi", "conversation_id": "\\ud800"}',
        b'{"text": "hi \\udfff there"}',
        b'{"text": "hi", "voice": "\\ud83d"}',
    ],
)
def test_fields_that_are_not_valid_text_are_400(app_settings, host, body: bytes) -> None:
    response = post(host, body, JSON)
    assert response.status_code == 400
    assert (
        "not valid text" in body_of(response)["error"]
        or "conversation_id" in body_of(response)["error"]
    )


def test_an_unknown_language_is_400(app_settings, host) -> None:
    response = post(host, b'{"text": "hi", "language": "xx"}', JSON)
    assert response.status_code == 400
    assert "language" in body_of(response)["error"]
    assert not host.started


def test_a_question_too_long_for_the_embedded_model_is_413(app_settings, host) -> None:
    # 4,000 characters (the text limit) that tokenize badly: far more than 2,048 tokens.
    question = " ".join(f"x{i}é" for i in range(800))[:4000]
    response = post(host, json.dumps({"text": question}).encode(), JSON)
    assert response.status_code == 413, response.get_body()
    assert body_of(response)["code"] == "text_too_long"
    assert host.activity_calls == ["generate"]  # no blind retries


def test_an_unexpected_failure_in_a_stage_is_500_internal_without_retries(
    app_settings, host, monkeypatch
) -> None:
    import talk.orchestration

    def broken(*args, **kwargs):
        raise RuntimeError("/etc/secret-path in a module's message")

    monkeypatch.setattr(talk.orchestration, "generate", broken)
    response = post(host, b'{"text": "hi"}', JSON)
    assert response.status_code == 500
    answer = body_of(response)
    assert answer["code"] == "internal"
    assert "RuntimeError" not in answer["error"] and "/etc" not in answer["error"]
    assert host.activity_calls == ["generate"]


def test_an_unexpected_failure_in_an_http_function_is_a_json_500(
    app_settings, host, monkeypatch
) -> None:
    import shared.accept

    def broken(*args, **kwargs):
        raise KeyError("internals")

    monkeypatch.setattr(shared.accept, "open_conversation", broken)
    response = post(host, b'{"text": "hi"}', JSON)
    assert response.status_code == 500
    assert body_of(response)["code"] == "internal"
    assert "KeyError" not in response.get_body().decode()


def test_an_expired_reply_is_410(app_settings, host) -> None:
    answer = body_of(post(host, b'{"text": "Say something nice."}', JSON))
    rid = answer["request_id"]
    store = blob_store(get_settings())
    for name in store.names("shared/"):
        if name.split("/")[2] == rid and "/reply-" in name:
            store.delete(name)  # what the retention rule does after AUDIO_RETENTION_DAYS
    gone = get_result(host, rid)
    assert gone.status_code == 410
    assert body_of(gone)["code"] == "expired"


def test_a_turn_that_cannot_be_saved_keeps_the_reply(app_settings, host, monkeypatch) -> None:
    from shared.storage import StorageUnavailable
    from shared.storage.conversations import TableConversationStore

    def failing(*args, **kwargs):
        raise StorageUnavailable("storage is unavailable, retry shortly")

    monkeypatch.setattr(TableConversationStore, "append", failing)
    response = post(host, b'{"text": "Hi", "conversation_id": "new"}', JSON)
    assert response.status_code == 200, response.get_body()
    answer = body_of(response)
    assert answer["text"] and answer["audio_base64"]
    assert answer["turn_saved"] is False
    assert host.activity_calls.count("save_turn") == 3  # retried before giving up


# --- secrets that would leak ---------------------------------------------------------------

SECRET = "hf_Sup3rS3cretTokenValue0123456789"


@pytest.mark.parametrize("stray", ["\n", "\r\n", " "])
def test_a_secret_with_stray_whitespace_works_and_never_leaks(
    app_settings, host, caplog, stray: str
) -> None:
    with StubServer(chat_completion("Happy to help.")) as hf:
        app_settings.setenv("LLM_PROVIDER", "huggingface")
        app_settings.setenv("HF_BASE_URL", f"{hf.url}/v1")
        app_settings.setenv("HF_API_TOKEN", SECRET + stray)
        reset_app_caches()
        response = post(host, b'{"text": "Hello?"}', JSON)
    assert response.status_code == 200, response.get_body()
    assert hf.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    outputs = [caplog.text, response.get_body().decode()]
    outputs += [json.dumps(instance) for instance in host.instances.values()]
    assert not [text for text in outputs if SECRET in text]


def test_a_secret_that_cannot_be_a_header_is_named_never_shown(app_settings, host, caplog):
    broken = "hf_first_half_of_it\nsecond_half_of_it"
    with StubServer(chat_completion("unused")) as hf:
        app_settings.setenv("LLM_PROVIDER", "huggingface")
        app_settings.setenv("HF_BASE_URL", f"{hf.url}/v1")
        app_settings.setenv("HF_API_TOKEN", broken)
        reset_app_caches()
        response = post(host, b'{"text": "Hello?"}', JSON)
    assert not hf.requests  # never sent
    error = body_of(response)["error"]
    assert "HF_API_TOKEN" in error
    outputs = [caplog.text, response.get_body().decode(), json.dumps(list(host.instances.values()))]
    for piece in broken.split("\n"):
        assert not [text for text in outputs if piece in text]


def test_the_command_line_names_the_broken_secret_and_not_its_value(tmp_path: Path) -> None:
    broken = "hf_first_half_of_it\r\nsecond_half_of_it"
    done = run_cli("--text", "Hi", cwd=tmp_path, LLM_PROVIDER="huggingface", HF_API_TOKEN=broken)
    assert done.returncode == 1
    assert "HF_API_TOKEN" in done.stderr
    for piece in broken.split():
        assert piece not in done.stderr + done.stdout
