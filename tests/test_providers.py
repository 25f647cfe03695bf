"""Hugging Face / OpenAI-compatible chat and ElevenLabs, through real clients over sockets."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from shared.config import Settings
from shared.errors import ProviderError
from shared.pipeline import generate, synthesize
from shared.providers import active_providers
from shared.security.secrets import MappingSource, MissingSecret, SecretStore
from tests.stubs import Reply, StubServer, chat_completion, elevenlabs_speech

HF_TOKEN = "hf_test_token_0123456789"
XI_KEY = "sk_test_elevenlabs_abcdef"
STUB_REPLY = "Hello from the stub. It is nice to hear from you."


def secret_store(**values: str) -> SecretStore:
    return SecretStore([MappingSource("test", values)], ttl_s=300)


@pytest.fixture
def chat():
    with StubServer(chat_completion(STUB_REPLY)) as server:
        yield server


@pytest.fixture
def eleven(stub_mp3: bytes):
    with StubServer(elevenlabs_speech(stub_mp3)) as server:
        yield server


def cloud_settings(chat: StubServer | None = None, eleven: StubServer | None = None) -> Settings:
    settings = Settings(
        http_backoff_seconds=0.05, http_timeout_seconds=2, http_connect_timeout_seconds=1
    )
    if chat:
        settings = replace(settings, hf_base_url=f"{chat.url}/v1")
    if eleven:
        settings = replace(settings, elevenlabs_base_url=eleven.url)
    return settings


def ask(settings: Settings, secrets: SecretStore, question: str = "How are you?") -> str:
    return generate(question, request_id="test", settings=settings, secrets=secrets).text


# --- chat completions ---------------------------------------------------------------------


def test_hugging_face_request_on_the_wire(chat: StubServer) -> None:
    settings = cloud_settings(chat)
    reply = generate(
        "How are you?",
        request_id="test",
        settings=settings,
        secrets=secret_store(HF_API_TOKEN=HF_TOKEN),
    )
    assert reply.text == STUB_REPLY
    assert reply.provider == "huggingface"
    [request] = chat.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"
    assert request.body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert request.body["messages"] == [
        {"role": "system", "content": settings.system_prompt},
        {"role": "user", "content": "How are you?"},
    ]
    assert (request.body["max_tokens"], request.body["temperature"]) == (120, 0.7)


def test_connections_are_reused_across_requests(chat: StubServer) -> None:
    settings = cloud_settings(chat)
    secrets = secret_store(HF_API_TOKEN=HF_TOKEN)
    for _ in range(3):
        ask(settings, secrets)
    assert len(chat.requests) == 3
    assert len({r.client_port for r in chat.requests}) == 1  # one TCP connection


def test_429_is_retried_after_the_time_it_asks_for(chat: StubServer) -> None:
    chat.script = [Reply.json(429, {"error": "rate limited"}, **{"Retry-After": "0.3"})]
    assert ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN)) == STUB_REPLY
    first, second = chat.requests
    assert second.at - first.at >= 0.3


def test_5xx_is_retried_with_growing_backoff(chat: StubServer) -> None:
    chat.script = [Reply.json(500, {}), Reply.json(502, {})]
    assert ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN)) == STUB_REPLY
    times = [r.at for r in chat.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05
    assert times[2] - times[1] >= 0.1


def test_persistent_5xx_ends_in_a_502_after_the_retries(chat: StubServer) -> None:
    chat.script = [Reply.json(500, {"error": {"message": "model overloaded"}})] * 3
    with pytest.raises(ProviderError) as raised:
        ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN))
    assert raised.value.status == 502
    assert str(raised.value) == "huggingface: HTTP 500 (model overloaded)"
    assert len(chat.requests) == 3


def test_a_4xx_other_than_429_is_not_retried(chat: StubServer) -> None:
    chat.script = [Reply.json(401, {"error": "Invalid credentials in Authorization header"})]
    with pytest.raises(ProviderError, match="HTTP 401"):
        ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN))
    assert len(chat.requests) == 1


def test_a_retry_after_longer_than_allowed_fails_at_once(chat: StubServer) -> None:
    chat.script = [Reply.json(429, {}, **{"Retry-After": "120"})]
    with pytest.raises(ProviderError, match="retry after 120 s") as raised:
        ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN))
    assert raised.value.status == 503
    assert len(chat.requests) == 1


def test_a_slow_answer_times_out_and_is_retried(chat: StubServer) -> None:
    settings = replace(cloud_settings(chat), http_timeout_seconds=0.3, http_retries=1)
    chat.script = [Reply(delay_s=1.0), Reply(delay_s=1.0)]
    with pytest.raises(ProviderError, match="timed out") as raised:
        ask(settings, secret_store(HF_API_TOKEN=HF_TOKEN))
    assert raised.value.status == 503
    assert len(chat.requests) == 2


def test_a_dropped_connection_is_retried(chat: StubServer) -> None:
    chat.script = [Reply(drop=True)]
    assert ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN)) == STUB_REPLY
    assert len(chat.requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(200, b"{not json", {"Content-Type": "application/json"}), id="bad-json"),
        pytest.param(Reply.json(200, {"choices": []}), id="no-choices"),
        pytest.param(
            Reply.json(200, {"choices": [{"message": {"content": None}}]}), id="null-content"
        ),
    ],
)
def test_malformed_chat_answers_are_provider_errors(chat: StubServer, reply: Reply) -> None:
    chat.script = [reply]
    with pytest.raises(ProviderError, match=r"huggingface: the (answer|chat completion) has no"):
        ask(cloud_settings(chat), secret_store(HF_API_TOKEN=HF_TOKEN))


def test_any_openai_compatible_server(chat: StubServer) -> None:
    settings = replace(
        cloud_settings(), llm_provider="openai", llm_base_url=f"{chat.url}/v1", llm_model="qwen"
    )
    reply = generate("Hi", request_id="t", settings=settings, secrets=secret_store())
    assert reply.provider == "openai"
    [request] = chat.requests
    assert request.body["model"] == "qwen"
    assert "authorization" not in request.headers  # a local server may need no key


def test_an_explicit_provider_without_its_key_says_what_is_missing(chat: StubServer) -> None:
    settings = replace(cloud_settings(chat), llm_provider="huggingface")
    with pytest.raises(MissingSecret, match="huggingface needs HF_API_TOKEN") as raised:
        ask(settings, secret_store())
    assert raised.value.status == 503
    assert not chat.requests


# --- ElevenLabs -----------------------------------------------------------------------------


def test_elevenlabs_request_on_the_wire(eleven: StubServer, stub_mp3: bytes) -> None:
    settings = cloud_settings(eleven=eleven)
    speech = synthesize(
        "Nice to meet you.",
        request_id="t",
        settings=settings,
        secrets=secret_store(ELEVENLABS_API_KEY=XI_KEY),
    )
    assert speech.mp3 == stub_mp3
    assert speech.provider == "elevenlabs"
    [request] = eleven.requests
    assert (request.method, request.path) == ("POST", "/v1/text-to-speech/EXAVITQu4vr4xnSDxMaL")
    assert request.headers["xi-api-key"] == XI_KEY
    assert request.query == {"output_format": ["mp3_22050_32"]}
    assert request.body == {
        "text": "Nice to meet you.",
        "model_id": "eleven_flash_v2_5",
        "voice_settings": {"stability": 0.5, "similarity_boost": 0.8},
    }


@pytest.mark.parametrize(
    ("voice", "allow_voice_ids", "voice_id"),
    [
        ("Kim", "off", "KimVoiceId0123456789"),
        ("milla", "off", "MillaVoiceId01234567"),
        # A raw voice id passes through only when the operator allows it.
        ("AbCdEfGhIjKlMnOpQrSt", "on", "AbCdEfGhIjKlMnOpQrSt"),
        ("AbCdEfGhIjKlMnOpQrSt", "off", "EXAVITQu4vr4xnSDxMaL"),
        ("Bob", "off", "EXAVITQu4vr4xnSDxMaL"),  # unknown persona: the default voice
        (None, "off", "EXAVITQu4vr4xnSDxMaL"),
    ],
)
def test_persona_names_map_to_voice_ids(
    eleven: StubServer, voice: str | None, allow_voice_ids: str, voice_id: str, caplog
) -> None:
    settings = replace(
        cloud_settings(eleven=eleven),
        voices="Kim=KimVoiceId0123456789, Milla=MillaVoiceId01234567",
        allow_voice_ids=allow_voice_ids,
    )
    caplog.set_level(logging.WARNING)
    synthesize(
        "Hi.",
        request_id="t",
        settings=settings,
        voice=voice,
        secrets=secret_store(ELEVENLABS_API_KEY=XI_KEY),
    )
    assert eleven.requests[0].path == f"/v1/text-to-speech/{voice_id}"
    assert ("Unknown voice" in caplog.text) == (voice_id == "EXAVITQu4vr4xnSDxMaL" and bool(voice))


def test_the_apps_personas_have_voices_of_their_own_by_default(eleven: StubServer) -> None:
    """Kim (a man's name in Finland), Milla, John and Lily: ElevenLabs default voices."""
    settings = cloud_settings(eleven=eleven)
    for persona in ("Kim", "Milla", "John", "Lily"):
        synthesize(
            "Hi.",
            request_id="t",
            settings=settings,
            voice=persona,
            secrets=secret_store(ELEVENLABS_API_KEY=XI_KEY),
        )
    spoken_by = [request.path.rsplit("/", 1)[1] for request in eleven.requests]
    assert spoken_by == [
        "JBFqnCBsd6RMkjVDRZzb",  # George, male
        "XrExE9yKIg1WjnnlVkGX",  # Matilda, female
        "cjVigY5qzO86Huf0OWal",  # Eric, male
        "pFZP5JQG7iQjIQuC4Bku",  # Lily, female
    ]


def test_the_embedded_voice_says_it_has_one_voice(settings: Settings, caplog) -> None:
    caplog.set_level(logging.INFO)
    synthesize("Hi.", request_id="t", settings=settings, voice="Milla")
    assert "Voice 'Milla' asked for: the embedded voice has one voice" in caplog.text


@pytest.mark.parametrize(
    ("script", "status", "says", "calls"),
    [
        ([Reply.json(401, {"detail": {"status": "invalid_api_key"}})], 502, "HTTP 401", 1),
        (
            [Reply.json(429, {"detail": {"status": "too_many_concurrent_requests"}})] * 3,
            503,
            "HTTP 429",
            3,
        ),
        ([Reply.json(503, {})] * 3, 503, "HTTP 503", 3),
        ([Reply.json(200, {"detail": "queued"})], 502, "expected MP3, got application/json", 1),
    ],
)
def test_elevenlabs_failures(
    eleven: StubServer, script: list[Reply], status: int, says: str, calls: int
) -> None:
    eleven.script = list(script)
    with pytest.raises(ProviderError, match=says) as raised:
        synthesize(
            "Hi.",
            request_id="t",
            settings=cloud_settings(eleven=eleven),
            secrets=secret_store(ELEVENLABS_API_KEY=XI_KEY),
        )
    assert raised.value.status == status
    assert len(eleven.requests) == calls


def test_failed_elevenlabs_falls_back_to_the_embedded_voice(eleven: StubServer, caplog) -> None:
    eleven.script = [Reply.json(500, {})] * 3
    settings = replace(cloud_settings(eleven=eleven), tts_fallback="piper")
    caplog.set_level(logging.WARNING)
    speech = synthesize(
        "Hello there.",
        request_id="abc",
        settings=settings,
        secrets=secret_store(ELEVENLABS_API_KEY=XI_KEY),
    )
    assert speech.provider == "piper"
    assert speech.mp3[:3] == b"ID3" or speech.mp3[0] == 0xFF
    assert (
        "[abc] TTS elevenlabs failed (elevenlabs: HTTP 500): answering with the embedded voice"
        in caplog.text
    )


def test_error_details_never_carry_a_secret(eleven: StubServer) -> None:
    secrets = secret_store(ELEVENLABS_API_KEY=XI_KEY)
    secrets.get("ELEVENLABS_API_KEY")
    eleven.script = [Reply.json(401, {"detail": {"message": f"Invalid API key {XI_KEY}"}})]
    with pytest.raises(ProviderError) as raised:
        synthesize("Hi.", request_id="t", settings=cloud_settings(eleven=eleven), secrets=secrets)
    assert XI_KEY not in str(raised.value)
    assert "Invalid API key ***" in str(raised.value)


# --- choosing providers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm", "tts", "secrets", "expected"),
    [
        ("auto", "auto", {}, ("local", "piper")),
        (
            "auto",
            "auto",
            {"HF_API_TOKEN": "x", "ELEVENLABS_API_KEY": "y"},
            ("huggingface", "elevenlabs"),
        ),
        ("local", "piper", {"HF_API_TOKEN": "x", "ELEVENLABS_API_KEY": "y"}, ("local", "piper")),
        ("huggingface", "elevenlabs", {}, ("huggingface", "elevenlabs")),
    ],
)
def test_auto_uses_the_cloud_only_with_its_key(llm, tts, secrets, expected) -> None:
    settings = Settings(llm_provider=llm, tts_provider=tts)
    active = active_providers(settings, secret_store(**secrets))
    assert (active["llm"], active["tts"]) == expected
    assert active["stt"] == "faster-whisper"
