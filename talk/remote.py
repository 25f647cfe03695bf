"""`python -m talk --url`: ask a deployed backend as the Android app does, and follow a
`202` (it asks for one with `Prefer: respond-async`) to the reply."""

from __future__ import annotations

import base64
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

import requests

from shared.answer import TalkResult
from shared.errors import BadInput, TalkError

log = logging.getLogger("talk")

# The Android app's OkHttp timeouts.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 90
_POLL_LIMIT_S = 300


class BackendError(TalkError):
    """The backend answered with an error status."""


class BackendRefused(BadInput):
    """The backend refused the request itself (400, 413, 415, 422)."""


def ask_backend(
    url: str,
    *,
    key: str | None,
    audio_file: Path | None,
    text: str | None,
    voice: str | None,
    language: str | None,
    conversation_id: str | None = None,
) -> TalkResult:
    base = url.rstrip("/")
    # A slow reply is a 202 to follow, not the 504 that clients which cannot follow get.
    headers = {"Accept": "application/json", "Prefer": "respond-async"}
    if key:
        headers["x-functions-key"] = key
    given = {"voice": voice, "language": language, "conversation_id": conversation_id}
    fields = {k: v for k, v in given.items() if v}
    session = requests.Session()
    try:
        if audio_file is not None:
            content_type = mimetypes.guess_type(audio_file.name)[0] or "application/octet-stream"
            if audio_file.suffix.lower() in (".m4a", ".mp4"):
                content_type = "audio/mp4"  # what the app sends for its recordings
            files = {"audio": (audio_file.name, audio_file.read_bytes(), content_type)}
            response = session.post(
                f"{base}/talk",
                data=fields,
                files=files,
                headers=headers,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        elif text:
            response = session.post(
                f"{base}/talk",
                json={"text": text, **fields},
                headers=headers,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        else:
            raise BadInput("send audio or text")
        response = _collect(session, base, response, headers)
    except OSError as error:  # requests' connection errors, unreadable files
        log.debug("Cannot reach %s: %s", base, type(error).__name__)
        raise TalkError(f"cannot reach {base}") from None
    log.info("Backend response code: %d", response.status_code)
    if response.status_code != 200:
        raise _backend_error(response)
    return _result(response.json())


def _collect(
    session: requests.Session, base: str, response: requests.Response, headers: dict[str, str]
) -> requests.Response:
    """Follow a 202 to `Location` until the reply is ready, as a patient client would."""
    deadline = time.monotonic() + _POLL_LIMIT_S
    while response.status_code == 202 and time.monotonic() < deadline:
        time.sleep(float(response.headers.get("Retry-After", "2")))
        location = response.headers["Location"]
        response = session.get(
            location if location.startswith("http") else f"{base}{location}",
            headers=headers,
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        )
    return response


def _backend_error(response: requests.Response) -> TalkError:
    try:
        body = response.json()
        message, code = str(body.get("error", "")), body.get("code")
    except (ValueError, AttributeError):
        message, code = response.reason or "", None
    status = response.status_code
    refused = 400 <= status < 500 and status not in (401, 403, 404, 429)
    error = (BackendRefused if refused else BackendError)(f"Backend error ({status}): {message}")
    error.status = status
    if isinstance(code, str):
        error.code = code  # the backend's own word for it, e.g. budget_exhausted
    return error


def _result(body: dict[str, Any]) -> TalkResult:
    mp3 = base64.b64decode(body["audio_base64"])
    log.info("MP3 bytes=%d", len(mp3))
    return TalkResult(
        request_id=body["request_id"],
        transcript=body.get("transcript"),
        text=body["text"],
        language=body.get("language"),
        mp3=mp3,
        timings_ms=body.get("timings_ms", {}),
        providers=body.get("providers", {}),
        conversation_id=body.get("conversation_id"),
        cache=body.get("cache", []),
    )
