"""`GET /health`: liveness, anonymous, touching nothing. `GET /health/ready`: readiness,
for operators only (the host's admin key), checking what `/talk` needs. `POST
/health/speech`: the deployment hears a recording and says it back with the embedded voice,
also for operators only: the deploy's smoke test, with no paid call."""

from __future__ import annotations

import json
import logging
import threading
import time

import azure.functions as func

from shared.config import get_settings
from shared.errors import NoInput, RetryLater, TalkError
from shared.pipeline import new_request_id, speak_back
from shared.providers import active_providers, default_secrets, required_secrets
from shared.storage import blob_store
from shared.storage.conversations import conversation_store
from talk.responses import error_response

bp = func.Blueprint()
log = logging.getLogger(__name__)

# Readiness reaches storage and Key Vault (seconds when they are down): a burst of probes
# shares one check.
READY_CACHE_S = 10.0
_ready_lock = threading.Lock()
_ready_cache: tuple[float, int, dict[str, object]] | None = None


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"status": "ok"}, 200)


# The admin (master) key, not the function key: that one ships inside the app, and this
# answer names the providers and which secrets are missing.
@bp.route(route="health/ready", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def health_ready(req: func.HttpRequest) -> func.HttpResponse:
    global _ready_cache
    with _ready_lock:
        now = time.monotonic()
        if _ready_cache is None or now - _ready_cache[0] > READY_CACHE_S:
            _ready_cache = (now, *readiness())
        _, status, body = _ready_cache
    return _json(body, status)


# The admin key again: the models run on the caller's upload, which only operators may send.
@bp.route(route="health/speech", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def health_speech(req: func.HttpRequest) -> func.HttpResponse:
    rid = new_request_id()
    try:
        audio = req.get_body()
        if not audio:
            raise NoInput("send a recording as the request body")
        heard, speech = speak_back(audio, request_id=rid, settings=get_settings())
    except TalkError as error:
        if error.status < 500:  # the recording: the sender's to fix
            return error_response(error.status, error.message, rid, error.code)
        # A model the deploy did not ship (ConfigError), a spent CPU budget: the app's.
        log.warning("[%s] self-check failed: %s", rid, error.message)
        retry = {"Retry-After": str(error.retry_after_s)} if isinstance(error, RetryLater) else {}
        message = f"self-check failed: {error.message}"
        return error_response(503, message, rid, "self_check_failed", retry)
    except Exception as error:  # what the check is for: a model or library the deploy broke
        log.exception("[%s] self-check failed", rid)
        message = f"self-check failed: {type(error).__name__}"
        return error_response(503, message, rid, "self_check_failed")
    return _json(
        {
            "status": "ok",
            "request_id": rid,
            "transcript": heard.text,
            "language": heard.language,
            "audio_bytes": len(speech.mp3),
            "providers": {"stt": heard.provider, "tts": speech.provider},
            "timings_ms": {"stt": heard.elapsed_ms, "tts": speech.elapsed_ms},
        },
        200,
    )


def readiness() -> tuple[int, dict[str, object]]:
    checks: dict[str, str] = {}
    try:
        settings = get_settings()
        checks["config"] = "ok"
    except TalkError as error:
        checks["config"] = error.message
        return 503, {"status": "unavailable", "checks": checks}
    secrets = default_secrets(settings)
    missing = [name for name in required_secrets(settings) if not secrets.get(name)]
    checks["secrets"] = "ok" if not missing else f"missing: {', '.join(missing)}"
    checks["secrets"] += "".join(f"; {problem}" for problem in secrets.problems())
    providers = active_providers(settings, secrets)
    try:
        # What /talk touches, with the calls its data roles allow: the upload container
        # (Storage Blob Data Owner) and the conversations table (Table Data Contributor).
        blob_store(settings).check()
        conversation_store(settings).check()
        checks["storage"] = "ok"
    except TalkError as error:
        checks["storage"] = error.message
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks, "providers": providers}
    return (200 if ready else 503), body


def forget_readiness() -> None:
    """Drop the cached readiness, e.g. after the configuration changed (tests)."""
    global _ready_cache
    with _ready_lock:
        _ready_cache = None


def _json(body: dict[str, object], status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")
