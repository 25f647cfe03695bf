"""Operations: one trace per `/talk` through the Durable stand-in, the stage metrics, the
spending guard, ElevenLabs' concurrency limits, and the workbook and alerts that read them.

Spans and metrics go to OpenTelemetry's in-memory exporter and reader; the providers are
loopback stubs, storage is Azurite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared.config import Settings, get_settings
from shared.errors import ProviderError
from shared.pipeline import synthesize
from shared.security.budget import BudgetExhausted, Budgets
from shared.storage import table_service
from shared.telemetry import metrics, tracing
from shared.telemetry.setup import configure_in_memory
from shared.tts.piper import bounded_pieces
from tests.conftest import QUESTIONS, ROOT, phone_upload, reset_app_caches, run_cli
from tests.stubs import Reply, StubServer, chat_completion, elevenlabs_speech
from tests.test_functions import ANSWER_KEYS, android_upload, post

SECRET = "sk-planted-9f8e7d6c5b4a"
REPLY = "Take a slow breath and stretch your shoulders."
JSON = "application/json"
WORKBOOK = ROOT / "infra" / "app" / "workbook.json"
ALERTS = ROOT / "infra" / "app" / "alerts.bicep"


@pytest.fixture(scope="session")
def telemetry() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    return configure_in_memory()


@pytest.fixture
def spans(telemetry) -> InMemorySpanExporter:
    exporter = telemetry[0]
    exporter.clear()
    return exporter


@pytest.fixture
def paid(app_settings, stub_mp3) -> Iterator[tuple[StubServer, StubServer]]:
    """The production providers as loopback stubs: a chat API and ElevenLabs, with keys."""
    with (
        StubServer(chat_completion(REPLY)) as chat,
        StubServer(elevenlabs_speech(stub_mp3)) as voice,
    ):
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{chat.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        app_settings.setenv("LLM_API_KEY", SECRET)
        app_settings.setenv("TTS_PROVIDER", "elevenlabs")
        app_settings.setenv("ELEVENLABS_API_KEY", SECRET)
        app_settings.setenv("ELEVENLABS_BASE_URL", voice.url)
        reset_app_caches()
        yield chat, voice


def _metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def _one_trace(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    (root,) = [s for s in spans if s.name == "POST /talk"]
    return [s for s in spans if s.context.trace_id == root.context.trace_id]


def _everything_said(spans, reader, records) -> str:
    """Every attribute value, event, metric attribute and log line, as one text."""
    parts = []
    for span in spans:
        parts += [span.name, str(dict(span.attributes or {})), str(span.status.description)]
        parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    for points in _metric_points(reader).values():
        parts += [str(dict(p.attributes or {})) for p in points]
    parts += [record.getMessage() for record in records]
    return "\n".join(parts)


def test_one_talk_is_one_trace_from_the_http_function_to_each_provider_call(
    paid, host, spans, telemetry, caplog
) -> None:
    chat, voice = paid
    caplog.set_level(logging.DEBUG)
    body, content_type = android_upload(phone_upload(QUESTIONS[0], "m4a"))
    response = post(host, body, content_type)
    assert response.status_code == 200, response.get_body()
    answer = json.loads(response.get_body())
    assert set(answer) >= ANSWER_KEYS - {"audio_base64"}

    turn = _one_trace(spans.get_finished_spans())
    names = [s.name for s in turn]
    for expected in (
        "POST /talk",
        "orchestration:talk_orchestrator",
        "activity:transcribe",
        "activity:generate",
        "activity:synthesize",
        "talk.stt",
        "talk.llm",
        "talk.tts",
    ):
        assert names.count(expected) == 1, (expected, names)
    # The provider calls are the `requests` instrumentation's client spans, in the turn.
    calls = [s for s in turn if s.kind is SpanKind.CLIENT]
    urls = [str(s.attributes.get("url.full") or s.attributes.get("http.url")) for s in calls]
    assert any(u.startswith(chat.url) for u in urls) and any(u.startswith(voice.url) for u in urls)
    by_name = {s.name: s for s in turn}
    parent_of = {s.context.span_id: s.parent.span_id if s.parent else None for s in turn}
    assert parent_of[by_name["talk.llm"].context.span_id] == (
        by_name["activity:generate"].context.span_id
    )
    stt, llm, tts = (dict(by_name[f"talk.{n}"].attributes) for n in ("stt", "llm", "tts"))
    assert stt["talk.request_id"] == answer["request_id"]
    assert stt["talk.provider"] == "faster-whisper" and stt["talk.audio_seconds"] > 1
    assert stt["talk.language"] == "en"
    assert llm["talk.provider"] == "openai" and llm["talk.model"] == "stub"
    assert llm["talk.llm_tokens"] == 30 and llm["talk.reply_chars"] == len(REPLY)
    assert tts["talk.provider"] == "elevenlabs" and tts["talk.tts_chars"] == len(REPLY)
    assert tts["talk.cache_hit"] is False
    assert dict(by_name["POST /talk"].attributes)["http.response.status_code"] == 200

    points = _metric_points(telemetry[1])
    stages = {p.attributes["stage"] for p in points[metrics.STAGE_DURATION]}
    assert stages >= {"stt", "llm", "tts"}
    assert any(p.attributes == {"status": 200, "code": "ok"} for p in points[metrics.REQUESTS])
    assert any(p.attributes == {"provider": "elevenlabs"} for p in points[metrics.TTS_CHARACTERS])
    assert any(p.attributes == {"provider": "openai"} for p in points[metrics.LLM_TOKENS])
    assert any(p.attributes["stage"] == "tts" for p in points[metrics.CACHE_LOOKUPS])
    assert metrics.COLD_STARTS in points

    said = _everything_said(turn, telemetry[1], caplog.records)
    heard = answer["transcript"]
    assert heard and heard not in said and REPLY not in said and SECRET not in said
    # Requests carry keys in headers; no span records a header.
    assert not any("xi-api-key" in str(s.attributes).lower() for s in turn)


def test_a_written_question_leaves_no_trace_of_its_words(
    paid, host, spans, telemetry, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = "PLANTED-QUESTION-8c1f my bank password is hunter2"
    response = post(host, json.dumps({"text": planted}).encode(), JSON)
    assert response.status_code == 200, response.get_body()
    said = _everything_said(_one_trace(spans.get_finished_spans()), telemetry[1], caplog.records)
    assert "PLANTED-QUESTION" not in said and "hunter2" not in said and REPLY not in said


def test_log_content_on_records_what_was_said(paid, host, spans, monkeypatch, caplog) -> None:
    monkeypatch.setattr(tracing._Content, "allowed", True)
    caplog.set_level(logging.INFO, logger="talk")
    response = post(host, json.dumps({"text": "How do I relax?"}).encode(), JSON)
    assert response.status_code == 200, response.get_body()
    llm = next(s for s in _one_trace(spans.get_finished_spans()) if s.name == "talk.llm")
    assert llm.attributes["talk.reply"] == REPLY
    assert any(REPLY in record.getMessage() for record in caplog.records)


def test_a_failed_stage_says_its_error_code_and_not_its_message(app_settings, host, spans):
    response = post(host, *android_upload(b"\x00" * 4000))
    assert response.status_code == 422
    turn = _one_trace(spans.get_finished_spans())
    stt = next(s for s in turn if s.name == "talk.stt")
    assert stt.attributes["talk.error_code"] == "undecodable_audio"
    assert stt.status.description == "undecodable_audio"
    root = next(s for s in turn if s.name == "POST /talk")
    assert root.attributes["talk.error_code"] == "undecodable_audio"


# --- the spending guard ------------------------------------------------------------------


def _instance(azurite: str, now: dt.datetime) -> Budgets:
    """What one app instance counts with: its own client of the shared table (its clock
    held, so that midnight cannot fall between a charge and the check)."""
    settings = Settings(storage_connection=azurite)
    return Budgets(table_service(settings).get_table_client("budgets"), clock=lambda: now)


def test_a_budget_holds_across_two_instances_sharing_storage(azurite, caplog) -> None:
    now = dt.datetime.now(dt.UTC)
    first, second = _instance(azurite, now), _instance(azurite, now)
    name = f"test-{time.time_ns()}"

    def charge(budgets: Budgets) -> None:
        for _ in range(5):
            budgets.charge(name, 500, 7)

    # Sixteen callers at once, as at a busy moment: every request charges the same budget.
    workers = [threading.Thread(target=charge, args=(b,)) for b in (first, second) * 8]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Eighty charges of 7 from two instances at once: none lost.
    first.check(name, 561)
    with pytest.raises(BudgetExhausted) as spent:
        second.check(name, 560)
    assert spent.value.status == 503 and spent.value.code == "budget_exhausted"
    # Crossing 80% of 500 is told once, not by each instance or thread that saw it.
    said = [record.getMessage() for record in caplog.records]
    assert sum("80%" in line for line in said) == 1
    assert not [line for line in said if "not charged" in line or "not read" in line]


def test_retry_after_runs_to_midnight_utc(azurite) -> None:
    late = dt.datetime(2026, 11, 29, 23, 59, 0, tzinfo=dt.UTC)
    settings = Settings(storage_connection=azurite)
    budgets = Budgets(table_service(settings).get_table_client("budgets"), clock=lambda: late)
    budgets.charge("late", 10, 10)
    with pytest.raises(BudgetExhausted) as spent:
        budgets.check("late", 10)
    assert spent.value.retry_after_s == 61


def test_spent_voice_budget_falls_back_to_the_embedded_voice(
    paid, host, app_settings, caplog
) -> None:
    _, voice = paid
    app_settings.setenv("TTS_DAILY_CHARACTER_BUDGET", str(len(REPLY)))
    app_settings.setenv("BUDGET_SHARE_PER_CALLER", "1")  # the day's budget, not a share
    app_settings.setenv("TTS_CACHE", "off")
    reset_app_caches()
    _fresh_day()
    caplog.set_level(logging.WARNING)
    first = post(host, json.dumps({"text": "One"}).encode(), JSON)
    assert json.loads(first.get_body())["providers"]["tts"] == "elevenlabs"
    # The first reply spent the budget, and passed 80% of it: warned.
    assert any("80%" in r.getMessage() for r in caplog.records)
    app_settings.setenv("TTS_FALLBACK", "piper")
    reset_app_caches()
    calls = len(voice.requests)
    second = post(host, json.dumps({"text": "Two"}).encode(), JSON)
    assert second.status_code == 200, second.get_body()
    assert json.loads(second.get_body())["providers"]["tts"] == "piper"
    assert len(voice.requests) == calls  # the paid voice was not called
    app_settings.delenv("TTS_FALLBACK")
    reset_app_caches()
    third = post(host, json.dumps({"text": "Three"}).encode(), JSON)
    assert third.status_code == 503
    assert json.loads(third.get_body())["code"] == "budget_exhausted"
    assert 0 < int(third.headers["Retry-After"]) <= 86_400


def test_spent_token_budget_answers_503_until_midnight(paid, host, app_settings) -> None:
    chat, _ = paid
    app_settings.setenv("LLM_DAILY_TOKEN_BUDGET", "50")  # the stub bills 30 a call
    app_settings.setenv("BUDGET_SHARE_PER_CALLER", "1")  # the day's budget, not a share
    reset_app_caches()
    _fresh_day()
    answers = [post(host, json.dumps({"text": f"Q{i}"}).encode(), JSON) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 503]
    assert json.loads(answers[2].get_body())["code"] == "budget_exhausted"
    assert "Retry-After" in answers[2].headers
    assert len(chat.requests) == 2  # the third never reached the provider


def _fresh_day() -> None:
    """Forget today's counts: each test starts with a whole budget."""
    table = table_service(get_settings()).get_table_client("budgets")
    today = dt.datetime.now(dt.UTC).strftime("day-%Y%m%d")
    with contextlib.suppress(ResourceNotFoundError):  # nothing counted yet
        for row in table.query_entities("PartitionKey eq @day", parameters={"day": today}):
            table.delete_entity(today, row["RowKey"])


# --- ElevenLabs' limits ------------------------------------------------------------------


def _eleven_429(status: str, then_ok: int, mp3: bytes):
    """ElevenLabs answering 429 with `detail.status` for the first `then_ok` calls."""
    calls = []

    def answer(request):
        calls.append(time.monotonic())
        if len(calls) <= then_ok:
            return Reply.json(429, {"detail": {"status": status, "message": "busy"}})
        return Reply(200, mp3, {"Content-Type": "audio/mpeg"})

    return answer, calls


def _use(app_settings, **values: str) -> None:
    for name, value in values.items():
        app_settings.setenv(name, value)
    reset_app_caches()


def test_too_many_concurrent_requests_is_retried_soon(
    paid, app_settings, stub_mp3, telemetry
) -> None:
    answer, calls = _eleven_429("too_many_concurrent_requests", 2, stub_mp3)
    with StubServer(answer) as eleven:
        _use(app_settings, ELEVENLABS_BASE_URL=eleven.url, TTS_CACHE="off")
        _use(app_settings, HTTP_BACKOFF_SECONDS="5")
        speech = synthesize("Hello", request_id="r", settings=get_settings())
    assert speech.provider == "elevenlabs" and len(calls) == 3
    # Retried soon (twice 0.25 s, jittered), not after the 5 s a backoff would wait first.
    assert calls[-1] - calls[0] < 4.5
    throttled = _metric_points(telemetry[1])[metrics.PROVIDER_THROTTLED]
    assert "too_many_concurrent_requests" in {p.attributes["reason"] for p in throttled}


def test_system_busy_is_backed_off(paid, app_settings, stub_mp3) -> None:
    answer, calls = _eleven_429("system_busy", 1, stub_mp3)
    with StubServer(answer) as eleven:
        _use(app_settings, ELEVENLABS_BASE_URL=eleven.url, TTS_CACHE="off")
        _use(app_settings, HTTP_BACKOFF_SECONDS="0.6")
        synthesize("Hello", request_id="r", settings=get_settings())
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.55


def test_a_saturated_instance_falls_back_to_the_embedded_voice(
    paid, app_settings, stub_mp3
) -> None:
    release = threading.Event()

    def slow(request):
        release.wait(10)
        return Reply(200, stub_mp3, {"Content-Type": "audio/mpeg"})

    with StubServer(slow) as eleven:
        _use(app_settings, ELEVENLABS_BASE_URL=eleven.url, ELEVENLABS_MAX_IN_FLIGHT="1")
        _use(app_settings, TTS_FALLBACK="piper", TTS_CACHE="off")
        settings = get_settings()
        results: list = []
        first = threading.Thread(
            target=lambda: results.append(synthesize("One", request_id="a", settings=settings))
        )
        first.start()
        try:
            while not eleven.requests:
                time.sleep(0.01)
            second = synthesize("Two", request_id="b", settings=settings)  # waits 1 s
        finally:
            release.set()
            first.join()
    assert second.provider == "piper" and results[0].provider == "elevenlabs"
    assert len(eleven.requests) == 1


def test_without_a_fallback_a_saturated_instance_answers_503(paid, stub_mp3, monkeypatch):
    from shared.tts import elevenlabs

    monkeypatch.setattr("shared.tts.SLOT_WAIT_S", 0.2)
    slots = elevenlabs.request_slots(get_settings().elevenlabs_max_in_flight)
    taken = [slots.acquire() for _ in range(get_settings().elevenlabs_max_in_flight)]
    try:
        with pytest.raises(ProviderError) as refused:
            synthesize("Hi", request_id="r", settings=get_settings())
    finally:
        for _ in taken:
            slots.release()
    assert refused.value.status == 503


# --- the Piper pieces, the workbook, the alerts, the command line -----------------------


def test_long_sentences_are_spoken_in_bounded_pieces() -> None:
    from shared.tts.piper import MAX_PHONEMES, load_piper

    voice = load_piper("")[0]
    text = (
        "Take a slow breath, let your shoulders drop, and think of a quiet place where the "
        "sea meets the sand and the wind is warm, because a calm mind finds its way home "
        "again when it is given a moment of rest and a little kindness."
    )
    (sentence,) = voice.phonemize(text)
    assert len(sentence) > MAX_PHONEMES
    pieces = bounded_pieces(sentence, MAX_PHONEMES)
    assert [p for piece in pieces for p in piece] == sentence
    assert all(len(piece) <= MAX_PHONEMES for piece in pieces)
    assert all(piece[-1] in (",", " ") for piece in pieces[:-1])
    assert bounded_pieces(sentence[:50], MAX_PHONEMES) == [sentence[:50]]


def _queried_names(text: str) -> tuple[set[str], set[str]]:
    """Metric names (`customMetrics` ... `name == "..."`) and span names a query uses."""
    found_metrics = set(re.findall(r"\btalk(?:\.[a-z_]+)+\b", text))
    spans = {n for n in found_metrics if n in ("talk.stt", "talk.llm", "talk.tts")}
    return found_metrics - spans, spans


def test_the_workbook_and_alerts_query_what_the_code_emits() -> None:
    workbook = json.loads(WORKBOOK.read_text())
    queries = [
        item["content"]["query"]
        for item in _items(workbook)
        if item.get("type") == 3 and "query" in item.get("content", {})
    ]
    assert len(queries) >= 6
    emitted_spans = {"talk.stt", "talk.llm", "talk.tts"}
    for text in ("\n".join(queries), ALERTS.read_text()):
        names, spans = _queried_names(text)
        assert names and names <= metrics.NAMES, names - metrics.NAMES
        assert spans <= emitted_spans
    # The tables Application Insights fills from what the app sends: server spans go to
    # `requests`, the others to `dependencies`, metrics to `customMetrics`.
    alert_queries = re.findall(r"^\s*query: '(.+)'$", ALERTS.read_text(), re.MULTILINE)
    assert len(alert_queries) == 5
    for query in queries + alert_queries:
        tables = set(re.findall(r"(?:^|\(|union\s)\s*([A-Za-z]+)\s*\|", query))
        assert tables and tables <= {"requests", "dependencies", "customMetrics"}, query
    attributes = set(tracing.ATTRIBUTES.values())
    for used in re.findall(r'customDimensions\["(talk\.[a-z_]+)"\]', "\n".join(queries)):
        assert used in attributes


def _items(node) -> Iterator[dict]:
    if isinstance(node, dict):
        if "type" in node and "content" in node:
            yield node
        for value in node.values():
            yield from _items(value)
    elif isinstance(node, list):
        for value in node:
            yield from _items(value)


def test_the_command_line_prints_the_span_tree(tmp_path) -> None:
    done = run_cli("--trace", "--text", "Hello", "--out", str(tmp_path / "r.mp3"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    tree = {line.split()[0]: line for line in lines if re.search(r"\d+\.\d ms", line)}
    assert {"talk", "talk.llm", "talk.tts"} <= set(tree)
    assert tree["talk.llm"].startswith("  talk.llm")  # a child of the turn


def test_a_5xx_answer_is_a_failed_request_in_the_trace_and_the_count(
    app_settings, host, spans, telemetry
) -> None:
    from tests.conftest import closed_port_connection_string

    app_settings.setenv("AzureWebJobsStorage", closed_port_connection_string())
    reset_app_caches()
    response = post(host, json.dumps({"text": "Hello"}).encode(), JSON)
    assert response.status_code == 503
    (root,) = [s for s in spans.get_finished_spans() if s.name == "POST /talk"]
    assert not root.status.is_ok and root.status.description == "storage_unavailable"
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/talk"
    counted = _metric_points(telemetry[1])[metrics.REQUESTS]
    assert any(p.attributes == {"status": 503, "code": "storage_unavailable"} for p in counted)


def test_telemetry_that_cannot_be_set_up_never_stops_the_app(tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import cli_environment

    env = cli_environment(
        TELEMETRY_EXPORTER="azure", APPLICATIONINSIGHTS_CONNECTION_STRING="not;a=connection"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import function_app; print('loaded')"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
    assert "Telemetry is off: it could not be set up (ValueError)" in done.stderr
    assert "not;a=connection" not in done.stderr
