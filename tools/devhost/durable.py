"""A small stand-in for the Durable Functions extension, for `make serve` and the tests.

It speaks the extension's HTTP API to the real `DurableOrchestrationClient` (start an
instance, get its status) and runs orchestrations the way the extension does: it calls the
orchestrator through the SDK's replay engine with a growing history, executes the
activities it schedules (the app's real activity functions), and records their results,
failures, retries and retry timers in that history.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.durable_functions.constants import DATETIME_STRING_FORMAT

from shared.telemetry import continue_trace, traced
from tools.devhost.loopback import LoopbackServer, Recorded, Reply

log = logging.getLogger("devhost")
EXECUTION_STARTED, TASK_SCHEDULED, TASK_COMPLETED, TASK_FAILED = 0, 4, 5, 6
TIMER_CREATED, TIMER_FIRED, ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED = 10, 11, 12, 13
CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY = 0, 1


class History:
    """An orchestration's history, in the JSON the extension sends to the Python worker."""

    def __init__(self, name: str, instance_id: str, orchestration_input: Any) -> None:
        self.instance_id = instance_id
        # The Durable client posts its input already serialized; the extension passes that
        # JSON text through to the orchestrator unchanged.
        is_text = isinstance(orchestration_input, str)
        self.input = orchestration_input if is_text else json.dumps(orchestration_input)
        self.events: list[dict[str, Any]] = []
        self._clock = datetime.now(UTC)
        self._next_id = 0
        self.orchestrator_started()
        self._add(
            EXECUTION_STARTED,
            Name=name,
            Version="",
            Input=self.input,
            OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": uuid.uuid4().hex},
        )

    def _add(self, event_type: int, event_id: int = -1, **fields: Any) -> None:
        self._clock += timedelta(milliseconds=10)
        self.events.append(
            {
                "EventType": event_type,
                "EventId": event_id,
                "IsPlayed": False,
                "Timestamp": self._clock.strftime(DATETIME_STRING_FORMAT),
                **fields,
            }
        )

    def orchestrator_started(self) -> None:
        for event in self.events:
            event["IsPlayed"] = True
        self._add(ORCHESTRATOR_STARTED)

    def task_scheduled(self, name: str, task_input: str | None) -> int:
        task_id = self._next_id
        self._next_id += 1
        self._add(TASK_SCHEDULED, task_id, Name=name, Input=task_input)
        return task_id

    def task_completed(self, task_id: int, result: Any) -> None:
        self._add(TASK_COMPLETED, TaskScheduledId=task_id, Result=json.dumps(result))

    def task_failed(self, task_id: int, reason: str, details: str) -> None:
        self._add(TASK_FAILED, TaskScheduledId=task_id, Reason=reason, Details=details)

    def retry_timer(self, delay_s: float) -> None:
        timer_id = self._next_id
        self._next_id += 1
        fire_at = (self._clock + timedelta(seconds=delay_s)).strftime(DATETIME_STRING_FORMAT)
        self._add(TIMER_CREATED, timer_id, FireAt=fire_at)
        self._add(TIMER_FIRED, TimerId=timer_id, FireAt=fire_at)

    def context(self) -> str:
        return json.dumps(
            {
                "history": self.events,
                "input": self.input,
                "instanceId": self.instance_id,
                "isReplaying": False,
                "parentInstanceId": None,
                "upperSchemaVersion": 0,
            }
        )


def replay(orchestrator: Callable[[str], str], history: History) -> dict[str, Any]:
    """One episode of the orchestrator through the SDK's replay engine."""
    return json.loads(orchestrator(history.context()))


def scheduled_actions(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [action for group in state["actions"] for action in group]


def activity_failure(name: str, error: BaseException) -> tuple[str, str]:
    """TaskFailed's Reason and Details, as the extension reports a Python exception."""
    reason = (
        f"Activity function '{name}' failed: Result: Failure\n"
        f"Exception: {type(error).__name__}: {error}"
    )
    return reason, "".join(traceback.format_exception(error))


class LocalDurableHost:
    def __init__(
        self,
        orchestrators: dict[str, Callable[[str], str]],
        activities: dict[str, Callable[..., Any]],
        *,
        retry_delay_scale: float = 0.01,
        crash_once: frozenset[str] = frozenset(),
    ) -> None:
        self.orchestrators = orchestrators
        self.activities = activities
        self.retry_delay_scale = retry_delay_scale
        # Activities named here fail once, like a worker that dies mid-activity: a fault
        # that cannot be caused from outside.
        self._crash_once = set(crash_once)
        # As many activities at once as host.json lets one instance run.
        self._activity_slots = threading.Semaphore(max_concurrent_activities())
        self.instances: dict[str, dict[str, Any]] = {}
        # When each instance was asked for, ran its activities and ended (perf_counter
        # seconds): where the time between the HTTP function and the activities goes.
        self.timeline: dict[str, list[tuple[str, float]]] = {}
        self.activity_calls: list[str] = []
        self.status_reads = 0  # what each is in Azure: a read of the Instances table
        self.started: list[str] = []
        self._lock = threading.Lock()
        # The extension's API is for this process's functions alone: a random key in the
        # path (the Durable client appends its calls to `rpcBaseUrl`) keeps anything else
        # on the machine from reading or deleting another caller's instances.
        self._key = secrets.token_urlsafe(32)
        self._server = LoopbackServer(self._answer, record=False)

    def __enter__(self) -> LocalDurableHost:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def client_binding(self) -> str:
        """What the extension passes to a function's `durableClient` binding."""
        base = f"{self._server.url}/{self._key}/runtime/webhooks/durabletask/"
        return json.dumps(
            {
                "taskHubName": "TalkHub",
                "creationUrls": {
                    "createNewInstancePostUri": f"{base}orchestrators/{{functionName}}",
                },
                "managementUrls": {
                    "id": "INSTANCEID",
                    "statusQueryGetUri": f"{base}instances/INSTANCEID",
                },
                "baseUrl": base,
                "requiredQueryStringParameters": "",
                "rpcBaseUrl": base,
            }
        )

    # --- the extension's HTTP API ----------------------------------------------------

    def _answer(self, request: Recorded) -> Reply:
        key, _, path = request.path.strip("/").partition("/")
        if not hmac.compare_digest(key.encode(), self._key.encode()):
            return Reply(401)
        parts = path.split("/")
        if request.method == "POST" and "orchestrators" in parts:
            name, instance_id = parts[parts.index("orchestrators") + 1 :][:2]
            self._start(name, instance_id, request.body, request.headers.get("traceparent"))
            return Reply.json(202, {"id": instance_id})
        if "instances" not in parts:
            return Reply.json(404, {"error": "not implemented by the local host"})
        instance_id = parts[-1] if parts[-1] != "instances" else None
        if request.method == "GET" and instance_id:
            return self._status(instance_id)
        if request.method == "DELETE" and instance_id:
            with self._lock:
                deleted = self.instances.pop(instance_id, None) is not None
            return Reply.json(200, {"instancesDeleted": 1}) if deleted else Reply(404)
        if request.method == "DELETE":
            return self._purge_by(request.query)
        return Reply.json(404, {"error": "not implemented by the local host"})

    def _status(self, instance_id: str) -> Reply:
        # With its input, as the extension answers by default (`showInput` defaults to
        # true, and the Python client never sends false).
        with self._lock:
            self.status_reads += 1
            instance = self.instances.get(instance_id)
            status = dict(instance) if instance is not None else None
        if status is None:
            return Reply(404)
        code = {"Completed": 200, "Failed": 500}.get(status["runtimeStatus"], 202)
        return Reply.json(code, status)

    def _purge_by(self, query: dict[str, list[str]]) -> Reply:
        """Purge the histories created in [createdTimeFrom, createdTimeTo] with a status
        in runtimeStatus, as the extension's purge API does."""
        created_from = _parse_time(query["createdTimeFrom"][0])
        created_to = _parse_time(query.get("createdTimeTo", [None])[0]) or datetime.max.replace(
            tzinfo=UTC
        )
        statuses = set(query.get("runtimeStatus", [""])[0].split(",")) - {""}
        with self._lock:
            doomed = [
                instance_id
                for instance_id, status in self.instances.items()
                if created_from <= datetime.fromisoformat(status["createdTime"]) <= created_to
                and (not statuses or status["runtimeStatus"] in statuses)
            ]
            for instance_id in doomed:
                del self.instances[instance_id]
        if not doomed:
            return Reply(404)
        return Reply.json(200, {"instancesDeleted": len(doomed)})

    def _mark(self, instance_id: str, event: str) -> None:
        with self._lock:
            self.timeline.setdefault(instance_id, []).append((event, time.perf_counter()))

    def _start(
        self, name: str, instance_id: str, orchestration_input: Any, traceparent: str | None
    ) -> None:
        self._mark(instance_id, "requested")
        now = datetime.now(UTC).isoformat()
        with self._lock:
            self.started.append(instance_id)
            self.instances[instance_id] = {
                "name": name,
                "instanceId": instance_id,
                "runtimeStatus": "Pending",
                "input": orchestration_input,
                "output": None,
                "customStatus": None,
                "createdTime": now,
                "lastUpdatedTime": now,
            }
        thread = threading.Thread(
            target=self._traced_run,
            args=(name, instance_id, orchestration_input, traceparent),
            daemon=True,
        )
        thread.start()

    def _set(self, instance_id: str, **fields: Any) -> None:
        with self._lock:
            if instance_id in self.instances:  # not purged meanwhile
                self.instances[instance_id].update(
                    fields, lastUpdatedTime=datetime.now(UTC).isoformat()
                )

    # --- running an orchestration ------------------------------------------------------

    def _traced_run(
        self, name: str, instance_id: str, orchestration_input: Any, traceparent: str | None
    ) -> None:
        # As the extension's distributed tracing does in Azure: the orchestration is a span
        # in the trace of the request that started it, and its activities run inside it.
        with (
            continue_trace({"traceparent": traceparent} if traceparent else None),
            traced(f"orchestration:{name}", request_id=instance_id),
        ):
            self._run(name, instance_id, orchestration_input)

    def _run(self, name: str, instance_id: str, orchestration_input: Any) -> None:
        self._mark(instance_id, "running")
        self._set(instance_id, runtimeStatus="Running")
        history = History(name, instance_id, orchestration_input)
        handled = 0
        try:
            while True:
                state = replay(self.orchestrators[name], history)
                if state.get("isDone"):
                    if state.get("error"):
                        self._set(instance_id, runtimeStatus="Failed", output=state["error"])
                    else:
                        self._set(instance_id, runtimeStatus="Completed", output=state["output"])
                    self._mark(instance_id, "done")
                    return
                actions = scheduled_actions(state)
                if len(actions) <= handled:
                    raise RuntimeError(f"orchestration {instance_id} is waiting on nothing")
                history.orchestrator_started()
                for action in actions[handled:]:
                    self._execute(history, action)
                handled = len(actions)
        except Exception as error:  # the orchestrator itself crashed
            log.exception("Orchestration %s crashed", instance_id)
            self._set(instance_id, runtimeStatus="Failed", output=repr(error))

    def _execute(self, history: History, action: dict[str, Any]) -> None:
        if action["actionType"] not in (CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY):
            raise NotImplementedError(f"action type {action['actionType']}")
        name = action["functionName"]
        options = action.get("retryOptions") or {}
        attempts = options.get("maxNumberOfAttempts", 1)
        delay_s = options.get("firstRetryIntervalInMilliseconds", 0) / 1000
        for _ in range(attempts):
            task_id = history.task_scheduled(name, action.get("input"))
            with self._lock:
                self.activity_calls.append(name)
            try:
                with self._activity_slots:
                    self._mark(history.instance_id, f"{name} begins")
                    self._maybe_crash(name)
                    result = self.activities[name](json.loads(action["input"]))
                    self._mark(history.instance_id, f"{name} ends")
            except Exception as error:
                log.warning("Activity %s failed: %s", name, type(error).__name__)
                history.task_failed(task_id, *activity_failure(name, error))
                if action["actionType"] == CALL_ACTIVITY:
                    return
                # The SDK replays one retry timer after every failed attempt, the last too.
                time.sleep(delay_s * self.retry_delay_scale)
                history.retry_timer(delay_s)
                delay_s *= options.get("backoffCoefficient", 1)
                continue
            history.task_completed(task_id, result)
            return

    def _maybe_crash(self, name: str) -> None:
        with self._lock:
            if name not in self._crash_once:
                return
            self._crash_once.discard(name)
        raise RuntimeError(f"worker crashed while running {name}")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, DATETIME_STRING_FORMAT).replace(tzinfo=UTC)


def max_concurrent_activities() -> int:
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    return host["extensions"]["durableTask"]["maxConcurrentActivityFunctions"]


def app_durable_host(**options: Any) -> LocalDurableHost:
    """A host for the Function App's own orchestrators and activities, as the app indexes them."""
    from tools.devhost.functions import app_index

    index = app_index()
    return LocalDurableHost(index.orchestrators, index.activities, **options)
