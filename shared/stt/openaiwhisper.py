"""openai-whisper: the original backend's engine, behind the same interface, for comparison.

It runs as the original ran it: PyTorch in float32, greedy decoding with temperature
fallback, no VAD. Installed by requirements-openai-whisper.txt, never deployed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import ConfigError
from shared.lazy import load_once
from shared.stt import Transcript

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger(__name__)


class OpenAIWhisperTranscriber:
    name = "openai-whisper"
    billed = False

    def __init__(self, loaded: tuple[Whisper, threading.Lock], beam_size: int) -> None:
        self._model, self._lock = loaded
        self._beam_size = beam_size

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        if not self._model.is_multilingual:
            language = "en"
        # Decoding installs hooks on the shared model for its key/value cache: one at a time.
        with self._lock:
            result = self._model.transcribe(
                audio,
                language=language,
                fp16=False,
                beam_size=self._beam_size if self._beam_size > 1 else None,
                verbose=None,
            )
        return Transcript(
            text=str(result["text"]).strip(),
            language=str(result["language"]),
            duration_s=len(audio) / 16_000,
        )


@load_once
def load_openai_whisper(model: str) -> tuple[Whisper, threading.Lock]:
    """An openai-whisper model by name (downloaded on first use) or checkpoint path."""
    try:
        import whisper
    except ImportError:
        raise ConfigError(
            "STT_ENGINE=openai-whisper needs requirements-openai-whisper.txt installed"
        ) from None
    path = Path(model).expanduser()
    log.info("Loading openai-whisper model %s", path.name if path.is_file() else model)
    loaded = whisper.load_model(str(path) if path.is_file() else model, device="cpu")
    return loaded, threading.Lock()
