"""Every upload the clients in use can make is taken by its size, never by its bytes.

The bodies are framed byte for byte as each client frames them (`tests/client_framing.py`,
written from their sources): the Android app's OkHttp, requests, curl, Chromium's and
Firefox's `FormData`, Ktor, Alamofire and hand-built URLSession bodies. The recordings are
MPEG-4/AAC as the app's MediaRecorder writes them, with the index at the end or the front.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from shared.audio import decode_audio
from shared.config import Settings
from shared.errors import AudioTooLarge, BadInput, TalkError, TextTooLong
from shared.talk_input import parse_talk_input
from tests import client_framing
from tests.conftest import app_recording

CLIENTS = {name: client.frame for name, client in client_framing.CLIENTS.items()}
SETTINGS = Settings()
APP_FILENAME = "recording_1733390000000.m4a"  # the app's recording_<ms>.m4a


def test_the_recordings_are_what_the_app_makes() -> None:
    end, front = app_recording(20.0), app_recording(20.0, index_first=True)
    assert end.index(b"moov") > end.index(b"mdat")
    assert front.index(b"moov") < front.index(b"mdat")
    # 96 kbit/s for 20 s, give or take what speech and silence cost.
    assert 100_000 < len(end) < 300_000


@pytest.mark.parametrize("index_first", [False, True], ids=["index-at-end", "index-first"])
@pytest.mark.parametrize("seconds", [1.0, 15.0, 30.0, 60.0, SETTINGS.max_audio_seconds - 0.5])
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_recording_up_to_the_limits_in_every_framing(
    client: str, seconds: float, index_first: bool
) -> None:
    audio = app_recording(seconds, index_first)
    content_type, body = CLIENTS[client](audio, APP_FILENAME, "audio/mp4", {"voice": "Kim"})
    parsed = parse_talk_input(content_type, body, SETTINGS)
    assert parsed.audio == audio
    assert parsed.audio_extension == "m4a"
    assert parsed.voice == "Kim"


@pytest.mark.parametrize("index_first", [False, True], ids=["index-at-end", "index-first"])
@pytest.mark.parametrize("seconds", [1.0, 15.0, 60.0, SETTINGS.max_audio_seconds - 0.5])
def test_the_recordings_decode_within_the_limits(seconds: float, index_first: bool) -> None:
    decoded = decode_audio(
        app_recording(seconds, index_first),
        max_bytes=SETTINGS.max_audio_bytes,
        max_seconds=SETTINGS.max_audio_seconds,
    )
    assert decoded.duration_s == pytest.approx(seconds, abs=0.1)


def awkward_payload(size: int, seed: int) -> bytes:
    """Bytes a multipart parser can trip over: line breaks, dashes and near-boundaries
    everywhere, as compressed audio has them by chance."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"\r\n-\r\n--ab\x00\xff", dtype=np.uint8)
    noise = rng.integers(0, 256, size, dtype=np.uint8)
    picks = rng.random(size) < 0.3
    noise[picks] = rng.choice(alphabet, int(picks.sum()))
    return noise.tobytes()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_what_the_audio_holds_never_decides_whether_it_is_taken(client: str, seed: int) -> None:
    size = [70_000, 131_072, 262_145, 1_000_000][seed % 4] + seed
    audio = awkward_payload(size, seed)
    fields = {"language": "fi"}
    framed = CLIENTS[client](audio, "a.m4a", "audio/mp4", fields, fields_first=seed % 2 == 0)
    parsed = parse_talk_input(*framed, SETTINGS)
    assert parsed.audio == audio
    assert parsed.language == "fi"


def test_line_breaks_at_every_read_boundary_are_taken() -> None:
    """Werkzeug's form parser refused this whenever a read ended in the middle of a run
    of line breaks: its form-memory check counted the file data it still held."""
    audio = b"\r\n" * 200_000
    content_type, body = client_framing.okhttp(audio, APP_FILENAME, "audio/mp4")
    assert parse_talk_input(content_type, body, SETTINGS).audio == audio


SMALL = replace(SETTINGS, max_audio_bytes=100_000, max_text_body_bytes=2_000)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_audio_of_exactly_the_limit_is_taken_and_one_byte_more_is_413(client: str) -> None:
    audio = awkward_payload(SMALL.max_audio_bytes, 7)
    content_type, body = CLIENTS[client](audio, "a.m4a", "audio/mp4", {"text": "t" * 1_000})
    assert parse_talk_input(content_type, body, SMALL).audio == audio
    content_type, body = CLIENTS[client](audio + b"x", "a.m4a", "audio/mp4")
    with pytest.raises(AudioTooLarge):
        parse_talk_input(content_type, body, SMALL)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_text_fields_are_limited_by_their_own_size(client: str) -> None:
    audio = awkward_payload(SMALL.max_audio_bytes, 8)
    half = SMALL.max_text_body_bytes // 2
    fields = {"text": "t" * half, "system_prompt": "s" * half}
    content_type, body = CLIENTS[client](audio, "a.m4a", "audio/mp4", fields)
    assert parse_talk_input(content_type, body, SMALL).text == fields["text"]
    fields["system_prompt"] += "s"
    content_type, body = CLIENTS[client](audio, "a.m4a", "audio/mp4", fields)
    with pytest.raises(TextTooLong, match="text fields"):
        parse_talk_input(content_type, body, SMALL)


def test_another_file_counts_as_text_not_as_audio() -> None:
    """Only the `audio` part may be audio-sized: anything else is held to the text limit."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n\r\n'
        + b"j" * 3_000
        + b'\r\n--b\r\nContent-Disposition: form-data; name="audio"; filename="a.m4a"\r\n\r\n'
        + b"a" * 10
        + b"\r\n--b--\r\n"
    )
    with pytest.raises(TextTooLong):
        parse_talk_input("multipart/form-data; boundary=b", body, SMALL)


def test_an_audio_part_without_a_filename_but_with_an_audio_type_is_audio() -> None:
    """Ktor's `append("audio", bytes, Headers.build { ContentType })` without a filename."""
    audio = app_recording(1.0)
    body = (
        b"--b\r\nContent-Disposition: form-data; name=audio\r\nContent-Type: audio/mp4\r\n"
        + f"Content-Length: {len(audio)}\r\n\r\n".encode()
        + audio
        + b"\r\n--b--\r\n"
    )
    parsed = parse_talk_input("multipart/form-data; boundary=b", body, SETTINGS)
    assert parsed.audio == audio
    assert parsed.audio_extension == "m4a"


def test_a_part_content_length_that_lies_changes_nothing() -> None:
    """A part's Content-Length (OkHttp 4, Ktor) is not what frames it: the boundary is."""
    audio = awkward_payload(5_000, 3)
    content_type, body = client_framing.okhttp(audio, APP_FILENAME, "audio/mp4")
    for lie in (
        b"Content-Length: 1\r\n",
        b"Content-Length: 999999999\r\n",
        b"Content-Length: -5\r\n",
    ):
        forged = body.replace(f"Content-Length: {len(audio)}\r\n".encode(), lie)
        assert parse_talk_input(content_type, forged, SETTINGS).audio == audio


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--b', BadInput),
        (b"--b\r\n\r\nno disposition\r\n--b--\r\n", BadInput),
        (
            b"".join(
                b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
                for i in range(17)
            )
            + b"--b--\r\n",
            BadInput,
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="audio"; filename="'
            + b"a" * 9_000_000
            + b'"\r\n\r\nx\r\n--b--\r\n',
            BadInput,
        ),
        (b"--b\r\n" + b"X-Padding: y\r\n" * 600_000, BadInput),
    ],
    ids=[
        "no-closing-boundary",
        "no-content-disposition",
        "17-parts",
        "9-MB-filename",
        "headers-without-end",
    ],
)
def test_malformed_forms_are_400(body: bytes, error: type[TalkError]) -> None:
    with pytest.raises(error) as raised:
        parse_talk_input("multipart/form-data; boundary=b", body, SETTINGS)
    assert raised.value.status == 400


def test_the_android_apps_written_question_is_parsed_as_it_sends_it() -> None:
    """`sendTextToBackend`: `{"text", "voice"}` as `application/json; charset=utf-8`."""
    body = json.dumps({"text": "Mitä kuuluu?", "voice": "Milla"}, ensure_ascii=False).encode()
    parsed = parse_talk_input("application/json; charset=utf-8", body, SETTINGS)
    assert (parsed.text, parsed.voice) == ("Mitä kuuluu?", "Milla")
