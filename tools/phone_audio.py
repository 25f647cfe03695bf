"""Encode PCM into the containers phones upload, for samples, tests and benchmarks.

Each format mirrors a real recorder: Android's MediaRecorder (MPEG-4/AAC at 16 kHz,
3GP/AMR-NB at 8 kHz), browsers and messaging apps (Ogg and WebM Opus), and files people
pick from storage (MP3, FLAC, WAV at CD rate in stereo).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from shared.tts.piper import PiperSynthesizer, load_piper


@dataclass(frozen=True)
class PhoneFormat:
    extension: str
    container: str
    codec: str
    rate: int
    channels: int
    content_type: str
    bit_rate: int | None = None


PHONE_FORMATS: dict[str, PhoneFormat] = {
    f.extension: f
    for f in (
        PhoneFormat("m4a", "mp4", "aac", 16_000, 1, "audio/mp4", 96_000),
        PhoneFormat("3gp", "3gp", "libopencore_amrnb", 8_000, 1, "audio/3gpp", 12_200),
        PhoneFormat("ogg", "ogg", "libopus", 48_000, 1, "audio/ogg", 24_000),
        PhoneFormat("webm", "webm", "libopus", 48_000, 1, "audio/webm", 24_000),
        PhoneFormat("mp3", "mp3", "libmp3lame", 22_050, 1, "audio/mpeg", 64_000),
        PhoneFormat("flac", "flac", "flac", 44_100, 2, "audio/flac"),
        PhoneFormat("wav", "wav", "pcm_s16le", 44_100, 2, "audio/wav"),
    )
}


def encode(
    pcm: np.ndarray,
    rate: int,
    extension: str,
    *,
    index_first: bool = False,
    bit_rate: int | None = None,
) -> bytes:
    """Encode mono int16 `pcm` sampled at `rate` as a phone upload of type `extension`, at
    `bit_rate` where given (a recorder set to save space: 32 kbit/s AAC) instead of the
    format's own.

    An MPEG-4 file has its index (`moov`) after the audio, as a recorder that stops
    writes it, or with `index_first` before it, as Android's MediaRecorder does when the
    space it reserved at the start is enough and as "fast start" files have it.
    """
    fmt = PHONE_FORMATS[extension]
    if bit_rate:
        fmt = replace(fmt, bit_rate=bit_rate)
    if index_first:  # the muxer moves the index in a second pass, over a real file
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"upload.{extension}"
            _encode(pcm, rate, fmt, str(path), {"movflags": "faststart"})
            return path.read_bytes()
    output = io.BytesIO()
    _encode(pcm, rate, fmt, output, {})
    return output.getvalue()


def _encode(
    pcm: np.ndarray, rate: int, fmt: PhoneFormat, output: str | io.BytesIO, options: dict[str, str]
) -> None:
    layout = "stereo" if fmt.channels == 2 else "mono"
    with av.open(output, mode="w", format=fmt.container, options=options) as container:
        stream = container.add_stream(fmt.codec, rate=fmt.rate, layout=layout)
        if fmt.bit_rate:
            stream.bit_rate = fmt.bit_rate
        resampler = av.AudioResampler(
            format=stream.codec_context.format.name, layout=layout, rate=fmt.rate
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        written = 0
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            # The resampler stamps only some frames; stamp all, or the muxer sees time jump.
            converted.pts = written
            written += converted.samples
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))


def speak(text: str) -> tuple[np.ndarray, int]:
    """`text` spoken by the embedded voice: mono int16 samples and their rate."""
    piper = PiperSynthesizer(load_piper(""), bitrate_kbps=48)
    pcm = piper.synthesize_pcm(text, deterministic=True)  # the same question, the same audio
    return np.frombuffer(pcm, dtype=np.int16), piper.sample_rate
