"""`POST /talk/stream` over real HTTP: the streaming Function App (`stream_app.py`) served by
the dev host as the worker serves it (FastAPI types, chunked answers, a client that goes
away closes the answer), against Azurite.

The embedded models answer where that is cheap (Whisper, SmolLM2, Piper); the paid
providers are loopback stand-ins that speak their wire formats: the chat API's Server-Sent
Events with a usage chunk, and ElevenLabs' `POST /v1/text-to-speech/{voice}/stream` with
real MP3 in the configured format, a piece at a time.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import random
import re
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

from shared.audio import decode_audio
from shared.config import get_settings
from shared.pipeline import synthesize
from shared.providers import default_secrets
from shared.security.budget import LLM_TOKENS, TABLE, TTS_CHARACTERS
from shared.storage import blob_store, table_service, turns
from shared.storage.cache import cache_key
from shared.storage.conversations import conversation_store
from shared.storage.counters import Counters
from shared.tts import AudioFormat, get_synthesizer
from tests.conftest import SAMPLE, reset_app_caches
from tests.test_functions import ANSWER_KEYS, android_upload
from tests.test_isolation import mid_minute  # noqa: F401 (a fixture)
from tests.test_llm_stream import DONE, Paced, chunk, event, streamed
from tests.test_telemetry import _fresh_day
from tests.test_tts_stream import (
    AUDIO,
    XI_KEY,
    played,
    steady,  # noqa: F401 (a fixture: Piper without its random variation)
    tone,
)
from tools.devhost.functions import FunctionsHttpHost
from tools.devhost.loopback import LoopbackServer, Recorded, Reply

KEY, MASTER = "stream-function-key", "stream-master-key"
JSON = "application/json"
LLM_KEY = "sk-stream-chat-0123456789"
SENTENCES = (
    "The kettle is on, and the tea will be ready in a minute.",
    "Meanwhile, tell me how your day went.",
    "Did anything surprising happen at work?",
)
TOKENS_BILLED = 57  # what the chat stand-in's usage chunk says a reply cost
SPOKEN = AudioFormat(22_050, 1, 32)  # ELEVENLABS_OUTPUT_FORMAT's default, mp3_22050_32
_addresses = itertools.count(1)


# --- the servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_front() -> Iterator[FunctionsHttpHost]:
    """The streaming app on the dev host, shared by the module (the settings are read per
    request, so each test's environment applies)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHON_ENABLE_INIT_INDEXING", "1")  # else the worker does not index it
        with FunctionsHttpHost(None, key=KEY, master_key=MASTER, entry="stream_app") as front:
            yield front


@pytest.fixture
def streaming(app_settings) -> pytest.MonkeyPatch:
    """The app's environment, where a question sent twice is a question of its own (the
    dev host gives every request one client address)."""
    app_settings.setenv("DUPLICATE_WINDOW_SECONDS", "0")
    reset_app_caches()
    return app_settings


def chat_pieces(
    sentences: tuple[str, ...] = SENTENCES, *, pace_s: float = 0.005, tokens: int = TOKENS_BILLED
) -> list[tuple[float, bytes | None]]:
    """The reply as the chat API streams it: the role, a word a chunk, the finish, the
    usage in a chunk of its own with no choices, and `[DONE]`."""
    words = " ".join(sentences).split(" ")
    pieces: list[tuple[float, bytes | None]] = [(0.02, chunk("", role="assistant"))]
    pieces += [(pace_s, chunk(word if i == 0 else f" {word}")) for i, word in enumerate(words)]
    usage = {"prompt_tokens": tokens - 20, "completion_tokens": 20, "total_tokens": tokens}
    usage_chunk = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    return [*pieces, (0.0, chunk(finish="stop")), (0.0, event(usage_chunk)), (0.0, DONE)]


def eleven_mp3(seconds: float = 1.2) -> Reply:
    """ElevenLabs' `/stream` answer: real MP3 in the configured format, in pieces as they
    are made (cut anywhere, not on frames)."""
    mp3 = tone(SPOKEN, seconds)
    pieces: list[tuple[float, bytes | None]] = [
        (0.01, mp3[start : start + 700]) for start in range(0, len(mp3), 700)
    ]
    return Reply(200, headers=AUDIO, pieces=pieces)


def eleven_busy(_: Recorded | None = None) -> Reply:
    return Reply.json(503, {"detail": {"status": "system_busy", "message": "busy"}})


@dataclass
class Paid:
    chat: LoopbackServer
    voice: LoopbackServer


@pytest.fixture
def paid(streaming) -> Iterator[Paid]:
    """The paid providers as loopback stand-ins, with keys: the chat API answers every
    streamed request with SENTENCES, ElevenLabs every sentence with 1.2 s of tone."""
    with (
        LoopbackServer(lambda _: streamed(chat_pieces())) as chat,
        LoopbackServer(lambda _: eleven_mp3()) as voice,
    ):
        for name, value in {
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": f"{chat.url}/v1",
            "LLM_MODEL": "stub",
            "LLM_API_KEY": LLM_KEY,
            "TTS_PROVIDER": "elevenlabs",
            "ELEVENLABS_API_KEY": XI_KEY,
            "ELEVENLABS_BASE_URL": voice.url,
            "TTS_CACHE": "off",  # every sentence asks the voice
            "HTTP_RETRIES": "0",
            "HTTP_TIMEOUT_SECONDS": "10",
        }.items():
            streaming.setenv(name, value)
        reset_app_caches()
        yield Paid(chat, voice)


# --- the client -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes = b""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event_name, data in self.events if event_name == name]

    @property
    def done(self) -> dict[str, Any]:
        assert self.events[-1][0] == "done", self.events[-1]
        return self.events[-1][1]

    @property
    def mp3(self) -> bytes:
        """The audio events' MP3, joined (an MP3 answer's body as it is)."""
        if not self.events:
            return self.body
        return b"".join(base64.b64decode(data["audio_base64"]) for data in self.named("audio"))


class Client:
    """A phone: its own loopback address (the rate limits count per client address)."""

    def __init__(self, front: FunctionsHttpHost) -> None:
        number = next(_addresses)
        self.address = f"127.42.{number // 250}.{number % 250 + 1}"
        self.front = front

    def open(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: str | None = KEY,
        **headers: str,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        host, port = self.front.server.server_address[:2]
        connection = http.client.HTTPConnection(
            host, port, timeout=120, source_address=(self.address, 0)
        )
        if key is not None:
            headers["x-functions-key"] = key
        connection.request(method, path, body=body, headers=headers)
        return connection, connection.getresponse()

    def talk(self, body: bytes, content_type: str = JSON, **headers: str) -> Answer:
        """`POST /talk/stream`, read to its end."""
        connection, response = self.open(
            "POST", "/talk/stream", body, **{"Content-Type": content_type, **headers}
        )
        with closing(connection):
            return read(response)

    def ask(self, question: str, **headers: str) -> Answer:
        return self.talk(json.dumps({"text": question}).encode(), **headers)


def read(response: http.client.HTTPResponse) -> Answer:
    headers = {name.lower(): value for name, value in response.getheaders()}
    if headers.get("content-type", "").startswith("text/event-stream"):
        return Answer(response.status, headers, events=list(sse_events(response)))
    return Answer(response.status, headers, response.read())


def sse_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as they arrive: (name, data)."""
    name, data = "message", []
    while line := response.readline():
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield name, json.loads(b"\n".join(data))
            name, data = "message", []
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())


def stored_turn(rid: str) -> tuple[turns.StreamedTurn | None, dict[str, Any] | None]:
    settings = get_settings()
    record = turns.find(rid, settings)
    return record, turns.outcome(record, settings) if record else None


def ended(rid: str, within_s: float = 15.0) -> tuple[turns.StreamedTurn, dict[str, Any]]:
    """The turn's record once it is no longer running."""
    deadline = time.monotonic() + within_s
    while True:
        record, outcome = stored_turn(rid)
        if record is not None and record.state != turns.RUNNING and outcome is not None:
            return record, outcome
        assert time.monotonic() < deadline, f"the turn is still {record and record.state}"
        time.sleep(0.1)


def check_order(answer: Answer) -> list[str]:
    """meta first, then per sentence a `text` and its `audio`, `done` last: the texts."""
    names = [name for name, _ in answer.events]
    assert names[0] == "meta" and names[-1] == "done", names
    assert re.fullmatch(r"meta(text(audio)+)+done", "".join(names)), names
    seqs = [data["seq"] for name, data in answer.events if name in ("text", "audio")]
    texts = answer.named("text")
    assert [t["seq"] for t in texts] == list(range(1, len(texts) + 1))
    # Each audio event belongs to the text before it.
    current = 0
    for name, data in answer.events[1:-1]:
        if name == "text":
            current = data["seq"]
        else:
            assert data["seq"] == current
    assert seqs == sorted(seqs)
    return [t["text"] for t in texts]


def spent_today(budget: str) -> int:
    """What today's `budget` has counted, over all its shards."""
    table = table_service(get_settings()).get_table_client(TABLE)
    return Counters(table).total(time.strftime("day-%Y%m%d", time.gmtime()), f"{budget}.")


def seconds_of(mp3: bytes) -> float:
    return decode_audio(mp3, max_bytes=len(mp3) + 1, max_seconds=600).duration_s


def sample_upload() -> tuple[bytes, str]:
    return android_upload(SAMPLE.read_bytes())


# --- 1. the events, in order ------------------------------------------------------------------


def test_an_upload_is_answered_event_by_event(stream_front, streaming) -> None:
    body, content_type = sample_upload()
    answer = Client(stream_front).talk(body, content_type)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.headers["cache-control"] == "no-cache"
    meta = answer.events[0][1]
    assert set(meta) == {"request_id", "transcript", "language", "conversation_id"}
    assert meta["request_id"] == answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", meta["request_id"])
    assert meta["transcript"] and meta["transcript"].strip()  # the recording, transcribed
    assert meta["language"] == "en"
    assert meta["conversation_id"] is None
    texts = check_order(answer)
    assert all(text.strip() for text in texts)
    done = answer.done
    assert done["request_id"] == meta["request_id"]
    assert done["transcript"] == meta["transcript"]
    assert done["language"] == "en"
    assert done["text"] == " ".join(texts)
    assert set(done["timings_ms"]) >= {"stt", "llm", "tts", "first_audio", "total"}
    assert 0 < done["timings_ms"]["first_audio"] <= done["timings_ms"]["total"]
    assert done["timings_ms"]["stt"] > 0
    assert done["providers"] == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}
    assert done["cache"] == []
    assert done["turn_saved"] is None  # no conversation
    assert done["conversation_id"] is None
    assert done["audio_bytes"] == len(answer.mp3)
    assert "audio_blob" not in done
    seconds, formats = played(answer.mp3)  # one MP3 stream, every byte in a frame
    assert seconds > 0.5 and len(formats) == 1
    # Recorded as any turn: done, with the reply stored as it was heard.
    record, outcome = stored_turn(meta["request_id"])
    assert record is not None and record.state == turns.DONE
    assert outcome is not None and {k: v for k, v in outcome.items() if k != "audio_blob"} == done
    assert blob_store(get_settings()).get(outcome["audio_blob"]) == answer.mp3


# --- 2. the MP3 itself ------------------------------------------------------------------------


@pytest.mark.usefixtures("steady")  # the same text is always the same length
def test_accept_audio_mpeg_streams_the_mp3_with_the_transcript_in_headers(
    stream_front, streaming
) -> None:
    streaming.setenv("TTS_CACHE", "off")
    reset_app_caches()
    body, content_type = sample_upload()
    answer = Client(stream_front).talk(body, content_type, Accept="audio/mpeg")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "audio/mpeg"
    assert answer.headers["transfer-encoding"] == "chunked"
    rid = answer.headers["x-request-id"]
    _, outcome = ended(rid)
    transcript = answer.headers["x-transcript"]
    assert transcript.isascii() and " " not in transcript  # percent-encoded
    assert unquote(transcript) == outcome["transcript"] and outcome["transcript"].strip()
    assert answer.headers["x-language"] == outcome["language"] == "en"
    assert "x-conversation-id" not in answer.headers
    assert len(answer.body) == outcome["audio_bytes"]
    streamed_s = seconds_of(answer.body)
    # The reply spoken whole by the embedded voice lasts as long as the sentences spoken
    # one by one through one encoder.
    whole = synthesize(outcome["text"], request_id=rid, settings=get_settings())
    assert whole.provider == "piper"
    assert streamed_s == pytest.approx(seconds_of(whole.mp3), rel=0.05)


# --- 3. refused before the first byte, as /talk refuses ---------------------------------------


def test_refusals_before_the_first_byte_are_talks_json_errors(stream_front, streaming) -> None:
    client = Client(stream_front)
    question = json.dumps({"text": "Hello there"}).encode()
    # No function key: the host's 401, before the function runs.
    connection, response = client.open("POST", "/talk/stream", question, key=None)
    with closing(connection):
        unauthorized = read(response)
    assert unauthorized.status == 401
    # An answer the app cannot play.
    html = client.talk(question, Accept="text/html")
    assert html.status == 406
    assert html.headers["content-type"] == JSON
    assert html.json()["code"] == "not_acceptable"
    assert html.json()["request_id"] == html.headers["x-request-id"]
    # What is not audio at all (a fixed draw: no MPEG frame sync, no known container).
    noise = random.Random(7).randbytes(4096)
    bad = client.talk(noise, "application/octet-stream")
    assert bad.status == 422, bad.body
    assert bad.headers["content-type"] == JSON
    error = bad.json()
    assert error == {
        "error": "the data is not audio in a supported format",
        "code": "undecodable_audio",
        "request_id": bad.headers["x-request-id"],
    }
    # Recorded as failed for good: a retry with its key gets the same answer.
    record, outcome = stored_turn(error["request_id"])
    assert record is not None and record.state == turns.FAILED
    assert outcome is not None and outcome["error"]["status"] == 422


@pytest.mark.usefixtures("mid_minute")
def test_the_rate_limit_answers_429_before_anything_is_streamed(stream_front, streaming) -> None:
    streaming.setenv("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "1")
    reset_app_caches()
    client = Client(stream_front)
    # Counted before the body is read: a request refused for its body counts too.
    assert client.talk(b"{not json", JSON).status == 400
    limited = client.ask("Hello again")
    assert limited.status == 429
    assert limited.json()["code"] == "rate_limited"
    assert limited.json()["request_id"] == limited.headers["x-request-id"]
    assert int(limited.headers["retry-after"]) == 31  # the rest of the (held) minute


def test_the_token_budget_is_charged_and_once_spent_is_503(stream_front, paid, streaming) -> None:
    streaming.setenv("LLM_DAILY_TOKEN_BUDGET", str(TOKENS_BILLED + 10))
    streaming.setenv("BUDGET_SHARE_PER_CALLER", "1")  # the day's budget, not a share
    reset_app_caches()
    _fresh_day()
    client = Client(stream_front)
    first = client.ask("Tell me something nice")
    assert first.status == 200 and first.done["providers"]["llm"] == "openai"
    # What the provider's usage chunk said the reply cost, charged when the stream ended.
    assert spent_today(LLM_TOKENS) == TOKENS_BILLED
    second = client.ask("Tell me something else")
    assert second.status == 200  # 57 of 67 used: allowed, and charged
    assert spent_today(LLM_TOKENS) == 2 * TOKENS_BILLED
    spent = client.ask("And one more thing")
    assert spent.status == 503
    assert spent.headers["content-type"] == JSON
    assert spent.json()["code"] == "budget_exhausted"
    assert spent.json()["request_id"] == spent.headers["x-request-id"]
    assert 0 < int(spent.headers["retry-after"]) <= 86_400
    assert len(paid.chat.requests) == 2  # the third never reached the provider


# --- 4. the paid voice fails half-way ---------------------------------------------------------


def test_piper_takes_over_mid_reply_in_the_same_stream(stream_front, paid, streaming) -> None:
    streaming.setenv("TTS_FALLBACK", "piper")
    reset_app_caches()
    paid.voice.script = [eleven_mp3()]
    paid.voice.default = eleven_busy  # after the first sentence: an outage
    answer = Client(stream_front).ask("How are you today?")
    assert answer.status == 200
    texts = check_order(answer)
    assert texts == list(SENTENCES)
    done = answer.done
    assert done["providers"]["tts"] == "piper"
    assert done["providers"]["llm"] == "openai"
    # The first sentence in ElevenLabs' own frames, the rest from Piper after it.
    first = b"".join(
        base64.b64decode(a["audio_base64"]) for a in answer.named("audio") if a["seq"] == 1
    )
    assert first == tone(SPOKEN, 1.2)
    seconds, formats = played(answer.mp3)  # one stream, one sample rate
    assert formats == {(SPOKEN.sample_rate, "mono")}
    assert seconds > 1.2 + 1.0
    said = [r for r in paid.voice.requests if r.method == "POST"]
    assert re.fullmatch(r"/v1/text-to-speech/[A-Za-z0-9]+/stream", said[0].path)
    assert said[0].query["output_format"] == ["mp3_22050_32"]
    assert said[0].body["text"] == SENTENCES[0]
    assert said[1].body["previous_text"] == SENTENCES[0]
    assert len(said) == 2  # Piper said the rest: the paid voice was not asked again


# --- 5. a client that goes away ---------------------------------------------------------------


def leave_after_first_audio(client: Client, **headers: str) -> dict[str, Any]:
    """Ask, read up to the first audio event, and go away (the app is closed): the meta."""
    connection, response = client.open(
        "POST",
        "/talk/stream",
        json.dumps({"text": "Tell me a story"}).encode(),
        **{"Content-Type": JSON, **headers},
    )
    events = sse_events(response)
    meta = next(data for name, data in events if name == "meta")
    next(data for name, data in events if name == "audio")  # heard the first words
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    return meta


def slow_tail(sentences: tuple[str, ...], pace_s: float = 0.1) -> Paced:
    """The chat stand-in's reply: `sentences` at once, then a long sentence (no clause to
    cut it at) a word at a time, for seconds."""
    slow = "And then " + " ".join(["we walked along the old harbour road"] * 5) + " until dusk."
    fast = len(" ".join(sentences).split())
    return Paced(
        [
            (pace_s if index > fast + 1 else delay, piece)
            for index, (delay, piece) in enumerate(chat_pieces((*sentences, slow)))
        ]
    )


def test_a_client_that_goes_away_while_the_model_writes_stops_it(
    stream_front, paid, streaming
) -> None:
    pieces = slow_tail(SENTENCES[:2])
    paid.chat.script = [streamed(pieces)]
    client = Client(stream_front)
    headers = {"X-Conversation-Id": "new", "Idempotency-Key": "stream-retry-0004"}
    meta = leave_after_first_audio(client, **headers)
    record, outcome = ended(meta["request_id"])
    # Not a reply cut short and recorded as the answer: the turn failed.
    assert record.state == turns.FAILED, outcome
    assert outcome["error"]["code"] == "client_closed"
    # The model's stream was closed: the stand-in stopped being read long before its end.
    sent = len(pieces.sent)
    time.sleep(0.5)
    assert len(pieces.sent) == sent < len(pieces.pieces) - 20
    # Nothing of an unfinished reply is remembered.
    settings = get_settings()
    assert conversation_store(settings).turns(record.owner, meta["conversation_id"]) is None
    assert not [name for name in blob_store(settings).names(record.prefix) if ".mp3" in name]
    # The app sends it again when its connection drops: answered afresh, not told that the
    # client went away.
    retry = client.ask("Tell me a story", **headers)
    assert retry.status == 200, retry.body
    assert retry.headers["x-request-id"] != meta["request_id"]
    assert check_order(retry) == list(SENTENCES)


def test_a_sentence_cut_off_by_a_client_that_goes_away_is_not_cached(
    stream_front, paid, streaming
) -> None:
    streaming.setenv("TTS_CACHE", "on")
    reset_app_caches()
    sentence = "Once upon a time a lighthouse keeper named Ada counted the waves."
    settings = get_settings()
    identity = get_synthesizer(settings, default_secrets(settings)).identity(None, None)
    key = cache_key("tts", identity, sentence)
    paid.chat.script = [streamed(slow_tail((sentence,)))]
    # ElevenLabs says the sentence slowly: the client goes away in the middle of it.
    slowly = eleven_mp3(2.0)
    slowly.pieces = [(0.15, piece) for _, piece in slowly.pieces or []]
    paid.voice.script = [slowly]
    meta = leave_after_first_audio(Client(stream_front))
    record, outcome = ended(meta["request_id"])
    assert record.state == turns.FAILED and outcome["error"]["code"] == "client_closed"
    assert len(paid.voice.requests) == 1
    # What was heard of the sentence is not what a later reply would play for all of it.
    assert blob_store(settings, settings.talk_cache_container).fetch(key) is None


# --- 6. the same Idempotency-Key --------------------------------------------------------------


def test_a_retry_with_its_key_waits_then_gets_the_recorded_answer(
    stream_front, paid, streaming
) -> None:
    held = Paced(chat_pieces(), hold_at=3)
    paid.chat.script = [streamed(held)]
    client = Client(stream_front)
    question = json.dumps({"text": "What shall we cook tonight?"}).encode()
    key = {"Content-Type": JSON, "Idempotency-Key": "stream-retry-0001"}
    connection, response = client.open("POST", "/talk/stream", question, **key)
    events = sse_events(response)
    name, meta = next(events)
    assert name == "meta"
    retry = client.talk(question, **key)
    assert retry.status == 409
    assert retry.json()["code"] == "still_running"
    assert retry.json()["request_id"] == meta["request_id"]
    assert int(retry.headers["retry-after"]) > 0
    held.gate.set()
    with closing(connection):
        first = [("meta", meta), *events]
    assert held.held_until_opened
    first_answer = Answer(200, {}, events=first)
    texts = check_order(first_answer)
    replayed = client.talk(question, **key)
    assert replayed.status == 200
    assert replayed.headers["x-request-id"] == meta["request_id"]
    assert [name for name, _ in replayed.events] == ["meta", "text", "audio", "done"]
    assert replayed.events[0][1] == meta
    assert replayed.named("text") == [{"seq": 1, "text": " ".join(texts)}]
    assert replayed.mp3 == first_answer.mp3
    assert replayed.done == first_answer.done
    as_mp3 = client.talk(question, Accept="audio/mpeg", **key)
    assert as_mp3.status == 200 and as_mp3.body == first_answer.mp3
    assert as_mp3.headers["x-request-id"] == meta["request_id"]
    assert len(paid.chat.requests) == 1  # answered once, paid for once


def test_a_retry_takes_over_the_key_of_a_turn_that_died_with_its_instance(
    stream_front, paid, streaming
) -> None:
    client = Client(stream_front)
    question = json.dumps({"text": "Where did we leave off?"}).encode()
    key = {"Content-Type": JSON, "Idempotency-Key": "stream-retry-0002"}
    first = client.talk(question, **key)
    rid = first.headers["x-request-id"]
    # As if its instance died mid-stream: the record still says running, long ago, and
    # there is no outcome.
    record, _ = ended(rid)
    settings = get_settings()
    store = blob_store(settings)
    store.delete(f"{record.prefix}result.json")
    stale = {"owner": record.owner, "prefix": record.prefix, "state": turns.RUNNING}
    stale["at"] = time.time() - turns.STALE_S - 1
    store.put(turns.index_name(rid), json.dumps(stale).encode(), JSON, overwrite=True)
    retry = client.talk(question, **key)
    assert retry.status == 200, retry.body
    assert retry.headers["x-request-id"] != rid  # a turn of its own
    assert check_order(retry) == list(SENTENCES)


def test_a_model_that_breaks_off_ends_the_stream_with_an_error_a_retry_can_mend(
    stream_front, paid, streaming
) -> None:
    words = len(SENTENCES[0].split())
    paid.chat.script = [streamed([*chat_pieces()[: words + 3], (0.0, None)])]
    client = Client(stream_front)
    question = json.dumps({"text": "Tell me about tea"}).encode()
    key = {"Content-Type": JSON, "Idempotency-Key": "stream-retry-0003"}
    broken = client.talk(question, **key)
    assert broken.status == 200  # the first words were on their way
    names = [name for name, _ in broken.events]
    assert names[:3] == ["meta", "text", "audio"] and names[-1] == "error", names
    assert "done" not in names
    assert broken.named("text") == [{"seq": 1, "text": SENTENCES[0]}]
    assert broken.events[-1][1]["code"] == "provider_error"
    record, outcome = ended(broken.headers["x-request-id"])
    assert record.state == turns.FAILED and outcome["error"]["status"] >= 500
    # A failure a retry may fix: the retry with the key is answered afresh.
    retry = client.talk(question, **key)
    assert retry.status == 200
    assert retry.headers["x-request-id"] != broken.headers["x-request-id"]
    assert check_order(retry) == list(SENTENCES)


def test_a_conversation_goes_on_across_streamed_turns(stream_front, paid, streaming) -> None:
    client = Client(stream_front)
    first = client.ask("My name is Sara.", **{"X-Conversation-Id": "new"})
    conversation_id = first.done["conversation_id"]
    assert first.done["turn_saved"] is True
    second = client.ask("What is my name?", **{"X-Conversation-Id": conversation_id})
    assert second.status == 200 and second.done["turn_saved"] is True
    assert second.events[0][1]["conversation_id"] == conversation_id
    messages = paid.chat.requests[-1].body["messages"]
    said = [(m["role"], m["content"]) for m in messages if m["role"] != "system"]
    assert said == [
        ("user", "My name is Sara."),
        ("assistant", " ".join(SENTENCES)),
        ("user", "What is my name?"),
    ]


# --- 7. budgets -------------------------------------------------------------------------------


def test_a_voice_budget_spent_mid_reply_hands_the_rest_to_piper(
    stream_front, paid, streaming
) -> None:
    streaming.setenv("TTS_DAILY_CHARACTER_BUDGET", str(len(SENTENCES[0])))
    streaming.setenv("BUDGET_SHARE_PER_CALLER", "1")
    streaming.setenv("TTS_FALLBACK", "piper")
    reset_app_caches()
    _fresh_day()
    answer = Client(stream_front).ask("Say something kind")
    assert answer.status == 200
    assert check_order(answer) == list(SENTENCES)
    assert answer.done["providers"]["tts"] == "piper"
    assert [r.body["text"] for r in paid.voice.requests] == [SENTENCES[0]]
    # Charged for what the paid voice said, no more.
    assert spent_today(TTS_CHARACTERS) == len(SENTENCES[0])
    _, formats = played(answer.mp3)
    assert formats == {(SPOKEN.sample_rate, "mono")}


# --- 8. erasure -------------------------------------------------------------------------------


@pytest.fixture
def main_front(host) -> Iterator[FunctionsHttpHost]:
    """The main app (`function_app.py`), with the same keys."""
    with FunctionsHttpHost(host, key=KEY, master_key=MASTER) as front:
        yield front


def test_erasing_a_conversation_erases_its_streamed_turn(
    stream_front, main_front, paid, streaming
) -> None:
    client = Client(stream_front)
    answer = client.ask("Hello, my name is Sara.", **{"X-Conversation-Id": "new"})
    assert answer.status == 200
    meta = answer.events[0][1]
    assert meta["transcript"] is None
    conversation_id = meta["conversation_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", conversation_id)
    assert answer.done["turn_saved"] is True
    assert answer.done["conversation_id"] == conversation_id
    rid = meta["request_id"]
    record, outcome = stored_turn(rid)
    assert record is not None and outcome is not None
    store = blob_store(get_settings())
    assert store.names(record.prefix)
    connection, response = Client(main_front).open(
        "DELETE", f"/talk/conversations/{conversation_id}"
    )
    with closing(connection):
        erased = read(response)
    assert erased.status == 204, erased.body
    assert store.fetch(turns.index_name(rid)) is None
    assert store.fetch(f"{record.prefix}result.json") is None
    assert store.fetch(outcome["audio_blob"]) is None
    assert not store.names(record.prefix)
    assert conversation_store(get_settings()).turns(record.owner, conversation_id) is None


# The main app's side of a streamed turn (talk/api.py, written alongside this file): `GET
# /talk/{id}` answers it as it answers a `/talk` turn, and an erasure waits for it to end.


def test_get_talk_answers_a_streamed_turn_as_talk_does(stream_front, main_front, paid, streaming):
    answer = Client(stream_front).ask("What is a good way to relax?")
    assert answer.status == 200
    rid = answer.events[0][1]["request_id"]
    connection, response = Client(main_front).open(
        "GET", f"/talk/{rid}", **{"Accept": "application/json"}
    )
    with closing(connection):
        polled = read(response)
    assert polled.status == 200, polled.body
    body = polled.json()
    assert set(body) >= ANSWER_KEYS
    assert body["request_id"] == rid
    assert body["text"] == answer.done["text"]
    assert body["transcript"] is None
    assert body["audio_format"] == "mp3"
    assert base64.b64decode(body["audio_base64"]) == answer.mp3


def test_erasing_a_conversation_while_its_stream_runs_is_409(
    stream_front, main_front, paid, streaming, monkeypatch
) -> None:
    # A request younger than the claim grace is "starting" whatever it is: without the
    # grace, only knowing that the streamed turn runs can answer 409.
    monkeypatch.setattr("talk.api.CLAIM_GRACE_S", 0.0, raising=False)
    held = Paced(chat_pieces(), hold_at=3)
    paid.chat.script = [streamed(held)]
    client = Client(stream_front)
    connection, response = client.open(
        "POST",
        "/talk/stream",
        json.dumps({"text": "Remember this for me"}).encode(),
        **{"Content-Type": JSON, "X-Conversation-Id": "new"},
    )
    events = sse_events(response)
    _, meta = next(events)
    conversation_id = meta["conversation_id"]
    main = Client(main_front)
    try:
        first, answer = main.open("DELETE", f"/talk/conversations/{conversation_id}")
        with closing(first):
            running = read(answer)
        assert running.status == 409, running.body
        assert running.json()["code"] == "still_running"
    finally:
        held.gate.set()
        with closing(connection):
            rest = list(events)
    ended(meta["request_id"])
    again, answer = main.open("DELETE", f"/talk/conversations/{conversation_id}")
    with closing(again):
        assert read(answer).status == 204
    assert stored_turn(meta["request_id"]) == (None, None)
    # Not erased, so not stopped: the turn ended as any turn, and a DELETE now takes it.
    assert rest[-1][0] == "done" and rest[-1][1]["turn_saved"] is True


def test_an_mp3_answer_cut_short_drops_its_connection(stream_front, paid, streaming) -> None:
    """An MP3 has no way to say it failed: the chunked body ends without its last chunk, so
    a client can tell a reply cut short from a whole one."""
    words = len(SENTENCES[0].split())
    paid.chat.script = [streamed([*chat_pieces()[: words + 3], (0.0, None)])]
    connection, response = Client(stream_front).open(
        "POST",
        "/talk/stream",
        json.dumps({"text": "Tell me about coffee"}).encode(),
        **{"Content-Type": JSON, "Accept": "audio/mpeg"},
    )
    with closing(connection):
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
    assert len(cut.value.partial) > 0  # the first sentence's speech came


def test_a_list_counts_its_sentences_as_talk_does(stream_front, paid, streaming) -> None:
    """A list's items are lines without sentence ends: `/talk` runs them into the next
    sentence, so the stream does not count each as a sentence of the reply's three."""
    listed = ("Here are three books:\n1. Dune\n2. Emma\n3. Ulysses", "Enjoy them.", "Bye now.")
    paid.chat.script = [streamed(chat_pieces(listed))]
    answer = Client(stream_front).ask("Which books should I read?")
    texts = [t["text"] for t in answer.named("text")]
    # Every line spoken (each its own piece), and the reply's last sentence too: the list's
    # lines did not use up its three sentences.
    assert texts[:3] == ["Here are three books.", "Dune.", "Emma."], texts
    assert texts[-1] == "Bye now." and "Ulysses" in " ".join(texts)


def test_a_key_used_on_talk_is_refused_on_the_stream(
    stream_front, main_front, paid, streaming
) -> None:
    """The streaming app cannot see `/talk`'s turns: the same key there would run and bill
    the turn again. The endpoint is part of the request, so it is a reused key instead."""
    question = json.dumps({"text": "What is a good way to relax?"}).encode()
    key = {"Content-Type": JSON, "Idempotency-Key": "both-endpoints-0001"}
    connection, response = Client(main_front).open("POST", "/talk", question, **key)
    with closing(connection):
        read(response)  # answered or not (the chat stand-in streams): the key is claimed
    streamed = Client(stream_front).talk(question, **key)
    assert streamed.status == 422, streamed.body
    assert streamed.json()["code"] == "idempotency_key_reused"


def test_a_reply_cut_at_the_token_limit_ends_at_its_last_whole_sentence(
    stream_front, paid, streaming
) -> None:
    """`/talk` drops the sentence the model's token limit cut off; so does the stream."""
    cut = (*SENTENCES[:2], "And then the knight rode towards the")
    paid.chat.script = [streamed(chat_pieces(cut))]
    answer = Client(stream_front).ask("Tell me a story")
    assert [t["text"] for t in answer.named("text")] == list(SENTENCES[:2])
    assert answer.done["text"] == " ".join(SENTENCES[:2])


def test_a_header_sent_twice_is_read_whole(stream_front, streaming) -> None:
    """A second `X-Forwarded-For` line is the client's own: the address counted is the
    joined value's, as the classic functions see it, not the first line alone."""
    from talk.stream import _joined

    class Lines:
        def __init__(self, lines: list[tuple[str, str]]) -> None:
            self.lines = lines

        def __iter__(self) -> Iterator[str]:
            return iter(dict.fromkeys(name for name, _ in self.lines))

        def getlist(self, name: str) -> list[str]:
            return [value for key, value in self.lines if key == name]

    joined = _joined(Lines([("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7")]))
    assert joined.get("X-Forwarded-For") == "6.6.6.6, 203.0.113.7"


def test_anything_unexpected_is_a_json_500(stream_front, streaming, monkeypatch) -> None:
    import talk.stream

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(talk.stream, "_preferred", broken)
    answer = Client(stream_front).ask("Hello")
    assert answer.status == 500
    body = answer.json()
    assert body["code"] == "internal" and body["request_id"] and "bug" not in body["error"]
