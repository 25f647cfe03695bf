"""PCM to MP3 with LAME."""

from __future__ import annotations

import lameenc


def encode_mp3(pcm: bytes, sample_rate: int, bitrate_kbps: int) -> bytes:
    """Encode mono signed 16-bit little-endian `pcm` as MP3."""
    encoder = lameenc.Encoder()
    encoder.set_channels(1)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_bit_rate(bitrate_kbps)
    encoder.set_quality(5)
    return bytes(encoder.encode(pcm) + encoder.flush())
