"""The original backend's engine, on the very same weights as the default engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shared.config import Settings
from shared.pipeline import transcribe
from tests.conftest import QUESTIONS, SAMPLE, phone_upload
from tools.convert_whisper import bundled_model_dir, convert


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The bundled CTranslate2 tiny.en, converted to an openai-whisper checkpoint."""
    path = tmp_path_factory.mktemp("whisper") / "tiny.en.pt"
    convert(bundled_model_dir(), path)
    return path


def test_both_engines_transcribe_the_sample_the_same(settings: Settings, checkpoint) -> None:
    original = replace(settings, stt_engine="openai-whisper", whisper_model=str(checkpoint))
    audio = SAMPLE.read_bytes()
    ours = transcribe(audio, request_id="t", settings=settings)
    theirs = transcribe(audio, request_id="t", settings=original)
    assert theirs.provider == "openai-whisper"
    assert ours.provider == "faster-whisper"
    assert theirs.text == ours.text == "What is a good way to relax after a long day?"
    assert theirs.language == ours.language == "en"


@pytest.mark.parametrize("question", QUESTIONS)
def test_both_engines_agree_on_phone_audio(settings: Settings, checkpoint, question) -> None:
    original = replace(settings, stt_engine="openai-whisper", whisper_model=str(checkpoint))
    audio = phone_upload(question, "m4a")
    ours = transcribe(audio, request_id="t", settings=settings).text
    theirs = transcribe(audio, request_id="t", settings=original).text
    assert ours.lower().rstrip(".?") == theirs.lower().rstrip(".?")
