"""Speech to text: one interface, an engine per provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared.config import Settings

if TYPE_CHECKING:
    from shared.security.secrets import SecretStore


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration_s: float
    billed_s: float = 0.0  # seconds of audio a paid provider transcribed


class Transcriber(Protocol):
    name: str
    billed: bool  # each second transcribed costs money (and counts against the day's budget)

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        """Transcribe 16 kHz mono float32 `audio`; `language` None means detect (among the
        expected languages); Unintelligible when what comes out is not a transcript."""
        ...


def is_known_language(code: str) -> bool:
    """Whether Whisper knows the language code (`en`, `fi`, `haw`, ...)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return code in _LANGUAGE_CODES


def check_model_source(settings: Settings) -> None:
    """ConfigError for a Whisper model that would be downloaded when first used."""
    from shared.stt.models import check_model_source as check

    check(settings)


def get_transcriber(settings: Settings, secrets: SecretStore | None = None) -> Transcriber:
    """The transcriber `STT_PROVIDER` names."""
    if settings.stt_provider != "huggingface":
        return local_transcriber(settings)
    from shared.http import RetryPolicy
    from shared.providers import SecretHeader, default_secrets, provider_http
    from shared.stt.fasterwhisper import FasterWhisperTranscriber
    from shared.stt.huggingface import HuggingFaceTranscriber

    local = local_transcriber(settings)
    assert isinstance(local, FasterWhisperTranscriber)  # Settings.validate sees to it
    store = secrets or default_secrets(settings)
    auth = SecretHeader(store, "HF_API_TOKEN", "Authorization", "Bearer ", True, "huggingface")
    http = provider_http(
        "huggingface-stt", settings.hf_stt_base_url, auth, RetryPolicy.from_settings(settings)
    )
    return HuggingFaceTranscriber(http, settings.hf_stt_model, local)


def local_transcriber(settings: Settings) -> Transcriber:
    """The in-process engine `STT_ENGINE` names."""
    if settings.stt_engine == "openai-whisper":
        from shared.stt.openaiwhisper import OpenAIWhisperTranscriber, load_openai_whisper

        loaded = load_openai_whisper(settings.whisper_model)
        return OpenAIWhisperTranscriber(loaded, settings.whisper_beam_size)

    from shared.stt.fasterwhisper import FasterWhisperTranscriber, load_whisper_model
    from shared.stt.models import resolve

    model = load_whisper_model(resolve(settings), settings.whisper_compute_type)
    return FasterWhisperTranscriber(
        model, settings.whisper_beam_size, settings.language_list, settings.max_stt_cpu_seconds
    )
