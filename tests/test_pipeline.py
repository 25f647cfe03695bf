from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest

from shared.audio import decode_audio
from shared.config import Settings
from shared.errors import NoInput, TextTooLong
from shared.llm.llamacpp import load_llama
from shared.pipeline import TalkRequest, talk, transcribe
from shared.stt.fasterwhisper import load_whisper_model
from shared.tts.piper import load_piper
from tests.conftest import QUESTIONS, phone_upload

LOADERS = (load_whisper_model, load_llama, load_piper)


def test_round_trip_question_to_a_spoken_reply(settings: Settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="talk")
    result = talk(TalkRequest(audio=phone_upload(QUESTIONS[0], "m4a")), settings)

    assert result.transcript.rstrip("?").lower() == QUESTIONS[0].rstrip("?").lower()
    assert result.text and result.language == "en"
    assert result.providers == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}
    assert set(result.timings_ms) == {"stt", "llm", "tts", "total"}
    assert result.timings_ms["total"] >= sum(result.timings_ms[s] for s in ("stt", "llm", "tts"))

    spoken = decode_audio(result.mp3, max_bytes=10_000_000, max_seconds=120)
    assert spoken.duration_s > 0.5
    assert transcribe(result.mp3, request_id="check", settings=settings).text

    rid = result.request_id
    assert len(rid) == 32 and int(rid, 16) >= 0  # 128 random bits
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{rid}]")]
    expected = (
        "STT done in ",
        "LLM reply in ",
        "TTS done in ",
        "/talk success total=",
        "MP3 bytes=",
    )
    prefix = len(f"[{rid}] ")
    assert [next(p for p in expected if line[prefix:].startswith(p)) for line in lines] == list(
        expected
    )
    assert lines[-1] == f"[{rid}] MP3 bytes={len(result.mp3)}"
    assert f"audio_bytes={len(result.mp3)}" in lines[-2]


def test_text_question_skips_speech_recognition(settings: Settings) -> None:
    result = talk(TalkRequest(text="Say hello to my friend Anna.", language="en"), settings)
    assert result.transcript is None
    assert result.text
    assert result.providers["stt"] is None
    assert result.timings_ms["stt"] == 0
    assert decode_audio(result.mp3, max_bytes=10_000_000, max_seconds=120).duration_s > 0.5


@pytest.mark.parametrize("request_", [TalkRequest(), TalkRequest(text="   \n")])
def test_no_question_is_no_input(request_: TalkRequest, settings: Settings) -> None:
    with pytest.raises(NoInput):
        talk(request_, settings)


def test_an_overlong_text_question_is_refused_before_the_model(settings: Settings) -> None:
    with pytest.raises(TextTooLong, match="limit is 20"):
        talk(TalkRequest(text="x" * 21), replace(settings, max_text_chars=20))


def test_concurrent_requests_load_each_model_once(settings: Settings) -> None:
    for loader in LOADERS:
        loader.clear()
    audio = phone_upload(QUESTIONS[1], "m4a")
    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def ask() -> None:
        start.wait()
        try:
            results.append(talk(TalkRequest(audio=audio), settings))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(results) == 4
    assert [loader.load_count for loader in LOADERS] == [1, 1, 1]


def test_nothing_is_loaded_until_a_stage_needs_it() -> None:
    for loader in LOADERS:
        loader.clear()
    Settings.from_env({})
    assert not any(loader.loaded for loader in LOADERS)
