"""Secrets: from the environment, then local files, then Azure Key Vault.

Values are cached for `SECRET_TTL_SECONDS`, so a secret rotated in Key Vault is used
without a restart. Values never appear in a repr, an error or a log line: the store
registers every value it hands out with `redact`, which the log handlers apply.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shared.config import Settings, local_values
from shared.errors import ConfigError

if TYPE_CHECKING:
    from azure.keyvault.secrets import SecretClient

log = logging.getLogger(__name__)

# Environment name -> Key Vault secret name.
SECRET_NAMES: dict[str, str] = {
    "HF_API_TOKEN": "hf-api-token",
    "ELEVENLABS_API_KEY": "elevenlabs-api-key",
    "LLM_API_KEY": "llm-api-key",
}
SECRET_DOCS: dict[str, str] = {
    "HF_API_TOKEN": "Hugging Face Inference token (Key Vault: `hf-api-token`).",
    "ELEVENLABS_API_KEY": "ElevenLabs API key (Key Vault: `elevenlabs-api-key`).",
    "LLM_API_KEY": "API key for `LLM_BASE_URL` (Key Vault: `llm-api-key`).",
}
# What an HTTP header value may hold: visible ASCII and inner spaces.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
# How long a Key Vault that could not be reached is left alone before the next try.
_FAILURE_BACKOFF_S = 30.0


class MissingSecret(ConfigError):
    status = 503
    code = "missing_secret"


class SourceUnavailable(Exception):
    """A secret store could not be asked (network, identity, permissions)."""


class SecretSource(Protocol):
    name: str

    def get(self, env_name: str) -> str | None: ...


class MappingSource:
    def __init__(self, name: str, values: Mapping[str, str]) -> None:
        self.name = name
        self._values = values

    def __repr__(self) -> str:
        return f"MappingSource({self.name!r})"

    def get(self, env_name: str) -> str | None:
        return self._values.get(env_name) or None


class KeyVaultSource:
    """Secrets from Key Vault, read with the app's managed identity (or a developer login)."""

    name = "Key Vault"

    def __init__(self, vault_url: str, client_id: str = "", **client_options: object) -> None:
        self.vault_url = vault_url
        self._client_id = client_id
        self._client_options = client_options
        self._client: SecretClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyVaultSource({self.vault_url!r})"

    def _secret_client(self) -> SecretClient:
        with self._lock:
            if self._client is None:
                from azure.identity import DefaultAzureCredential
                from azure.keyvault.secrets import SecretClient

                credential = DefaultAzureCredential(
                    managed_identity_client_id=self._client_id or None
                )
                self._client = SecretClient(self.vault_url, credential, **self._client_options)
            return self._client

    def get(self, env_name: str) -> str | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self._secret_client().get_secret(SECRET_NAMES[env_name]).value or None
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            log.warning("Key Vault: %s", type(error).__name__)
            raise SourceUnavailable("unreachable") from error


class SecretStore:
    def __init__(
        self,
        sources: list[SecretSource],
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._down: dict[str, tuple[float, str]] = {}  # source name -> (until, reason)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SecretStore({[s.name for s in self.sources]})"

    def get(self, env_name: str) -> str | None:
        if env_name not in SECRET_NAMES:
            raise KeyError(env_name)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(env_name)
            if cached and cached[0] > now:
                return cached[1]
            raw, complete = self._lookup(env_name, now)
            if raw:
                redact.register(raw)
            # A line break pasted with a key is not part of it.
            value = raw.strip() if raw else None
            if value and not _HEADER_VALUE.fullmatch(value):
                raise ConfigError(
                    f"{env_name} holds characters a request header cannot carry "
                    "(a line break or a control character inside it): set it again"
                )
            # A miss while a source is down is re-checked soon, not after the full TTL.
            ttl = self._ttl_s if value or complete else _FAILURE_BACKOFF_S
            self._cache[env_name] = (now + ttl, value or None)
        return value or None

    def clear(self) -> None:
        """Forget cached values, e.g. after a secret was entered at a prompt."""
        with self._lock:
            self._cache.clear()

    def require(self, env_name: str, needed_by: str) -> str:
        value = self.get(env_name)
        if value:
            return value
        looked_in = ", ".join(s.name for s in self.sources)
        problems = "".join(f"; {reason}" for reason in self.problems())
        raise MissingSecret(
            f"{needed_by} needs {env_name}, which is not set ({looked_in}{problems})"
        )

    def problems(self) -> list[str]:
        """Why sources are not being asked right now, e.g. an unreachable Key Vault."""
        now = self._clock()
        return [reason for until, reason in self._down.values() if until > now]

    def _lookup(self, env_name: str, now: float) -> tuple[str | None, bool]:
        """The first source's value, and whether every source could be asked."""
        complete = True
        for source in self.sources:
            down = self._down.get(source.name)
            if down and down[0] > now:
                complete = False
                continue
            try:
                value = source.get(env_name)
            except SourceUnavailable:
                reason = f"{source.name} unreachable"
                log.warning("Cannot read %s: %s", env_name, reason)
                self._down[source.name] = (now + _FAILURE_BACKOFF_S, reason)
                complete = False
                continue
            self._down.pop(source.name, None)
            if value:
                return value, True
        return None, complete


def build_secret_store(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    root: Path | None = None,
    **key_vault_options: object,
) -> SecretStore:
    sources: list[SecretSource] = [MappingSource("environment", environ or os.environ)]
    local = local_values(root) if root else local_values()
    if local:
        sources.append(MappingSource(".env/local.settings.json", local))
    if settings.key_vault_url:
        sources.append(
            KeyVaultSource(settings.key_vault_url, settings.azure_client_id, **key_vault_options)
        )
    return SecretStore(sources, settings.secret_ttl_seconds)


class Redactor(logging.Filter):
    """Replaces every known secret value in log records with `***`."""

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()

    def register(self, value: str) -> None:
        """Redact `value` and, in case it arrived with whitespace around or inside it, each
        of its pieces long enough to be unmistakable."""
        for piece in {value, value.strip(), *value.split()}:
            if len(piece) >= 8 or (piece == value.strip() and len(piece) >= 4):
                self._values.add(piece)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._values:
            message = record.getMessage()
            cleaned = self(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info:  # a traceback's messages may quote a header, and so a key
                record.exc_text = self(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True

    def install(self) -> None:
        """Apply to every handler of the root logger (the Functions host's and ours)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)


redact = Redactor()
