"""The service's metrics. Their names are what the workbook and the alerts in
`infra/app/monitoring` query (a test checks both against this list)."""

from __future__ import annotations

from opentelemetry import metrics

METER = metrics.get_meter("talk")

STAGE_DURATION = "talk.stage.duration"
REQUESTS = "talk.requests"
TTS_CHARACTERS = "talk.tts.characters"
LLM_TOKENS = "talk.llm.tokens"
STT_SECONDS = "talk.stt.seconds"
CACHE_LOOKUPS = "talk.cache.lookups"
COLD_STARTS = "talk.cold_starts"
PROVIDER_THROTTLED = "talk.provider.throttled"
TTS_IN_FLIGHT = "talk.tts.in_flight"
BUDGET_SPENT = "talk.budget.spent"
FIRST_AUDIO = "talk.first_audio"
NAMES = frozenset(
    {
        STAGE_DURATION,
        REQUESTS,
        TTS_CHARACTERS,
        LLM_TOKENS,
        STT_SECONDS,
        CACHE_LOOKUPS,
        COLD_STARTS,
        PROVIDER_THROTTLED,
        TTS_IN_FLIGHT,
        BUDGET_SPENT,
        FIRST_AUDIO,
    }
)

_stage_duration = METER.create_histogram(
    STAGE_DURATION, unit="ms", description="Time of one stage, by stage, provider and outcome."
)
_requests = METER.create_counter(
    REQUESTS, description="Answered /talk requests, by HTTP status and error code."
)
_tts_characters = METER.create_counter(
    TTS_CHARACTERS, unit="{character}", description="Characters sent to be spoken, by provider."
)
_stt_seconds = METER.create_counter(
    STT_SECONDS, unit="s", description="Seconds of speech sent to a paid STT, by provider."
)
_llm_tokens = METER.create_counter(
    LLM_TOKENS, unit="{token}", description="Prompt and reply tokens, by provider."
)
_cache_lookups = METER.create_counter(
    CACHE_LOOKUPS, description="Reply and speech cache lookups, by stage and result."
)
_cold_starts = METER.create_counter(COLD_STARTS, description="Processes that started serving.")
_throttled = METER.create_counter(
    PROVIDER_THROTTLED, description="Provider answers of 429 and refused slots, by reason."
)
_tts_in_flight = METER.create_up_down_counter(
    TTS_IN_FLIGHT, description="Speech requests in flight at the provider, per instance."
)
_first_audio = METER.create_histogram(
    FIRST_AUDIO,
    unit="ms",
    description="A streamed turn: from its request to the first audio sent, by TTS provider.",
)
_budget_spent = METER.create_counter(
    BUDGET_SPENT, description="Requests that met a spent daily budget, by budget."
)


def stage_finished(stage: str, provider: str, outcome: str, seconds: float) -> None:
    _stage_duration.record(
        seconds * 1000, {"stage": stage, "provider": provider or "none", "outcome": outcome}
    )


def request_answered(status: int, code: str) -> None:
    _requests.add(1, {"status": status, "code": code})


def tts_characters(provider: str, count: int) -> None:
    _tts_characters.add(count, {"provider": provider})


def stt_seconds(provider: str, seconds: float) -> None:
    _stt_seconds.add(seconds, {"provider": provider})


def llm_tokens(provider: str, count: int) -> None:
    _llm_tokens.add(count, {"provider": provider})


def cache_lookup(stage: str, hit: bool) -> None:
    _cache_lookups.add(1, {"stage": stage, "result": "hit" if hit else "miss"})


def cold_start() -> None:
    _cold_starts.add(1)


def throttled(provider: str, reason: str) -> None:
    _throttled.add(1, {"provider": provider, "reason": reason})


def tts_in_flight(provider: str, change: int) -> None:
    _tts_in_flight.add(change, {"provider": provider})


def budget_spent(budget: str) -> None:
    _budget_spent.add(1, {"budget": budget})


def first_audio(provider: str, seconds: float) -> None:
    _first_audio.record(seconds * 1000, {"provider": provider})
