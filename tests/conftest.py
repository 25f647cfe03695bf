from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import av
import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

from shared.config import ENV_FILE, Settings, get_settings
from shared.security.secrets import SECRET_NAMES
from shared.tts.mp3 import encode_mp3
from tools.azurite import connection_string, free_port, running_azurite
from tools.devhost import functions as functions_host
from tools.phone_audio import encode, speak

if TYPE_CHECKING:
    from tests.oidc import Issuer
    from tests.stubs import StubServer
    from tools.devhost.durable import LocalDurableHost

T = TypeVar("T")

# The fuzz tests draw the same inputs on every run, so a red CI names a change, not a
# lucky draw; `make fuzz` draws new ones.
hypothesis_settings.register_profile("repeatable", derandomize=True)
hypothesis_settings.register_profile("fuzz", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
ROOT = Path(__file__).resolve().parent.parent
# No developer's `.env` or `local.settings.json` (keys!) reaches a test or the processes it
# starts; a test that wants a settings file names it.
os.environ[ENV_FILE] = os.devnull
SAMPLE = ROOT / "samples" / "question.m4a"

# Known questions, spoken by the embedded voice, for word error rates.
QUESTIONS = (
    "What is a good way to relax after a long day?",
    "Please remind me to call my mother tomorrow morning.",
    "How many minutes should I boil an egg?",
)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The embedded providers, whatever keys the machine running the tests may have."""
    return Settings(llm_provider="local", tts_provider="piper")


@pytest.fixture(scope="session")
def stub_mp3() -> bytes:
    """A real MP3 (one second of tone), as a TTS provider stand-in returns."""
    t = np.arange(22_050) / 22_050
    tone = (0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype(np.int16)
    return encode_mp3(tone.tobytes(), 22_050, 32)


@functools.cache
def spoken(text: str) -> tuple[np.ndarray, int]:
    return speak(text)


@functools.cache
def phone_upload(text: str, extension: str) -> bytes:
    """`text` spoken and encoded as a phone would upload it."""
    pcm, rate = spoken(text)
    return encode(pcm, rate, extension)


# A long question, as someone thinking aloud asks it: two minutes of varied speech.
MONOLOGUE = (
    "I have been thinking about my week and I would like some advice.",
    "On Monday I started a new job at a small bakery near the harbour.",
    "The mornings begin at five, so I go to bed much earlier than I used to.",
    "My sister says I should walk to work, because the bus is often late.",
    "It takes about forty minutes on foot, and the road follows the sea.",
    "On Wednesday it rained the whole day and my shoes were soaked.",
    "I bought a warm coat on Thursday, but it was more expensive than I planned.",
    "My neighbour offered to lend me her bicycle for the rest of the month.",
    "I am not sure whether cycling in the dark is a good idea in winter.",
    "There is also a gym next to the bakery with early opening hours.",
    "Some friends want me to join their choir on Saturday evenings.",
    "I love singing, although I have not done it since school.",
    "On the other hand I need time to rest and to call my parents.",
    "They live three hours away by train, in a village with one shop.",
    "My mother grows tomatoes and my father repairs old radios for fun.",
    "Last time I visited, we spent the whole afternoon fixing a clock.",
    "The clock belonged to my grandfather and it had stopped in nineteen eighty two.",
    "Inside we found a tiny spring that had broken in two places.",
    "My father ordered a new one from a shop in Germany.",
    "It arrived three weeks later in a box full of straw.",
    "Now the clock chimes every hour, even at night, which my mother does not love.",
    "I would like to rest on Sunday mornings and read a good book.",
    "Could you recommend a novel that is calm but not boring?",
    "I enjoyed stories about the sea when I was a child.",
    "Also, is it better to cook for the whole week on Sunday?",
    "I have heard that soups keep well in the fridge for four days.",
    "My favourite is a thick lentil soup with carrots and cumin.",
    "How do I stay motivated when the mornings are dark and cold?",
    "So what would you suggest I do first, and how should I plan my weekends?",
)


@functools.cache
def app_recording(seconds: float, index_first: bool = False) -> bytes:
    """`seconds` of speech recorded as the Android app records it: AAC at 16 kHz and
    96 kbit/s in MPEG-4, the index after the audio or (`index_first`) before it."""
    spoken_lines = [spoken(line) for line in MONOLOGUE]
    rate = spoken_lines[0][1]
    pause = np.zeros(rate // 2, dtype=np.int16)
    monologue = np.concatenate([part for pcm, _ in spoken_lines for part in (pcm, pause)])
    repeats = int(np.ceil(seconds * rate / len(monologue)))
    speech = np.tile(monologue, repeats)[: int(seconds * rate)]
    return encode(speech, rate, "m4a", index_first=index_first)


def cli_environment(**extra: str) -> dict[str, str]:
    """This process's environment without provider keys, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def zero_frame_wav() -> bytes:
    """A valid WAV container that holds no audio at all."""
    output = io.BytesIO()
    with av.open(output, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=16_000, layout="mono")
        container.start_encoding()
        container.mux(stream.encode(None))
    return output.getvalue()


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m talk` in a fresh process, outside the repo so no local settings apply."""
    return subprocess.run(
        [sys.executable, "-m", "talk", *args],
        cwd=cwd,
        env=cli_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- Azurite and async helpers ------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[str]:
    """A real Azurite (blob, queue, table) on free loopback ports: its connection string."""
    with running_azurite(tmp_path_factory.mktemp("azurite")) as connection:
        yield connection


def closed_port_connection_string() -> str:
    """Storage that is not there: every port refuses connections."""
    return connection_string(free_port(), free_port(), free_port())


def run_async(coroutine: Coroutine[Any, Any, T], timeout: float = 180) -> T:
    """Run `coroutine` on the process's one event loop, the one the dev host uses too."""
    return functions_host.run_async(coroutine, timeout)


# --- the Function App ----------------------------------------------------------------------


def reset_app_caches() -> None:
    """Forget settings and the clients made from them, after the environment changed."""
    from health.api import forget_readiness
    from shared.lazy import OnceLoader
    from shared.providers import default_secrets
    from shared.security.budget import budgets
    from shared.security.ratelimit import rate_limiter
    from shared.security.tokens import token_verifier
    from shared.storage import _shared_blob_service, blob_store
    from shared.storage.cache import response_cache
    from shared.storage.conversations import conversation_store
    from shared.tts.elevenlabs import request_slots

    get_settings.cache_clear()
    forget_readiness()
    loaders = (
        default_secrets,
        blob_store,
        _shared_blob_service,
        conversation_store,
        response_cache,
        rate_limiter,
        token_verifier,
        budgets,
        request_slots,
    )
    for loader in loaders:
        assert isinstance(loader, OnceLoader)
        loader.clear()


@pytest.fixture
def app_settings(monkeypatch, tmp_path, azurite) -> Iterator[pytest.MonkeyPatch]:
    """The app's environment: Azurite, embedded providers, no local files."""
    monkeypatch.chdir(tmp_path)
    for name in ("HF_API_TOKEN", "ELEVENLABS_API_KEY", "LLM_API_KEY", "KEY_VAULT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite)
    monkeypatch.setenv("LLM_PROVIDER", "local")
    monkeypatch.setenv("TTS_PROVIDER", "piper")
    reset_app_caches()
    yield monkeypatch
    reset_app_caches()


CHAT_REPLY = "Nice to meet you, Sara."


@pytest.fixture
def chat(app_settings) -> Iterator[StubServer]:
    """The reply comes from a chat stub, so the messages the model got can be read back."""
    from tests.stubs import StubServer, chat_completion

    with StubServer(chat_completion(CHAT_REPLY)) as server:
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{server.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        reset_app_caches()
        yield server


@pytest.fixture
def issuer(app_settings) -> Iterator[Issuer]:
    """`AUTH_MODE=jwt` with a loopback OpenID Connect issuer whose tokens carry the API's
    scope."""
    from tests.oidc import AUDIENCE, SCOPE, Issuer

    with Issuer() as running:
        app_settings.setenv("AUTH_MODE", "jwt")
        app_settings.setenv("AUTH_ISSUER", running.url)
        app_settings.setenv("AUTH_AUDIENCE", AUDIENCE)
        app_settings.setenv("AUTH_REQUIRED_SCOPE", SCOPE)
        reset_app_caches()
        yield running


@pytest.fixture
def host() -> Iterator[LocalDurableHost]:
    """The Durable extension stand-in, running the app's real orchestrator and activities."""
    from tools.devhost.durable import app_durable_host

    with app_durable_host() as local_host:
        yield local_host
