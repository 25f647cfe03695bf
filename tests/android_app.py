"""The Android app's network code, replayed: a test client written from `MainActivity.kt`
(OgeonX-Ai/android, `app/src/main/java/com/example/aitalkdemo/MainActivity.kt`).

What it copies, and from where:
- `sendAudioToBackend`: `MultipartBody.Builder().setType(FORM).addFormDataPart("audio",
  file.name, file.asRequestBody("audio/mp4"))`, a `recording_<ms>.m4a`, framed as OkHttp
  4.12 frames it (`tests/client_framing.okhttp`: a UUID boundary, a `Content-Length` in
  the part). The URL is the compile-time `backendUrl`; the app sends no headers of its
  own, so the function key goes in the URL (`?code=`).
- `sendTextToBackend`: `JSONObject().put("text", prompt).put("voice", voice).toString()`
  as `application/json; charset=utf-8` (org.json keeps insertion order, no spaces, and
  writes `/` as `\\/`).
- OkHttp's own headers (BridgeInterceptor): Content-Type, Content-Length, Host,
  `Connection: Keep-Alive`, `Accept-Encoding: gzip` (answers are un-gzipped
  transparently), `User-Agent: okhttp/4.12.0`.
- `OkHttpClient.Builder()`: connect 10 s, read 90 s, write 60 s.
- `executeWithRetry`: two attempts 300 ms apart, on any exception (a timeout, a dropped
  connection); the same `Request`, so the same bytes. After the second failure the
  exception escapes the coroutine, which ends the app.
- `processTalkResponse`: a non-2xx is the toast "Backend error (N). Please try again.";
  a 2xx with an empty body is "Empty response from server"; otherwise `request_id`,
  `text`, `audio_base64` (`optString`, so a missing one is "") and `audio_format` are
  read, the audio is decoded and played, and a failed playback is "Playback failed".
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import av

from tests.client_framing import okhttp

CONNECT_TIMEOUT_S, READ_TIMEOUT_S, WRITE_TIMEOUT_S = 10.0, 90.0, 60.0
ATTEMPTS, RETRY_PAUSE_S = 2, 0.3
USER_AGENT = "okhttp/4.12.0"


class AppCrashed(Exception):
    """Both attempts failed: the exception leaves `withProcessingIo` and ends the app."""


@dataclass(frozen=True)
class Shown:
    """What the user gets from one tap: the answer's status, the toast (None when the
    reply plays), and what was played."""

    status: int
    toast: str | None
    request_id: str | None
    reply_text: str
    played_seconds: float
    attempts: int


class AndroidApp:
    def __init__(self, backend_url: str, *, drop_first_after_s: float | None = None) -> None:
        """`drop_first_after_s`: the network drops the first attempt's connection this
        long after the upload (a phone changing networks; the read timeout does the same
        90 s in)."""
        self.backend_url = backend_url  # https://<app>/talk?code=<key>, as docs/api.md says
        self.drop_first_after_s = drop_first_after_s

    def send_audio(self, recording: bytes, filename: str) -> Shown:
        content_type, body = okhttp(recording, filename, "audio/mp4")
        return self._execute_with_retry(content_type, body)

    def send_text(self, prompt: str, voice: str) -> Shown:
        document = {"text": prompt, "voice": voice}
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        body = text.replace("/", "\\/").encode("utf-8")  # only strings can hold a "/"
        return self._execute_with_retry("application/json; charset=utf-8", body)

    def _execute_with_retry(self, content_type: str, body: bytes) -> Shown:
        attempt = 1
        while True:
            drop_after_s = self.drop_first_after_s if attempt == 1 else None
            try:
                status, answer = self._call(content_type, body, drop_after_s)
            except OSError as error:  # SocketTimeoutException, a reset, a refused connect
                if attempt == ATTEMPTS:
                    raise AppCrashed(f"both attempts failed: {error!r}") from error
                attempt += 1
                time.sleep(RETRY_PAUSE_S)
                continue
            return process_talk_response(status, answer, attempt)

    def _call(
        self, content_type: str, body: bytes, drop_after_s: float | None
    ) -> tuple[int, bytes]:
        url = urlsplit(self.backend_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        target = url.path + (f"?{url.query}" if url.query else "")
        host = url.hostname if url.port is None else f"{url.hostname}:{url.port}"
        head = (
            f"POST {target} HTTP/1.1\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Host: {host}\r\n"
            "Connection: Keep-Alive\r\n"
            "Accept-Encoding: gzip\r\n"
            f"User-Agent: {USER_AGENT}\r\n\r\n"
        ).encode("latin-1")
        with socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.settimeout(WRITE_TIMEOUT_S)
            sock.sendall(head + body)
            sock.settimeout(drop_after_s or READ_TIMEOUT_S)  # OkHttp's: per socket read
            response = http.client.HTTPResponse(sock, method="POST")
            try:
                response.begin()
                answer = response.read()
            except TimeoutError:
                if drop_after_s:
                    raise ConnectionResetError("the network dropped the connection") from None
                raise
            if (response.getheader("Content-Encoding") or "").lower() == "gzip":
                answer = gzip.decompress(answer)
            return response.status, answer


def process_talk_response(status: int, answer: bytes, attempts: int = 1) -> Shown:
    """`processTalkResponse`, line by line; `status` and `answer` as OkHttp read them."""
    text = answer.decode("utf-8", "replace")
    try:
        request_id = json.loads(text).get("request_id") if text.strip() else None
    except (ValueError, AttributeError):
        request_id = None
    if not 200 <= status < 300:
        return Shown(
            status, f"Backend error ({status}). Please try again.", request_id, "", 0, attempts
        )
    if not text.strip():
        return Shown(status, "Empty response from server", None, "", 0, attempts)
    try:
        document = json.loads(text)
        reply_text = str(document.get("text", ""))
        audio = base64.b64decode(str(document.get("audio_base64", "")))
    except (ValueError, AttributeError):
        return Shown(status, "Could not read server response", None, "", 0, attempts)
    played = playable_seconds(audio)
    toast = None if played > 0 else "Playback failed"
    return Shown(status, toast, request_id, reply_text, played, attempts)


def playable_seconds(audio: bytes) -> float:
    """How long MediaPlayer would play `audio` for; 0 for what it cannot prepare."""
    try:
        with av.open(io.BytesIO(audio)) as container:
            samples = sum(frame.samples for frame in container.decode(audio=0))
            rate = container.streams.audio[0].rate
    except (av.FFmpegError, IndexError, ValueError):
        return 0.0
    return samples / rate if rate else 0.0
