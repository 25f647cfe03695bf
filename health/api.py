"""`GET /health`: liveness, anonymous, touching nothing. `GET /health/ready`: readiness,
for operators only (the host's admin key), checking what `/talk` needs."""

from __future__ import annotations

import json
import threading
import time

import azure.functions as func

from shared.config import get_settings
from shared.errors import TalkError
from shared.providers import active_providers, default_secrets, required_secrets
from shared.storage import blob_store
from shared.storage.conversations import conversation_store

bp = func.Blueprint()

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
