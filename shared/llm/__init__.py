"""Reply generation: one interface, an engine per provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypedDict

from shared.config import Settings

if TYPE_CHECKING:
    from shared.secrets import SecretStore


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
