"""Replies as they are made: the OpenAI-compatible stream (Server-Sent Events, as Hugging
Face's router and OpenAI send them) against a loopback stand-in, and the embedded model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.errors import ProviderError
from shared.http import ProviderHttp, RetryPolicy
from shared.llm import ChatMessage, ReplyStream, build_messages
from shared.llm.llamacpp import LlamaCppGenerator, load_llama
from shared.llm.openai_chat import OpenAIChatGenerator
from tools.devhost.loopback import LoopbackServer, Recorded, Reply

TOKEN = "hf_stream_token_0123456789"
MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "You are a kind voice assistant."},
    {"role": "user", "content": "How are you?"},
]
WORDS = ["I am", " well,", " thank", " you.", " And", " you?"]
PACE_S = 0.02  # between tokens, after the first
FIRST_S = 0.15  # before the first, as a model reads the prompt


def event(document: Any) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return event({"object": "chat.completion.chunk", "choices": [choice], "usage": None})


USAGE = event({"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 42}})
DONE = b"data: [DONE]\n\n"


def tokens(words: list[str] = WORDS) -> list[tuple[float, bytes | None]]:
    """The role first, then the words at the model's pace, the last with its finish."""
    pieces: list[tuple[float, bytes | None]] = [(FIRST_S, chunk("", role="assistant"))]
    pieces += [(PACE_S, chunk(word)) for word in words[:-1]]
    return [*pieces, (PACE_S, chunk(words[-1], finish="stop"))]


def streamed(pieces: Any) -> Reply:
    return Reply(200, pieces=pieces, headers={"Content-Type": "text/event-stream"})


class Paced:
    """Pieces for the stand-in that note when each is handed out, and can hold one back
    until the test opens the gate."""

    def __init__(self, pieces: list[tuple[float, bytes | None]], *, hold_at: int = -1) -> None:
        self.pieces = pieces
        self.hold_at = hold_at
        self.gate = threading.Event()
        self.held_until_opened = False
        self.sent: list[float] = []

    def __iter__(self) -> Iterator[tuple[float, bytes | None]]:
        for index, piece in enumerate(self.pieces):
            if index == self.hold_at:
                self.held_until_opened = self.gate.wait(5)
            yield piece
            self.sent.append(time.monotonic())


def policy(**overrides: float) -> RetryPolicy:
    values: dict[str, Any] = {
        "retries": 2,
        "backoff_s": 0.05,
        "max_retry_after_s": 5.0,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
    }
    return RetryPolicy(**{**values, **overrides})


def chat_model(server: LoopbackServer, **overrides: float) -> OpenAIChatGenerator:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    http = ProviderHttp("huggingface", f"{server.url}/v1", lambda: auth, policy(**overrides))
    return OpenAIChatGenerator(http, "meta-llama/Llama-3.1-8B-Instruct")


def start(model: OpenAIChatGenerator) -> ReplyStream:
    return model.stream(MESSAGES, max_tokens=120, temperature=0.7)


def estimate(text: str) -> int:
    return -(-(sum(len(m["content"]) for m in MESSAGES) + len(text)) // 4)


def no_default(request: Recorded) -> Reply:
    raise AssertionError("the stand-in has no answer scripted for this request")


@pytest.fixture
def chat() -> Iterator[LoopbackServer]:
    with LoopbackServer(no_default) as server:
        yield server


# --- the OpenAI-compatible stream ------------------------------------------------------------


def test_deltas_arrive_while_the_model_is_still_making_the_reply(chat: LoopbackServer) -> None:
    paced = Paced([*tokens(), (PACE_S, USAGE), (PACE_S, DONE)], hold_at=3)
    chat.script = [streamed(paced)]
    received: list[tuple[str, float]] = []
    with start(chat_model(chat)) as reply:
        for delta in reply:
            received.append((delta, time.monotonic()))
            paced.gate.set()  # the stand-in makes the rest only once the first has come
    assert [delta for delta, _ in received] == WORDS
    assert paced.held_until_opened
    assert received[0][1] < paced.sent[-1]
    assert reply.tokens == 42  # the provider's own count, from the usage chunk


def test_the_request_on_the_wire(chat: LoopbackServer) -> None:
    chat.script = [streamed([*tokens(), (0, USAGE), (0, DONE)])]
    with start(chat_model(chat)) as reply:
        assert "".join(reply) == "".join(WORDS)
    [request] = chat.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "text/event-stream"
    assert request.body == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": MESSAGES,
        "max_tokens": 120,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_without_usage_the_tokens_are_estimated(chat: LoopbackServer) -> None:
    chat.script = [streamed([*tokens(), (0, DONE)])]
    with start(chat_model(chat)) as reply:
        text = "".join(reply)
    assert reply.tokens == estimate(text)


def test_what_the_wire_may_carry_besides_text(chat: LoopbackServer) -> None:
    """Comments (keep-alives), other fields, `data:` without its space, CRLF line ends,
    a null or missing content, and a text split over two `data` lines of one event."""
    keep_alive = b": keep-alive\n\n"
    other_fields = b"event: message\nid: 7\nretry: 1000\n" + chunk("Hi")
    no_space = b"data:" + chunk(" there")[len(b"data: ") :]
    crlf = chunk(",").replace(b"\n", b"\r\n")
    null = event({"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": None}]})
    missing = event({"choices": [{"index": 0, "delta": {}, "finish_reason": None}]})
    two_lines = b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": " friend."}}]}\n\n'
    last = chunk("", finish="stop")
    pieces = [keep_alive, other_fields, no_space, crlf, null, missing, two_lines, last, DONE]
    chat.script = [streamed([(0, piece) for piece in pieces])]
    with start(chat_model(chat)) as reply:
        assert list(reply) == ["Hi", " there", ",", " friend."]


def test_pieces_split_anywhere_are_put_together(chat: LoopbackServer) -> None:
    """A network splits the bytes where it likes: mid-line, mid-character."""
    wire = chunk("Hyvää") + chunk(" päivää!", finish="stop") + USAGE + DONE
    chat.script = [streamed([(0.005, wire[i : i + 7]) for i in range(0, len(wire), 7)])]
    with start(chat_model(chat)) as reply:
        assert "".join(reply) == "Hyvää päivää!"
    assert reply.tokens == 42


@pytest.mark.parametrize(
    "error",
    [
        pytest.param({"message": "model overloaded", "type": "server_error"}, id="openai"),
        pytest.param("model overloaded", id="tgi"),
    ],
)
def test_an_error_half_way_is_a_provider_error_after_the_deltas(
    chat: LoopbackServer, error: Any
) -> None:
    chat.script = [streamed([*tokens()[:3], (PACE_S, event({"error": error})), (0, DONE)])]
    received: list[str] = []
    with start(chat_model(chat)) as reply, pytest.raises(ProviderError) as raised:
        received.extend(reply)
    assert received == WORDS[:2]
    assert str(raised.value) == "huggingface: the stream failed (model overloaded)"
    assert reply.tokens == estimate("".join(received))


def test_a_dropped_stream_is_a_provider_error_after_the_deltas(chat: LoopbackServer) -> None:
    chat.script = [streamed([*tokens()[:4], (PACE_S, None)])]
    received: list[str] = []
    with (
        start(chat_model(chat)) as reply,
        pytest.raises(ProviderError, match="broke off") as raised,
    ):
        received.extend(reply)
    assert received == WORDS[:3]
    assert raised.value.status == 503
    assert len(chat.requests) == 1  # the body had begun: not retried
    assert reply.tokens == estimate("".join(received))


@pytest.mark.parametrize(
    "ending",
    [pytest.param([], id="finished-without-done"), pytest.param([(0, None)], id="then-dropped")],
)
def test_a_finished_reply_needs_no_done(chat: LoopbackServer, ending: list) -> None:
    """Some servers end the body after the finish without a [DONE]: the reply is whole."""
    chat.script = [streamed([*tokens(), *ending])]
    with start(chat_model(chat)) as reply:
        assert "".join(reply) == "".join(WORDS)


def test_a_stream_that_ends_before_the_reply_is_a_provider_error(chat: LoopbackServer) -> None:
    chat.script = [streamed(tokens()[:3])]
    with start(chat_model(chat)) as reply, pytest.raises(ProviderError, match="ended before"):
        list(reply)


def test_a_malformed_event_is_a_provider_error(chat: LoopbackServer) -> None:
    chat.script = [streamed([(0, chunk("Hi")), (0, b"data: {not json\n\n")])]
    with start(chat_model(chat)) as reply, pytest.raises(ProviderError, match="malformed"):
        list(reply)


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(Reply.json(503, {"error": "Model is loading"}), id="503"),
        pytest.param(Reply(drop=True), id="dropped"),
    ],
)
def test_a_failure_before_the_first_byte_is_retried(chat: LoopbackServer, refusal: Reply) -> None:
    chat.script = [refusal, streamed([*tokens(), (0, DONE)])]
    with start(chat_model(chat)) as reply:
        assert "".join(reply) == "".join(WORDS)
    first, second = chat.requests
    assert second.at - first.at >= 0.05  # the backoff


def test_a_429_is_mapped_as_a_whole_answer_would_be(chat: LoopbackServer, monkeypatch) -> None:
    throttled: list[tuple[str, str]] = []
    monkeypatch.setattr("shared.http.metrics.throttled", lambda *args: throttled.append(args))
    chat.script = [Reply.json(429, {"error": "rate limited"})] * 3
    with pytest.raises(ProviderError) as raised:
        start(chat_model(chat))
    assert (raised.value.status, raised.value.upstream) == (503, 429)
    assert str(raised.value) == "huggingface: HTTP 429 (rate limited)"
    assert throttled == [("huggingface", "rate_limited")] * 3
    assert len(chat.requests) == 3

    chat.script = [Reply.json(429, {}, **{"Retry-After": "120"})]
    with pytest.raises(ProviderError, match="retry after 120 s"):
        start(chat_model(chat))


def test_a_4xx_is_raised_at_once_not_retried(chat: LoopbackServer) -> None:
    chat.script = [Reply.json(401, {"error": "Invalid credentials in Authorization header"})]
    with pytest.raises(ProviderError, match="HTTP 401"):
        start(chat_model(chat))
    assert len(chat.requests) == 1


def test_the_read_timeout_is_between_pieces_not_for_the_whole(chat: LoopbackServer) -> None:
    slow = [(0.15, chunk(f" {n}")) for n in range(8)]  # 1.2 s in all
    chat.script = [streamed([*slow, (0.15, chunk("", finish="stop")), (0, DONE)])]
    with start(chat_model(chat, read_timeout_s=0.5)) as reply:
        assert len(list(reply)) == 8

    chat.script = [streamed([(0, chunk("Hi")), (1.0, chunk(" there")), (0, DONE)])]
    received: list[str] = []
    with (
        start(chat_model(chat, read_timeout_s=0.3)) as reply,
        pytest.raises(ProviderError, match="timed out"),
    ):
        received.extend(reply)
    assert received == ["Hi"]


@pytest.mark.parametrize("deltas_read", [1, 0])
def test_close_stops_the_download(chat: LoopbackServer, deltas_read: int) -> None:
    many = [(PACE_S, chunk(f" {n}")) for n in range(100)]  # two seconds of reply
    paced = Paced([(0, chunk("Hi")), *many, (0, DONE)])
    chat.script = [streamed(paced)]
    reply = start(chat_model(chat))
    received = [next(reply) for _ in range(deltas_read)]
    closing = time.monotonic()
    reply.close()
    assert time.monotonic() - closing < 0.5
    assert list(reply) == []  # a closed stream has nothing more to give
    assert reply.tokens == estimate("".join(received))
    # The stand-in notices the client went away at its next writes, and stops.
    time.sleep(0.3)
    sent = len(paced.sent)
    time.sleep(0.3)
    assert len(paced.sent) == sent < len(paced.pieces) // 2


def test_a_whole_stream_leaves_its_connection_for_the_next(chat: LoopbackServer) -> None:
    chat.script = [streamed([*tokens(), (0, USAGE), (0, DONE)]) for _ in range(2)]
    model = chat_model(chat)
    for _ in range(2):
        with start(model) as reply:
            assert "".join(reply) == "".join(WORDS)
    assert len({request.client_port for request in chat.requests}) == 1


def test_completion_reads_a_stream_whole(chat: LoopbackServer) -> None:
    chat.script = [streamed([*tokens(), (0, USAGE), (0, DONE)])]
    completion = start(chat_model(chat)).completion()
    assert (completion.text, completion.tokens) == ("".join(WORDS), 42)


# --- the embedded model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LlamaCppGenerator:
    return LlamaCppGenerator(load_llama(""), 3)


def local_messages(question: str) -> list[ChatMessage]:
    return build_messages("You are a helpful voice assistant. Answer briefly.", question)


def test_the_local_stream_says_what_generate_says(local: LlamaCppGenerator) -> None:
    messages = local_messages("What is a good way to relax after a long day?")
    whole = local.generate(messages, max_tokens=60, temperature=0.0)
    with local.stream(messages, max_tokens=60, temperature=0.0) as reply:
        deltas = list(reply)
    assert len(deltas) > 1
    assert "".join(deltas) == whole.text
    assert reply.tokens == whole.tokens


def test_closing_the_local_stream_frees_the_model_at_once(local: LlamaCppGenerator) -> None:
    messages = local_messages("Tell me a long story about a lighthouse keeper.")
    reply = local.stream(messages, max_tokens=200, temperature=0.0)
    first = next(reply)
    assert first
    assert local._lock.locked()  # held while the reply is being made
    closing = time.monotonic()
    reply.close()
    assert time.monotonic() - closing < 1.0
    assert not local._lock.locked()
    prompt = sum(local.size(message["content"]) for message in messages)
    assert reply.tokens == prompt + 1
    assert list(reply) == []


def test_a_second_local_request_waits_for_the_stream(local: LlamaCppGenerator) -> None:
    reply = local.stream(local_messages("Name a colour."), max_tokens=60, temperature=0.0)
    next(reply)
    done = threading.Event()

    def second() -> None:
        local.generate(local_messages("Name a fruit."), max_tokens=20, temperature=0.0)
        done.set()

    waiting = threading.Thread(target=second)
    waiting.start()
    assert not done.wait(0.3)  # the model is this stream's until it ends
    reply.close()
    waiting.join(30)
    assert done.is_set()
