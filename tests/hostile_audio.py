"""Hostile uploads built from bytes: decode bombs, lying headers, and the text files FFmpeg
would open as playlists. Built here rather than shipped, so they cannot rot."""

from __future__ import annotations

import io
import struct

import av


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_frame_number(number: int) -> bytes:
    """FLAC's frame number: UTF-8's byte pattern, for any number (surrogates included)."""
    if number < 0x80:
        return bytes([number])
    for length, limit in ((2, 0x800), (3, 0x10000), (4, 0x200000), (5, 0x4000000)):
        if number < limit:
            tail = []
            for _ in range(length - 1):
                tail.append(0x80 | (number & 0x3F))
                number >>= 6
            return bytes([((0xFF << (8 - length)) & 0xFF) | number, *reversed(tail)])
    raise ValueError("frame number too large")


def flac(
    *,
    sample_rate: int,
    block_size: int = 4096,
    frames: int = 4,
    total_samples: int | None = None,
    value: int = 1000,
    frame_rate: int | None = None,
) -> bytes:
    """A valid FLAC stream of CONSTANT subframes (a few bytes per frame, `block_size`
    samples each) whose STREAMINFO declares `sample_rate` and `total_samples` (None: the
    truth; 0: unknown, as a streaming encoder writes it), and whose frames may each declare
    a rate of their own (`frame_rate`, in Hz)."""
    if total_samples is None:
        total_samples = block_size * frames
    info = struct.pack(">HH", block_size, block_size)  # min and max block size
    info += b"\x00\x00\x00" + b"\x00\x00\x00"  # min and max frame size: unknown
    # 20 bits sample rate, 3 bits channels - 1 (mono), 5 bits bits per sample - 1 (16),
    # 36 bits total samples.
    packed = (sample_rate << 44) | (0 << 41) | (15 << 36) | (total_samples & (2**36 - 1))
    info += packed.to_bytes(8, "big") + b"\x00" * 16  # and an empty MD5
    stream = b"fLaC" + bytes([0x80, 0, 0, len(info)]) + info  # the last metadata block
    for number in range(frames):
        # Sync, fixed blocking; block size "16 bits follow", sample rate "from STREAMINFO";
        # mono, 16 bits; UTF-8 frame number; block size - 1; CRC-8.
        rate_code = 0x0 if frame_rate is None else 0xD  # from STREAMINFO, or 16-bit Hz
        header = b"\xff\xf8" + bytes([0x70 | rate_code, 0x08]) + _utf8_frame_number(number)
        header += struct.pack(">H", block_size - 1)
        if frame_rate is not None:
            header += struct.pack(">H", frame_rate)
        header += bytes([_crc8(header)])
        subframe = b"\x00" + struct.pack(">h", value)  # CONSTANT, no wasted bits
        frame = header + subframe
        stream += frame + struct.pack(">H", _crc16(frame))
    return stream


def wav(*, sample_rate: int, seconds: float = 1.0, declared_bytes: int | None = None) -> bytes:
    """A PCM WAV whose header declares `sample_rate` (and, if given, a data length)."""
    data = b"\x00\x10" * min(int(sample_rate * seconds), 1_000_000)
    size = len(data) if declared_bytes is None else declared_bytes
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", size & 0xFFFFFFFF) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def ogg_flac(**flac_options: object) -> bytes:
    """The FLAC stream above, in an Ogg container (the header declares the same rate)."""
    source = av.open(io.BytesIO(flac(**flac_options)), format="flac")
    output = io.BytesIO()
    with source, av.open(output, mode="w", format="ogg") as target:
        stream = target.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)
    return output.getvalue()


HLS_PLAYLIST = (
    b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nhttp://127.0.0.1:9/segment.ts\n"
    b"#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
)
# An SDP description makes FFmpeg's RTP demuxer bind UDP ports and wait for packets.
SDP = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=talk\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
FFCONCAT = b"ffconcat version 1.0\nfile /etc/passwd\n"
