"""Chat completions over the OpenAI-compatible API: Hugging Face's router, Azure OpenAI,
vLLM, Ollama or a llama.cpp server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import requests
from urllib3.exceptions import ReadTimeoutError

from shared.errors import ProviderError
from shared.http import ProviderHttp
from shared.llm import ChatMessage, Completion, ReplyStream
from shared.security.secrets import redact

# Chat models served this way have contexts of 8k tokens and more: at a token per 3 to 4
# characters, 24,000 characters of chat leave room for any reply.
CONTEXT_CHARS = 24_000


class OpenAIChatGenerator:
    billed = True  # a hosted model (a self-hosted one is counted too: leave its budget 0)

    def __init__(self, http: ProviderHttp, model: str) -> None:
        self.name = http.provider
        self._http = http
        self.model = model

    def writes(self, language: str) -> bool:
        return True  # the hosted models answer in the languages users speak

    def room(self, max_tokens: int) -> int:
        return CONTEXT_CHARS

    def size(self, text: str) -> int:
        return len(text)

    def generate(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Completion:
        response = self._http.post_json(
            "chat/completions", self._request(messages, max_tokens, temperature, stream=False)
        )
        try:
            body: Any = response.json()
            content = body["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(self.name, "the answer has no chat completion in it") from None
        if not isinstance(content, str):
            raise ProviderError(self.name, "the chat completion has no text")
        return Completion(content, _billed_tokens(body, messages, content))

    def stream(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> ReplyStream:
        """The reply as Server-Sent Events bring it. The request is made (and retried)
        here, so a refusal is raised at once; a stream that fails or breaks off half-way
        raises ProviderError from the iteration, after the pieces that came."""
        response = self._http.post_stream(
            "chat/completions",
            self._request(messages, max_tokens, temperature, stream=True),
            headers={"Accept": "text/event-stream"},
        )
        reply = ReplyStream(
            lambda reply: self._pieces(response, messages, reply), release=response.close
        )
        reply.tokens = _billed_tokens(None, messages, "")  # the prompt, sent and read
        return reply

    def _request(
        self, messages: list[ChatMessage], max_tokens: int, temperature: float, *, stream: bool
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        if stream:  # the usage comes in a last chunk of its own, with no choices
            request["stream_options"] = {"include_usage": True}
        return request

    def _pieces(
        self, response: requests.Response, messages: list[ChatMessage], reply: ReplyStream
    ) -> Iterator[str]:
        text, usage, done, finished = "", None, False, False
        try:
            with response:  # closed however this ends: closing drops the connection
                for data in _event_data(response.iter_lines()):
                    if reply.closed:  # by another thread
                        return
                    if done:  # read to the end, so the connection can serve again
                        continue
                    if data == "[DONE]":
                        done = True
                        continue
                    chunk = self._chunk(data)
                    usage = chunk.get("usage") or usage
                    piece, finish_reason = _delta(chunk)
                    finished = finished or bool(finish_reason)
                    if piece:
                        text += piece
                        yield piece
        except requests.RequestException as error:
            if done or finished or reply.closed:
                return  # the whole reply came (or is no longer wanted), if not the body's end
            cause = error.args[0] if error.args else None
            broke = "timed out" if isinstance(cause, ReadTimeoutError) else "broke off"
            raise ProviderError(self.name, f"the stream {broke}", status=503) from None
        finally:
            reply.tokens = _billed_tokens({"usage": usage}, messages, text)
        # A provider that sends no [DONE] has at least said why the reply ended.
        if not (done or finished or reply.closed):
            raise ProviderError(self.name, "the stream ended before the reply did", status=503)

    def _chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderError(self.name, "the stream has a malformed event") from None
        if not isinstance(chunk, dict):
            raise ProviderError(self.name, "the stream has a malformed event")
        error = chunk.get("error")
        if error:  # the provider failed half-way (TGI sends a string, OpenAI an object)
            message = error.get("message") if isinstance(error, dict) else error
            detail = redact(message[:120]) if isinstance(message, str) and message else ""
            raise ProviderError(self.name, f"the stream failed ({detail or 'no reason given'})")
        return chunk


def _event_data(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data` of each Server-Sent Event in `lines` (several `data` lines joined by a
    newline); comments (`:`) and other fields are passed over."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if not line:  # a blank line ends an event
            if data:
                yield "\n".join(data)
            data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def _delta(chunk: dict[str, Any]) -> tuple[str, str | None]:
    """A chunk's piece of text and its `finish_reason`; a usage chunk has no choices, and
    the first may carry only the role (content missing, null or empty)."""
    choices = chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return "", None
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    finish_reason = choice.get("finish_reason")
    return (
        content if isinstance(content, str) else "",
        finish_reason if isinstance(finish_reason, str) else None,
    )


def _billed_tokens(body: Any, messages: list[ChatMessage], content: str) -> int:
    """The provider's own count (`usage.total_tokens`); a provider that sends none is
    estimated at 4 characters a token, so a budget still counts it."""
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and total >= 0:
        return total
    characters = sum(len(m["content"]) for m in messages) + len(content)
    return -(-characters // 4)
