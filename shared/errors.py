"""Typed errors of the talk pipeline.

Each error carries the HTTP status it maps to, so the Functions layer and the CLI
answer every expected failure the same way and never with a stack trace.
"""

from __future__ import annotations


class TalkError(Exception):
    """Base class: a failure the caller can be told about in one line."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(TalkError):
    """The request itself cannot be answered; retrying it unchanged will not help."""

    status = 400
    code = "bad_input"


class NoInput(BadInput):
    code = "no_input"


class EmptyAudio(BadInput):
    code = "empty_audio"


class AudioTooLarge(BadInput):
    status = 413
    code = "audio_too_large"


class AudioTooLong(BadInput):
    status = 413
    code = "audio_too_long"


class TextTooLong(BadInput):
    status = 413
    code = "text_too_long"


class UndecodableAudio(BadInput):
    status = 422
    code = "undecodable_audio"


class TruncatedAudio(BadInput):
    status = 422
    code = "truncated_audio"


class NoSpeech(BadInput):
    status = 422
    code = "no_speech"


class Unintelligible(BadInput):
    """Speech the model could not make out: it looped or guessed with no confidence."""

    status = 422
    code = "unintelligible"


class RetryLater(TalkError):
    """A refusal that says when to come back: `Retry-After`, in seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SpeechTooCostly(RetryLater):
    """Transcribing took more CPU than a request may (`MAX_STT_CPU_SECONDS`). The clock is
    the process's, so other requests' decodes count too: a busy instance, not the
    upload's fault, and a retry may well pass."""

    status = 503
    code = "stt_budget_spent"


class NotFound(TalkError):
    """Nothing of that id belongs to the caller (whether or not it exists for another)."""

    status = 404
    code = "not_found"


class ConfigError(TalkError):
    """A setting has a value the service cannot run with."""

    code = "config_error"


class ProviderError(TalkError):
    """A model or remote provider failed; the request may succeed if retried."""

    status = 502
    code = "provider_error"

    def __init__(
        self, provider: str, reason: str, *, status: int = 502, upstream: int | None = None
    ) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.status = status
        self.upstream = upstream  # the provider's own HTTP status, when it answered


def error_payload(error: TalkError) -> dict[str, object]:
    """What a client is told about `error`: status, code, a one-line message, and when
    to retry if the error says (`retry_after_s`)."""
    payload: dict[str, object] = {
        "status": error.status,
        "code": error.code,
        "message": error.message,
    }
    if isinstance(error, RetryLater):
        payload["retry_after_s"] = error.retry_after_s
    return payload
