"""The alert rules of `infra/app/alerts.bicep`, evaluated as Azure evaluates them (every
5 minutes, over the last 15) over a day of telemetry: cold starts, a quiet hour, a busy day,
a spent budget, sustained throttling, outages. Which rules fire, and when, is the test.

The rows are what Application Insights stores of what the app sends. What that is was read
in the installed packages (azure-monitor-opentelemetry-exporter 1.0.0b58, azure-core 1.41,
azure-keyvault-secrets 4.12) and is pinned by the `..._the_exporter_makes` tests, which run
the SDKs over canned answers and convert their spans with the exporter's own functions:

- `export/trace/_exporter.py::_convert_span_to_envelope`: a CLIENT or INTERNAL span is a
  `dependencies` row whose `success` is `span.status.is_ok` alone (UNSET is ok). A SERVER
  span is a `requests` row, failed when its status is ERROR (the app sets it for a 5xx) or
  its HTTP status is 4xx (`_utils._is_status_code_success(code, is_trace=True)`).
- The Azure SDK's HTTP spans come from `DistributedTracingPolicy` through the
  `OpenTelemetrySpan` plugin (the distro's `azure_sdk` instrumentation, on in
  `shared/telemetry/setup.py`; the plugin suppresses the `requests` instrumentation
  beneath it). It never sets a status for an answer, so Key Vault's challenge 401, a 403 and
  a 503 are all `success == true`; only a try that got no answer is ERROR, recorded as 504
  (`HttpSpanMixin.set_http_attributes`). It sets no `server.port` for https, so
  `trace/_utils.py::_get_target_and_path_for_http_dependency` writes the target as
  `kv-talk.vault.azure.net:None`: a query must match hosts with `has`, not `==`.
- The policy runs inside the retry and authentication policies: each try is a row, and
  Key Vault's challenge (`ChallengeAuthPolicy`: the request without a token, answered 401,
  then again with one) is two. The challenge is cached for the process
  (`_shared/http_challenge_cache._cache`): once per vault per process.
- The call itself (`SecretClient.get_secret`, `BlobClient.download_blob`) is an INTERNAL
  span: an `InProc` row without a target, failed whenever the call raised (a 404 too).
- The `requests` instrumentation (the provider calls; the SDKs' calls without the plugin)
  marks a CLIENT span ERROR for any 4xx or 5xx answer, and for no answer (result code 0):
  there the challenge's 401 is `success == false`. Both shapes are tested.
- `export/metrics/_exporter.py::_convert_point_to_envelope`: counters are delta, so a row
  per attribute set, process and export (a minute) with `valueSum` the count and
  `valueCount` 1; the attributes become `customDimensions`, as strings.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import requests
from opentelemetry.trace import SpanKind

from tests.conftest import ROOT
from tests.kql import KqlError, Row, compile_query

ALERTS = ROOT / "infra" / "app" / "alerts.bicep"
DAY = datetime(2025, 3, 4, tzinfo=UTC)
VAULT = "kv-talk.vault.azure.net"
BLOB = "sttalk.blob.core.windows.net"
TABLE = "sttalk.table.core.windows.net"
SECRETS = ("hf-api-token", "elevenlabs-api-key", "llm-api-key")
SHAPES = ("azure_sdk", "requests")  # what records the Azure SDK's HTTP calls
PROVIDER = "api.elevenlabs.io"  # called with `requests`, whatever records the SDKs
RULES = ("server-errors", "slow-round-trip", "provider-throttling", "budget-spent")
RULES += ("vault-or-storage-failures",)
QUIET: dict[str, set[str]] = {rule: set() for rule in RULES}


def at(clock: str, seconds: int = 0) -> datetime:
    hours, minutes = map(int, clock.split(":"))
    return DAY + timedelta(hours=hours, minutes=minutes, seconds=seconds)


# --- the rules, run as Azure runs them ------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    query: str
    measure: str
    threshold: float


def read_rules(text: str) -> tuple[list[Rule], timedelta, timedelta]:
    """The rules, how often each is evaluated, and the window each looks at."""
    block = text.split("var rules = [", 1)[1].split("\n]\n", 1)[0]
    rules = []
    for body in re.split(r"\n  \}\n  \{", block):

        def field(key: str, body: str = body) -> str:
            found = re.search(rf"^\s*{key}: (.+)$", body, re.MULTILINE)
            assert found, f"no {key} in {body}"
            return found.group(1).strip("'")

        assert "\\'" not in field("query")  # Bicep's escapes would need undoing
        rules.append(
            Rule(field("name"), field("query"), field("measure"), float(field("threshold")))
        )
    return rules, _duration(text, "evaluationFrequency"), _duration(text, "windowSize")


def _duration(text: str, key: str) -> timedelta:
    found = re.search(rf"{key}: 'PT(\d+)M'", text)
    assert found, key
    return timedelta(minutes=int(found.group(1)))


def fires(day: Day, incidents: dict[str, tuple[str, str]] | None = None) -> dict[str, set[str]]:
    """When each rule fires over the day: the incidents it fires during (from their start to
    20 minutes after their end), and the time of any firing during none. A rule fires when
    the measure of a row its query returns passes the threshold (no row: no alert)."""
    rules, every, window = read_rules(ALERTS.read_text())
    tables = {
        name: sorted(rows, key=lambda r: r["timestamp"]) for name, rows in day.tables().items()
    }
    stamps = {name: [row["timestamp"] for row in rows] for name, rows in tables.items()}
    spans = {
        name: (at(start), at(end) + timedelta(minutes=20))
        for name, (start, end) in (incidents or {}).items()
    }
    fired: dict[str, set[str]] = {}
    for rule in rules:
        run = compile_query(rule.query)
        fired[rule.name] = set()
        end = DAY + every
        while end <= DAY + timedelta(days=1):
            first = {name: bisect.bisect_left(stamps[name], end - window) for name in tables}
            last = {name: bisect.bisect_left(stamps[name], end) for name in tables}
            seen = {name: rows[first[name] : last[name]] for name, rows in tables.items()}
            values = [row[rule.measure] for row in run(seen) if row.get(rule.measure) is not None]
            if values and max(values) > rule.threshold:
                during = [name for name, (start, stop) in spans.items() if start < end <= stop]
                fired[rule.name].update(during or [f"{end:%H:%M}"])
            end += every
    return fired


# --- a day of telemetry, as Application Insights stores it -----------------------------


class Day:
    """The app's rows for a day: one process per name (`a1`, `b1`), each with its own Key
    Vault challenge, secret cache and metric rows. A turn in an incident's hours takes the
    incident's dependency answers."""

    def __init__(self, shape: str = "azure_sdk", *, warm: tuple[str, ...] = ()) -> None:
        self.shape = shape
        self.requests: list[Row] = []
        self.dependencies: list[Row] = []
        self.incidents: list[tuple[datetime, datetime, dict]] = []
        self._counts: Counter[tuple] = Counter()
        # Per process: until when its secrets are cached, and whether it has them. A warm
        # process met Key Vault's challenge before the day began.
        self._secrets: dict[str, tuple[datetime, bool]] = {p: (DAY, True) for p in warm}
        self._random = random.Random(4)

    def tables(self) -> dict[str, list[Row]]:
        metrics = [
            {"timestamp": minute, "name": name, "valueSum": float(n), "valueCount": 1}
            | {"itemCount": 1, "customDimensions": dict(dimensions)}
            for (minute, _process, name, dimensions), n in self._counts.items()
        ]
        return {
            "requests": self.requests,
            "dependencies": self.dependencies,
            "customMetrics": metrics,
        }

    # One row each, as the exporter writes it.
    def attempt(
        self,
        when: datetime,
        host: str,
        path: str,
        status: int,
        *,
        method: str = "GET",
        by: str = "",
    ) -> None:
        """One HTTP try, recorded `by` the Azure SDK's plugin or `requests`; 0: no answer."""
        if (by or self.shape) == "azure_sdk":
            code, success, target = status or 504, status != 0, f"{host}:None"
        else:
            code, success, target = status, 0 < status < 400, host
        self.dependencies.append(
            {"timestamp": when, "name": f"{method} {path}", "type": "HTTP", "target": target}
            | {"resultCode": str(code), "success": success, "duration": 40.0, "itemCount": 1}
        )

    def sdk_call(
        self,
        when: datetime,
        operation: str,
        host: str,
        path: str,
        tries: tuple[int, ...],
        *,
        method: str = "GET",
    ) -> bool:
        """An Azure SDK call, a row per try (and the call's own, with the plugin); whether it
        got what it asked for."""
        for n, status in enumerate(tries):
            self.attempt(when + timedelta(milliseconds=50 * n), host, path, status, method=method)
        ok = 0 < tries[-1] < 400
        if self.shape == "azure_sdk":
            self.dependencies.append(
                {"timestamp": when, "name": operation, "type": "InProc", "target": ""}
                | {"resultCode": "0", "success": ok, "duration": 50.0 * len(tries), "itemCount": 1}
            )
        return ok

    def count(self, when: datetime, name: str, process: str, **dimensions: object) -> None:
        """A counter's `add`, exported at the end of its minute."""
        minute = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        key = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        self._counts[(minute, process, name, key)] += 1

    def answered(self, when: datetime, process: str, status: int, code: str, ms: float) -> None:
        """The `POST /talk` span and the `talk.requests` count (talk/api.py's `talk_start`)."""
        self.requests.append(
            {"timestamp": when, "name": "POST /talk", "resultCode": str(status)}
            | {"success": status < 400, "duration": ms, "itemCount": 1}
        )
        self.count(when, "talk.requests", process, status=status, code=code)

    # What the app does.
    def secrets(self, when: datetime, process: str, tries: tuple[int, ...] = (200,)) -> bool:
        """The secrets, read again after 5 minutes (`SECRET_TTL_SECONDS`), or 30 seconds
        after Key Vault failed, when the store stops at the first failure."""
        cached = self._secrets.get(process)
        if cached and when < cached[0]:
            return cached[1]
        ok = True
        for n, name in enumerate(SECRETS):
            challenge = (401,) if cached is None and n == 0 else ()
            ok = self.sdk_call(
                when, "SecretClient.get_secret", VAULT, f"/secrets/{name}/", challenge + tries
            )
            if not ok:
                break
        self._secrets[process] = (when + timedelta(seconds=300 if ok else 30), ok)
        return ok

    def turn(self, when: datetime, process: str, **how: object) -> None:
        """One `POST /talk`; in an incident's hours, with its answers (`_turn`'s keywords)."""
        for start, end, incident in self.incidents:
            if start <= when < end:
                how = incident | how
        self._turn(when, process, **how)

    def _turn(
        self,
        when: datetime,
        process: str,
        *,
        ms: float | None = None,
        vault: tuple[int, ...] = (200,),
        storage: tuple[int, ...] = (201,),
        provider: tuple[int, ...] = (200,),
        spent: str = "",
        answer: tuple[int, str] | None = None,
    ) -> None:
        """Secrets, today's spending, the upload, a cache lookup, the provider, and the
        answer that follows from them."""
        failed = None
        if not self.secrets(when, process, vault):
            failed = (503, "missing_secret")
        elif not (
            self.sdk_call(when, "TableClient.get_entity", TABLE, "/budgets", (200,))
            and self.sdk_call(
                when, "BlobClient.upload_blob", BLOB, "/talk-audio", storage, method="PUT"
            )
        ):
            failed = (503, "storage_unavailable")
        elif spent:
            self.count(when, "talk.budget.spent", process, budget=spent)
            failed = (503, "budget_exhausted")
        else:
            if self._random.random() < 0.3:  # a reply not in the cache yet
                self.sdk_call(when, "BlobClient.download_blob", BLOB, "/talk-audio", (404,))
            for status in provider:
                self.attempt(
                    when, PROVIDER, "/v1/text-to-speech", status, method="POST", by="requests"
                )
                if status == 429:
                    throttled = {"provider": "elevenlabs", "reason": "rate_limited"}
                    self.count(when, "talk.provider.throttled", process, **throttled)
            if not 0 < provider[-1] < 400:
                failed = (503, "provider_error")
        status, code = answer or failed or (200, "ok")
        ms = self._random.uniform(1500, 4500) if ms is None else ms
        self.answered(when, process, status, code, ms)

    def traffic(
        self, start: datetime, end: datetime, every_s: int, processes: tuple[str, ...]
    ) -> None:
        """A turn every `every_s` seconds, taken in turn by the processes."""
        n = 0
        while start + timedelta(seconds=every_s * n) < end:
            self.turn(start + timedelta(seconds=every_s * n), processes[n % len(processes)])
            n += 1

    def incident(self, start: str, end: str, **answers: object) -> None:
        self.incidents.append((at(start), at(end), answers))


def ordinary_day(shape: str = "azure_sdk", *incidents: tuple[str, str, dict]) -> Day:
    """At 07:00 the first instance starts cold: its first turn 14 s, the one that waited for
    it 9.5 s. A turn every 2 minutes, then 30 s; every 15 s over lunch, when a second
    instance starts cold (its first turn 12 s); every 2 minutes again after 22:00."""
    day = Day(shape)
    for start, end, answers in incidents:
        day.incident(start, end, **answers)
    day.turn(at("07:00"), "a1", ms=14_000)
    day.turn(at("07:00", 20), "a1", ms=9_500)
    day.traffic(at("07:02"), at("08:00"), 120, ("a1",))
    day.traffic(at("08:00"), at("12:00"), 30, ("a1",))
    day.turn(at("12:00"), "b1", ms=12_000)
    day.traffic(at("12:00", 10), at("14:00"), 15, ("a1", "b1"))
    day.traffic(at("14:00"), at("22:00"), 30, ("a1", "b1"))
    day.traffic(at("22:00"), at("23:00"), 120, ("a1",))
    return day


# --- which rules fire ------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_cold_starts_fire_nothing(shape: str) -> None:
    # Each cold start's first Key Vault request is the SDK's challenge (401, then the same
    # request with a token), and its first turns are slow, in a quarter hour of few.
    day = ordinary_day(shape)
    challenges = [r for r in day.dependencies if r["resultCode"] == "401"]
    assert len(challenges) == 2
    assert all(r["success"] is (shape == "azure_sdk") for r in challenges)
    assert fires(day) == QUIET


@pytest.mark.parametrize("shape", SHAPES)
def test_a_quiet_hour_with_one_500_fires_nothing(shape: str) -> None:
    day = Day(shape, warm=("a1",))
    for n, clock in enumerate(("03:00", "03:09", "03:17", "03:26", "03:38", "03:51")):
        day.turn(at(clock), "a1", answer=(500, "internal") if n == 2 else None)
    assert fires(day) == QUIET


@pytest.mark.parametrize("shape", SHAPES)
def test_a_busy_day_with_its_blips_fires_nothing(shape: str) -> None:
    # Blips the retries or the user get past: a 500 among many, a provider 429 twice, a
    # Storage 503 and a try with no answer, each retried; a cache miss in one turn of three.
    day = ordinary_day(shape)
    day.turn(at("10:40"), "a1", answer=(500, "internal"))
    day.turn(at("13:05"), "b1", provider=(429, 429, 200))
    day.turn(at("16:20"), "a1", storage=(503, 201))
    day.turn(at("17:45"), "b1", storage=(0, 201))
    assert fires(day) == QUIET


@pytest.mark.parametrize("shape", SHAPES)
def test_outages_fire_their_rules(shape: str) -> None:
    # A provider down (each turn waits out its timeouts), then Key Vault refusing the app
    # after its role was removed (the cached secrets last up to 5 minutes), then Storage
    # down: each pages, and nothing else does.
    outages = {
        "provider": ("10:00", "10:30", {"provider": (0, 0, 0), "ms": 35_000}),
        "vault": ("14:00", "14:45", {"vault": (403,)}),
        "storage": ("18:00", "18:20", {"storage": (503, 503, 503)}),
    }
    day = ordinary_day(shape, *outages.values())
    assert fires(day, {name: (s, e) for name, (s, e, _) in outages.items()}) == QUIET | {
        "server-errors": {"provider", "vault", "storage"},
        "slow-round-trip": {"provider"},
        "vault-or-storage-failures": {"vault", "storage"},
    }


def test_a_provider_down_at_night_fires_server_errors() -> None:
    # Few ask at night, but every one of them is failed: five failures are enough.
    day = Day(warm=("a1",))
    day.incident("02:00", "03:00", provider=(0, 0, 0), ms=35_000)
    day.traffic(at("02:00"), at("03:00"), 120, ("a1",))
    assert fires(day, {"night": ("02:00", "03:00")}) == QUIET | {"server-errors": {"night"}}


def test_sustained_throttling_fires_provider_throttling() -> None:
    # Every ElevenLabs call answered 429 three times; the embedded voice answers instead.
    day = ordinary_day(
        "azure_sdk", ("15:00", "15:30", {"provider": (429, 429, 429), "answer": (200, "ok")})
    )
    assert fires(day, {"throttled": ("15:00", "15:30")}) == QUIET | {
        "provider-throttling": {"throttled"}
    }


def test_a_spent_budget_fires_budget_spent_alone() -> None:
    # From 21:10 every turn meets the spent reply budget and is answered 503, which is no
    # server error.
    day = ordinary_day("azure_sdk", ("21:10", "23:00", {"spent": "llm-tokens", "ms": 300.0}))
    assert fires(day, {"spent": ("21:10", "23:00")}) == QUIET | {"budget-spent": {"spent"}}


def test_every_rule_is_read() -> None:
    rules, every, window = read_rules(ALERTS.read_text())
    assert tuple(rule.name for rule in rules) == RULES
    assert (every, window) == (timedelta(minutes=5), timedelta(minutes=15))
    for rule in rules:
        compile_query(rule.query)


# --- the rows are what the exporter makes ----------------------------------------------


class _Answers(requests.adapters.BaseAdapter):
    """The services' canned answers, in order: a status, or 0 for no answer."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = statuses

    def send(self, request, **kwargs) -> requests.Response:
        status = self.statuses.pop(0)
        if status == 0:
            raise requests.ConnectionError("no answer")
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.headers["Content-Type"] = "application/json"
        if status == 401:
            response.headers["WWW-Authenticate"] = (
                'Bearer authorization="https://login.microsoftonline.com/tenant", '
                'resource="https://vault.azure.net"'
            )
        body = {"value": "v", "id": f"https://{VAULT}/secrets/hf-api-token/1"}
        if status >= 400:
            body = {"error": {"code": "Failed", "message": "canned"}}
        response.raw = io.BytesIO(json.dumps(body).encode())
        return response

    def close(self) -> None:
        pass


class _Token:
    def get_token(self, *scopes: str, **kwargs: object):
        from azure.core.credentials import AccessToken

        return AccessToken("token", int(time.time()) + 3600)


@contextlib.contextmanager
def _recorded(shape: str) -> Iterator[list]:
    """The spans ended inside, with the Azure SDK traced by the distro's plugin or not."""
    from azure.core.settings import settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

    from shared.telemetry.setup import configure_in_memory

    exporter = configure_in_memory()[0]
    exporter.clear()
    if shape == "azure_sdk":
        settings.tracing_implementation.set_value(OpenTelemetrySpan)
    ended: list = []
    try:
        yield ended
    finally:
        settings.tracing_implementation.unset_value()
        ended.extend(exporter.get_finished_spans())
        exporter.clear()


def _row(span) -> Row:
    """A span as Application Insights stores it, in the columns the rules read."""
    from azure.monitor.opentelemetry.exporter.export.trace._exporter import (
        _convert_span_to_envelope,
    )

    envelope = _convert_span_to_envelope(span)
    data = envelope.data.base_data
    sampled = round(100 / envelope.sample_rate) if envelope.sample_rate else 1
    if envelope.data.base_type == "RequestData":
        return {"name": data.name, "resultCode": data.response_code, "success": data.success}
    return {"name": data.name, "type": data.type, "target": data.target or ""} | {
        "resultCode": data.result_code,
        "success": data.success,
        "itemCount": sampled,
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_the_dependency_rows_are_what_the_exporter_makes(shape: str) -> None:
    from azure.core.exceptions import AzureError
    from azure.core.pipeline.transport import RequestsTransport
    from azure.keyvault.secrets import SecretClient
    from azure.keyvault.secrets._shared import http_challenge_cache
    from azure.storage.blob import BlobClient, LinearRetry

    calls = [
        ("vault", (401, 200)),  # the process's first request: the challenge
        ("vault", (200,)),
        ("vault", (403,)),  # the app's role was removed
        ("vault", (503, 503, 503)),  # down, through 2 retries
        ("vault", (0, 0, 0)),  # no answer
        ("blob", (404,)),  # a cache miss
        ("blob", (403,)),
        ("blob", (503, 503, 503)),
        ("blob", (0, 0, 0)),
    ]
    statuses = [status for _, tries in calls for status in tries]
    session = requests.Session()
    session.mount("https://", _Answers(statuses))
    options = {"transport": RequestsTransport(session=session, session_owner=False)}
    http_challenge_cache.remove_challenge_for_url(f"https://{VAULT}")
    vault = SecretClient(
        f"https://{VAULT}", _Token(), retry_total=2, retry_backoff_factor=0, **options
    )
    retry = LinearRetry(backoff=0, random_jitter_range=0, retry_total=2)
    blob = BlobClient(
        f"https://{BLOB}",
        "talk-audio",
        "owner/reply.mp3",
        credential=_Token(),
        retry_policy=retry,
        **options,
    )
    with _recorded(shape) as spans:
        for service, _ in calls:
            with contextlib.suppress(AzureError):
                vault.get_secret("hf-api-token") if service == "vault" else blob.download_blob()
    assert not statuses  # every canned answer was asked for

    expected = Day(shape)
    for service, tries in calls:
        if service == "vault":
            expected.sdk_call(
                DAY, "SecretClient.get_secret", VAULT, "/secrets/hf-api-token/", tries
            )
        else:  # the storage URL cut to its container (shared/telemetry/urls.py)
            expected.sdk_call(DAY, "BlobClient.download_blob", BLOB, "/talk-audio", tries)
    keys = ("name", "type", "target", "resultCode", "success", "itemCount")
    assert [_row(span) for span in spans] == [
        {k: r[k] for k in keys} for r in expected.dependencies
    ]


def test_the_request_and_metric_rows_are_what_the_exporter_makes() -> None:
    from azure.monitor.opentelemetry.exporter.export.metrics._exporter import (
        _convert_point_to_envelope,
    )

    from shared.telemetry import metrics
    from shared.telemetry.tracing import traced

    expected = Day()
    answers = [{"status": 200, "code": "ok"}, {"status": 429, "code": "busy"}]
    answers.append({"status": 500, "code": "internal"})
    with _recorded("requests") as spans:
        for status, code in (a.values() for a in answers):
            # As talk/api.py's `talk_start` records its answer.
            with traced("POST /talk", kind=SpanKind.SERVER, method="POST", route="/talk") as span:
                span.set(status=status)
                if status >= 500:
                    span.fail(code)
            metrics.request_answered(status, code)
            expected.answered(DAY, "a1", status, code, 0.0)
    keys = ("name", "resultCode", "success")
    assert [_row(span) for span in spans] == [{k: r[k] for k in keys} for r in expected.requests]

    from shared.telemetry.setup import configure_in_memory

    data = configure_in_memory()[1].get_metrics_data()
    points = [
        (metric.name, point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if metric.name == metrics.REQUESTS and dict(point.attributes) in answers
    ]
    made = []
    for name, point in points:
        data = _convert_point_to_envelope(point, name).data.base_data
        [value] = data.metrics
        assert value.value == point.value  # the count since the last export, once delta
        made.append(
            {"name": value.name, "valueCount": value.count} | {"customDimensions": data.properties}
        )
    keys = ("name", "valueCount", "customDimensions")
    rows = [{k: r[k] for k in keys} for r in expected.tables()["customMetrics"]]
    assert sorted(made, key=_dimensions) == sorted(rows, key=_dimensions)


def _dimensions(row: Row) -> list:
    return sorted(row["customDimensions"].items())


# --- the KQL evaluator ------------------------------------------------------------------


def test_the_evaluator_runs_known_queries() -> None:
    tables = {
        "dependencies": [
            {"target": "kv-x.vault.azure.net:None", "resultCode": "401", "itemCount": 1},
            {"target": "kv-x.vault.azure.net:None", "resultCode": "403", "itemCount": 2},
            {"target": "myvault.azure.net", "resultCode": "503", "itemCount": 1},
            {"target": "st.blob.core.windows.net", "resultCode": "503", "itemCount": 1},
            {"target": None, "resultCode": "0", "itemCount": 1},
        ],
        "requests": [{"duration": float(ms)} for ms in range(1, 21)],
        "customMetrics": [
            {"valueSum": 3.0, "customDimensions": {"status": "500", "code": "internal"}},
            {"valueSum": 1.0, "customDimensions": {"status": "200", "code": "ok"}},
        ],
    }

    def run(query: str) -> list[Row]:
        return compile_query(query)(tables)

    assert run(
        'dependencies | where target has "vault.azure.net" or target has ".core.windows.net"'
        ' | where not(target has "vault.azure.net" and toint(resultCode) == 401)'
        " | summarize n = count(), failures = sum(itemCount)"
    ) == [{"n": 2, "failures": 3}]  # `has` matches whole terms: not "myvault.azure.net"
    assert run("requests | summarize p95 = percentile(duration, 95), n = count()") == [
        {"p95": 19.0, "n": 20}  # nearest rank
    ]
    assert run(
        "customMetrics | summarize total = sum(valueSum),"
        ' failed = sumif(valueSum, toint(customDimensions["status"]) >= 500)'
        " | where failed >= 3 | extend ratio = 100.0 * failed / total"
    ) == [{"total": 4.0, "failed": 3.0, "ratio": 75.0}]
    assert run(
        'union (customMetrics | where tostring(customDimensions["code"]) in ("ok")'
        " | summarize n = sum(valueSum)),"
        " (dependencies | where toint(resultCode) >= 500 | summarize n = sum(todouble(itemCount)))"
        " | summarize n = sum(n)"
    ) == [{"n": 3.0}]
    # A long in one part and a real in the other are two columns in Kusto (n_long, n_real):
    # the summarize after it would find no `n`.
    with pytest.raises(KqlError, match="union of a long and a real column: n"):
        run(
            "union (customMetrics | summarize n = sum(valueSum)),"
            " (dependencies | summarize n = countif(toint(resultCode) >= 500))"
            " | summarize n = sum(n)"
        )
    # A summary of no rows is one row: 0 for counts and sums, null for a percentile.
    assert run(
        "requests | where duration > 100 | summarize n = count(), p = percentile(duration, 95)"
    ) == [{"n": 0, "p": None}]
    assert run("requests | summarize n = count() | where n > 20") == []


@pytest.mark.parametrize(
    "query",
    [
        "requests | summarize n = count() by name",
        "requests | project duration",
        'requests | where name contains "talk"',
        'requests | where name !has "talk"',
        "requests | summarize n = dcount(name)",
        "requests | extend t = bin(timestamp, 5m)",
        "requests | where tolower(name) == 1",
    ],
)
def test_the_evaluator_refuses_what_it_does_not_know(query: str) -> None:
    with pytest.raises(KqlError):
        compile_query(query)
