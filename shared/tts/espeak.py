"""espeak-ng: the embedded voice for languages no Piper voice speaks (Finnish, unless
`PIPER_VOICES` names one), and the Finnish speech of the tests and benchmarks.

espeak-ng comes from the `espeakng-loader` wheel (its library and voice data, no system
package, nothing downloaded); it is driven through its C API with ctypes. Its output is
robotic but reliably intelligible, and deterministic: the same text is always the same
audio. Whisper base hears its Finnish (the tests transcribe it back).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import numpy as np

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: the callback gets every buffer before Synth returns
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1  # espeakRATE, in words per minute
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_lock = threading.Lock()  # espeak-ng's state is global to the process


@functools.cache
def _espeak() -> tuple[ctypes.CDLL, int]:
    import espeakng_loader

    library = ctypes.CDLL(espeakng_loader.get_library_path())
    data = Path(espeakng_loader.get_data_path()).parent
    rate = library.espeak_Initialize(_SYNCHRONOUS, 0, str(data).encode(), 0)
    if rate <= 0:
        raise RuntimeError("espeak-ng did not initialise")
    return library, rate


def speak(text: str, voice: str = "fi+m3", words_per_minute: int = 140) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng's `voice` (a language code, with a variant after `+`):
    mono int16 and its rate. The defaults are the least robotic Finnish espeak-ng speaks:
    Whisper base hears it best (measured against the plain voice at its default speed)."""
    library, rate = _espeak()
    buffers: list[bytes] = []

    @_CALLBACK
    def collect(wav: ctypes.POINTER(ctypes.c_short), count: int, events: int) -> int:
        if wav and count > 0:
            buffers.append(ctypes.string_at(wav, count * 2))
        return 0

    with _lock:
        library.espeak_SetSynthCallback(collect)
        library.espeak_SetParameter(_RATE, words_per_minute, 0)
        if library.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        encoded = text.encode("utf-8") + b"\0"
        status = library.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        library.espeak_Synchronize()
    if status != 0:
        raise RuntimeError(f"espeak-ng could not speak (error {status})")
    return np.frombuffer(b"".join(buffers), dtype=np.int16).copy(), rate


# espeak-ng's voice for a Whisper language code where the code alone is not its name, or
# where a variant was measured to be heard better than the plain voice.
_VOICES = {"fi": "fi+m3", "no": "nb", "zh": "cmn"}


def voice_for(language: str) -> str:
    return _VOICES.get(language, language)


@functools.cache
def speaks(language: str) -> bool:
    """Whether espeak-ng has a voice for `language` (a code: `fi`, `sv`, ...)."""
    library, _ = _espeak()
    name = voice_for(language).split("+")[0]
    with _lock:
        return library.espeak_SetVoiceByName(name.encode()) == 0


class EspeakVoice:
    """espeak-ng's voice for one language, as the embedded voices use it: PCM in."""

    name = "espeak-ng"

    def __init__(self, language: str) -> None:
        self.language = language
        self.voice = voice_for(language)

    @property
    def sample_rate(self) -> int:
        return _espeak()[1]

    def synthesize_pcm(self, text: str) -> bytes:
        """Mono signed 16-bit PCM at `sample_rate`."""
        return speak(text, voice=self.voice)[0].tobytes()

    def identity(self, voice: str | None, language: str | None = None) -> dict[str, object]:
        return {"provider": self.name, "voice": self.voice, "sample_rate": self.sample_rate}
