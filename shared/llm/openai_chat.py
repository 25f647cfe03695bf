"""Chat completions over the OpenAI-compatible API: Hugging Face's router, Azure OpenAI,
vLLM, Ollama or a llama.cpp server."""

from __future__ import annotations

from typing import Any

from shared.errors import ProviderError
from shared.http import ProviderHttp
from shared.llm import ChatMessage, Completion

# Chat models served this way have contexts of 8k tokens and more: at a token per 3 to 4
# characters, 24,000 characters of chat leave room for any reply.
CONTEXT_CHARS = 24_000


class OpenAIChatGenerator:
    billed = True  # a hosted model (a self-hosted one is counted too: leave its budget 0)

    def __init__(self, http: ProviderHttp, model: str) -> None:
        self.name = http.provider
        self._http = http
        self.model = model

    def room(self, max_tokens: int) -> int:
        return CONTEXT_CHARS

    def size(self, text: str) -> int:
        return len(text)

    def generate(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Completion:
        response = self._http.post_json(
            "chat/completions",
            {
                "model": self.model,
                "messages": list(messages),
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": False,
            },
        )
        try:
            body: Any = response.json()
            content = body["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(self.name, "the answer has no chat completion in it") from None
        if not isinstance(content, str):
            raise ProviderError(self.name, "the chat completion has no text")
        return Completion(content, _billed_tokens(body, messages, content))


def _billed_tokens(body: Any, messages: list[ChatMessage], content: str) -> int:
    """The provider's own count (`usage.total_tokens`); a provider that sends none is
    estimated at 4 characters a token, so a budget still counts it."""
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and total >= 0:
        return total
    characters = sum(len(m["content"]) for m in messages) + len(content)
    return -(-characters // 4)
