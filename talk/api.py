"""`POST /talk` and `GET /talk/{request_id}`: thin HTTP functions over the orchestration."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from shared.config import Settings, get_settings
from shared.conversations import conversation_store, validate_conversation_id
from shared.errors import BadInput, TalkError
from shared.pipeline import new_request_id
from shared.storage import blob_store
from shared.talk_input import parse_talk_input
from talk.orchestration import ORCHESTRATOR
from talk.responses import (
    error_response,
    pending_response,
    preferred_format,
    reply_response,
)

bp = df.Blueprint()
log = logging.getLogger("talk")

_REQUEST_ID = re.compile(r"^[0-9a-f]{8}$")
MAX_IDEMPOTENCY_KEY = 255
_FIRST_POLL_S, _MAX_POLL_S = 0.05, 0.5
_DONE = {
    df.OrchestrationRuntimeStatus.Completed,
    df.OrchestrationRuntimeStatus.Failed,
    df.OrchestrationRuntimeStatus.Terminated,
    df.OrchestrationRuntimeStatus.Canceled,
}


@bp.route(route="talk", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def talk_start(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    started = time.perf_counter()
    rid = new_request_id()
    response_format = preferred_format(req.headers.get("Accept"))
    if response_format is None:
        return error_response(
            406, "Accept must allow application/json or audio/mpeg", rid, "not_acceptable"
        )
    try:
        settings = get_settings()
        idempotency = idempotency_blob(req.headers.get("Idempotency-Key"))
        talk_input = parse_talk_input(
            req.headers.get("Content-Type"),
            req.get_body(),
            settings,
            req.headers.get("X-Conversation-Id"),
        )
        store = blob_store(settings)
        job: dict[str, Any] = {
            "request_id": rid,
            "text": talk_input.text,
            "voice": talk_input.voice,
            "language": talk_input.language,
            "system_prompt": talk_input.system_prompt,
            "conversation_id": talk_input.conversation_id,
            "history_turns": settings.conversation_turns,
        }
        if talk_input.audio is not None:
            blob = f"{rid}/input.{talk_input.audio_extension}"
            # Stored before the orchestration starts: nothing the user sent is lost.
            await asyncio.to_thread(store.put, blob, talk_input.audio, "application/octet-stream")
            job["audio_blob"] = blob
        if idempotency:
            first = await asyncio.to_thread(store.claim, idempotency, rid)
            if first != rid:
                log.info("[%s] /talk retried with its Idempotency-Key: answering %s", rid, first)
                return await _wait_and_answer(client, first, response_format, started, settings)
    except TalkError as error:
        return error_response(error.status, error.message, rid, error.code)
    log.info(
        "[%s] /talk accepted %s",
        rid,
        f"audio bytes={len(talk_input.audio)}" if talk_input.audio else "text",
    )
    try:
        await client.start_new(ORCHESTRATOR, instance_id=rid, client_input=job)
    except Exception as error:  # the Durable extension itself did not answer
        log.error("[%s] orchestration unavailable: %s", rid, type(error).__name__)
        if idempotency:  # let a retry with the same key start afresh
            await asyncio.to_thread(store.delete, idempotency)
        return error_response(503, "processing is unavailable, retry shortly", rid, "unavailable")
    return await _wait_and_answer(client, rid, response_format, started, settings)


def idempotency_blob(key: str | None) -> str | None:
    """Where the request id for a client's `Idempotency-Key` is kept (the key hashed)."""
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise BadInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}"


async def _wait_and_answer(
    client: df.DurableOrchestrationClient,
    rid: str,
    response_format: str,
    started: float,
    settings: Settings,
) -> func.HttpResponse:
    try:
        status = await _wait_for_completion(client, rid, started + settings.talk_wait_seconds)
    except Exception as error:  # the Durable extension itself did not answer
        log.error("[%s] status unavailable: %s", rid, type(error).__name__)
        return error_response(503, "processing is unavailable, retry shortly", rid, "unavailable")
    return await _answer(status, rid, response_format, started)


@bp.route(route="talk/{request_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def talk_result(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    rid = req.route_params.get("request_id", "")
    if not _REQUEST_ID.match(rid):
        return error_response(404, "unknown request id", None, "not_found")
    response_format = preferred_format(req.headers.get("Accept"))
    if response_format is None:
        return error_response(
            406, "Accept must allow application/json or audio/mpeg", rid, "not_acceptable"
        )
    try:
        status = await client.get_status(rid)
    except Exception as error:  # the Durable extension itself did not answer
        log.error("[%s] status unavailable: %s", rid, type(error).__name__)
        return error_response(503, "status is unavailable, retry shortly", rid, "unavailable")
    if status is None or status.runtime_status is None:
        return error_response(404, "unknown request id", rid, "not_found")
    return await _answer(status, rid, response_format, None)


async def _wait_for_completion(
    client: df.DurableOrchestrationClient, rid: str, deadline: float
) -> df.DurableOrchestrationStatus:
    delay = _FIRST_POLL_S
    while True:
        status = await client.get_status(rid)
        if status.runtime_status in _DONE or time.perf_counter() + delay > deadline:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, _MAX_POLL_S)


async def _answer(
    status: df.DurableOrchestrationStatus,
    rid: str,
    response_format: str,
    started: float | None,
) -> func.HttpResponse:
    if status.runtime_status not in _DONE:
        log.info("[%s] /talk still running: answering 202", rid)
        return pending_response(rid)
    output = (
        status.output if status.runtime_status is df.OrchestrationRuntimeStatus.Completed else None
    )
    if not isinstance(output, dict):
        log.error("[%s] orchestration ended %s", rid, status.runtime_status)
        return error_response(502, "the request could not be processed", rid, "processing_failed")
    if "error" in output:
        error = output["error"]
        log.info("[%s] /talk failed: %s", rid, error["message"])
        return error_response(error["status"], error["message"], rid, error["code"])
    try:
        mp3 = await asyncio.to_thread(blob_store(get_settings()).get, output["audio_blob"])
    except TalkError as error:
        return error_response(error.status, error.message, rid, error.code)
    if started is not None:
        # What the caller waited, which is what the app feels.
        output["timings_ms"]["total"] = round((time.perf_counter() - started) * 1000)
    return reply_response(output, mp3, response_format)


@bp.route(
    route="talk/conversations/{conversation_id}",
    methods=["GET", "DELETE"],
    auth_level=func.AuthLevel.FUNCTION,
)
def talk_conversation(req: func.HttpRequest) -> func.HttpResponse:
    """`GET` a conversation's turns, so an app can show the chat; `DELETE` forgets it."""
    try:
        conversation_id = validate_conversation_id(req.route_params.get("conversation_id"))
        if conversation_id is None:
            raise BadInput("conversation_id is empty")
        store = conversation_store(get_settings())
        if req.method == "DELETE":
            if not store.delete(conversation_id):
                return error_response(404, "unknown conversation", None, "not_found")
            log.info("Conversation %s forgotten", conversation_id)
            return func.HttpResponse(status_code=204)
        turns = store.turns(conversation_id)
    except TalkError as error:
        return error_response(error.status, error.message, None, error.code)
    if not turns:
        return error_response(404, "unknown conversation", None, "not_found")
    body = {"conversation_id": conversation_id, "turns": [asdict(turn) for turn in turns]}
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), mimetype="application/json")
