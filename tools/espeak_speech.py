"""Speech in any language espeak-ng speaks, for tests and benchmarks of languages the
embedded Piper voice does not speak (Finnish among them).

espeak-ng comes from the `espeakng-loader` wheel (its library and voice data, no system
package); it is driven through its C API with ctypes. Its output is robotic but reliably
intelligible, and deterministic: the same text is always the same audio.
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
