"""Where spans and metrics go (`TELEMETRY_EXPORTER`), set up once per process.

`auto` sends them to Application Insights when the app has its connection string (as in
Azure), and nowhere otherwise. `console` prints them, `otlp` posts them to an
OpenTelemetry collector (Jaeger, the Aspire dashboard, Grafana) at
`OTEL_EXPORTER_OTLP_ENDPOINT`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from shared.config import Settings, read_settings
from shared.errors import ConfigError
from shared.telemetry import metrics
from shared.telemetry.tracing import _Content

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger("talk")

# Metrics are exported once a minute, Application Insights' own granularity.
METRIC_INTERVAL_MS = 60_000
# The distro's instrumentations: the Azure SDK's and `requests` (the providers) are on.
_INSTRUMENTATIONS = (
    *("azure_sdk", "requests", "django", "fastapi", "flask"),
    *("psycopg2", "urllib", "urllib3", "httpx"),
)
_lock = threading.Lock()
_chosen: list[str] = []
_in_memory: list[tuple[InMemorySpanExporter, InMemoryMetricReader]] = []


def exporter_for(settings: Settings) -> str:
    if settings.telemetry_exporter != "auto":
        return settings.telemetry_exporter
    return "azure" if settings.applicationinsights_connection_string else "none"


def configure(settings: Settings) -> str:
    """Set up the process's telemetry from `settings` (the first call wins); the exporter."""
    with _lock:
        if _chosen:
            return _chosen[0]
        exporter = exporter_for(settings)
        _Content.allowed = settings.log_content == "on"
        if exporter == "azure":
            _azure_monitor(settings)
        elif exporter in ("otlp", "console"):
            _sdk(settings, exporter)
        _chosen.append(exporter)
    metrics.cold_start()
    if exporter != "none":
        log.info("Telemetry goes to %s", exporter)
    return exporter


def configure_from_environment() -> str:
    """`configure` with the settings as they stand at import, not cached: a host that sets
    the rest of the environment afterwards (`make serve`) still gets it read. A setting
    that does not parse leaves telemetry off here and is reported by `/health` and the
    first request."""
    try:
        return configure(read_settings())
    except ConfigError:
        return "none"
    except Exception as error:  # a malformed connection string, an exporter that failed
        # Telemetry must never keep the app from loading: it answers without it.
        log.warning("Telemetry is off: it could not be set up (%s)", type(error).__name__)
        return "none"


def configure_in_memory() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """Keep this process's spans and metrics in memory (`python -m talk --trace`, tests):
    the exporter and reader to read them from."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    with _lock:
        if not _in_memory:
            spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
            install(SimpleSpanProcessor(spans), reader)
            _in_memory.append((spans, reader))
            _chosen[:] = ["memory"]
            metrics.cold_start()
    return _in_memory[0]


def install(
    span_processor: SpanProcessor,
    metric_reader: MetricReader,
    *,
    resource: Resource | None = None,
    sampler: Sampler | None = None,
) -> None:
    """Make OpenTelemetry's SDK this process's tracer and meter: spans to `span_processor`,
    metrics to `metric_reader`, and the `requests` calls traced."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from shared.telemetry.urls import StorageUrlRedactor

    resource = resource or Resource.create({"service.name": "talk"})
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    tracer_provider.add_span_processor(StorageUrlRedactor())  # before any exporter
    tracer_provider.add_span_processor(span_processor)
    trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[metric_reader])
    )
    _instrument_requests()


def flush() -> None:
    """Send what is buffered (a command line process ends right after its turn)."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace

    for provider in (trace.get_tracer_provider(), otel_metrics.get_meter_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush:
            force_flush()


def _instrument_requests() -> None:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    instrumentor = RequestsInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def _azure_monitor(settings: Settings) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry import configure_azure_monitor

    from shared.telemetry.urls import StorageUrlRedactor

    configure_azure_monitor(
        connection_string=settings.applicationinsights_connection_string,
        # Application Insights takes Entra ID tokens only (local auth is off in the Bicep).
        credential=ManagedIdentityCredential(client_id=settings.azure_client_id or None),
        # The Functions host already ships the worker's log lines.
        disable_logging=True,
        # Ahead of the distro's exporter: storage URLs name no blob or entity.
        span_processors=[StorageUrlRedactor()],
        instrumentation_options={
            name: {"enabled": name in ("azure_sdk", "requests")} for name in _INSTRUMENTATIONS
        },
    )


def _sdk(settings: Settings, exporter: str) -> None:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    spans: SpanExporter
    numbers: MetricExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otel_exporter_otlp_endpoint.rstrip("/")
        spans = OTLPSpanExporter(endpoint=f"{base}/v1/traces")
        numbers = OTLPMetricExporter(endpoint=f"{base}/v1/metrics")
    else:
        spans, numbers = ConsoleSpanExporter(), ConsoleMetricExporter()
    reader = PeriodicExportingMetricReader(numbers, export_interval_millis=METRIC_INTERVAL_MS)
    install(BatchSpanProcessor(spans), reader)
