"""Reply generation: one interface, an engine per provider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypedDict

from shared.config import Settings

if TYPE_CHECKING:
    from shared.secrets import SecretStore


class ChatMessage(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class ReplyGenerator(Protocol):
    name: str
    context_chars: int  # how much chat (about 3 to 4 characters a token) fits the model
    model: str

    def generate(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float) -> str:
        """The model's raw reply to the chat `messages`."""
        ...


def build_messages(
    system_prompt: str,
    question: str,
    history: Sequence[tuple[str, str]] = (),
    budget_chars: int | None = None,
) -> list[ChatMessage]:
    """The chat for `question` after the earlier (question, reply) turns in `history`.

    The oldest turns are dropped until everything fits `budget_chars`, so a long
    conversation never overflows the model's context.
    """
    kept = list(history)
    if budget_chars is not None:
        used = len(system_prompt) + len(question)
        while kept and used + sum(len(q) + len(r) for q, r in kept) > budget_chars:
            kept.pop(0)
    messages: list[ChatMessage] = [{"role": "system", "content": system_prompt}]
    for earlier_question, earlier_reply in kept:
        messages.append({"role": "user", "content": earlier_question})
        messages.append({"role": "assistant", "content": earlier_reply})
    messages.append({"role": "user", "content": question})
    return messages


def get_generator(settings: Settings, secrets: SecretStore) -> ReplyGenerator:
    from shared.http import RetryPolicy
    from shared.providers import SecretHeader, llm_provider, provider_http

    provider = llm_provider(settings, secrets)
    if provider == "local":
        from shared.llm.llamacpp import LlamaCppGenerator, load_llama

        return LlamaCppGenerator(load_llama(settings.local_llm_path), settings.reply_max_sentences)

    from shared.llm.openai_chat import OpenAIChatGenerator

    policy = RetryPolicy.from_settings(settings)
    if provider == "huggingface":
        auth = SecretHeader(secrets, "HF_API_TOKEN", "Authorization", "Bearer ", True, provider)
        http = provider_http(provider, settings.hf_base_url, auth, policy)
        return OpenAIChatGenerator(http, settings.hf_model)
    # An OpenAI-compatible server on a private network may need no key at all.
    auth = SecretHeader(secrets, "LLM_API_KEY", "Authorization", "Bearer ", False, provider)
    return OpenAIChatGenerator(
        provider_http(provider, settings.llm_base_url, auth, policy), settings.llm_model
    )
