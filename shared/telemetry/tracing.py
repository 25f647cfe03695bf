"""Spans of a turn, and the trace carried across the Durable boundary.

Attributes go through one allow-list: ids, names, counts and codes. What the user said
and what they were told is personal data and only becomes an attribute when
`LOG_CONTENT=on`; a secret never does (the provider calls' spans come from the `requests`
instrumentation, which records no headers).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import TalkError
from shared.telemetry import metrics

log = logging.getLogger("talk")
TRACER = trace.get_tracer("talk")
_PROPAGATOR = TraceContextTextMapPropagator()

ATTRIBUTES = {
    "request_id": "talk.request_id",
    "stage": "talk.stage",
    "provider": "talk.provider",
    "model": "talk.model",
    "language": "talk.language",
    "audio_seconds": "talk.audio_seconds",
    "reply_chars": "talk.reply_chars",
    "tts_chars": "talk.tts_chars",
    "stt_billed_seconds": "talk.stt_billed_seconds",
    "llm_tokens": "talk.llm_tokens",
    "cache_hit": "talk.cache_hit",
    "error_code": "talk.error_code",
    "status": "http.response.status_code",
    "method": "http.request.method",
    "route": "http.route",
}
CONTENT_ATTRIBUTES = {"transcript": "talk.transcript", "reply": "talk.reply"}


class _Content:
    """Whether turn content may be recorded (`LOG_CONTENT`), set once by `configure`."""

    allowed = False


class Annotated:
    """A span, and what its stage metric is recorded with."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.provider = ""

    def set(self, **values: object) -> None:
        """Record allow-listed attributes; an unknown name is a bug, not data."""
        for key, value in values.items():
            if value is None:
                continue
            if key in CONTENT_ATTRIBUTES:
                if _Content.allowed:
                    self.span.set_attribute(CONTENT_ATTRIBUTES[key], str(value))
                continue
            if key == "provider":
                self.provider = str(value)
            self.span.set_attribute(ATTRIBUTES[key], value)  # type: ignore[arg-type]

    def fail(self, code: str) -> None:
        """Mark the span failed with an error code (never a message)."""
        self.set(error_code=code)
        self.span.set_status(Status(StatusCode.ERROR, code))

    def end(self) -> None:
        self.span.end()


@contextlib.contextmanager
def traced(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, **values: object
) -> Iterator[Annotated]:
    """A span named `name`; a failure marks it with its error code, never its message."""
    with TRACER.start_as_current_span(
        name, kind=kind, record_exception=False, set_status_on_exception=False
    ) as span:
        annotated = Annotated(span)
        annotated.set(**values)
        try:
            yield annotated
        except BaseException as error:
            annotated.fail(_error_code(error))
            raise


def open_span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **values: object) -> Annotated:
    """A span its caller ends (`Annotated.end`), for an answer that outlives its handler (a
    stream); `inside(span)` makes it the current one for a block."""
    annotated = Annotated(TRACER.start_span(name, kind=kind, record_exception=False))
    annotated.set(**values)
    return annotated


def inside(annotated: Annotated) -> contextlib.AbstractContextManager[object]:
    return trace.use_span(annotated.span, end_on_exit=False)


@contextlib.contextmanager
def stage_span(stage: str, request_id: str) -> Iterator[Annotated]:
    """The span of one stage (`stt`, `llm`, `tts`), timed into `talk.stage.duration`."""
    started = time.perf_counter()
    outcome = "ok"
    annotated: Annotated | None = None
    try:
        with traced(f"talk.{stage}", stage=stage, request_id=request_id) as annotated:
            yield annotated
    except BaseException as error:
        outcome = _error_code(error)
        raise
    finally:
        provider = annotated.provider if annotated else ""
        metrics.stage_finished(stage, provider, outcome, time.perf_counter() - started)


def current_trace() -> dict[str, str]:
    """The current trace as W3C headers, to carry in an orchestration's input."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


@contextlib.contextmanager
def continue_trace(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Run the block inside the trace `carrier` names. Already inside that trace (the
    Durable extension's own tracing in Azure), the closer parent there is kept."""
    if not carrier:
        yield
        return
    extracted = _PROPAGATOR.extract(dict(carrier))
    wanted = trace.get_current_span(extracted).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not wanted.is_valid or (current.is_valid and current.trace_id == wanted.trace_id):
        yield
        return
    token = context.attach(extracted)
    try:
        yield
    finally:
        context.detach(token)


def log_content(request_id: str, what: str, text: str) -> None:
    """Log what was said in a turn, only when `LOG_CONTENT=on`."""
    if _Content.allowed:
        log.info("[%s] %s: %s", request_id, what, text)


def _error_code(error: BaseException) -> str:
    """What a failure is called in spans and metrics: its code, never its message."""
    return error.code if isinstance(error, TalkError) else "internal"
