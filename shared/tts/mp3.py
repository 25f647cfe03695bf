"""PCM to MP3 with LAME, and MP3 streams cut into whole frames.

A reply spoken sentence by sentence is sent as pieces that a client plays as one stream.
MP3 joins without a gap or a click where every piece ends on a frame boundary and the
frames on both sides share a sample rate and channel count: the bit reservoir points only
backwards, and the first frame of a fresh encoder needs nothing before it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `shared.tts` is imported where neither is needed
    import av
    import lameenc


@dataclass(frozen=True)
class AudioFormat:
    """What an MP3 stream's frames carry; pieces of one reply all share it."""

    sample_rate: int
    channels: int
    bitrate_kbps: int


def encode_mp3(pcm: bytes, sample_rate: int, bitrate_kbps: int) -> bytes:
    """Encode mono signed 16-bit little-endian `pcm` as MP3."""
    encoder = _lame(sample_rate, 1, bitrate_kbps)
    return bytes(encoder.encode(pcm) + encoder.flush())


def _lame(sample_rate: int, channels: int, bitrate_kbps: int) -> lameenc.Encoder:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_channels(channels)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_bit_rate(bitrate_kbps)
    encoder.set_quality(5)
    return encoder


class StreamEncoder:
    """One LAME encoder for a whole reply, fed mono 16-bit PCM at `source_rate` a sentence
    at a time: one encoder delay at the start and one padding at the end, none between the
    sentences. The PCM is resampled (and spread over the channels) to `target` where it
    differs; what comes out is whole frames only."""

    def __init__(self, target: AudioFormat, source_rate: int) -> None:
        bitrate = lame_bitrate(target.sample_rate, target.channels, target.bitrate_kbps)
        self.format = replace(target, bitrate_kbps=bitrate)  # what it makes
        self._lame = _lame(target.sample_rate, target.channels, bitrate)
        self._frames = Mp3Frames(target)
        self._resampler: av.AudioResampler | None = None
        self._source_rate = source_rate
        if source_rate != target.sample_rate or target.channels != 1:
            import av

            layout = "mono" if target.channels == 1 else "stereo"
            self._resampler = av.AudioResampler(
                format="s16", layout=layout, rate=target.sample_rate
            )

    def encode(self, pcm: bytes) -> bytes:
        """The frames LAME has completed so far (often b"" for a short `pcm`)."""
        if pcm and self._resampler is not None:
            import av
            import numpy as np

            frame = av.AudioFrame.from_ndarray(
                np.frombuffer(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = self._source_rate
            pcm = _samples(self._resampler.resample(frame))
        return self._frames.feed(bytes(self._lame.encode(pcm))) if pcm else b""

    def flush(self) -> bytes:
        """The rest: what the resampler and LAME still hold. The encoder is done after it."""
        pcm = _samples(self._resampler.resample(None)) if self._resampler is not None else b""
        tail = bytes(self._lame.encode(pcm)) if pcm else b""
        return self._frames.feed(tail + bytes(self._lame.flush()))


class PcmSession:
    """One reply of an embedded voice through one MP3 encoder, a sentence at a time
    (`speak`, `pcm_of` giving each sentence's mono 16-bit PCM at the encoder's source
    rate): the pieces join as the whole reply encoded at once would (no encoder delay or
    padding between sentences). No pause is added between sentences, as none is in a reply
    spoken whole: the shipped Piper voice ends each sentence with about a quarter second of
    silence and begins the next after a twentieth."""

    billed = False

    def __init__(self, name: str, encoder: StreamEncoder, pcm_of: Callable[[str], bytes]) -> None:
        self.name = name
        self.format = encoder.format
        self._encoder = encoder
        self._pcm_of = pcm_of
        self._closed = False
        self._finished = False

    def speak(self, sentence: str) -> Iterator[bytes]:
        if self._closed or self._finished or not sentence.strip():
            return
        pcm = self._pcm_of(sentence)
        piece = b"" if self._closed else self._encoder.encode(pcm)
        if piece:
            yield piece

    def finish(self) -> bytes:
        if self._closed or self._finished:
            return b""
        self._finished = True
        return self._encoder.flush()

    def close(self) -> None:
        self._closed = True


def _samples(frames: list[av.AudioFrame]) -> bytes:
    return b"".join(frame.to_ndarray().tobytes() for frame in frames)


# --- MPEG audio frames ----------------------------------------------------------------------

_MPEG1, _MPEG2, _MPEG25 = 3, 2, 0  # the header's version bits (1 is reserved)
_RATES = {
    _MPEG1: (44100, 48000, 32000),
    _MPEG2: (22050, 24000, 16000),
    _MPEG25: (11025, 12000, 8000),
}
_BITRATES = {  # Layer III, kbps by the header's index (0 is free format, 15 invalid)
    _MPEG1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    _MPEG2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_BITRATES[_MPEG25] = _BITRATES[_MPEG2]


class FormatMismatch(ValueError):
    """MP3 frames of another sample rate or channel count than the stream's."""


@dataclass(frozen=True)
class FrameHeader:
    sample_rate: int
    channels: int
    bitrate_kbps: int
    length: int  # bytes, the header included
    tag_offset: int  # where a Xing/Info tag would start in this frame


def frame_header(data: bytes | bytearray, at: int = 0) -> FrameHeader | None:
    """The MPEG Layer III frame header at `at`, or None where there is none."""
    if len(data) < at + 4 or data[at] != 0xFF or data[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[at + 1] >> 3) & 3, (data[at + 1] >> 1) & 3
    bitrate_index, rate_index = data[at + 2] >> 4, (data[at + 2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    rate = _RATES[version][rate_index]
    channels = 1 if data[at + 3] >> 6 == 3 else 2
    mpeg1 = version == _MPEG1
    kbps = _BITRATES[version][bitrate_index]
    padding = (data[at + 2] >> 1) & 1
    length = (144 if mpeg1 else 72) * kbps * 1000 // rate + padding
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    crc = 0 if data[at + 1] & 1 else 2
    return FrameHeader(rate, channels, kbps, length, 4 + crc + side_info)


class Mp3Frames:
    """Cuts an MP3 byte stream, fed as it comes, into whole audio frames of `expected`'s
    sample rate and channels. ID3 tags and the Xing/Info/VBRI frame (a file's length and
    seek table, wrong for a stream of several pieces) are left out, and so is anything
    between frames that is not one; a frame cut off at the end stays behind in `pending`."""

    def __init__(self, expected: AudioFormat) -> None:
        self._expected = expected
        self._buffer = bytearray()
        self._in_sync = True  # the next byte starts a frame or a tag

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame (or tag) not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> bytes:
        """The frames `data` completes, as one piece of bytes (b"" where none)."""
        buffer = self._buffer
        buffer += data
        frames = bytearray()
        at = 0
        while len(buffer) - at >= 4:
            length = _tag_length(buffer, at)
            header = frame_header(buffer, at) if length is None else None
            if header is not None and not self._fits(header):
                header = None
            if header is not None:
                length = header.length
            if length is None:  # not a frame: look for the next sync
                found = buffer.find(b"\xff", at + 1)
                at = found if found >= 0 else len(buffer)
                self._in_sync = False
                continue
            if len(buffer) - at < length:
                break
            if header is not None and not _is_info_frame(buffer, at, header):
                frames += buffer[at : at + length]
            at += length
            self._in_sync = True
        del buffer[:at]
        return bytes(frames)

    def _fits(self, header: FrameHeader) -> bool:
        """Whether a frame's format is the stream's; in step with the frames before it, a
        frame that does not fit is an error, and while looking for the next frame a
        header that does not fit is taken for data that looks like one."""
        expected = self._expected
        if (header.sample_rate, header.channels) == (expected.sample_rate, expected.channels):
            return True
        if self._in_sync:
            raise FormatMismatch(
                f"{header.sample_rate} Hz, {header.channels} channel(s) in a stream of "
                f"{expected.sample_rate} Hz, {expected.channels} channel(s)"
            )
        return False


def _tag_length(buffer: bytearray, at: int) -> int | None:
    """The length of the ID3 tag at `at`, or None where none starts there."""
    if buffer[at : at + 3] == b"TAG":  # ID3v1, 128 bytes
        return 128
    if buffer[at : at + 3] != b"ID3":
        return None
    if len(buffer) - at < 10:
        return 10  # its header is not all here yet
    size = 0
    for byte in buffer[at + 6 : at + 10]:  # "syncsafe": 7 bits a byte
        size = size << 7 | byte & 0x7F
    footer = 10 if buffer[at + 5] & 0x10 else 0
    return 10 + size + footer


def _is_info_frame(buffer: bytearray, at: int, header: FrameHeader) -> bool:
    tag = at + header.tag_offset
    return buffer[tag : tag + 4] in (b"Xing", b"Info") or buffer[at + 36 : at + 40] == b"VBRI"


@functools.cache
def lame_bitrate(sample_rate: int, channels: int, bitrate_kbps: int) -> int:
    """The lowest bit rate from `bitrate_kbps` up at which LAME keeps `sample_rate` and
    `channels`: at a low one it resamples on its own (44.1 kHz at 32 kbps comes out at
    22.05 kHz), and frames of another rate do not continue a stream."""
    version = next((v for v, rates in _RATES.items() if sample_rate in rates), None)
    if version is None:
        raise ValueError(f"MP3 has no {sample_rate} Hz")
    target = AudioFormat(sample_rate, channels, bitrate_kbps)
    for candidate in (b for b in _BITRATES[version] if b >= bitrate_kbps):
        encoder = _lame(sample_rate, channels, candidate)
        probe = bytes(encoder.encode(bytes(2 * channels * sample_rate // 10)) + encoder.flush())
        header = frame_header(probe)
        if header and (header.sample_rate, header.channels) == (sample_rate, channels):
            return candidate
    raise ValueError(f"LAME cannot encode {target}")


def resample(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """Mono 16-bit `pcm` at `source_rate`, at `target_rate`."""
    if source_rate == target_rate or not pcm:
        return pcm
    import av
    import numpy as np

    resampler = av.AudioResampler(format="s16", layout="mono", rate=target_rate)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = source_rate
    return _samples(resampler.resample(frame) + resampler.resample(None))
