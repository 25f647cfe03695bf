"""ElevenLabs text to speech: the production voice."""

from __future__ import annotations

import logging
import re

from shared.errors import ProviderError
from shared.http import ProviderHttp

log = logging.getLogger(__name__)

# ElevenLabs voice ids are 20 letters and digits; anything else is a persona name.
_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")


def is_voice_id(voice: str) -> bool:
    return bool(_VOICE_ID.match(voice.strip()))


class ElevenLabsSynthesizer:
    name = "elevenlabs"

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
        allow_voice_ids: bool = False,
    ) -> None:
        self._http = http
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

    def identity(self, voice: str | None) -> dict[str, object]:
        return {
            "provider": self.name,
            "model": self._model,
            "voice_id": self.voice_id(voice),
            "voice_settings": self._voice_settings,
            "output_format": self._output_format,
        }

    def synthesize(self, text: str, *, voice: str | None) -> bytes:
        response = self._http.post_json(
            f"v1/text-to-speech/{self.voice_id(voice)}",
            {"text": text, "model_id": self._model, "voice_settings": self._voice_settings},
            params={"output_format": self._output_format},
        )
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("audio/") or not response.content:
            raise ProviderError(self.name, f"expected MP3, got {content_type or 'no content type'}")
        return response.content
