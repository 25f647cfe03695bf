"""ElevenLabs text to speech: the production voice.

ElevenLabs limits the requests in flight per account (by plan); each instance keeps at
most `ELEVENLABS_MAX_IN_FLIGHT` of them and waits briefly for a slot, then gives up with
a 503 that `TTS_FALLBACK=piper` answers with the embedded voice.

A reply spoken as it is written (`open_session`) asks for each sentence on its own, from
the streaming endpoint, with the sentences before it as `previous_text` so the voice
carries on as one reading; a slot is held only while a sentence's request is.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator

import requests
import urllib3

from shared.errors import ConfigError, ProviderError
from shared.http import ProviderHttp
from shared.lazy import load_once
from shared.telemetry import metrics
from shared.tts.mp3 import AudioFormat, FormatMismatch, Mp3Frames

log = logging.getLogger(__name__)

# ElevenLabs voice ids are 20 letters and digits; anything else is a persona name.
_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")
# `output_format` for MP3: codec, sample rate, bit rate (ElevenLabs speaks in mono).
_MP3_FORMAT = re.compile(r"^mp3_(\d+)_(\d+)$")
# The most of the reply so far sent as `previous_text`: the last few sentences are what
# carries the intonation on; more is only more to send.
PREVIOUS_TEXT_CHARS = 500
# The most read from the stream at once: what has arrived is passed on, never waited for.
READ_BYTES = 16_384


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
        body = self.request_body(text, self.language_code(language))
        with self.slot():
            response = self.post(f"v1/text-to-speech/{self.voice_id(voice)}", body)
        self.check_audio(response)
        if not response.content:
            raise ProviderError(self.name, "expected MP3, got no audio")
        return response.content

    def open_session(
        self, *, voice: str | None, language: str | None = None, match: AudioFormat | None = None
    ) -> ElevenLabsSession:
        spoken = audio_format(self._output_format)
        if match and (match.sample_rate, match.channels) != (spoken.sample_rate, spoken.channels):
            raise ProviderError(self.name, f"speaks {spoken}, not {match}")
        return ElevenLabsSession(
            self,
            f"v1/text-to-speech/{self.voice_id(voice)}/stream",
            self.language_code(language),
            spoken,
        )

    def request_body(self, text: str, language_code: str | None) -> dict[str, object]:
        body: dict[str, object] = {
            "text": text,
            "model_id": self._model,
            "voice_settings": self._voice_settings,
        }
        if language_code:
            body["language_code"] = language_code
        return body

    def post(
        self, path: str, body: dict[str, object], *, stream: bool = False
    ) -> requests.Response:
        """`body` posted (`stream`: for its answer as it is made); a language code the
        model refuses is dropped from `body` and the request sent again without it."""
        send = self._http.post_stream if stream else self._http.post_json
        params = {"output_format": self._output_format}
        try:
            return send(path, body, params=params)
        except ProviderError as error:
            if "language_code" not in body or error.upstream not in (400, 422):
                raise
            # Refused as invalid, perhaps for the language code (a model that does not
            # take it): spoken without it rather than not at all.
            log.warning(
                "ElevenLabs refused language_code %r: speaking without it", body["language_code"]
            )
            del body["language_code"]
            return send(path, body, params=params)

    def check_audio(self, response: requests.Response) -> None:
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("audio/"):
            raise ProviderError(self.name, f"expected MP3, got {content_type or 'no content type'}")

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self._slot_wait_s):
            metrics.throttled(self.name, "instance_slots")
            raise ProviderError(self.name, "every request slot is busy", status=503)
        metrics.tts_in_flight(self.name, 1)
        try:
            yield
        finally:
            metrics.tts_in_flight(self.name, -1)
            self._slots.release()


class ElevenLabsSession:
    """One reply, a sentence a request (`POST .../stream`), passed on as it arrives in
    whole MP3 frames: a stream that breaks off leaves no half frame for the voice that
    takes over to follow."""

    name = "elevenlabs"
    billed = True

    def __init__(
        self,
        synthesizer: ElevenLabsSynthesizer,
        path: str,
        language_code: str | None,
        spoken: AudioFormat,
    ) -> None:
        self.format = spoken
        self._synthesizer = synthesizer
        self._path = path
        self._language_code = language_code
        self._said: list[str] = []
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._closed = False

    def speak(self, sentence: str) -> Iterator[bytes]:
        if self._closed or not sentence.strip():
            return
        synthesizer = self._synthesizer
        body = synthesizer.request_body(sentence, self._language_code)
        if said := previous_text(self._said):
            body["previous_text"] = said
        frames = Mp3Frames(self.format)
        given = 0
        with synthesizer.slot():
            response = synthesizer.post(self._path, body, stream=True)
            if "language_code" not in body:  # refused: not asked again in this reply
                self._language_code = None
            with self._lock:
                self._response = None if self._closed else response
            try:
                synthesizer.check_audio(response)
                for data in self._arriving(response):
                    try:
                        piece = frames.feed(data)
                    except FormatMismatch as error:
                        raise ProviderError(self.name, f"sent {error}") from None
                    if piece:
                        given += len(piece)
                        yield piece
            finally:
                with self._lock:
                    self._response = None
                response.close()
        if self._closed:
            return
        if not given:
            raise ProviderError(self.name, "expected MP3, got no audio")
        if frames.pending:
            log.warning("ElevenLabs ended a stream mid-frame: %d bytes left out", frames.pending)
        self._said.append(sentence.strip())

    def _arriving(self, response: requests.Response) -> Iterator[bytes]:
        """The body as it arrives, until it ends, the connection fails (ProviderError, as
        a failed connection is), or the session is closed."""
        while not self._closed:
            try:
                data = response.raw.read1(READ_BYTES, decode_content=True)
            except Exception as error:
                if self._closed:  # aborted from another thread: whatever it raised
                    return
                if isinstance(error, urllib3.exceptions.ReadTimeoutError):
                    raise ProviderError(self.name, "timed out mid-stream", status=503) from None
                if isinstance(error, (urllib3.exceptions.HTTPError, OSError)):
                    raise ProviderError(self.name, "the stream broke off", status=503) from None
                raise
            if not data:
                return
            yield data

    def finish(self) -> bytes:
        return b""  # every sentence is a whole MP3 stream of its own

    def close(self) -> None:
        with self._lock:
            self._closed = True
            response, self._response = self._response, None
        if response is not None:
            abort(response)


def abort(response: requests.Response) -> None:
    """End a streamed response now, even while another thread waits on it: the socket is
    shut first (which wakes a blocked read; closing alone does not), then closed, so the
    server sees the client go."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # no socket, or released
        response.raw.shutdown()
    with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
        response.close()


def audio_format(output_format: str) -> AudioFormat:
    """What an `output_format` such as `mp3_22050_32` makes: 22050 Hz, mono, 32 kbps."""
    found = _MP3_FORMAT.match(output_format)
    if not found:
        raise ConfigError(
            f"ELEVENLABS_OUTPUT_FORMAT={output_format!r}: a reply spoken as it is written "
            "needs an MP3 format (mp3_<sample rate>_<kbps>)"
        )
    return AudioFormat(int(found[1]), 1, int(found[2]))


def previous_text(said: list[str], limit: int = PREVIOUS_TEXT_CHARS) -> str:
    """The sentences spoken so far, as many of the last ones as fit in `limit` characters;
    where even the last does not, its end from a word on."""
    kept: list[str] = []
    size = 0
    for sentence in reversed(said):
        size += len(sentence) + bool(kept)
        if size > limit:
            break
        kept.insert(0, sentence)
    if kept or not said:
        return " ".join(kept)
    tail = said[-1][-limit:]
    return tail.split(" ", 1)[1] if " " in tail[1:] else tail
