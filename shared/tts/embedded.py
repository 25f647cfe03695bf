"""The offline voices of a reply in a language the shipped Piper voice does not speak.

The reply's language is spoken by the Piper voice `PIPER_VOICES` names for it, or else by
espeak-ng; a reply that opens with the offline notice (`shared.languages`) says the notice
in that voice and the English answer after it in the English voice. Both voices feed one
MP3 encoder, so the reply is one stream whichever voice speaks which part.
"""

from __future__ import annotations

import logging
from typing import Protocol

from shared.languages import split_notice
from shared.tts.mp3 import AudioFormat, PcmSession, StreamEncoder, resample

log = logging.getLogger(__name__)


class PcmVoice(Protocol):
    name: str

    @property
    def sample_rate(self) -> int: ...

    def synthesize_pcm(self, text: str) -> bytes:
        """Mono signed 16-bit PCM at `sample_rate`."""
        ...

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        """Everything besides the text that changes the audio."""
        ...


class EmbeddedSynthesizer:
    """`speaker` for `language`, `english` for what follows the offline notice."""

    billed = False

    def __init__(
        self, speaker: PcmVoice, english: PcmVoice, language: str, bitrate_kbps: int
    ) -> None:
        self.name = speaker.name
        self._speaker = speaker
        self._english = english
        self._language = language
        self._bitrate_kbps = bitrate_kbps

    @property
    def sample_rate(self) -> int:
        return self._english.sample_rate

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        return {
            "provider": self.name,
            "language": self._language,
            "speaker": self._speaker.identity(None, self._language),
            "english": self._english.identity(None, "en"),
            "bitrate_kbps": self._bitrate_kbps,
        }

    def synthesize(self, text: str, *, voice: str | None, language: str | None = None) -> bytes:
        session = self.open_session(voice=voice, language=language)
        return b"".join(session.speak(text)) + session.finish()

    def open_session(
        self, *, voice: str | None, language: str | None = None, match: AudioFormat | None = None
    ) -> PcmSession:
        if voice:
            log.info("Voice %r asked for: the embedded voices have one voice each", voice)
        target = match or AudioFormat(self.sample_rate, 1, self._bitrate_kbps)
        encoder = StreamEncoder(target, self.sample_rate)
        return PcmSession(self.name, encoder, _Voices(self))

    def parts(self, text: str, first: bool, english: bool) -> list[tuple[PcmVoice, str]]:
        """Who says what of `text`: the offline notice, which only ever opens a reply, in
        the user's language and the rest in English; once a reply has opened with it,
        all of it in English (`english`); without a notice, all in the user's language."""
        notice, rest = split_notice(text, self._language) if first else ("", text)
        if notice:
            return [(self._speaker, notice), (self._english, rest)]
        return [(self._english if english else self._speaker, text)]

    def pcm(self, parts: list[tuple[PcmVoice, str]]) -> bytes:
        return b"".join(
            resample(voice.synthesize_pcm(text), voice.sample_rate, self.sample_rate)
            for voice, text in parts
            if text.strip()
        )


class _Voices:
    """Who says each sentence of one reply: the first may open with the notice, after
    which the rest is English."""

    def __init__(self, synthesizer: EmbeddedSynthesizer) -> None:
        self._synthesizer = synthesizer
        self._said = False
        self._english = False

    def __call__(self, sentence: str) -> bytes:
        parts = self._synthesizer.parts(sentence, first=not self._said, english=self._english)
        self._english = self._english or len(parts) > 1
        self._said = True
        return self._synthesizer.pcm(parts)
