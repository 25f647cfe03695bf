"""Which provider serves each stage, and the secrets each one needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.config import Settings
from shared.http import ProviderHttp, RetryPolicy
from shared.lazy import load_once
from shared.security.secrets import SecretStore, build_secret_store

log = logging.getLogger(__name__)


def llm_provider(settings: Settings, secrets: SecretStore) -> str:
    if settings.llm_provider != "auto":
        return settings.llm_provider
    return "huggingface" if secrets.get("HF_API_TOKEN") else "local"


def tts_provider(settings: Settings, secrets: SecretStore) -> str:
    if settings.tts_provider != "auto":
        return settings.tts_provider
    return "elevenlabs" if secrets.get("ELEVENLABS_API_KEY") else "piper"


def active_providers(settings: Settings, secrets: SecretStore) -> dict[str, str]:
    return {
        "stt": "huggingface" if settings.stt_provider == "huggingface" else settings.stt_engine,
        "llm": llm_provider(settings, secrets),
        "tts": tts_provider(settings, secrets),
    }


def required_secrets(settings: Settings) -> dict[str, str]:
    """Secrets that explicitly chosen providers cannot work without: name -> provider."""
    needed = {}
    if settings.llm_provider == "huggingface" or settings.stt_provider == "huggingface":
        needed["HF_API_TOKEN"] = "huggingface"
    if settings.tts_provider == "elevenlabs":
        needed["ELEVENLABS_API_KEY"] = "elevenlabs"
    return needed


def log_active_providers(settings: Settings, secrets: SecretStore) -> None:
    providers = active_providers(settings, secrets)
    reasons = {
        ("llm", "auto"): "" if providers["llm"] != "local" else " (HF_API_TOKEN not set)",
        ("tts", "auto"): "" if providers["tts"] != "piper" else " (ELEVENLABS_API_KEY not set)",
    }
    chosen = {"stt": "", "llm": settings.llm_provider, "tts": settings.tts_provider}
    for stage, provider in providers.items():
        log.info(
            "%s provider: %s%s", stage.upper(), provider, reasons.get((stage, chosen[stage]), "")
        )


@load_once
def default_secrets(settings: Settings) -> SecretStore:
    """The process's secret store for these settings."""
    return build_secret_store(settings)


@dataclass(frozen=True)
class SecretHeader:
    """An auth header read from the secret store on every call, so rotation applies."""

    secrets: SecretStore
    env_name: str
    header: str
    prefix: str = ""
    required: bool = True
    needed_by: str = ""

    def __call__(self) -> dict[str, str]:
        if self.required:
            value = self.secrets.require(self.env_name, self.needed_by)
        else:
            value = self.secrets.get(self.env_name)
        return {self.header: self.prefix + value} if value else {}


@load_once
def provider_http(
    provider: str, base_url: str, auth: SecretHeader, policy: RetryPolicy
) -> ProviderHttp:
    """One pooled session per provider endpoint, shared by all requests."""
    return ProviderHttp(provider, base_url, auth, policy)
