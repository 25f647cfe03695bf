"""`GET /health`: liveness without touching anything; `?ready=1` checks what /talk needs."""

from __future__ import annotations

import json

import azure.functions as func

from shared.config import get_settings
from shared.conversations import conversation_store
from shared.errors import TalkError
from shared.providers import active_providers, default_secrets, required_secrets
from shared.storage import blob_store

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    if req.params.get("ready", "").lower() not in ("1", "true", "yes"):
        return _json({"status": "ok"}, 200)
    checks: dict[str, str] = {}
    providers: dict[str, str] = {}
    try:
        settings = get_settings()
        checks["config"] = "ok"
    except TalkError as error:
        checks["config"] = error.message
        return _json({"status": "unavailable", "checks": checks}, 503)
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
    return _json(body, 200 if ready else 503)


def _json(body: dict[str, object], status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")
