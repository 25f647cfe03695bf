"""The Durable orchestration: transcribe, generate and synthesize as activities.

Activities exchange blob names and small JSON, never audio. A bad request (undecodable
audio, no speech) comes back from an activity as an `error` result and ends the
orchestration at once; a transient failure (a provider, storage) raises, so the
activity is retried with `RETRY`, and if it still fails the orchestration ends with the
error's status (502/503).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

import azure.durable_functions as df

from shared.config import get_settings
from shared.errors import (
    BadInput,
    ConfigError,
    ProviderError,
    SpeechTooCostly,
    TalkError,
    error_payload,
)
from shared.memory import release_freed_memory
from shared.pipeline import generate, synthesize, transcribe
from shared.security.budget import BudgetExhausted
from shared.security.identity import SHARED_OWNER
from shared.storage import StorageUnavailable, blob_store
from shared.storage.conversations import Turn, conversation_store
from shared.storage.erasure import check_not_raced
from shared.telemetry import continue_trace, traced

bp = df.Blueprint()
log = logging.getLogger("talk")

ORCHESTRATOR = "talk_orchestrator"
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=500, max_number_of_attempts=3)
_FAILURE_MARKER = "TALK_FAILURE"
_FAILURE = re.compile(_FAILURE_MARKER + r"(\{.*?\})" + _FAILURE_MARKER, re.DOTALL)


class TransientStageFailure(Exception):
    """Raised by an activity so that Durable retries it; carries the typed error."""

    def __init__(self, error: TalkError) -> None:
        payload = json.dumps(error_payload(error))
        super().__init__(f"{_FAILURE_MARKER}{payload}{_FAILURE_MARKER}")


def failure_from_task_error(error: Exception) -> dict[str, Any]:
    """The typed error inside a failed activity's message, or a generic 502."""
    match = _FAILURE.search(str(error))
    if match:
        return json.loads(match.group(1))
    return {
        "status": 502,
        "code": "processing_failed",
        "message": "the request could not be processed",
    }


class _Refused(Exception):
    """An activity answered with a permanent error: the orchestration ends with it."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def _call(
    context: df.DurableOrchestrationContext,
    activity: str,
    job: dict[str, Any],
    trace: str | None,
) -> Generator[Any, Any, dict[str, Any]]:
    # Each activity continues the trace of the request that started the orchestration.
    if trace:
        job = {**job, "trace": trace}
    result = yield context.call_activity_with_retry(activity, RETRY, job)
    if "error" in result:
        raise _Refused(result["error"])
    return result


def _save_turn(
    context: df.DurableOrchestrationContext, job: dict[str, Any], trace: str | None
) -> Generator[Any, Any, bool]:
    """Save the turn (retried as every activity is); a save that still fails does not
    throw away a reply already generated and spoken: the answer says the turn was not
    saved."""
    try:
        saved = yield from _call(context, "save_turn", job, trace)
    except Exception:  # refused, or failed after its retries
        return False
    return bool(saved["saved"])


@bp.orchestration_trigger(context_name="context", orchestration=ORCHESTRATOR)
def talk_orchestrator(
    context: df.DurableOrchestrationContext,
) -> Generator[Any, Any, dict[str, Any]]:
    job: dict[str, Any] = context.get_input()
    rid, trace = job["request_id"], job.get("trace")
    started: datetime = context.current_utc_datetime
    try:
        heard = None
        if job.get("audio_blob"):
            heard = yield from _call(
                context,
                "transcribe",
                {
                    "request_id": rid,
                    "blob": job["audio_blob"],
                    "language": job.get("language"),
                    "erasure_marks": job.get("erasure_marks"),
                },
                trace,
            )
        question = heard["text"] if heard else job["text"]
        language = heard["language"] if heard else job.get("language")
        # The HTTP function checked the conversation belongs to the caller and read its
        # history: no activity (and no queue hop) is spent on it here.
        conversation = job.get("conversation")
        reply = yield from _call(
            context,
            "generate",
            {
                "request_id": rid,
                "owner": job["owner"],
                "question": question,
                "system_prompt": job.get("system_prompt"),
                "history": conversation["history"] if conversation else [],
                "in_conversation": conversation is not None,
                "language": language,
                "spender": job.get("spender"),
                "erasure_marks": job.get("erasure_marks"),
            },
            trace,
        )
        speech = yield from _call(
            context,
            "synthesize",
            {
                "request_id": rid,
                "owner": job["owner"],
                "blob_prefix": job["blob_prefix"],
                "text": reply["text"],
                "voice": job.get("voice"),
                "language": language,
                "spender": job.get("spender"),
                "erasure_marks": job.get("erasure_marks"),
            },
            trace,
        )
        turn_saved = None
        if conversation:
            turn_saved = yield from _save_turn(
                context,
                {
                    "owner": job["owner"],
                    "conversation_id": conversation["id"],
                    "new": conversation["new"],
                    "request_id": rid,
                    "question": question,
                    "reply": reply["text"],
                    "language": language,
                    # The orchestration's clock, not the activity's: a retried save of
                    # this turn writes the same entity instead of a second copy.
                    "at": context.current_utc_datetime.isoformat(),
                    "erasure_marks": job.get("erasure_marks"),
                },
                trace,
            )
    except _Refused as refused:
        return {"request_id": rid, "error": refused.error}
    except Exception as error:  # a task that failed after its retries
        return {"request_id": rid, "error": failure_from_task_error(error)}
    elapsed = context.current_utc_datetime - started
    return {
        "request_id": rid,
        "transcript": heard["text"] if heard else None,
        "text": reply["text"],
        "language": language,
        "audio_blob": speech["blob"],
        "audio_bytes": speech["bytes"],
        "timings_ms": {
            "stt": heard["elapsed_ms"] if heard else 0,
            "llm": reply["elapsed_ms"],
            "tts": speech["elapsed_ms"],
            "total": round(elapsed.total_seconds() * 1000),
        },
        "providers": {
            "stt": heard["provider"] if heard else None,
            "llm": reply["provider"],
            "tts": speech["provider"],
        },
        "conversation_id": conversation["id"] if conversation else None,
        "turn_saved": turn_saved,
        "cache": _own_cache_hits(reply, speech, job["owner"]),
    }


def _own_cache_hits(reply: dict[str, Any], speech: dict[str, Any], owner: str) -> list[str]:
    """The stages answered from the caller's own cache entries. Speech every caller shares
    (key mode) is not named: a hit there would tell one user what another was told."""
    hits = [("llm", reply["cached"]), ("tts", speech["cached"] and owner != SHARED_OWNER)]
    return [stage for stage, hit in hits if hit]


INTERNAL_ERROR = {
    "status": 500,
    "code": "internal",
    "message": "the request could not be processed",
}


def _stage(name: str, job: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run an activity's work. A bad request, a setting, a spent budget and a provider that
    failed after its own retries are the stage's answer: retrying the activity would only
    multiply the provider calls (at most `HTTP_RETRIES + 1` per stage). Storage that failed
    raises, so the orchestration retries the activity. Anything unexpected is logged once
    and ends the request as `500 internal`, without blind retries."""
    try:
        with (
            continue_trace(job.get("trace")),
            traced(f"activity:{name}", request_id=job.get("request_id")),
        ):
            return work()
    except (BadInput, ConfigError, ProviderError, BudgetExhausted, SpeechTooCostly) as error:
        return {"error": error_payload(error)}
    except TalkError as error:
        raise TransientStageFailure(error) from error
    except Exception as error:
        log.error(
            "[%s] %s failed unexpectedly: %s",
            job.get("request_id"),
            name,
            type(error).__name__,
            exc_info=True,
        )
        return {"error": INTERNAL_ERROR}
    finally:
        release_freed_memory()


@bp.function_name("transcribe")
@bp.activity_trigger(input_name="job")
def transcribe_activity(job: dict[str, Any]) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        settings = get_settings()
        check_not_raced(job.get("erasure_marks") or {}, settings)
        audio = blob_store(settings).get(job["blob"])
        heard = transcribe(
            audio,
            request_id=job["request_id"],
            settings=settings,
            language=job.get("language"),
            spender=job.get("spender"),
        )
        return {
            "text": heard.text,
            "language": heard.language,
            "audio_seconds": heard.audio_seconds,
            "elapsed_ms": heard.elapsed_ms,
            "provider": heard.provider,
        }

    return _stage("transcribe", job, work)


@bp.function_name("generate")
@bp.activity_trigger(input_name="job")
def generate_activity(job: dict[str, Any]) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        settings = get_settings()
        check_not_raced(job.get("erasure_marks") or {}, settings)  # before it spends or writes
        reply = generate(
            job["question"],
            request_id=job["request_id"],
            settings=settings,
            system_prompt=job.get("system_prompt"),
            history=[tuple(turn) for turn in job.get("history", [])],
            owner=job["owner"],
            in_conversation=job.get("in_conversation", False),
            language=job.get("language"),
            spender=job.get("spender"),
        )
        return {
            "text": reply.text,
            "elapsed_ms": reply.elapsed_ms,
            "provider": reply.provider,
            "cached": reply.cached,
        }

    return _stage("generate", job, work)


@bp.function_name("synthesize")
@bp.activity_trigger(input_name="job")
def synthesize_activity(job: dict[str, Any]) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        settings = get_settings()
        check_not_raced(job.get("erasure_marks") or {}, settings)
        speech = synthesize(
            job["text"],
            request_id=job["request_id"],
            settings=settings,
            voice=job.get("voice"),
            owner=job["owner"],
            language=job.get("language"),
            spender=job.get("spender"),
        )
        # A name of its own per attempt, written create-only: a retried synthesize never
        # overwrites a reply, and a colliding request id could not either.
        blob = f"{job['blob_prefix']}reply-{secrets.token_hex(4)}.mp3"
        if not blob_store(settings).put(blob, speech.mp3, "audio/mpeg", overwrite=False):
            raise StorageUnavailable("the reply could not be stored")
        return {
            "blob": blob,
            "bytes": len(speech.mp3),
            "elapsed_ms": speech.elapsed_ms,
            "provider": speech.provider,
            "cached": speech.cached,
        }

    return _stage("synthesize", job, work)


@bp.function_name("save_turn")
@bp.activity_trigger(input_name="job")
def save_turn_activity(job: dict[str, Any]) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        settings = get_settings()
        check_not_raced(job.get("erasure_marks") or {}, settings)
        turn = Turn(
            job["request_id"], job["question"], job["reply"], job.get("language"), job["at"]
        )
        store = conversation_store(settings)
        if job["new"]:
            store.start(job["owner"], job["conversation_id"])
        # False when the conversation was erased while this request ran: it stays erased.
        return {"saved": store.append(job["owner"], job["conversation_id"], turn)}

    return _stage("save_turn", job, work)
