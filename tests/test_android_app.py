"""The Android app as it ships, against `make serve`: its exact requests (`tests/android_app.py`,
written from `MainActivity.kt`), its timeouts and retry, and its reading of the answers.

The reply comes from a stand-in of the Hugging Face router and the voice from one of
ElevenLabs (both speaking their wire formats, both counting calls); speech is heard by the
embedded Whisper, so each transcription shows in the server's log.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.config import Settings
from tests.android_app import AndroidApp, Shown, process_talk_response
from tests.conftest import ROOT, app_recording, run_cli
from tests.stubs import Recorded, Reply, StubServer, chat_completion, elevenlabs_speech
from tests.test_serve import banner_value, read_banner, start_server, stop
from tools.azurite import free_port

APP_FILENAME = "recording_1733390000000.m4a"
JFK = ROOT / "tests" / "data" / "jfk-1961.m4a"
PERSONAS = ("Kim", "Milla", "John", "Lily")
# How long the chat stand-in takes on the slow backend, whose TALK_WAIT_SECONDS is 6: a
# normal turn fits in it, a question asked "slowly" does not.
SLOW_WAIT_S, CHAT_DELAY_S, SLOW_CHAT_DELAY_S = 6, 2.0, 9.0


@dataclass
class Backend:
    url: str
    key: str
    chat: StubServer
    voice: StubServer
    log: Path

    def app(self, **options: float | None) -> AndroidApp:
        """The app rebuilt against this backend, as docs/api.md tells: `/talk?code=`."""
        return AndroidApp(f"{self.url}/talk?code={self.key}", **options)

    def transcriptions(self) -> int:
        return self.log.read_text().count("STT done")

    def calls(self) -> tuple[int, int, int]:
        """Speech heard, replies asked for and voices spoken so far."""
        return self.transcriptions(), len(self.chat.requests), len(self.voice.requests)


def chat_with_delay(delay_s: float) -> Callable[[Recorded], Reply]:
    """Hugging Face's chat answers, each a new reply (so no speech comes from the cache),
    after `delay_s`, or SLOW_CHAT_DELAY_S for a question that asks to be answered slowly."""
    numbers = itertools.count(1)

    def answer(request: Recorded) -> Reply:
        reply = chat_completion(f"Happy to help, friend number {next(numbers)}.")(request)
        asked = request.body["messages"][-1]["content"]
        reply.delay_s = SLOW_CHAT_DELAY_S if "slowly" in asked else delay_s
        return reply

    return answer


@contextmanager
def running_backend(tmp_path: Path, stub_mp3: bytes, chat_delay_s: float, **env: str):
    with ExitStack() as stack:
        chat = stack.enter_context(StubServer(chat_with_delay(chat_delay_s)))
        voice = stack.enter_context(StubServer(elevenlabs_speech(stub_mp3)))
        log = tmp_path / "serve.log"
        port = free_port()
        process = start_server(
            tmp_path,
            port,
            stack.enter_context(log.open("w")),
            LLM_PROVIDER="huggingface",
            HF_BASE_URL=f"{chat.url}/v1",
            HF_API_TOKEN="hf-test-token",
            TTS_PROVIDER="elevenlabs",
            ELEVENLABS_BASE_URL=voice.url,
            ELEVENLABS_API_KEY="el-test-key",
            HTTP_RETRIES="0",
            **env,
        )
        try:
            banner = read_banner(process)
        except AttributeError:  # the log is a file: what went wrong is in it
            raise AssertionError(f"the server stopped: {log.read_text()}") from None
        try:
            yield Backend(
                f"http://127.0.0.1:{port}", banner_value(banner, "Function key"), chat, voice, log
            )
        finally:
            stop(process)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, stub_mp3: bytes) -> Iterator[Backend]:
    with running_backend(tmp_path_factory.mktemp("app"), stub_mp3, 0.0) as running:
        yield running


@pytest.fixture(scope="module")
def slow_backend(tmp_path_factory, stub_mp3: bytes) -> Iterator[Backend]:
    path = tmp_path_factory.mktemp("slow")
    with running_backend(
        path, stub_mp3, CHAT_DELAY_S, TALK_WAIT_SECONDS=str(SLOW_WAIT_S)
    ) as running:
        yield running


def played(shown: Shown) -> None:
    assert (shown.status, shown.toast) == (200, None), shown
    assert shown.played_seconds > 0.5
    assert shown.reply_text.startswith("Happy to help")


@pytest.mark.parametrize(
    ("seconds", "index_first"), [(3.0, False), (20.0, False), (20.0, True), (60.0, False)]
)
def test_a_recording_is_answered_and_played(backend: Backend, seconds: float, index_first: bool):
    before = backend.calls()
    shown = backend.app().send_audio(app_recording(seconds, index_first), APP_FILENAME)
    played(shown)
    assert shown.attempts == 1
    assert [after - then for after, then in zip(backend.calls(), before, strict=True)] == [1, 1, 1]


def test_a_real_persons_recording_is_heard_and_answered(backend: Backend) -> None:
    """A real voice, recorded as the app records (tests/data/README.md: public domain)."""
    shown = backend.app().send_audio(JFK.read_bytes(), APP_FILENAME)
    played(shown)
    heard = requests.get(
        f"{backend.url}/talk/{shown.request_id}", params={"code": backend.key}, timeout=30
    ).json()["transcript"]
    words = "".join(c for c in heard.lower() if c.isalpha() or c == " ").split()
    assert "ask not what your country can do for you" in " ".join(words)


def test_a_written_question_with_each_persona_gets_its_voice(backend: Backend) -> None:
    voices = Settings().voice_map()
    spoken_by = []
    for persona in PERSONAS:
        played(backend.app().send_text("Kerro vitsi / tell me a joke", persona))
        spoken_by.append(backend.voice.requests[-1].path.rsplit("/", 1)[1])
        question = backend.chat.requests[-1].body["messages"][-1]["content"]
        assert question == "Kerro vitsi / tell me a joke"  # the app's JSON, read as sent
    assert spoken_by == [voices[persona.lower()] for persona in PERSONAS]
    assert len(set(spoken_by)) == 4


def test_a_turn_slower_than_talk_wait_seconds_is_an_error_the_app_shows(slow_backend: Backend):
    started = time.monotonic()
    shown = slow_backend.app().send_text("Please answer slowly.", "Milla")
    assert shown.status == 504
    assert shown.toast == "Backend error (504). Please try again."
    assert SLOW_WAIT_S - 0.5 < time.monotonic() - started < SLOW_WAIT_S + 3  # inside 90 s
    # The reply is still made and kept: a client that can read it collects it.
    url = f"{slow_backend.url}/talk/{shown.request_id}"
    deadline = time.monotonic() + 60
    while (
        result := requests.get(url, params={"code": slow_backend.key}, timeout=30)
    ).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    played(process_talk_response(result.status_code, result.content))


def test_a_dropped_connection_and_the_apps_retry_are_one_turn(slow_backend: Backend) -> None:
    """The first attempt's connection drops 1 s after the upload (as it does when the
    phone changes networks, and as the 90 s read timeout ends it on a slow turn); the app
    sends the same bytes again 300 ms later, and that copy joins the turn in flight."""
    before = slow_backend.calls()
    app = slow_backend.app(drop_first_after_s=1.0)
    shown = app.send_audio(app_recording(3.0), APP_FILENAME)
    played(shown)
    assert shown.attempts == 2
    time.sleep(1)  # were a second turn started, it would be calling the providers now
    calls = [after - then for after, then in zip(slow_backend.calls(), before, strict=True)]
    assert calls == [1, 1, 1]  # one transcription, one reply, one voice
    assert "sent again within DUPLICATE_WINDOW_SECONDS" in slow_backend.log.read_text()


def test_two_different_recordings_from_one_phone_are_two_turns(slow_backend: Backend) -> None:
    before = slow_backend.calls()
    for seconds in (2.0, 2.5):
        played(slow_backend.app().send_audio(app_recording(seconds), APP_FILENAME))
    calls = [after - then for after, then in zip(slow_backend.calls(), before, strict=True)]
    assert calls == [2, 2, 2]


def test_without_talk_in_the_url_the_app_gets_a_bodiless_404(backend: Backend) -> None:
    shown = AndroidApp(f"{backend.url}/?code={backend.key}").send_text("Hello", "Kim")
    assert (shown.status, shown.toast) == (404, "Backend error (404). Please try again.")


def test_python_m_talk_url_follows_the_202(slow_backend: Backend, tmp_path: Path) -> None:
    done = run_cli(
        "--text",
        "Please answer slowly.",
        "--url",
        slow_backend.url,
        "--key",
        slow_backend.key,
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"].startswith("Happy to help")
