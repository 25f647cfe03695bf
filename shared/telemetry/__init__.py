"""Traces and metrics on OpenTelemetry: one trace per turn, a span per stage and provider
call, and the numbers operators chart (`docs/operations.md`).

Nothing here needs Azure: in Azure the spans and metrics go to Application Insights, on a
laptop to the console or an OTLP collector, in tests to memory. Until `configure` picks
an exporter, every call is OpenTelemetry's no-op and costs next to nothing.
"""

from shared.telemetry.setup import configure, configure_from_environment, flush
from shared.telemetry.tracing import (
    continue_trace,
    current_trace,
    inside,
    log_content,
    open_span,
    stage_span,
    traced,
)

__all__ = [
    "configure",
    "configure_from_environment",
    "continue_trace",
    "current_trace",
    "flush",
    "inside",
    "log_content",
    "open_span",
    "stage_span",
    "traced",
]
