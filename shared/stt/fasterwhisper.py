"""faster-whisper (CTranslate2) with Silero VAD: the default speech-to-text engine.

A phone question is a few seconds long, but Whisper's encoder normally reads a 30 s window,
so most of its work is spent on padding (200 of the 250 ms that `tiny.en` takes here for a
3 s question). Questions whose speech fits a shorter window are encoded in that window
instead: CTranslate2 accepts any length up to 30 s. The window keeps at least
`SHORT_WINDOW_MIN_S` and two seconds of silence after the speech; with less, the model
often fails to end its transcript and repeats itself. Longer speech takes faster-whisper's
usual 30 s path.

The short window decodes with the guards faster-whisper's own `transcribe` applies: a
transcript that compresses too well (it repeats itself) or that the model has little
confidence in is decoded again at a higher temperature, and a window the model judges
to hold no speech gives none, once the full 30 s window, which that judgment is calibrated
on, agrees. A transcript that still loops is refused as unintelligible
rather than handed to the language model.

The language is detected only among the languages the service expects (`LANGUAGES`): left
free, Whisper base labels some English phone clips as Thai.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import SpeechTooCostly, Unintelligible
from shared.lazy import load_once
from shared.stt import Transcript

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100
SHORT_WINDOW_MIN_S = 10
SILENCE_AFTER_SPEECH_S = 2
FULL_WINDOW_S = 30
MAX_NEW_TOKENS = 224
# faster-whisper's own defaults for its fallback.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Speech longer than a window decodes window after window: a shorter ladder with fewer
# samples, so audio that no temperature makes sense of cannot buy six decodes of five
# samples per 30 s (63-75 CPU-seconds for 112 s of one phrase repeated).
LONG_TEMPERATURES = (0.0, 0.4, 0.8)
LONG_BEST_OF = 2
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
BEST_OF = 3  # samples per temperature above 0
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class _Attempt:
    text: str
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    complete: bool = True  # ended by the model, not cut at its length limit

    @property
    def needs_fallback(self) -> bool:
        return (
            self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
            or self.avg_logprob < LOG_PROB_THRESHOLD
        )


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loops(text: str) -> bool:
    """Whether a transcript repeats itself: what a model that does not understand the audio
    produces ("I can't get it, but" 16 times; "I'm leaving my name, I'm leaving my name, and
    I'm leaving my name")."""
    words = [w.lower() for w in _WORD.findall(text)]
    return (
        _repeats_running(words)
        or _repeats_throughout(words)
        or (len(text) >= 40 and compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD)
    )


def _repeats_running(words: list[str]) -> bool:
    """One phrase said over and over, back to back. "No, no, no, no" can be meant: a word
    must come six times running, two words four times, and a phrase of three words or more
    three times (the last time perhaps a word short)."""
    for size in range(1, 13):
        times = 6 if size == 1 else 4 if size == 2 else 3
        tail = size if size < 3 else size - 1
        for start in range(len(words) - (times - 1) * size - tail + 1):
            phrase = words[start : start + size]
            spans = [words[start + k * size : start + (k + 1) * size] for k in range(times)]
            if all(span == phrase for span in spans[:-1]) and spans[-1][:tail] == phrase[:tail]:
                return True
    return False


def _repeats_throughout(words: list[str]) -> bool:
    """A phrase of four words or more that comes three times or more, with words between
    its repeats, and makes up half the transcript or more. Three words is too short: "I
    want to go, I want to eat, I want to sleep" is a question."""
    for size in range(4, 13):
        counts = Counter(tuple(words[i : i + size]) for i in range(len(words) - size + 1))
        for _phrase, times in counts.most_common(1):
            if times >= 3 and times * size >= 0.5 * len(words):
                return True
    return False


class CpuBudget:
    """The CPU time a transcription may take, checked between decodes. It is the process's
    CPU clock (CTranslate2 decodes on threads of its own), so decodes of other requests
    running at the same time count too: the limit leaves room for that."""

    def __init__(self, seconds: float) -> None:
        self._limit = seconds
        self._started = time.process_time()

    def check(self) -> None:
        spent = time.process_time() - self._started
        if spent > self._limit:
            log.warning("Transcription stopped after %.1f CPU-seconds (its budget)", spent)
            raise SpeechTooCostly("transcribing is too busy right now; send it again shortly", 5)


class FasterWhisperTranscriber:
    name = "faster-whisper"
    billed = False

    def __init__(
        self,
        model: WhisperModel,
        beam_size: int,
        languages: tuple[str, ...] = ("en",),
        cpu_budget_s: float = math.inf,
    ) -> None:
        self._model = model
        self._beam_size = beam_size
        self._languages = languages
        self._cpu_budget_s = cpu_budget_s

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        if not self.multilingual:
            language = "en"
        speech = self.find_speech(audio)
        if speech is None:
            return Transcript(text="", language=language or self._languages[0], duration_s=duration)
        window_s = _window_s(speech)
        budget = CpuBudget(self._cpu_budget_s)
        if window_s < FULL_WINDOW_S:
            text, language = self._transcribe_window(speech, window_s, language, budget)
        else:
            text, language = self._transcribe_long(speech, language, budget)
        if text and loops(text):
            raise Unintelligible("the speech could not be made out; please say it again")
        return Transcript(text=text, language=language, duration_s=duration)

    @staticmethod
    def find_speech(audio: np.ndarray) -> np.ndarray | None:
        """The speech in `audio` (Silero VAD), the pauses around it cut; None when there
        is none."""
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        chunks = get_speech_timestamps(audio, VadOptions())
        return np.concatenate(collect_chunks(audio, chunks)[0]) if chunks else None

    def detect_language(self, speech: np.ndarray) -> str:
        """The expected language (`LANGUAGES`) that `speech` is in, heard in its first
        window."""
        if not self.multilingual:
            return "en"
        window_s = min(_window_s(speech), FULL_WINDOW_S)
        speech_s = min(len(speech) / SAMPLE_RATE, FULL_WINDOW_S)
        language, _ = self._choose_language(self._encode(speech, window_s), speech_s)
        return language

    def _allowed_probabilities(self, encoded: object) -> dict[str, float]:
        """Whisper's language probabilities for the encoded audio, for the expected
        languages only."""
        [probabilities] = self._model.model.detect_language(encoded)
        return {token[2:-2]: p for token, p in probabilities if token[2:-2] in self._languages}

    def _transcribe_window(
        self, speech: np.ndarray, window_s: int, language: str | None, budget: CpuBudget
    ) -> tuple[str, str]:
        encoded = self._encode(speech, window_s)  # once, for detection and every decode
        first: _Attempt | None = None
        if self.multilingual and not language:
            language, first = self._choose_language(encoded, len(speech) / SAMPLE_RATE)
        language = language or "en"
        text = self._decode_with_fallback(encoded, language, budget, first)
        if text is None:
            # Whisper's no-speech judgment is calibrated on 30 s windows and runs high in a
            # short one (a clear 2 s Finnish question: 0.60 there, 0.38 in 30 s). Speech the
            # VAD found is refused as silence only if the full window agrees.
            budget.check()
            text = self._decode_with_fallback(self._encode(speech, FULL_WINDOW_S), language, budget)
        return text or "", language

    def _encode(self, speech: np.ndarray, window_s: int) -> object:
        padded = np.zeros(window_s * SAMPLE_RATE, dtype=np.float32)
        padded[: len(speech)] = speech[: window_s * SAMPLE_RATE]
        features = self._model.feature_extractor(padded)[:, : window_s * FRAMES_PER_SECOND]
        return self._model.encode(features)

    def _choose_language(self, encoded: object, speech_s: float) -> tuple[str, _Attempt | None]:
        """The expected language the speech is in. When Whisper's own detection is sure, that
        one; else the one the model decodes the speech most confidently in (a short
        greedy decode in each), which tells Finnish from English where detection, which
        ranks every language it knows, does not."""
        probabilities = self._allowed_probabilities(encoded)
        best = max(probabilities, key=probabilities.__getitem__, default=self._languages[0])
        share = probabilities.get(best, 0.0) / (sum(probabilities.values()) or 1.0)
        if len(self._languages) == 1 or (probabilities.get(best, 0.0) >= 0.5 and share >= 0.9):
            return best, None
        # About a dozen tokens a second of speech is plenty; a wrong language that loops
        # is cut there instead of at the model's limit.
        max_length = min(MAX_NEW_TOKENS, 16 + math.ceil(12 * speech_s))
        attempts = {
            code: self._decode(encoded, code, temperature=0.0, max_length=max_length)
            for code in self._languages
        }
        plausible = {
            code: attempt
            for code, attempt in attempts.items()
            if attempt.compression_ratio <= COMPRESSION_RATIO_THRESHOLD and not loops(attempt.text)
        } or attempts
        chosen = max(
            plausible,
            key=lambda code: (plausible[code].avg_logprob, probabilities.get(code, 0.0)),
        )
        # The chosen language's decode is the first attempt, unless it was cut short.
        return chosen, attempts[chosen] if attempts[chosen].complete else None

    def _decode(
        self,
        encoded: object,
        language: str,
        *,
        temperature: float,
        max_length: int = MAX_NEW_TOKENS,
    ) -> _Attempt:
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self.multilingual,
            task="transcribe",
            language=language if self.multilingual else "en",
        )
        sampling = (
            {"beam_size": self._beam_size}
            if temperature == 0
            else {
                "beam_size": 1,
                "num_hypotheses": BEST_OF,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        )
        result = self._model.model.generate(
            encoded,
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]],
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
            **sampling,
        )[0]
        generated = result.sequences_ids[0]
        tokens = [t for t in generated if t < tokenizer.eot]
        text = tokenizer.decode(tokens).strip()
        # CTranslate2 scores a sequence by its log probability over its length.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        complete = len(generated) < max_length - 1
        return _Attempt(text, avg_logprob, compression_ratio(text), result.no_speech_prob, complete)

    def _decode_with_fallback(
        self, encoded: object, language: str, budget: CpuBudget, first: _Attempt | None = None
    ) -> str | None:
        """The transcript of the encoded window, or None where the model judges that it
        holds no speech."""
        attempts: list[_Attempt] = []
        for temperature in TEMPERATURES:
            if temperature == 0 and first is not None:
                attempt = first
            else:
                budget.check()
                attempt = self._decode(encoded, language, temperature=temperature)
            if (
                attempt.no_speech_prob > NO_SPEECH_THRESHOLD
                and attempt.avg_logprob < LOG_PROB_THRESHOLD
            ):
                return None
            if not attempt.needs_fallback:
                return attempt.text
            attempts.append(attempt)
            if len(attempts) >= 2 and all(loops(a.text) for a in attempts[-2:]):
                break  # it repeats itself whatever the temperature: more samples will too
        # None passed: the most confident of those that do not repeat themselves, as
        # faster-whisper does; the caller refuses it if it still loops.
        readable = [a for a in attempts if a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
        return max(readable or attempts, key=lambda a: a.avg_logprob).text

    def _transcribe_long(
        self, speech: np.ndarray, language: str | None, budget: CpuBudget
    ) -> tuple[str, str]:
        language = language or self.detect_language(speech)
        segments, info = self._model.transcribe(
            speech,
            language=language if self.multilingual else None,
            beam_size=self._beam_size,
            temperature=LONG_TEMPERATURES,
            best_of=LONG_BEST_OF,
            vad_filter=False,  # already applied
            condition_on_previous_text=False,
            # Timestamps let it cut 30 s windows at segment ends: without them, words that
            # straddle a window are lost (58% WER on 47 s of speech, against 1%).
            without_timestamps=False,
        )
        texts: list[str] = []
        looping_windows: set[int] = set()
        # Segments come as each window is decoded. A second window that loops ends the work
        # (one may be a laugh, "ha ha ha"; two, the rest of a recording not worth
        # decoding), and so does a transcript that loops as a whole, and the budget.
        for segment in segments:
            texts.append(segment.text.strip())
            if segment.compression_ratio > COMPRESSION_RATIO_THRESHOLD:
                looping_windows.add(segment.seek)
            if len(looping_windows) > 1 or loops(" ".join(texts)):
                raise Unintelligible("the speech could not be made out; please say it again")
            budget.check()
        return " ".join(texts).strip(), info.language


def _window_s(speech: np.ndarray) -> int:
    """The window `speech` is encoded in: room for two seconds of silence after it."""
    return max(SHORT_WINDOW_MIN_S, math.ceil(len(speech) / SAMPLE_RATE + SILENCE_AFTER_SPEECH_S))


@load_once
def load_whisper_model(path: str, compute_type: str) -> WhisperModel:
    from faster_whisper import WhisperModel

    log.info("Loading Whisper model %s (%s)", Path(path).name or path, compute_type)
    # One CTranslate2 thread per core: its default oversubscribes a small machine.
    return WhisperModel(
        path, device="cpu", compute_type=compute_type, cpu_threads=os.cpu_count() or 1
    )
