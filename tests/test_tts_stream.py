"""A reply spoken a sentence at a time: sessions whose pieces, concatenated, play as one
MP3 stream, also where the embedded voice takes over from ElevenLabs half-way."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import av
import av.logging
import numpy as np
import pytest

from shared.config import Settings
from shared.errors import ProviderError
from shared.security.secrets import MappingSource, SecretStore
from shared.tts import AudioFormat, embedded_synthesizer, get_synthesizer
from shared.tts.elevenlabs import ElevenLabsSynthesizer, previous_text
from shared.tts.mp3 import FormatMismatch, Mp3Frames, encode_mp3, frame_header, lame_bitrate
from shared.tts.piper import PiperSynthesizer
from tools.devhost.loopback import LoopbackServer, Reply

SENTENCES = (
    "The kettle is on, and the tea will be ready in a minute.",
    "Meanwhile, tell me how your day went.",
    "Did anything surprising happen at work?",
)
XI_KEY = "sk_test_elevenlabs_abcdef"
AUDIO = {"Content-Type": "audio/mpeg"}
# Bytes a client passing on whole frames may still hold of what arrived: a frame (105 at
# 32 kbps and 22.05 kHz), well under a stand-in's piece (700).
LAG = 400
FRAME_SAMPLES = 576  # an MPEG-2 Layer III frame's


@pytest.fixture
def steady(monkeypatch) -> list[tuple[str, str]]:
    """Piper without its random variation (the same text is the same audio), and a log
    of what it synthesizes, in order."""
    events: list[tuple[str, str]] = []
    synthesize_pcm = PiperSynthesizer.synthesize_pcm

    def deterministic(self: PiperSynthesizer, text: str, *, deterministic: bool = False) -> bytes:
        events.append(("synthesized", text))
        return synthesize_pcm(self, text, deterministic=True)

    monkeypatch.setattr(PiperSynthesizer, "synthesize_pcm", deterministic)
    return events


@pytest.fixture
def piper(settings: Settings) -> PiperSynthesizer:
    synthesizer = embedded_synthesizer(settings)
    assert isinstance(synthesizer, PiperSynthesizer)
    return synthesizer


@pytest.fixture
def eleven() -> Iterator[LoopbackServer]:
    """ElevenLabs' stand-in: what the test scripts, then an outage."""
    with LoopbackServer(lambda _: Reply.json(503, {"detail": {"status": "system_busy"}})) as server:
        yield server


def paid(server: LoopbackServer, output_format: str = "mp3_22050_32") -> ElevenLabsSynthesizer:
    settings = Settings(
        tts_provider="elevenlabs",
        elevenlabs_base_url=server.url,
        elevenlabs_output_format=output_format,
        http_backoff_seconds=0.05,
        http_timeout_seconds=2,
        http_connect_timeout_seconds=1,
    )
    secrets = SecretStore([MappingSource("test", {"ELEVENLABS_API_KEY": XI_KEY})], ttl_s=300)
    synthesizer = get_synthesizer(settings, secrets)
    assert isinstance(synthesizer, ElevenLabsSynthesizer)
    return synthesizer


def free_slots(synthesizer: ElevenLabsSynthesizer) -> int:
    return synthesizer._slots._value


def tone(spoken: AudioFormat, seconds: float) -> bytes:
    """Real MP3 as ElevenLabs sends it (LAME's frames, in `spoken`'s format)."""
    rate = spoken.sample_rate
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16).tobytes()
    return encode_mp3(pcm, rate, lame_bitrate(rate, 1, spoken.bitrate_kbps))


def played(mp3: bytes) -> tuple[float, set[tuple[int, str]]]:
    """(seconds, {(sample rate, layout)}) as a player decodes `mp3`, which must be one
    stream: every byte in a frame (no tag, no stray header, no half frame), and not one
    complaint from the decoder."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    samples = framed = 0
    formats: set[tuple[int, str]] = set()
    try:
        with av.logging.Capture() as logs, av.open(io.BytesIO(mp3), format="mp3") as container:
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                framed += packet.size
                for frame in packet.decode():
                    samples += frame.samples
                    formats.add((frame.sample_rate, frame.layout.name))
    finally:
        av.logging.set_level(level)
    assert not [entry for entry in logs if entry[0] <= av.logging.ERROR], logs
    assert framed == len(mp3)
    assert len(formats) == 1, formats
    [(rate, _)] = formats
    return samples / rate, formats


def spoken_by(session, sentences: tuple[str, ...]) -> bytes:
    return b"".join(piece for s in sentences for piece in session.speak(s)) + session.finish()


# --- the embedded voice ----------------------------------------------------------------------


def test_piper_sentences_join_as_the_reply_spoken_whole(piper, steady) -> None:
    session = piper.open_session(voice=None, language="en")
    assert (session.name, session.billed) == ("piper", False)
    pieces = []
    for sentence in SENTENCES:
        for piece in session.speak(sentence):
            steady.append(("given", sentence))
            pieces.append(piece)
    pieces.append(session.finish())
    # The first sentence is on its way before the second is synthesized.
    assert steady.index(("given", SENTENCES[0])) < steady.index(("synthesized", SENTENCES[1]))
    streamed = b"".join(pieces)
    whole = piper.synthesize(" ".join(SENTENCES), voice=None)
    assert b"ID3" not in streamed and b"Xing" not in streamed and b"Info" not in streamed
    seconds, formats = played(streamed)
    whole_seconds, whole_formats = played(whole)
    assert formats == whole_formats == {(piper.sample_rate, "mono")}
    assert seconds == pytest.approx(whole_seconds, rel=0.05)
    # One encoder delay and one padding, as the whole has: an encoder a sentence would add
    # two frames' worth between every two sentences.
    assert abs(seconds - whole_seconds) <= FRAME_SAMPLES / piper.sample_rate
    assert session.format == AudioFormat(piper.sample_rate, 1, 48)


@pytest.mark.parametrize(
    ("match", "bitrate"),
    [
        (AudioFormat(24000, 1, 48), 48),
        # LAME would make 32 kbps at 22.05 kHz: the lowest bit rate that keeps 44.1 kHz.
        (AudioFormat(44100, 1, 32), 64),
        (AudioFormat(16000, 1, 32), 32),
    ],
)
def test_a_matching_piper_session_resamples_to_the_stream_it_continues(
    piper, steady, match: AudioFormat, bitrate: int
) -> None:
    session = piper.open_session(voice=None, match=match)
    streamed = spoken_by(session, SENTENCES[1:])
    seconds, formats = played(streamed)
    assert formats == {(match.sample_rate, "mono")}
    header = frame_header(streamed)
    assert header is not None
    assert (header.sample_rate, header.bitrate_kbps) == (match.sample_rate, bitrate)
    assert session.format == AudioFormat(match.sample_rate, 1, bitrate)
    pcm_seconds = sum(len(piper.synthesize_pcm(s)) / 2 for s in SENTENCES[1:]) / piper.sample_rate
    assert seconds == pytest.approx(pcm_seconds, rel=0.05)


def test_mp3_frames_pass_whole_frames_and_leave_out_tags() -> None:
    spoken = AudioFormat(22050, 1, 32)
    mp3 = tone(spoken, 1.0)
    first = frame_header(mp3)
    assert first is not None
    info = bytearray(mp3[: first.length])  # a Xing/Info frame, as a file's first
    info[first.tag_offset : first.tag_offset + 4] = b"Info"
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x05title"
    tagged = id3 + bytes(info) + mp3 + b"TAG" + bytes(125)
    assert Mp3Frames(spoken).feed(tagged) == mp3
    frames = Mp3Frames(spoken)
    fed = [frames.feed(tagged[n : n + 1]) for n in range(len(tagged))]
    assert b"".join(fed) == mp3
    assert all(frame_header(piece) for piece in fed if piece)  # each a frame, when it ends
    assert frames.pending == 0
    cut = Mp3Frames(spoken)
    assert cut.feed(mp3[:150]) == mp3[: first.length]
    assert cut.pending == 150 - first.length
    with pytest.raises(FormatMismatch, match="22050 Hz, 1 channel"):
        Mp3Frames(AudioFormat(44100, 1, 64)).feed(mp3)


# --- ElevenLabs --------------------------------------------------------------------------------


class Gate:
    """Pieces a stand-in sends only once the client has passed on (nearly) all it sent
    before: a client that waited for the whole answer would stall it."""

    def __init__(self) -> None:
        self.passed_on = 0
        self.stalled: list[int] = []

    def pieces(self, mp3: bytes, size: int = 700) -> Iterator[tuple[float, bytes]]:
        sent = 0
        for start in range(0, len(mp3), size):
            deadline = time.monotonic() + 5
            while self.passed_on < sent - LAG and time.monotonic() < deadline:
                time.sleep(0.002)
            if self.passed_on < sent - LAG:
                self.stalled.append(sent)
            piece = mp3[start : start + size]
            sent += len(piece)
            yield 0.0, piece


def test_elevenlabs_pieces_are_passed_on_as_they_arrive(eleven) -> None:
    synthesizer = paid(eleven)
    slots = free_slots(synthesizer)
    answers = [tone(AudioFormat(22050, 1, 32), seconds) for seconds in (1.5, 1.0, 1.2)]
    gates = [Gate() for _ in answers]
    eleven.script = [
        Reply(200, headers=AUDIO, pieces=gate.pieces(mp3))
        for gate, mp3 in zip(gates, answers, strict=True)
    ]
    session = synthesizer.open_session(voice=None, language="en")
    assert (session.name, session.billed) == ("elevenlabs", True)
    assert session.format == AudioFormat(22050, 1, 32)
    streamed = b""
    for sentence, gate, mp3 in zip(SENTENCES, gates, answers, strict=True):
        pieces = 0
        for piece in session.speak(sentence):
            assert free_slots(synthesizer) == slots - 1  # held while the request is
            gate.passed_on += len(piece)
            streamed += piece
            pieces += 1
        assert free_slots(synthesizer) == slots
        assert not gate.stalled
        assert pieces >= len(mp3) // 700 - 1
    assert session.finish() == b""
    assert streamed == b"".join(answers)  # whole frames, each as it came
    assert played(streamed)[1] == {(22050, "mono")}
    first, second, third = eleven.requests
    for request in eleven.requests:
        assert (request.method, request.path) == (
            "POST",
            "/v1/text-to-speech/EXAVITQu4vr4xnSDxMaL/stream",
        )
        assert request.query == {"output_format": ["mp3_22050_32"]}
        assert request.headers["xi-api-key"] == XI_KEY
    assert first.body == {
        "text": SENTENCES[0],
        "model_id": "eleven_flash_v2_5",
        "voice_settings": {"stability": 0.5, "similarity_boost": 0.8},
        "language_code": "en",
    }
    assert second.body["text"] == SENTENCES[1]
    assert second.body["previous_text"] == SENTENCES[0]
    assert third.body["previous_text"] == f"{SENTENCES[0]} {SENTENCES[1]}"


def test_previous_text_keeps_the_last_sentences_that_fit() -> None:
    said = ["One two three.", "Four five six seven.", "Eight nine."]
    assert previous_text([]) == ""
    assert previous_text(said) == "One two three. Four five six seven. Eight nine."
    assert previous_text(said, limit=35) == "Four five six seven. Eight nine."
    assert previous_text(said, limit=11) == "Eight nine."
    # A last sentence longer than the limit: its end, from a word on.
    assert previous_text(said, limit=8) == "nine."


@pytest.mark.parametrize(
    ("script", "status", "says"),
    [
        ([Reply.json(503, {})] * 3, 503, "HTTP 503"),
        ([Reply.json(401, {"detail": {"status": "invalid_api_key"}})], 502, "HTTP 401"),
        ([Reply.json(200, {"detail": "queued"})], 502, "expected MP3, got application/json"),
        ([Reply(200, headers=AUDIO, pieces=[(0.0, b"")])], 502, "expected MP3, got no audio"),
        # Another format than asked for would not join the stream.
        ([Reply(200, tone(AudioFormat(44100, 1, 64), 0.3), AUDIO)], 502, "sent 44100 Hz"),
    ],
)
def test_elevenlabs_failing_before_any_audio(eleven, script, status: int, says: str) -> None:
    synthesizer = paid(eleven)
    slots = free_slots(synthesizer)
    eleven.script = list(script)
    session = synthesizer.open_session(voice=None)
    with pytest.raises(ProviderError, match=says) as raised:
        list(session.speak(SENTENCES[0]))
    assert raised.value.status == status
    assert free_slots(synthesizer) == slots


def test_a_refused_language_code_is_not_asked_again_in_the_reply(eleven) -> None:
    mp3 = tone(AudioFormat(22050, 1, 32), 0.5)
    eleven.script = [
        Reply.json(422, {"detail": {"status": "invalid_language_code"}}),
        Reply(200, mp3, AUDIO),
        Reply(200, mp3, AUDIO),
    ]
    session = paid(eleven).open_session(voice=None, language="fi")
    assert spoken_by(session, SENTENCES[:2]) == mp3 + mp3
    assert [r.body.get("language_code") for r in eleven.requests] == ["fi", None, None]


def test_a_stream_dropped_mid_sentence_fails_after_whole_frames(eleven) -> None:
    synthesizer = paid(eleven)
    slots = free_slots(synthesizer)
    mp3 = tone(AudioFormat(22050, 1, 32), 2.0)
    eleven.script = [Reply(200, headers=AUDIO, pieces=[(0.0, mp3[:1000]), (0.05, None)])]
    session = synthesizer.open_session(voice=None)
    given = []
    with pytest.raises(ProviderError, match="broke off") as raised:
        for piece in session.speak(SENTENCES[0]):
            given.append(piece)
    assert raised.value.status == 503
    partial = b"".join(given)
    assert 0 < len(partial) <= 1000
    assert mp3.startswith(partial)
    assert frame_header(mp3, len(partial)) is not None  # it ends where a frame does
    played(partial)
    assert free_slots(synthesizer) == slots


@pytest.mark.parametrize("output_format", ["mp3_22050_32", "mp3_24000_48", "mp3_44100_128"])
def test_piper_takes_over_mid_reply_in_the_same_stream(
    eleven, piper, steady, output_format: str
) -> None:
    synthesizer = paid(eleven, output_format)
    first = synthesizer.open_session(voice=None)
    mp3 = tone(first.format, 1.5)
    cut = len(mp3) // 3 + 7  # the stand-in's pieces need not end on frames
    eleven.script = [Reply(200, headers=AUDIO, pieces=[(0.0, mp3[:cut]), (0.02, mp3[cut:])])]
    streamed = b"".join(first.speak(SENTENCES[0]))  # then ElevenLabs is down (503s)
    with pytest.raises(ProviderError, match="HTTP 503"):
        streamed += b"".join(first.speak(SENTENCES[1]))
    assert streamed == mp3
    streamed += first.finish()
    second = piper.open_session(voice=None, match=first.format)
    streamed += spoken_by(second, SENTENCES[1:])
    seconds, formats = played(streamed)
    assert formats == {(first.format.sample_rate, "mono")}
    header = frame_header(streamed, len(mp3))  # Piper's first frame, at the same bit rate
    assert header is not None
    assert header.bitrate_kbps == first.format.bitrate_kbps
    piper_seconds = sum(len(piper.synthesize_pcm(s)) / 2 for s in SENTENCES[1:]) / piper.sample_rate
    assert seconds == pytest.approx(played(mp3)[0] + piper_seconds, rel=0.05)


# --- a client that goes away -------------------------------------------------------------------


class Endless:
    """A stand-in's answer that keeps coming, a piece at a time, and notes when the server
    stopped making it before its end (the client went away)."""

    def __init__(self, mp3: bytes, pieces: int = 60, delay_s: float = 0.05) -> None:
        self.mp3, self.count, self.delay_s = mp3, pieces, delay_s
        self.sent = 0
        self.completed = False
        self.stopped = threading.Event()

    def pieces(self) -> Iterator[tuple[float, bytes]]:
        try:
            for n in range(self.count):
                yield (0.0 if n == 0 else self.delay_s), self.mp3
                self.sent += 1
            self.completed = True
        finally:
            self.stopped.set()


def test_close_aborts_the_stream_in_flight(eleven) -> None:
    synthesizer = paid(eleven)
    slots = free_slots(synthesizer)
    answer = Endless(tone(AudioFormat(22050, 1, 32), 0.5))
    eleven.script = [Reply(200, headers=AUDIO, pieces=answer.pieces())]
    session = synthesizer.open_session(voice=None)
    speaking = session.speak(SENTENCES[0])
    assert next(speaking)
    session.close()
    assert answer.stopped.wait(5)  # the server saw the client go, and stopped
    assert not answer.completed
    assert answer.sent < answer.count
    assert list(speaking) == []  # no error: nothing to fall back from
    assert free_slots(synthesizer) == slots
    assert list(session.speak(SENTENCES[1])) == []
    assert len(eleven.requests) == 1


def test_close_from_another_thread_wakes_a_waiting_read(eleven) -> None:
    synthesizer = paid(eleven)
    slots = free_slots(synthesizer)
    answer = Endless(tone(AudioFormat(22050, 1, 32), 0.5), pieces=3, delay_s=1.0)
    eleven.script = [Reply(200, headers=AUDIO, pieces=answer.pieces())]
    session = synthesizer.open_session(voice=None)
    first_piece = threading.Event()
    outcome: list[object] = []

    def speak() -> None:
        try:
            for _ in session.speak(SENTENCES[0]):
                first_piece.set()
            outcome.append("ended")
        except Exception as error:  # the test's failure, shown below
            outcome.append(error)

    reader = threading.Thread(target=speak)
    reader.start()
    assert first_piece.wait(5)
    time.sleep(0.1)  # the reader waits for the next piece, a second away
    started = time.monotonic()
    session.close()
    reader.join(5)
    assert outcome == ["ended"]
    assert time.monotonic() - started < 0.5
    assert answer.stopped.wait(5)
    assert not answer.completed
    assert free_slots(synthesizer) == slots


def test_closed_piper_session_says_nothing_more(piper, steady) -> None:
    session = piper.open_session(voice=None)
    assert list(session.speak(SENTENCES[0]))
    session.close()
    assert list(session.speak(SENTENCES[1])) == []
    assert session.finish() == b""
    assert [text for kind, text in steady if kind == "synthesized"] == [SENTENCES[0]]
