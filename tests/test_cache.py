"""Cached speech and replies in Blob Storage (Azurite), with the providers' stand-ins."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import pytest

from shared.config import Settings
from shared.pipeline import generate, synthesize
from shared.storage import blob_store
from shared.storage.cache import cache_key
from tests.conftest import closed_port_connection_string
from tests.stubs import StubServer, chat_completion, elevenlabs_speech
from tests.test_functions import body_of, post
from tests.test_providers import HF_TOKEN, STUB_REPLY, XI_KEY, secret_store

SECRETS = secret_store(ELEVENLABS_API_KEY=XI_KEY, HF_API_TOKEN=HF_TOKEN)


@pytest.fixture
def eleven(stub_mp3: bytes):
    with StubServer(elevenlabs_speech(stub_mp3)) as server:
        yield server


@pytest.fixture
def cached(azurite) -> Settings:
    """Storage for the cache: a container of its own for each test."""
    return Settings(
        storage_connection=azurite,
        talk_cache_container=f"cache{time.time_ns()}",
        http_backoff_seconds=0.05,
    )


def speak(settings: Settings, eleven: StubServer, text: str = "Good morning!", voice=None):
    settings = replace(settings, elevenlabs_base_url=eleven.url, tts_provider="elevenlabs")
    return synthesize(text, request_id="c", settings=settings, voice=voice, secrets=SECRETS)


def test_a_repeated_reply_is_spoken_from_the_cache(cached, eleven, stub_mp3, caplog) -> None:
    caplog.set_level(logging.INFO)
    first = speak(cached, eleven)
    second = speak(cached, eleven, "  Good   morning! ")  # the same text, spaced differently
    assert len(eleven.requests) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.mp3 == first.mp3 == stub_mp3
    assert "[c] TTS cache hit" in caplog.text


def test_another_voice_or_text_is_asked_of_the_provider(cached, eleven) -> None:
    cached = replace(cached, voices="Kim=KimVoiceId0123456789")
    speak(cached, eleven)
    speak(cached, eleven, voice="Kim")
    speak(cached, eleven, "Good evening!")
    speak(replace(cached, elevenlabs_stability=0.9), eleven)
    assert len(eleven.requests) == 4
    speak(cached, eleven, voice="Kim")
    assert len(eleven.requests) == 4


def test_an_entry_expires(cached, eleven) -> None:
    cached = replace(cached, cache_ttl_hours=1 / 3600)  # one second
    speak(cached, eleven)
    time.sleep(1.5)
    again = speak(cached, eleven)
    assert not again.cached
    assert len(eleven.requests) == 2


def test_a_damaged_entry_is_replaced(cached, eleven, caplog) -> None:
    caplog.set_level(logging.WARNING)
    settings = replace(cached, elevenlabs_base_url=eleven.url, tts_provider="elevenlabs")
    speak(cached, eleven)
    from shared.tts import get_synthesizer

    key = cache_key("tts", get_synthesizer(settings, SECRETS).identity(None), "Good morning!")
    store = blob_store(settings, settings.talk_cache_container)
    metadata = store.fetch(key).metadata
    store.put(key, b"\x00garbage", "audio/mpeg", metadata=metadata)  # old checksum, new bytes
    repaired = speak(cached, eleven)
    assert not repaired.cached
    assert "is damaged: replacing it" in caplog.text
    assert speak(cached, eleven).cached
    assert len(eleven.requests) == 2


def test_storage_down_still_answers(eleven, caplog) -> None:
    caplog.set_level(logging.WARNING)
    down = Settings(storage_connection=closed_port_connection_string())
    speech = speak(down, eleven)
    assert speech.mp3 and not speech.cached
    assert "Cache unavailable" in caplog.text


def test_concurrent_misses_leave_one_sound_entry(cached, eleven) -> None:
    start = threading.Barrier(5)
    results = []

    def miss() -> None:
        start.wait()
        results.append(speak(cached, eleven, "All at once."))

    threads = [threading.Thread(target=miss) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 5
    assert speak(cached, eleven, "All at once.").cached  # the stored entry is whole


def ask(settings: Settings, chat: StubServer, question: str, history=()):
    settings = replace(settings, hf_base_url=f"{chat.url}/v1", llm_provider="huggingface")
    return generate(question, request_id="q", settings=settings, secrets=SECRETS, history=history)


def test_replies_are_cached_only_when_asked_and_never_in_a_conversation(cached) -> None:
    with StubServer(chat_completion(STUB_REPLY)) as chat:
        ask(cached, chat, "What time is it?")
        ask(cached, chat, "What time is it?")
        assert len(chat.requests) == 2  # off by default: a warm assistant varies

        on = replace(cached, llm_cache="on")
        first = ask(on, chat, "How are you?")
        second = ask(on, chat, "how are you? ")
        assert (first.cached, second.cached) == (False, True)
        assert second.text == first.text == STUB_REPLY
        assert len(chat.requests) == 3

        ask(on, chat, "How are you?", history=[("Hi", "Hello!")])
        assert len(chat.requests) == 4
        ask(replace(on, system_prompt="Be brief."), chat, "How are you?")
        assert len(chat.requests) == 5


def test_talk_reports_the_callers_own_cache_hit(app_settings, host) -> None:
    from tests.conftest import reset_app_caches
    from tests.oidc import AUDIENCE, SCOPE, Issuer

    with Issuer() as issuer:
        app_settings.setenv("AUTH_MODE", "jwt")
        app_settings.setenv("AUTH_ISSUER", issuer.url)
        app_settings.setenv("AUTH_AUDIENCE", AUDIENCE)
        app_settings.setenv("AUTH_REQUIRED_SCOPE", SCOPE)
        app_settings.setenv("LLM_CACHE", "on")
        reset_app_caches()
        alice = {"Authorization": f"Bearer {issuer.token('alice')}"}
        first = post(host, b'{"text": "Say thank you."}', "application/json", **alice)
        # The same question in other letters: a new turn, answered from her cache.
        second = post(host, b'{"text": "say thank you. "}', "application/json", **alice)
    assert first.status_code == second.status_code == 200
    assert body_of(first)["cache"] == []
    answer = body_of(second)
    assert answer["cache"] == ["llm", "tts"]
    assert second.headers["X-Cache"] == "llm,tts"
