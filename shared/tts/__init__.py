"""Text to speech: one interface, an engine per provider; every engine returns MP3.

A reply is spoken whole (`synthesize`) or a sentence at a time in a session
(`open_session`), whose pieces join into one MP3 stream; a session of the embedded voice
opened with `match=` continues, in the same format, a stream another session began.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from shared.config import Settings
from shared.tts.mp3 import AudioFormat

if TYPE_CHECKING:
    from shared.security.secrets import SecretStore

log = logging.getLogger(__name__)


class SpeechSession(Protocol):
    """One reply spoken a sentence at a time: the pieces `speak` and `finish` return,
    concatenated, are one MP3 stream of `format` (whole frames, no tags in between)."""

    name: str
    billed: bool
    format: AudioFormat

    def speak(self, sentence: str) -> Iterator[bytes]:
        """MP3 of `sentence`, in pieces as they are made. A provider's failure raises
        ProviderError, after any pieces already given (each of them whole frames, so
        another session can take over the stream)."""
        ...

    def finish(self) -> bytes:
        """What the encoder still holds at the end of the reply (b"" where there is none)."""
        ...

    def close(self) -> None:
        """Stop: the client went away. A request in flight is aborted; `speak` gives
        nothing more. Safe from another thread, and more than once."""
        ...


class SpeechSynthesizer(Protocol):
    name: str
    billed: bool  # each character spoken costs money (and counts against the day's budget)

    def synthesize(self, text: str, *, voice: str | None, language: str | None = None) -> bytes:
        """MP3 bytes of `text`, in `language` (a code; None: as the text reads), spoken by
        `voice` (a persona name; None is the default)."""
        ...

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        """Everything besides the text that changes the audio: a cache key's other half."""
        ...

    def open_session(
        self, *, voice: str | None, language: str | None = None, match: AudioFormat | None = None
    ) -> SpeechSession:
        """A session for one reply. `match`: the format of the stream it continues (a
        session that cannot make that format raises ProviderError)."""
        ...


def embedded_synthesizer(settings: Settings, language: str | None = None) -> SpeechSynthesizer:
    """The offline voice for `language`: the shipped Piper voice where it speaks it; else
    the Piper voice `PIPER_VOICES` names for it, or espeak-ng's, with the shipped voice
    for what follows the offline notice (`shared.tts.embedded`). A language neither
    speaks is read by the shipped voice, never silence; the log says so."""
    from shared.tts import espeak
    from shared.tts.embedded import EmbeddedSynthesizer
    from shared.tts.piper import PiperSynthesizer, load_piper

    default = PiperSynthesizer(load_piper(settings.piper_voice_path), settings.mp3_bitrate_kbps)
    if not language or default.speaks(language):
        return default
    path = settings.piper_voice_map().get(language)
    if path:
        speaker = PiperSynthesizer(load_piper(path), settings.mp3_bitrate_kbps)
        if not speaker.speaks(language):
            log.warning("PIPER_VOICES names a voice for %r that speaks another language", language)
    elif espeak.speaks(language):
        speaker = espeak.EspeakVoice(language)
    else:
        log.warning(
            "No embedded voice speaks %r (set PIPER_VOICES): the default voice reads it",
            language,
        )
        return default
    return EmbeddedSynthesizer(speaker, default, language, settings.mp3_bitrate_kbps)


SLOT_WAIT_S, SLOT_WAIT_WITH_FALLBACK_S = 10.0, 1.0


def get_synthesizer(
    settings: Settings, secrets: SecretStore, language: str | None = None
) -> SpeechSynthesizer:
    from shared.http import RetryPolicy
    from shared.providers import SecretHeader, provider_http, tts_provider

    if tts_provider(settings, secrets) == "piper":
        return embedded_synthesizer(settings, language)

    from shared.tts.elevenlabs import ElevenLabsSynthesizer, request_slots

    auth = SecretHeader(secrets, "ELEVENLABS_API_KEY", "xi-api-key", "", True, "elevenlabs")
    http = provider_http(
        "elevenlabs", settings.elevenlabs_base_url, auth, RetryPolicy.from_settings(settings)
    )
    return ElevenLabsSynthesizer(
        http,
        model=settings.elevenlabs_model,
        output_format=settings.elevenlabs_output_format,
        default_voice_id=settings.voice_id,
        voices=settings.voice_map(),
        stability=settings.elevenlabs_stability,
        similarity_boost=settings.elevenlabs_similarity_boost,
        allow_voice_ids=settings.allow_voice_ids == "on",
        slots=request_slots(settings.elevenlabs_max_in_flight),
        # With the embedded voice to fall back on, a user is better answered by it now
        # than by the paid voice after a long wait.
        slot_wait_s=SLOT_WAIT_WITH_FALLBACK_S if settings.tts_fallback else SLOT_WAIT_S,
    )
