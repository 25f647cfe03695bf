"""`POST /talk`, `GET /talk/{request_id}`, the conversation routes and `DELETE /talk/me`:
thin HTTP functions over the orchestration.

Every route first establishes the caller (`shared.security.identity`); what is stored
carries the caller's owner, and a request, conversation or reply that is not the caller's
answers 404, exactly as one that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from opentelemetry.trace import SpanKind

from shared.accept import CLAIM_GRACE_S, Joined, StatusOf, TurnStatus, accept
from shared.config import Settings, get_settings
from shared.errors import NotFound, RetryLater, TalkError
from shared.pipeline import new_request_id
from shared.security.identity import Caller, Unauthorized, identify
from shared.security.ratelimit import Access, admit, forget_caller
from shared.storage import StorageUnavailable, blob_store, erasure, turns
from shared.storage.conversations import (
    conversation_store,
    issued_conversation_id,
)
from shared.storage.erasure import Scope
from shared.telemetry import traced
from shared.telemetry.metrics import request_answered
from talk.orchestration import ORCHESTRATOR
from talk.responses import (
    Preference,
    error_code,
    error_response,
    json_errors,
    pending_response,
    preference,
    preferred_format,
    reply_pending_response,
    reply_response,
)

bp = df.Blueprint()
log = logging.getLogger("talk")

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
# The turn's end is noticed within 50 ms for as long as a voice turn normally takes; after
# that the checks back off (a slow provider is not worth a status read every 50 ms). 3 s
# (`make bench`): a turn of up to 3.4 s is noticed in 40 ms p50, a 5 s one in 370 ms, and a
# request makes at most 60 fast reads, not 200 as with 10 s.
POLL_S, FAST_POLL_WINDOW_S, MAX_POLL_S = 0.05, 3.0, 0.5
_DONE = {
    df.OrchestrationRuntimeStatus.Completed,
    df.OrchestrationRuntimeStatus.Failed,
    df.OrchestrationRuntimeStatus.Terminated,
    df.OrchestrationRuntimeStatus.Canceled,
}
NOT_ACCEPTABLE = "Accept must allow application/json or audio/mpeg"


class Phases:
    """How long each part of a `POST /talk` took, in milliseconds, for `Server-Timing`:
    `accept` (caller, limits, parsing, storing the request), `start` (starting the
    orchestration), `wait` (until its end is noticed), `read` (reading the reply back)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.durations: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.durations[name] = round((now - self._last) * 1000, 1)
        self._last = now


@dataclass(frozen=True)
class Answering:
    """How to answer: the format the client accepts, what it prefers (`202` or waiting),
    and for `POST /talk` when it started and its phases."""

    response_format: str
    preference: Preference
    started: float | None = None
    phases: Phases | None = None


class StillRunning(TalkError):
    status = 409
    code = "still_running"


def refused(error: TalkError, rid: str | None) -> func.HttpResponse:
    """The error response for a typed failure, with the headers its status calls for."""
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(error, StillRunning):
        headers["Retry-After"] = "5"
    elif isinstance(error, RetryLater):
        headers["Retry-After"] = str(error.retry_after_s)
    return error_response(error.status, error.message, rid, error.code, headers)


@bp.route(route="talk", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@json_errors
async def talk_start(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    rid = new_request_id()
    status, code = 500, "internal"  # unless an answer comes back (`json_errors` makes it)
    try:
        with traced(
            "POST /talk", kind=SpanKind.SERVER, request_id=rid, method="POST", route="/talk"
        ) as span:
            response = await _accept_and_answer(req, client, rid)
            status, code = response.status_code, error_code(response) or "ok"
            span.set(status=status)
            if status >= 500:  # Application Insights counts a request failed by its status
                span.fail(code)
            elif code != "ok":
                span.set(error_code=code)
    finally:
        request_answered(status, code)
    return response


async def _accept_and_answer(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, rid: str
) -> func.HttpResponse:
    started = time.perf_counter()
    phases = Phases()
    response_format = preferred_format(req.headers.get("Accept"))
    if response_format is None:
        return error_response(406, NOT_ACCEPTABLE, rid, "not_acceptable")
    answer = Answering(response_format, preference(req.headers, req.params), started, phases)
    try:
        accepted = await accept(req.headers, req.get_body(), rid, durable_status(client))
    except TalkError as error:
        return refused(error, rid)
    phases.mark("accept")
    if isinstance(accepted, Joined):
        log.info("[%s] /talk %s: answering %s", rid, accepted.how, accepted.request_id)
        return await _wait_and_answer(client, accepted.request_id, answer, get_settings())
    audio = accepted.talk_input.audio
    log.info("[%s] /talk accepted %s", rid, f"audio bytes={len(audio)}" if audio else "text")
    if accepted.too_late():
        log.warning("[%s] /talk too slow to start: removed", rid)
        await accepted.abandon()
        return error_response(503, "processing is unavailable, retry shortly", rid, "unavailable")
    try:
        await client.start_new(ORCHESTRATOR, instance_id=rid, client_input=accepted.job)
    except Exception as error:  # the Durable extension itself did not answer
        log.error("[%s] orchestration unavailable: %s", rid, type(error).__name__)
        await accepted.release()  # let a retry with the same key start afresh
        return error_response(503, "processing is unavailable, retry shortly", rid, "unavailable")
    phases.mark("start")
    return await _wait_and_answer(client, rid, answer, accepted.settings)


def durable_status(client: df.DurableOrchestrationClient) -> StatusOf:
    """Turns as the Durable extension knows them."""

    async def status_of(rid: str) -> TurnStatus:
        try:
            status = await client.get_status(rid)
        except Exception as error:  # the Durable extension itself did not answer
            log.error("[%s] status unavailable: %s", rid, type(error).__name__)
            raise StorageUnavailable("processing is unavailable, retry shortly") from None
        if status is None or status.runtime_status is None:  # perhaps a streamed turn
            return await asyncio.to_thread(turns.turn_status, rid, get_settings())
        done = status.runtime_status in _DONE
        return TurnStatus(True, done, _failed_transiently(status), status.last_updated_time)

    return status_of


def _failed_transiently(status: df.DurableOrchestrationStatus) -> bool:
    if status.runtime_status not in _DONE:
        return False
    output = status.output
    if status.runtime_status is not df.OrchestrationRuntimeStatus.Completed:
        return True
    return isinstance(output, dict) and output.get("error", {}).get("status", 200) >= 500


async def _wait_and_answer(
    client: df.DurableOrchestrationClient, rid: str, answer: Answering, settings: Settings
) -> func.HttpResponse:
    asked = answer.preference.wait_s
    wait_s = settings.talk_wait_seconds if asked is None else min(asked, settings.talk_wait_seconds)
    try:
        status = await _wait_for_completion(client, rid, answer.started + wait_s)
    except Exception as error:  # the Durable extension itself did not answer
        log.error("[%s] status unavailable: %s", rid, type(error).__name__)
        return error_response(503, "processing is unavailable, retry shortly", rid, "unavailable")
    answer.phases.mark("wait")
    if status is None:  # never started (its claim's owner gave up on it)
        return await _answer_output(None, rid, answer)
    return await _answer(status, rid, answer)


@bp.route(route="talk/{request_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@json_errors
async def talk_result(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    rid = req.route_params.get("request_id", "")
    response_format = preferred_format(req.headers.get("Accept"))
    if response_format is None:
        return error_response(406, NOT_ACCEPTABLE, None, "not_acceptable")
    try:
        settings = get_settings()
        caller = await asyncio.to_thread(identify, req.headers, settings)
        await asyncio.to_thread(admit, caller, settings, Access.READ)
        if not _REQUEST_ID.match(rid):
            raise NotFound("unknown request id")
        try:
            status = await client.get_status(rid, show_input=True)
        except Exception as error:  # the Durable extension itself did not answer
            log.error("[%s] status unavailable: %s", rid, type(error).__name__)
            return error_response(503, "status is unavailable, retry shortly", rid, "unavailable")
        streamed = None
        if status is None or status.runtime_status is None:  # perhaps a streamed turn
            streamed = await asyncio.to_thread(turns.find, rid, settings)
            if streamed is None or streamed.owner != caller.owner:
                raise NotFound("unknown request id")
        elif not _owned_by(status, caller):
            raise NotFound("unknown request id")
    except TalkError as error:
        return refused(error, rid if _REQUEST_ID.match(rid) else None)
    # Whoever polls for a reply is waiting for it asynchronously already.
    answer = Answering(response_format, Preference(True))
    if streamed is None:
        return await _answer(status, rid, answer)
    if streamed.running:
        return pending_response(rid)
    return await _answer_output(
        await asyncio.to_thread(turns.outcome, streamed, settings), rid, answer
    )


def _owned_by(status: df.DurableOrchestrationStatus | None, caller: Caller) -> bool:
    if status is None or status.runtime_status is None:
        return False
    job = status.input_
    if isinstance(job, str):  # some hosts hand the input back as its JSON text
        try:
            job = json.loads(job)
        except ValueError:
            return False
    return isinstance(job, dict) and job.get("owner") == caller.owner


async def _wait_for_completion(
    client: df.DurableOrchestrationClient, rid: str, deadline: float
) -> df.DurableOrchestrationStatus | None:
    """The orchestration's status once it is done or at `deadline` (None: no instance).
    A `/talk` request only ever waits for a `/talk` turn: the endpoint is part of what a
    copy must match, so it never joins a streamed one."""
    fast_until = time.perf_counter() + FAST_POLL_WINDOW_S
    delay = POLL_S
    while True:
        status = await client.get_status(rid)
        exists = status is not None and status.runtime_status is not None
        now = time.perf_counter()
        # No instance yet: a retry that overtook this request may still be starting it.
        if (exists and status.runtime_status in _DONE) or now + delay > deadline:
            return status
        await asyncio.sleep(delay)
        if now > fast_until:
            delay = min(delay * 1.5, MAX_POLL_S)


async def _answer(
    status: df.DurableOrchestrationStatus, rid: str, answer: Answering
) -> func.HttpResponse:
    if status.runtime_status not in _DONE:
        if answer.preference.respond_async:
            log.info("[%s] /talk still running: answering 202", rid)
            return pending_response(rid)
        # Any 2xx is the reply to the Android app: it would play an empty answer.
        log.warning("[%s] /talk not answered in time: answering 504, reply to follow", rid)
        return reply_pending_response(rid)
    output = (
        status.output if status.runtime_status is df.OrchestrationRuntimeStatus.Completed else None
    )
    if not isinstance(output, dict):
        log.error("[%s] orchestration ended %s", rid, status.runtime_status)
    return await _answer_output(output, rid, answer)


async def _answer_output(output: Any, rid: str, answer: Answering) -> func.HttpResponse:
    """A finished turn's answer from its output (an orchestration's or a streamed turn's
    record): the reply, or its error."""
    if not isinstance(output, dict):
        return error_response(502, "the request could not be processed", rid, "processing_failed")
    if "error" in output:
        error = output["error"]
        log.info("[%s] /talk failed: %s", rid, error["message"])
        retry_after = error.get("retry_after_s")
        headers = {"Retry-After": str(retry_after)} if isinstance(retry_after, int) else None
        return error_response(error["status"], error["message"], rid, error["code"], headers)
    try:
        stored = await asyncio.to_thread(blob_store(get_settings()).fetch, output["audio_blob"])
    except TalkError as error:
        return error_response(error.status, error.message, rid, error.code)
    if stored is None:  # deleted by the retention rule: it will not come back
        return error_response(410, "the reply has expired", rid, "expired")
    mp3 = stored.data
    if answer.started is not None:
        # What the caller waited, which is what the app feels.
        output["timings_ms"]["total"] = round((time.perf_counter() - answer.started) * 1000)
    if answer.phases is not None:
        answer.phases.mark("read")
    phases = answer.phases.durations if answer.phases else None
    return reply_response(output, mp3, answer.response_format, phases)


@bp.route(
    route="talk/conversations/{conversation_id}",
    methods=["GET", "DELETE"],
    auth_level=func.AuthLevel.FUNCTION,
)
@bp.durable_client_input(client_name="client")
@json_errors
async def talk_conversation(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """`GET` a conversation's turns, so an app can show the chat; `DELETE` erases it: its
    turns, its requests' audio and replies, and their Durable histories."""
    try:
        settings = get_settings()
        caller = await asyncio.to_thread(identify, req.headers, settings)
        access = Access.WRITE if req.method == "DELETE" else Access.READ
        await asyncio.to_thread(admit, caller, settings, access)
        conversation_id = issued_conversation_id(req.route_params.get("conversation_id"))
        if req.method == "DELETE":
            await _erase(client, Scope(caller.owner, conversation_id), settings)
            return func.HttpResponse(status_code=204)
        turns = await asyncio.to_thread(
            conversation_store(settings).turns, caller.owner, conversation_id
        )
        if turns is None:
            raise NotFound("unknown conversation")
    except TalkError as error:
        return refused(error, None)
    body = {"conversation_id": conversation_id, "turns": [asdict(turn) for turn in turns]}
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), mimetype="application/json")


@bp.route(route="talk/me", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@json_errors
async def talk_forget_me(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """Erase everything of the signed-in caller (`AUTH_MODE=jwt`; in key mode there is no
    caller of one's own to erase)."""
    try:
        settings = get_settings()
        caller = await asyncio.to_thread(identify, req.headers, settings)
        await asyncio.to_thread(admit, caller, settings)
        if not caller.authenticated:
            raise NotFound("there is no signed-in caller to erase (AUTH_MODE=key)")
        await _erase(client, Scope(caller.owner), settings, must_exist=False)
    except TalkError as error:
        return refused(error, None)
    return func.HttpResponse(status_code=204)


async def _erase(
    client: df.DurableOrchestrationClient, scope: Scope, settings: Settings, must_exist: bool = True
) -> None:
    """Erase `scope`: NotFound if nothing of it is left; StillRunning (409) while one of
    its requests runs, since it would write a reply or a turn after the erasure. The
    Durable histories go first, so a failure part way leaves what a retry finds again."""
    if must_exist and not await asyncio.to_thread(erasure.exists, scope, settings):
        raise NotFound("unknown conversation")
    # Before anything is listed: a request taken from now on removes itself.
    await asyncio.to_thread(erasure.begin, scope, settings)
    request_ids = await asyncio.to_thread(erasure.request_ids, scope, settings)
    try:
        status_of = durable_status(client)  # an orchestration or a streamed turn
        for rid in request_ids:
            status = await status_of(rid)
            if (status.exists and not status.done) or (
                not status.exists
                and await asyncio.to_thread(erasure.starting, rid, settings, CLAIM_GRACE_S)
            ):
                raise StillRunning("a request is still being answered; retry in a few seconds")
        for rid in request_ids:
            await client.purge_instance_history(rid)
    except TalkError:
        raise
    except Exception as error:  # the Durable extension itself did not answer
        log.error("Request histories not purged: %s", type(error).__name__)
        raise StorageUnavailable("the request histories could not be erased, retry") from None
    await asyncio.to_thread(erasure.erase, scope, request_ids, settings)
    if scope.conversation_id is None:  # a caller: what counted them goes too
        await asyncio.to_thread(forget_caller, scope.owner, settings)
    log.info(
        "Erased %s with %d requests",
        "a conversation" if scope.conversation_id else "a caller",
        len(request_ids),
    )
