from __future__ import annotations

import random

import numpy as np
import psutil
import pytest

from shared.audio import SAMPLE_RATE, IsolatedDecoder, decode_audio
from shared.errors import (
    AudioTooLarge,
    AudioTooLong,
    EmptyAudio,
    TalkError,
    TruncatedAudio,
    UndecodableAudio,
)
from tests.conftest import QUESTIONS, phone_upload, spoken, zero_frame_wav
from tools.phone_audio import PHONE_FORMATS, encode

LIMITS = {"max_bytes": 10_000_000, "max_seconds": 120.0}


@pytest.mark.parametrize("extension", PHONE_FORMATS)
def test_every_phone_format_decodes_to_16k_mono_float32(extension: str) -> None:
    pcm, rate = spoken(QUESTIONS[0])
    decoded = decode_audio(phone_upload(QUESTIONS[0], extension), **LIMITS)
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    # Codec priming and padding add a little; the length must otherwise match.
    assert decoded.duration_s == pytest.approx(len(pcm) / rate, abs=0.15)
    # Scaled as float audio (lossy codecs may overshoot full scale a little), not int16.
    assert 0.05 < float(np.abs(decoded.samples).max()) < 1.5


def test_rate_and_channels_are_normalised() -> None:
    t = np.arange(44_100) / 44_100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    decoded = decode_audio(encode(tone, 44_100, "wav"), **LIMITS)
    assert len(decoded.samples) == pytest.approx(SAMPLE_RATE, abs=20)
    spectrum = np.abs(np.fft.rfft(decoded.samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(decoded.samples) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        pytest.param(b"", EmptyAudio, "empty", id="empty-bytes"),
        pytest.param(
            random.Random(4096).randbytes(4096), UndecodableAudio, "not audio", id="random-bytes"
        ),
        pytest.param(
            b"This is not an MP3 file, just text.\n" * 40, UndecodableAudio, "not audio", id="text"
        ),
        pytest.param(zero_frame_wav(), EmptyAudio, "no samples", id="zero-frames"),
    ],
)
def test_bad_input_raises_the_typed_error(data: bytes, error: type[TalkError], says: str) -> None:
    with pytest.raises(error, match=says):
        decode_audio(data, **LIMITS)


@pytest.mark.parametrize("extension", PHONE_FORMATS)
def test_truncated_upload_is_reported_as_truncated(extension: str) -> None:
    data = phone_upload(QUESTIONS[0], extension)
    with pytest.raises(TruncatedAudio, match=r"truncated|damaged"):
        decode_audio(data[: len(data) // 2], **LIMITS)


def test_over_the_byte_limit_is_refused_before_decoding() -> None:
    data = phone_upload(QUESTIONS[0], "m4a")
    with pytest.raises(AudioTooLarge, match=f"limit is {len(data) - 1} bytes"):
        decode_audio(data, max_bytes=len(data) - 1, max_seconds=120)


@pytest.mark.parametrize("extension", ["m4a", "wav", "ogg"])
def test_over_the_duration_limit_is_refused(extension: str) -> None:
    with pytest.raises(AudioTooLong, match="limit"):
        decode_audio(phone_upload(QUESTIONS[0], extension), max_bytes=10_000_000, max_seconds=1.0)


def test_a_header_that_hides_the_length_is_stopped_while_decoding() -> None:
    # A streaming WAV declares no length: the limit must hold on the samples themselves.
    data = bytearray(phone_upload(QUESTIONS[0], "wav"))
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    chunk = data.find(b"data")
    data[chunk + 4 : chunk + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    with pytest.raises(AudioTooLong):
        decode_audio(bytes(data), max_bytes=10_000_000, max_seconds=1.0)


# --- decoding in a child process ---------------------------------------------------------


def test_the_isolated_decoder_gives_the_same_samples() -> None:
    upload = phone_upload(QUESTIONS[0], "m4a")
    decoder = IsolatedDecoder(workers=1)
    try:
        isolated = decoder.decode(upload, **LIMITS)
    finally:
        decoder.close()
    assert np.array_equal(isolated.samples, decode_audio(upload, **LIMITS).samples)


def test_a_decode_over_its_memory_allowance_is_refused_in_its_child() -> None:
    decoder = IsolatedDecoder(workers=1, memory_bytes=1024 * 1024)
    try:
        with pytest.raises(TalkError) as refused:
            decoder.decode(encode(np.zeros(16_000 * 30, np.int16), 16_000, "wav"), **LIMITS)
    finally:
        decoder.close()
    assert refused.value.status == 422


def test_a_child_that_died_is_replaced_and_the_next_decode_works() -> None:
    upload = phone_upload(QUESTIONS[0], "m4a")
    decoder = IsolatedDecoder(workers=1)
    try:
        decoder.decode(upload, **LIMITS)
        # Its decode children only: Azurite and the like are this process's children too.
        workers = [
            child
            for child in psutil.Process().children(recursive=True)
            if "-m shared.audio" in " ".join(child.cmdline())
        ]
        assert workers
        for worker in workers:
            worker.kill()  # as the kernel does at a CPU or memory limit
        psutil.wait_procs(workers, timeout=10)
        assert decoder.decode(upload, **LIMITS).duration_s > 1
    finally:
        decoder.close()


def test_a_decode_over_its_cpu_allowance_ends_its_child_and_is_refused() -> None:
    # An allowance of a microsecond: the CPU-time timer ends the child (SIGPROF) at the
    # first scheduler tick of the decode, however much CPU the child used before it. The
    # upload is long (100 s) so that its decode spans many ticks.
    pcm, rate = spoken(QUESTIONS[0])
    long_upload = encode(np.tile(pcm, 40)[: 100 * rate], rate, "m4a")
    decoder = IsolatedDecoder(workers=1, cpu_seconds=1e-6)
    try:
        with pytest.raises(UndecodableAudio, match="within its limits"):
            decoder.decode(long_upload, **LIMITS)
    finally:
        decoder.close()
