"""HTTP answers of `/talk`: the app's JSON contract, raw MP3, 202 and errors."""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import azure.functions as func
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from shared.pipeline import log_success

log = logging.getLogger("talk")

JSON = "application/json"
MP3 = "audio/mpeg"
POLL_AFTER_SECONDS = 2


@dataclass(frozen=True)
class Preference:
    """What a client prefers while its reply is made (RFC 7240 `Prefer`): `respond_async`,
    a `202` with where to collect the reply rather than an error when it takes long, and
    `wait_s`, how long to wait for it before that."""

    respond_async: bool
    wait_s: float | None = None


def preference(headers: Mapping[str, str], params: Mapping[str, str]) -> Preference:
    """`Prefer: respond-async[, wait=N]`, or `?async=1` for clients that cannot set
    headers. Preferences are hints: anything unreadable in them is ignored."""
    respond_async = params.get("async", "").lower() in ("1", "true")
    wait_s = None
    for item in (headers.get("prefer") or "").split(","):
        name, _, value = item.split(";")[0].strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "respond-async":
            respond_async = True
        elif name == "wait" and value.isascii() and value.isdigit() and len(value) <= 6:
            wait_s = float(value)
    return Preference(respond_async, wait_s)


def preferred_format(accept: str | None) -> str | None:
    """`application/json` (the default), `audio/mpeg`, or None if neither is acceptable."""
    if not accept or not accept.strip():
        return JSON
    return parse_accept_header(accept, MIMEAccept).best_match([JSON, MP3])


def error_response(
    status: int,
    message: str,
    request_id: str | None,
    code: str = "error",
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    log.info("[%s] Backend response code: %d (%s)", request_id, status, code)
    body = {"error": message, "code": code, "request_id": request_id}
    all_headers = {**({"X-Request-Id": request_id} if request_id else {}), **(headers or {})}
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype=JSON, headers=all_headers or None
    )


def error_code(response: func.HttpResponse) -> str | None:
    """The `code` of an error response made by `error_response`; None for any other."""
    if response.status_code < 400 or response.mimetype != JSON:
        return None
    try:
        code = json.loads(response.get_body()).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def internal_error_response() -> func.HttpResponse:
    return error_response(500, "the request could not be processed", None, "internal")


def json_errors(
    function: Callable[..., Awaitable[func.HttpResponse]],
) -> Callable[..., Awaitable[func.HttpResponse]]:
    """An HTTP function that answers anything unexpected with a JSON `500 internal` (logged
    once, with its kind), never the host's empty 500 or a stack trace."""

    @functools.wraps(function)
    async def answering(*args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return await function(*args, **kwargs)
        except Exception as error:
            log.error(
                "%s failed unexpectedly: %s", function.__name__, type(error).__name__, exc_info=True
            )
            return internal_error_response()

    return answering


def pending_response(request_id: str) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"request_id": request_id, "status": "running"}),
        status_code=202,
        mimetype=JSON,
        headers={
            "Location": f"/talk/{request_id}",
            "Retry-After": str(POLL_AFTER_SECONDS),
            "X-Request-Id": request_id,
        },
    )


def reply_pending_response(request_id: str) -> func.HttpResponse:
    """The reply is late, for a client that did not ask for `202`: an error status the
    Android app shows (it plays any 2xx), and where the reply will be."""
    location = f"/talk/{request_id}"
    return error_response(
        504,
        f"the reply is taking longer than usual; it will be at GET {location}",
        request_id,
        "reply_pending",
        {"Location": location, "Retry-After": str(POLL_AFTER_SECONDS)},
    )


def reply_response(
    output: dict[str, Any],
    mp3: bytes,
    response_format: str,
    phases: dict[str, float] | None = None,
) -> func.HttpResponse:
    """The reply; `phases` (what the HTTP function spent on what) join the stages' timings
    in `Server-Timing`."""
    rid = output["request_id"]
    timings = output["timings_ms"]
    durations = {stage: timings[stage] for stage in ("stt", "llm", "tts", "total")}
    headers = {
        "X-Request-Id": rid,
        "X-Cache": ",".join(output.get("cache", [])) or "none",
        "Server-Timing": ", ".join(
            f"{name};dur={value:g}" for name, value in {**durations, **(phases or {})}.items()
        ),
    }
    if response_format == MP3:
        headers["X-Reply-Text"] = quote(output["text"], safe="")
        if output["transcript"] is not None:
            headers["X-Transcript"] = quote(output["transcript"], safe="")
        if output["language"]:
            headers["X-Language"] = output["language"]
        if output.get("conversation_id"):
            headers["X-Conversation-Id"] = output["conversation_id"]
        if output.get("turn_saved") is False:
            headers["X-Turn-Saved"] = "false"
        response = func.HttpResponse(mp3, status_code=200, mimetype=MP3, headers=headers)
    else:
        body = {
            "request_id": rid,
            "text": output["text"],
            "audio_base64": base64.b64encode(mp3).decode("ascii"),
            "audio_format": "mp3",
            "transcript": output["transcript"],
            "language": output["language"],
            "timings_ms": timings,
            "providers": output["providers"],
            "cache": output.get("cache", []),
        }
        if output.get("conversation_id"):
            body["conversation_id"] = output["conversation_id"]
        if output.get("turn_saved") is False:
            body["turn_saved"] = False
        response = func.HttpResponse(
            json.dumps(body, ensure_ascii=False), status_code=200, mimetype=JSON, headers=headers
        )
    if output.get("turn_saved") is False:
        log.warning("[%s] the turn was not saved to its conversation", rid)
    log.info("[%s] Backend response code: 200", rid)
    log_success(rid, timings["total"] / 1000, len(output["text"]), len(mp3))
    return response
