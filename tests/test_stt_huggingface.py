"""`STT_PROVIDER=huggingface`: Whisper large through the Hugging Face router, against a
loopback stand-in that speaks the router's wire format and really hears the audio sent
(the embedded Whisper base stands in for whisper-large-v3-turbo)."""

from __future__ import annotations

import base64
import io
import logging
import time
import wave
from collections.abc import Iterator
from dataclasses import replace

import jiwer
import numpy as np
import pytest

from bench.run import FINNISH_QUESTIONS
from shared.config import Settings
from shared.errors import ConfigError, NoSpeech
from shared.pipeline import speak_back, transcribe
from shared.security.budget import STT_SECONDS, TABLE
from shared.security.secrets import MappingSource, SecretStore
from shared.storage import table_service
from shared.storage.counters import Counters
from shared.stt import local_transcriber
from tests.conftest import QUESTIONS, phone_upload, spoken
from tests.stubs import Reply, StubServer, speech_recognition
from tests.test_languages import finnish_upload
from tools.phone_audio import encode

TOKEN = "hf_test_token_0123456789abcdef"
MODEL = "openai/whisper-large-v3-turbo"


@pytest.fixture
def router(settings: Settings) -> Iterator[StubServer]:
    heard_by = local_transcriber(settings)

    def hear(samples: np.ndarray, language: str | None) -> str:
        return heard_by.transcribe(samples.astype(np.float32), language=language).text

    with StubServer(speech_recognition(hear)) as server:
        yield server


def remote(settings: Settings, router: StubServer, **changes: object) -> Settings:
    return replace(
        settings,
        stt_provider="huggingface",
        hf_stt_base_url=f"{router.url}/hf-inference/models",
        http_backoff_seconds=0.01,
        **changes,
    )


def keyed(token: str | None = TOKEN) -> SecretStore:
    return SecretStore([MappingSource("test", {"HF_API_TOKEN": token} if token else {})], ttl_s=60)


def heard(upload: bytes, settings: Settings, secrets: SecretStore | None = None, **kwargs):
    return transcribe(
        upload, request_id="test", settings=settings, secrets=secrets or keyed(), **kwargs
    )


def test_finnish_speech_goes_to_the_router_with_its_language(settings, router) -> None:
    result = heard(finnish_upload(FINNISH_QUESTIONS[4]), remote(settings, router))
    [request] = router.requests
    assert result.provider == "huggingface" and result.language == "fi"
    assert request.method == "POST" and request.path == f"/hf-inference/models/{MODEL}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.body["parameters"] == {
        "generation_parameters": {"language": "fi", "task": "transcribe"}
    }
    # What the router answered is the transcript: the audio sent was the question.
    assert jiwer.cer(FINNISH_QUESTIONS[4].lower(), result.text.lower()) <= 0.5, result.text


def test_english_speech_is_sent_as_english_and_the_request_language_wins(settings, router) -> None:
    remote_settings = remote(settings, router)
    english = heard(phone_upload(QUESTIONS[0], "m4a"), remote_settings)
    forced = heard(finnish_upload(FINNISH_QUESTIONS[4]), remote_settings, language="fi")
    first, second = router.requests
    assert english.text == QUESTIONS[0] and english.language == "en"
    assert first.body["parameters"]["generation_parameters"]["language"] == "en"
    assert forced.language == "fi"
    assert second.body["parameters"]["generation_parameters"]["language"] == "fi"


def test_only_the_speech_is_sent_and_silence_not_at_all(settings, router) -> None:
    speech, rate = spoken(QUESTIONS[1])
    quiet = np.zeros(rate * 4, dtype=np.int16)
    result = heard(
        encode(np.concatenate([quiet, speech, quiet]), rate, "m4a"), remote(settings, router)
    )
    [request] = router.requests
    with wave.open(io.BytesIO(base64.b64decode(request.body["inputs"]))) as sent:
        sent_s = sent.getnframes() / sent.getframerate()
    # The 8 s of quiet stay home; the VAD keeps a few tenths of a second around speech.
    assert result.audio_seconds > 10 and len(speech) / rate <= sent_s < len(speech) / rate + 1
    with pytest.raises(NoSpeech):
        heard(encode(np.zeros(16_000 * 5, np.int16), 16_000, "m4a"), remote(settings, router))
    assert len(router.requests) == 1  # silence was never sent


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param([Reply.json(503, {"error": "Model is currently loading"})] * 3, id="503"),
        pytest.param([Reply.json(500, {"error": "boom"})] * 3, id="500"),
        pytest.param([Reply.json(400, {"error": "Malformed soundfile"})], id="400"),
        pytest.param([Reply.json(200, {"generated": "no text field"})], id="no-text"),
        pytest.param([Reply(200, b"<html>gateway</html>")], id="not-json"),
        pytest.param([Reply.json(200, {"text": "word " * 5000})], id="longer-than-speech"),
        pytest.param([Reply(drop=True)] * 3, id="connection-dropped"),
    ],
)
def test_a_failing_router_is_retried_then_the_local_model_answers(
    settings, router, failure, caplog
) -> None:
    router.script = list(failure)
    caplog.set_level(logging.WARNING)
    result = heard(phone_upload(QUESTIONS[0], "m4a"), remote(settings, router, http_retries=2))
    assert result.provider == "faster-whisper" and result.text == QUESTIONS[0]
    assert len(router.requests) == len(failure)
    assert "transcribing with the local model" in caplog.text
    assert TOKEN not in caplog.text


def test_without_a_token_the_local_model_answers(settings, router) -> None:
    result = heard(phone_upload(QUESTIONS[0], "m4a"), remote(settings, router), keyed(None))
    assert result.provider == "faster-whisper" and result.text == QUESTIONS[0]
    assert router.requests == []


def test_the_free_deployment_check_never_calls_the_router(settings, router) -> None:
    words, _ = speak_back(
        phone_upload(QUESTIONS[0], "m4a"), request_id="test", settings=remote(settings, router)
    )
    assert words.provider == "faster-whisper" and router.requests == []


def test_the_router_needs_the_faster_whisper_engine() -> None:
    with pytest.raises(ConfigError, match="STT_ENGINE=faster-whisper"):
        Settings(stt_provider="huggingface", stt_engine="openai-whisper").validate()
    with pytest.raises(ConfigError, match="STT_PROVIDER"):
        Settings(stt_provider="azure").validate()
    with pytest.raises(ConfigError, match="Table Storage"):
        Settings(stt_daily_seconds_budget=60).validate()


def test_the_seconds_sent_are_charged_and_a_spent_budget_goes_local(
    settings, router, azurite
) -> None:
    stored = remote(
        settings,
        router,
        storage_connection=azurite,
        stt_daily_seconds_budget=1_000_000,
        budget_share_per_caller=1.0,
    )
    counters = Counters(table_service(stored).get_table_client(TABLE))

    def spent() -> int:
        return counters.total(time.strftime("day-%Y%m%d", time.gmtime()), f"{STT_SECONDS}.")

    before = spent()
    first = heard(phone_upload(QUESTIONS[0], "m4a"), stored)
    charged = spent() - before
    assert first.provider == "huggingface"
    assert 1 <= charged <= first.audio_seconds + 1  # the speech's seconds, rounded up
    # A budget already spent: the local model answers and the router is not called.
    exhausted = replace(stored, stt_daily_seconds_budget=max(1, spent()))
    second = heard(phone_upload(QUESTIONS[1], "m4a"), exhausted)
    assert second.provider == "faster-whisper" and second.text == QUESTIONS[1]
    assert len(router.requests) == 1
