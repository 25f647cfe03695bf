"""What tracing costs, and a local picture of the operations workbook.

`POST /talk` over real HTTP through the Durable stand-in, with the same loopback providers
as the end-to-end section, each upload sent twice in a row: once traced, once not (the
order alternates), so both see the same noise. Tracing is switched by the sampler, as an
operator would sample: off, spans are not recorded; metrics are always on. Spans go to
OpenTelemetry's in-memory exporter through the same processor chain an exporter uses.

The spans and metrics of the run are then summarised as the workbook shows them (stage
p50/p95, requests by code, cache hit ratio, characters spoken), for a picture of its layout.

Runs in a fresh process (`python -m bench.child telemetry`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.end_to_end import percentiles, serving, stand_in_providers


class _Switch:
    """A sampler that records every span while `on`, and none while off."""

    on = True

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "switch"


def _providers(switch: _Switch) -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.telemetry.setup import install

    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    install(BatchSpanProcessor(spans), reader, sampler=switch)  # type: ignore[arg-type]
    return spans, reader


def telemetry(job: dict[str, Any]) -> dict[str, Any]:
    from opentelemetry import trace

    switch = _Switch()
    spans, reader = _providers(switch)
    uploads = [Path(path).read_bytes() for path in job["clips"]]
    # The reply stand-in always says the same: from the second turn on, speech is a cache
    # hit, as a repeated reply is in service.
    with stand_in_providers(job, TTS_CACHE="on"), serving() as (_, post):
        post(uploads[0]).raise_for_status()  # warm up
        timed: dict[bool, list[float]] = {True: [], False: []}
        for repeat in range(job["repeats"]):
            for index, upload in enumerate(uploads):
                order = (True, False) if (repeat + index) % 2 == 0 else (False, True)
                for traced in order:
                    switch.on = traced
                    started = time.perf_counter()
                    post(upload).raise_for_status()
                    timed[traced].append((time.perf_counter() - started) * 1000)
        switch.on = True
        for bad in (b"\x00" * 4000, b"RIFF" + b"\x00" * 64):  # errors for the picture
            post(bad)
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    on, off = percentiles(timed[True]), percentiles(timed[False])
    finished = spans.get_finished_spans()
    turns = sum(1 for span in finished if span.name == "POST /talk")
    return {
        "requests_per_setting": len(timed[True]),
        "traced": on,
        "not traced": off,
        "overhead_ms_p50": round(on["p50"] - off["p50"], 1),
        "ratio_p50": round(on["p50"] / off["p50"], 3),
        "spans_per_turn": round(len(finished) / max(turns, 1), 1),
        "workbook": _workbook(finished, reader),
    }


def _workbook(finished: Any, reader: Any) -> dict[str, Any]:
    """The run as the workbook's charts summarise it."""
    durations: dict[str, list[float]] = {}
    for span in finished:
        if span.name in ("talk.stt", "talk.llm", "talk.tts", "POST /talk"):
            milliseconds = (span.end_time - span.start_time) / 1e6
            durations.setdefault(span.name, []).append(milliseconds)
    totals: dict[str, dict[str, float]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        continue
                    label = ",".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
                    totals.setdefault(metric.name, {})[label] = value
    lookups = totals.get("talk.cache.lookups", {})
    hits = sum(v for k, v in lookups.items() if "result=hit" in k)
    return {
        "latency_ms": {name: percentiles(values) for name, values in durations.items()},
        "requests": totals.get("talk.requests", {}),
        "cache_hit_ratio": round(hits / max(sum(lookups.values()), 1), 3),
        "tts_characters": totals.get("talk.tts.characters", {}),
        "llm_tokens": totals.get("talk.llm.tokens", {}),
        "cold_starts": sum(totals.get("talk.cold_starts", {}).values()),
        "median_turn_ms": round(statistics.median(durations.get("POST /talk", [0])), 1),
    }
