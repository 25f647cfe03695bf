"""Decode uploaded audio of any phone format into 16 kHz mono float32, from memory.

PyAV (FFmpeg's libraries) demuxes and decodes MPEG-4/AAC, 3GP/AMR-NB, Ogg and WebM Opus,
MP3, FLAC and WAV at any rate and channel count. Limits are enforced before and during
decoding, so a file whose header or content lies about its length stops early instead of
filling memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from shared.errors import AudioTooLarge, AudioTooLong, EmptyAudio, TruncatedAudio, UndecodableAudio

SAMPLE_RATE = 16_000

# Leading bytes of the containers phones produce. A file that starts like one of these but
# cannot be read was cut off or damaged on the way, which the client can fix by resending.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MPEG-4/3GP"),
    (0, b"RIFF", "WAV"),
    (0, b"OggS", "Ogg"),
    (0, b"fLaC", "FLAC"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"#!AMR", "AMR"),
    (0, b"ID3", "MP3"),
)
# A decoded length this far below the declared one means the data ends early.
_TRUNCATION_TOLERANCE_S = 0.25


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode_audio(data: bytes, *, max_bytes: int, max_seconds: float) -> DecodedAudio:
    """Decode `data` or raise the typed error that says why it cannot be used."""
    if not data:
        raise EmptyAudio("audio is empty (0 bytes)")
    if len(data) > max_bytes:
        raise AudioTooLarge(f"audio is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError):
        raise _unreadable(data) from None
    with container:
        if not container.streams.audio:
            raise UndecodableAudio("the file has no audio stream")
        stream = container.streams.audio[0]
        declared_s = _declared_seconds(container, stream)
        if declared_s is not None and declared_s > max_seconds:
            raise AudioTooLong(f"audio is {declared_s:.1f} s; the limit is {max_seconds:g} s")
        try:
            samples = _decode_stream(container, stream, max_seconds)
        except (av.FFmpegError, ValueError, OSError):
            raise _unreadable(data) from None
    if not samples.size:
        raise EmptyAudio("audio contains no samples")
    decoded = DecodedAudio(samples)
    if declared_s is not None and decoded.duration_s < declared_s - _TRUNCATION_TOLERANCE_S:
        raise TruncatedAudio(
            f"audio is truncated: {decoded.duration_s:.1f} s of the declared {declared_s:.1f} s"
        )
    if _ends_early(data):
        raise TruncatedAudio(f"audio is truncated after {decoded.duration_s:.1f} s")
    return decoded


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float
) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    max_samples = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0

    def take(frames: list[av.AudioFrame]) -> None:
        nonlocal total
        for frame in frames:
            chunk = frame.to_ndarray().reshape(-1)
            total += len(chunk)
            if total > max_samples:
                raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
            chunks.append(chunk)

    try:
        for frame in container.decode(stream):
            take(resampler.resample(frame))
        take(resampler.resample(None))
    except (av.FFmpegError, ValueError, OSError):
        if total:
            raise TruncatedAudio(f"audio is damaged after {total / SAMPLE_RATE:.1f} s") from None
        raise
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _declared_seconds(
    container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _ends_early(data: bytes) -> bool:
    """Whether a WAV or Ogg file stops before the end its own structure announces.

    FFmpeg decodes what is there of these without complaint, and neither declares a
    duration it would check against.
    """
    if data.startswith(b"RIFF") and len(data) >= 8:
        riff_size = int.from_bytes(data[4:8], "little")
        # Recorders that stream WAV leave the size at 0 or at the maximum.
        return 0 < riff_size < 0xFFFFFFFF and len(data) < riff_size + 8
    if data.startswith(b"OggS"):
        last_page = data.rfind(b"OggS")
        header_type = data[last_page + 5] if last_page + 5 < len(data) else 0
        return not header_type & 0x04  # the last page must carry end-of-stream
    return False


def _unreadable(data: bytes) -> UndecodableAudio | TruncatedAudio:
    for offset, magic, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return TruncatedAudio(f"{name} audio is truncated or damaged and cannot be decoded")
    return UndecodableAudio("the data is not audio in a supported format")
