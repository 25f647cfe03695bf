"""Reply generation: one interface, an engine per provider."""

from __future__ import annotations

from typing import Protocol, TypedDict

from shared.config import Settings


class ChatMessage(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class ReplyGenerator(Protocol):
    name: str

    def generate(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float) -> str:
        """The model's raw reply to the chat `messages`."""
        ...


def build_messages(system_prompt: str, question: str) -> list[ChatMessage]:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question},
    ]


def get_generator(settings: Settings) -> ReplyGenerator:
    from shared.llm.llamacpp import LlamaCppGenerator, load_llama

    return LlamaCppGenerator(load_llama(settings.local_llm_path))
