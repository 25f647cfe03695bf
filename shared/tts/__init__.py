"""Text to speech: one interface, an engine per provider; every engine returns MP3."""

from __future__ import annotations

from typing import Protocol

from shared.config import Settings


class SpeechSynthesizer(Protocol):
    name: str

    def synthesize(self, text: str, *, voice: str | None) -> bytes:
        """MP3 bytes of `text` spoken by `voice` (a persona name; None is the default)."""
        ...


def get_synthesizer(settings: Settings) -> SpeechSynthesizer:
    from shared.tts.piper import PiperSynthesizer, load_piper

    return PiperSynthesizer(load_piper(settings.piper_voice_path), settings.mp3_bitrate_kbps)
