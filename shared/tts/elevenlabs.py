"""ElevenLabs text to speech: the production voice.

ElevenLabs limits the requests in flight per account (by plan); each instance keeps at
most `ELEVENLABS_MAX_IN_FLIGHT` of them and waits briefly for a slot, then gives up with
a 503 that `TTS_FALLBACK=piper` answers with the embedded voice.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator

from shared.errors import ProviderError
from shared.http import ProviderHttp
from shared.lazy import load_once
from shared.telemetry import metrics

log = logging.getLogger(__name__)

# ElevenLabs voice ids are 20 letters and digits; anything else is a persona name.
_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")


# The models that take `language_code` (the others answer it with 400), and the languages
# they speak.
LANGUAGE_CODE_MODELS = frozenset({"eleven_flash_v2_5", "eleven_turbo_v2_5"})
ELEVENLABS_LANGUAGES = frozenset(
    {
        "en",
        "ja",
        "zh",
        "de",
        "hi",
        "fr",
        "ko",
        "pt",
        "it",
        "es",
        "id",
        "nl",
        "tr",
        "fil",
        "pl",
        "sv",
        "bg",
        "ro",
        "ar",
        "cs",
        "el",
        "fi",
        "hr",
        "ms",
        "sk",
        "da",
        "ta",
        "uk",
        "ru",
        "hu",
        "no",
        "vi",
    }
)


@load_once
def request_slots(limit: int) -> threading.BoundedSemaphore:
    """The process's ElevenLabs slots."""
    return threading.BoundedSemaphore(limit)


def is_voice_id(voice: str) -> bool:
    return bool(_VOICE_ID.match(voice.strip()))


class ElevenLabsSynthesizer:
    name = "elevenlabs"
    billed = True

    def __init__(
        self,
        http: ProviderHttp,
        *,
        model: str,
        output_format: str,
        default_voice_id: str,
        voices: dict[str, str],
        stability: float,
        similarity_boost: float,
        slots: threading.BoundedSemaphore,
        slot_wait_s: float,
        allow_voice_ids: bool = False,
    ) -> None:
        self._http = http
        self._slots = slots
        self._slot_wait_s = slot_wait_s
        self._model = model
        self._output_format = output_format
        self._default_voice_id = default_voice_id
        self._voices = voices
        self._allow_voice_ids = allow_voice_ids
        self._voice_settings = {"stability": stability, "similarity_boost": similarity_boost}

    def voice_id(self, voice: str | None) -> str:
        """The voice id for a persona name, a raw voice id (when allowed), or the default."""
        if not voice:
            return self._default_voice_id
        mapped = self._voices.get(voice.strip().lower())
        if mapped:
            return mapped
        if self._allow_voice_ids and is_voice_id(voice):
            return voice.strip()
        log.warning("Unknown voice %r: using the default voice (set VOICES to map it)", voice[:40])
        return self._default_voice_id

    def language_code(self, language: str | None) -> str | None:
        """The `language_code` to send: only models that take one are given one (another
        answers 400), and only for a language they speak."""
        if language and self._model in LANGUAGE_CODE_MODELS and language in ELEVENLABS_LANGUAGES:
            return language
        return None

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        return {
            "provider": self.name,
            "model": self._model,
            "voice_id": self.voice_id(voice),
            "voice_settings": self._voice_settings,
            "output_format": self._output_format,
            "language_code": self.language_code(language),
        }

    def synthesize(self, text: str, *, voice: str | None, language: str | None = None) -> bytes:
        body: dict[str, object] = {
            "text": text,
            "model_id": self._model,
            "voice_settings": self._voice_settings,
        }
        if code := self.language_code(language):
            body["language_code"] = code
        path = f"v1/text-to-speech/{self.voice_id(voice)}"
        params = {"output_format": self._output_format}
        with self._slot():
            try:
                response = self._http.post_json(path, body, params=params)
            except ProviderError as error:
                if "language_code" not in body or error.upstream not in (400, 422):
                    raise
                # Refused as invalid, perhaps for the language code (a model that does not
                # take it): spoken without it rather than not at all.
                log.warning("ElevenLabs refused language_code %r: speaking without it", code)
                del body["language_code"]
                response = self._http.post_json(path, body, params=params)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("audio/") or not response.content:
            raise ProviderError(self.name, f"expected MP3, got {content_type or 'no content type'}")
        return response.content

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self._slot_wait_s):
            metrics.throttled(self.name, "instance_slots")
            raise ProviderError(self.name, "every request slot is busy", status=503)
        metrics.tts_in_flight(self.name, 1)
        try:
            yield
        finally:
            metrics.tts_in_flight(self.name, -1)
            self._slots.release()
