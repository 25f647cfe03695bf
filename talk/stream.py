"""`POST /talk/stream`: the reply as it is made, for apps that opt in.

Served by the streaming Function App (`stream_app.py`), whose HTTP functions take FastAPI's
types (the only way a Python function streams its answer). The same bodies, caller, limits
and idempotency as `POST /talk` (`shared.accept`); what is wrong before the first byte gets
`/talk`'s statuses and JSON errors. Then, with `Accept: text/event-stream` (the default),
Server-Sent Events: `meta`, a `text` and its `audio` per sentence, and `done` (or `error`);
with `Accept: audio/mpeg`, the MP3 itself, chunked, with the transcript in headers.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, StreamingResponse
from opentelemetry.trace import SpanKind
from requests.structures import CaseInsensitiveDict
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from shared.accept import Joined, accept
from shared.config import get_settings
from shared.errors import RetryLater, TalkError
from shared.pipeline import new_request_id
from shared.security.identity import Unauthorized
from shared.storage import blob_store, turns
from shared.storage.turns import TurnStatus
from shared.streaming import Event, StreamedTurn
from shared.telemetry import inside, open_span
from shared.telemetry.metrics import request_answered

bp = func.Blueprint()
log = logging.getLogger("talk")

SSE, MP3 = "text/event-stream", "audio/mpeg"
_END = object()
EVENTS_AHEAD = 8  # a sentence's text and a few audio pieces
# A client that takes no event for this long has stopped reading: its turn stops.
CLIENT_STALL_S = 20.0
NOT_ACCEPTABLE = "Accept must allow text/event-stream or audio/mpeg"


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def stream_health(req: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@bp.route(route="talk/stream", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def talk_stream(req: Request) -> StreamingResponse:
    arrived = time.perf_counter()
    rid = new_request_id()
    # The request's span lasts as long as its answer streams, not as long as this handler.
    span = open_span(
        "POST /talk/stream",
        kind=SpanKind.SERVER,
        request_id=rid,
        method="POST",
        route="/talk/stream",
    )
    try:
        with inside(span):
            response = await _answer(req, rid, arrived)
    except BaseException:
        span.fail("internal")
        span.end()
        raise
    code = getattr(response, "code", "ok")
    span.set(status=response.status_code)
    if response.status_code >= 500:
        span.fail(code)
    elif code != "ok":
        span.set(error_code=code)
    request_answered(response.status_code, code)
    if isinstance(response, StreamingResponse):
        response.body_iterator = _ending(response.body_iterator, span)
    else:
        span.end()
    return response


async def _ending(body: AsyncIterator[Any], span: Any) -> AsyncIterator[Any]:
    try:
        async for piece in body:
            yield piece
    finally:
        await body.aclose()  # type: ignore[attr-defined]
        span.end()


async def _answer(req: Request, rid: str, arrived: float) -> Any:
    """The answer; anything unexpected a JSON `500 internal`, never an empty one."""
    try:
        return await _answer_stream(req, rid, arrived)
    except TalkError as error:  # storage trouble while replaying, say
        return _refused(error, rid)
    except Exception as error:
        log.error("[%s] /talk/stream failed unexpectedly: %s", rid, type(error).__name__)
        return _error(500, "the request failed, try again", rid, "internal")


async def _answer_stream(req: Request, rid: str, arrived: float) -> Any:
    media = _preferred(req.headers.get("Accept"))
    if media is None:
        return _error(406, NOT_ACCEPTABLE, rid, "not_acceptable")
    try:
        accepted = await accept(
            _joined(req.headers), await req.body(), rid, streamed_status, endpoint="talk/stream"
        )
    except TalkError as error:
        return _refused(error, rid)
    if isinstance(accepted, Joined):
        return await _replay(accepted.request_id, media)
    if accepted.too_late():
        await accepted.abandon()
        return _error(503, "processing is unavailable, retry shortly", rid, "unavailable")
    turn = StreamedTurn.of(accepted, arrived)
    events = _pump(turn)
    first = await events.__anext__()
    if isinstance(first, TalkError):  # before the first byte: /talk's answer
        return _refused(first, rid)
    if isinstance(first, BaseException):
        return _error(500, "the reply failed, try again", rid, "internal")
    log.info("[%s] /talk/stream answering %s", rid, media)
    if media == MP3:
        return StreamingResponse(
            _mp3(events, turn), media_type=MP3, headers=_mp3_headers(first.data)
        )
    return StreamingResponse(
        _sse(first, events),
        media_type=SSE,
        headers={"X-Request-Id": rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def streamed_status(rid: str) -> TurnStatus:
    """Turns as streaming records them (a `/talk` turn is unknown here: the streaming app
    has no Durable client)."""
    return await asyncio.to_thread(turns.turn_status, rid, get_settings())


class ReplyCutShort(Exception):
    """An MP3 answer that failed after its first byte: its connection is dropped."""


async def _pump(turn: StreamedTurn) -> AsyncIterator[Any]:
    """The turn's events, made on a worker thread (in this request's trace) and handed over
    as they come; a failure comes as the exception itself. Leaving early closes the turn."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    context = contextvars.copy_context()
    # The turn runs at most this many events ahead of what the client has taken, beyond what
    # the sockets and proxies between them buffer (a reply's worth, often): one that stops
    # reading holds the turn there, and after CLIENT_STALL_S the turn stops.
    ahead = threading.Semaphore(EVENTS_AHEAD)
    closed = threading.Event()

    def hand_over(item: object) -> None:
        waited = 0.0
        while not ahead.acquire(timeout=0.5):
            waited += 0.5
            if closed.is_set():
                return
            if waited >= CLIENT_STALL_S:  # not reading: as good as gone, and it holds the
                closed.set()  # model's lock or a voice slot while it waits
                turn.close()
                return
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        def produce() -> None:
            try:
                for event in turn.events():
                    hand_over(event)
            except BaseException as error:  # handed to the request, which answers it
                loop.call_soon_threadsafe(queue.put_nowait, error)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

        context.run(produce)

    threading.Thread(target=run, name=f"stream-{turn.rid[:8]}", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, Event):
                ahead.release()
            yield item
    finally:  # the client went away, or the answer is over
        closed.set()
        turn.close()


async def _sse(first: Event, events: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        yield _sse_line(first)
        async for item in events:
            if isinstance(item, Event):
                yield _sse_line(item)
            else:  # an exception after the first byte: the turn logged it
                yield _sse_line(Event("error", {"code": "internal", "error": "the reply failed"}))
    finally:  # a client that went away closes this: the turn stops now, not when collected
        await events.aclose()  # type: ignore[attr-defined]


async def _mp3(events: AsyncIterator[Any], turn: StreamedTurn) -> AsyncIterator[bytes]:
    try:
        async for item in events:
            if isinstance(item, Event) and item.name == "audio":
                yield base64.b64decode(item.data["audio_base64"])
            elif (isinstance(item, Event) and item.name == "error") or isinstance(item, Exception):
                # No event can say so in an MP3: the connection drops without the chunked
                # body's end, so a client can tell a reply cut short from a whole one.
                code = item.data["code"] if isinstance(item, Event) else "internal"
                log.info("[%s] /talk/stream (MP3) failed after the first byte: %s", turn.rid, code)
                raise ReplyCutShort(code)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _sse_line(event: Event) -> str:
    return f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"


def _mp3_headers(meta: dict[str, Any]) -> dict[str, str]:
    headers = {
        "X-Request-Id": meta["request_id"],
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if meta.get("transcript") is not None:
        headers["X-Transcript"] = quote(meta["transcript"], safe="")
    if meta.get("language"):
        headers["X-Language"] = meta["language"]
    if meta.get("conversation_id"):
        headers["X-Conversation-Id"] = meta["conversation_id"]
    return headers


async def _replay(rid: str, media: str) -> Any:
    """A retry of a streamed turn: 409 while it runs, then its recorded answer, at once."""
    settings = get_settings()
    turn = await asyncio.to_thread(turns.find, rid, settings)
    if turn is None or turn.running:
        return _error(409, "the request is still being answered", rid, "still_running", 5)
    outcome = await asyncio.to_thread(turns.outcome, turn, settings)
    if not outcome:
        return _error(409, "the request is still being answered", rid, "still_running", 5)
    if "error" in outcome:
        error = outcome["error"]
        return _error(
            error["status"], error["message"], rid, error["code"], error.get("retry_after_s")
        )
    stored = await asyncio.to_thread(blob_store(settings).fetch, outcome["audio_blob"])
    if stored is None:
        return _error(410, "the reply has expired", rid, "expired")
    meta = {k: outcome.get(k) for k in ("request_id", "transcript", "language", "conversation_id")}
    if media == MP3:
        return StreamingResponse(_once(stored.data), media_type=MP3, headers=_mp3_headers(meta))
    done = {k: v for k, v in outcome.items() if k != "audio_blob"}
    replay = [
        Event("meta", meta),
        Event("text", {"seq": 1, "text": outcome["text"]}),
        Event("audio", {"seq": 1, "audio_base64": base64.b64encode(stored.data).decode()}),
        Event("done", done),
    ]
    return StreamingResponse(
        _once_each(_sse_line(event) for event in replay),
        media_type=SSE,
        headers={"X-Request-Id": rid, "Cache-Control": "no-cache"},
    )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _once_each(lines: Iterator[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


def _joined(headers: Any) -> CaseInsensitiveDict[str]:
    """The headers as the classic functions get them: a header sent on several lines is one
    value, its lines joined (Starlette's `get` would take the first line alone, and the first
    `X-Forwarded-For` line is the client's to write)."""
    return CaseInsensitiveDict({name: ", ".join(headers.getlist(name)) for name in headers})


def _preferred(accept_header: str | None) -> str | None:
    if not accept_header or not accept_header.strip():
        return SSE
    return parse_accept_header(accept_header, MIMEAccept).best_match([SSE, MP3])


def _refused(error: TalkError, rid: str) -> JSONResponse:
    retry_after = error.retry_after_s if isinstance(error, RetryLater) else None
    response = _error(error.status, error.message, rid, error.code, retry_after)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _error(
    status: int, message: str, rid: str | None, code: str, retry_after: int | None = None
) -> JSONResponse:
    log.info("[%s] Backend response code: %d (%s)", rid, status, code)
    headers = {"X-Request-Id": rid} if rid else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = JSONResponse(
        {"error": message, "code": code, "request_id": rid}, status_code=status, headers=headers
    )
    response.code = code  # for the span and the request metric
    return response
