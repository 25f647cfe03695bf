"""Whisper large through the Hugging Face router: the accurate option for Finnish.

The router's automatic-speech-recognition task (provider `hf-inference`) takes the audio
as base64 in a JSON body when parameters come with it, and answers `{"text": ...}`. The
language goes in `generation_parameters`, which the inference toolkit hands to Whisper's
`generate` as `generate_kwargs` (huggingface-inference-toolkit `handler.py`).

The local model does what costs nothing: it finds the speech (silence and noise are never
sent, nor paid for) and hears its language among `LANGUAGES`, so the reply's language is
known and the router transcribes in it. Only the speech is sent, as 16 kHz WAV; its
seconds are what the day's budget counts.
"""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import requests

from shared.errors import ProviderError, Unintelligible
from shared.http import ProviderHttp
from shared.stt import Transcript
from shared.stt.fasterwhisper import SAMPLE_RATE, FasterWhisperTranscriber, loops

# Fast speech is about 15 characters a second; Whisper writes at most 448 tokens a window.
MAX_CHARS_PER_SECOND = 40


class HuggingFaceTranscriber:
    name = "huggingface"
    billed = True

    def __init__(self, http: ProviderHttp, model: str, local: FasterWhisperTranscriber) -> None:
        self._http = http
        self.model = model
        self._local = local

    def transcribe(self, audio: np.ndarray, *, language: str | None) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        speech = self._local.find_speech(audio)
        if speech is None:
            return Transcript(text="", language=language or "en", duration_s=duration)
        language = language or self._local.detect_language(speech)
        body = {
            "inputs": base64.b64encode(wav_bytes(speech)).decode("ascii"),
            "parameters": {"generation_parameters": {"language": language, "task": "transcribe"}},
        }
        response = self._http.post_json(self.model, body)
        text = _text_of(response, self._http.provider)
        if len(text) > MAX_CHARS_PER_SECOND * len(speech) / SAMPLE_RATE + 100:
            # More than anyone says: not a transcript, and the question's limit would
            # blame the user for it.
            raise ProviderError(self._http.provider, "the transcript is longer than the speech")
        if loops(text):
            raise Unintelligible("the speech could not be made out; please say it again")
        return Transcript(
            text=text,
            language=language,
            duration_s=duration,
            billed_s=len(speech) / SAMPLE_RATE,
        )


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono float samples as a 16-bit WAV file."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(pcm.tobytes())
    return out.getvalue()


def _text_of(response: requests.Response, provider: str) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    text = answer.get("text") if isinstance(answer, dict) else None
    if not isinstance(text, str):
        raise ProviderError(provider, "the answer has no transcript")
    return text.strip()
