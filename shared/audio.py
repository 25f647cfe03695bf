"""Decode uploaded audio of any phone format into 16 kHz mono float32, from memory, with
bounded cost whatever the bytes claim.

- Only the containers phones and the app produce are opened, each with its own demuxer,
  chosen from the upload's leading bytes: MPEG-4/3GP, Ogg, Matroska/WebM, MP3, FLAC, WAV,
  ADTS AAC and AMR. FFmpeg never guesses, so a playlist, an SDP description or an ffconcat
  list is refused as "not audio" instead of being followed to the network or the disk, and
  a demuxer cannot open a second file (`io_open` refuses every one).
- Sample rates outside 8 to 192 kHz are refused: resampling a 4 Hz stream to 16 kHz
  multiplies it 4000 times.
- Every decoded frame is checked against the remaining duration budget before it is
  resampled, so memory stays proportional to the accepted duration; the decode also stops
  after `DECODE_SECONDS` of wall time.
- `decode_isolated` runs the decode in a child process capped at `DECODE_MEMORY_BYTES` of
  address space and `DECODE_CPU_SECONDS` of CPU per decode: a decoder bug that still blew
  up would end only the child, not the worker and every request in flight on it.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import math
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from shared.errors import (
    AudioTooLarge,
    AudioTooLong,
    EmptyAudio,
    TalkError,
    TruncatedAudio,
    UndecodableAudio,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
DECODE_SECONDS = 5.0  # wall time of one decode
DECODE_CPU_SECONDS = 5  # CPU time of one decode in a child
DECODE_MEMORY_BYTES = 300 * 1024 * 1024  # address space a child may add for one decode
DECODE_WORKERS = 2
# Probing reads at most this much and this long (µs) to find the streams.
_OPEN_OPTIONS = {"probesize": str(1024 * 1024), "analyzeduration": str(5_000_000)}

# Leading bytes of the containers phones produce, and the demuxer that reads each.
_CONTAINERS: tuple[tuple[int, bytes, str, str], ...] = (
    (4, b"ftyp", "mov", "MPEG-4/3GP"),
    (0, b"OggS", "ogg", "Ogg"),
    (0, b"fLaC", "flac", "FLAC"),
    (0, b"\x1a\x45\xdf\xa3", "matroska", "WebM/Matroska"),
    (0, b"#!AMR", "amr", "AMR"),
    (0, b"ID3", "mp3", "MP3"),
)
_NOT_AUDIO = "the data is not audio in a supported format"
_OVER_LIMITS = "the audio cannot be decoded within its limits"
# A decoded length this far below the declared one means the data ends early.
_TRUNCATION_TOLERANCE_S = 0.25


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def sniff(data: bytes) -> tuple[str, str] | None:
    """(FFmpeg demuxer, name) for an upload's leading bytes, or None if it is not a
    container this service reads."""
    for offset, magic, demuxer, name in _CONTAINERS:
        if data[offset : offset + len(magic)] == magic:
            return demuxer, name
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav", "WAV"
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        # An MPEG audio frame sync; layer bits 00 mark ADTS AAC.
        return ("aac", "ADTS AAC") if (data[1] >> 1) & 0x3 == 0 else ("mp3", "MP3")
    return None


def decode_audio(data: bytes, *, max_bytes: int, max_seconds: float) -> DecodedAudio:
    """Decode `data` in this process or raise the typed error that says why it cannot be
    used."""
    if not data:
        raise EmptyAudio("audio is empty (0 bytes)")
    if len(data) > max_bytes:
        raise AudioTooLarge(f"audio is {len(data)} bytes; the limit is {max_bytes} bytes")
    container_format = sniff(data)
    if container_format is None:
        raise UndecodableAudio(_NOT_AUDIO)
    demuxer, name = container_format
    deadline = time.monotonic() + DECODE_SECONDS
    try:
        container = av.open(
            io.BytesIO(data),
            mode="r",
            format=demuxer,
            options=_OPEN_OPTIONS,
            metadata_errors="ignore",
            io_open=_refuse_other_files,
        )
    except (av.FFmpegError, ValueError, OSError):
        raise _damaged(name) from None
    with container:
        if not container.streams.audio:
            raise UndecodableAudio("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # a header no decoder can be opened for
            raise _damaged(name)
        stream.codec_context.thread_count = 1  # one decode, one thread: its cost is bounded
        _check_rate(stream.codec_context.sample_rate)
        declared_s = _declared_seconds(container, stream)
        if declared_s is not None and declared_s > max_seconds:
            raise AudioTooLong(f"audio is {declared_s:.1f} s; the limit is {max_seconds:g} s")
        try:
            samples = _decode_stream(container, stream, max_seconds, deadline)
        except (av.FFmpegError, ValueError, OSError, MemoryError):
            raise _damaged(name) from None
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


def _refuse_other_files(url: str, flags: int, options: dict[str, str]) -> None:
    raise PermissionError("an upload is read from memory only")


def _check_rate(rate: int | None) -> None:
    if not rate or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UndecodableAudio(
            f"the sample rate {rate or 0} Hz is not supported (8 to 192 kHz are)"
        )


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    max_seconds: float,
    deadline: float,
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
            chunks.append(chunk)

    try:
        for frame in container.decode(stream):
            # What this frame becomes at 16 kHz, checked before it is resampled: a frame
            # may carry its own rate, and a long frame at a low rate multiplies.
            _check_rate(frame.sample_rate)
            if total + frame.samples * SAMPLE_RATE / frame.sample_rate > max_samples:
                raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
            if time.monotonic() > deadline:
                raise UndecodableAudio("the audio takes too long to decode")
            take(resampler.resample(frame))
        take(resampler.resample(None))
    except (av.FFmpegError, ValueError, OSError, MemoryError):
        if total:
            raise TruncatedAudio(f"audio is damaged after {total / SAMPLE_RATE:.1f} s") from None
        raise
    return np.concatenate(chunks)[:max_samples] if chunks else np.zeros(0, dtype=np.float32)


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


def _damaged(name: str) -> TruncatedAudio:
    """Bytes that start like a supported container but cannot be read were cut off or
    damaged on the way, which the client can fix by resending."""
    return TruncatedAudio(f"{name} audio is truncated or damaged and cannot be decoded")


# --- decoding in a child process ------------------------------------------------------------
#
# A decoding child is `python -m shared.audio`, talking over its stdin and stdout: frames of
# a JSON header and raw bytes each way, never pickles, so a child that a hostile file had
# subverted still could not run code in the parent. The child's answer is float32 samples
# or an error code the parent maps back to its own typed errors.

_ROOT = Path(__file__).resolve().parent.parent
_ERRORS = {
    error.code: error
    for error in (AudioTooLarge, AudioTooLong, EmptyAudio, TruncatedAudio, UndecodableAudio)
}


def _write_frame(stream: BinaryIO, header: dict[str, object], payload: bytes) -> None:
    head = json.dumps(header).encode()
    stream.write(struct.pack(">II", len(head), len(payload)) + head + payload)
    stream.flush()


def _read_frame(stream: BinaryIO, max_payload: int) -> tuple[dict[str, Any], bytes] | None:
    sizes = stream.read(8)
    if len(sizes) < 8:
        return None
    head_size, payload_size = struct.unpack(">II", sizes)
    if head_size > 4096 or payload_size > max_payload:
        raise ValueError("frame over its size")
    header = json.loads(stream.read(head_size))
    payload = stream.read(payload_size)
    if len(payload) < payload_size:
        return None
    return header, payload


def _limit_memory(memory_bytes: int) -> None:
    """The child's address space: what it holds now plus one decode's allowance."""
    size_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )
    limit = size_kb * 1024 + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve_decodes() -> None:
    """The decoding child: decode each request from stdin and answer on stdout, until
    stdin closes. A decode past its CPU allowance ends the child: a CPU-time timer
    (SIGPROF, exact to the scheduler's tick) and, behind it, the whole-second RLIMIT_CPU
    (SIGXCPU). One past its memory allowance fails its allocations and is refused."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answers
    memory_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else DECODE_MEMORY_BYTES
    _limit_memory(memory_bytes)
    while (frame := _read_frame(requests, 64 * 1024 * 1024)) is not None:
        job, data = frame
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + job["cpu_seconds"]) + 1, hard))
        signal.setitimer(signal.ITIMER_PROF, job["cpu_seconds"])  # SIGPROF ends the child
        try:
            decoded = decode_audio(data, max_bytes=job["max_bytes"], max_seconds=job["max_seconds"])
            answer, samples = {"ok": True}, decoded.samples.astype(np.float32).tobytes()
        except TalkError as error:
            answer, samples = {"code": error.code, "message": error.message}, b""
        except MemoryError:
            answer, samples = {"code": UndecodableAudio.code, "message": _OVER_LIMITS}, b""
        except Exception as error:  # a decoder surprise: refused, and the child serves on
            print(f"Decoding failed unexpectedly: {type(error).__name__}", file=sys.stderr)
            answer = {
                "code": UndecodableAudio.code,
                "message": _NOT_AUDIO,
            }
            samples = b""
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        _write_frame(answers, answer, samples)


class IsolatedDecoder:
    """Decoding children, started on first use, each serving one decode at a time and
    replaced when a decode ends one."""

    def __init__(
        self,
        workers: int = DECODE_WORKERS,
        *,
        memory_bytes: int = DECODE_MEMORY_BYTES,
        cpu_seconds: float = DECODE_CPU_SECONDS,
    ) -> None:
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._memory_bytes = memory_bytes
        self._cpu_seconds = cpu_seconds

    def _start(self) -> subprocess.Popen[bytes]:
        # `-m` from the app's root puts the root on the child's import path.
        return subprocess.Popen(
            [sys.executable, "-m", "shared.audio", str(self._memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
        )

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.poll() is None:
                    return child
        return self._start()

    def decode(self, data: bytes, *, max_bytes: int, max_seconds: float) -> DecodedAudio:
        if not data:
            raise EmptyAudio("audio is empty (0 bytes)")
        if len(data) > max_bytes:
            raise AudioTooLarge(f"audio is {len(data)} bytes; the limit is {max_bytes} bytes")
        job = {"max_bytes": max_bytes, "max_seconds": max_seconds, "cpu_seconds": self._cpu_seconds}
        with self._slots:
            child = self._take()
            assert child.stdin is not None and child.stdout is not None
            try:
                _write_frame(child.stdin, job, data)
                frame = _read_frame(child.stdout, int(max_seconds * SAMPLE_RATE * 4) + 64)
            except (OSError, ValueError):
                frame = None
            if frame is None:  # the child ended during this decode
                child.kill()
                child.wait()
                log.warning(
                    "A decode ended its child (exit %s): memory or CPU limit", child.returncode
                )
                raise UndecodableAudio(_OVER_LIMITS)
            with self._lock:
                self._idle.append(child)
        answer, samples = frame
        if not answer.get("ok"):
            error = _ERRORS.get(answer.get("code"), UndecodableAudio)
            raise error(str(answer.get("message") or _OVER_LIMITS))
        return DecodedAudio(np.frombuffer(samples, dtype=np.float32))

    def close(self) -> None:
        with self._lock:
            children, self._idle = self._idle, []
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


_decoder = IsolatedDecoder()
atexit.register(_decoder.close)


def decode_isolated(data: bytes, *, max_bytes: int, max_seconds: float) -> DecodedAudio:
    """`decode_audio` in a child process with capped memory and CPU."""
    return _decoder.decode(data, max_bytes=max_bytes, max_seconds=max_seconds)


if __name__ == "__main__":
    serve_decodes()
