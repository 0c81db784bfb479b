"""Plays EventBridge Scheduler: invokes ReleaseFunction with the scheduled event every N seconds.

The event is ``events/schedule.json`` (the template's schedule ``Input`` with its ``<aws.scheduler.*>``
placeholders filled in). Like the real schedule it runs in its own "container" (thread), not on the API's
worker pool, and a failed run is logged, not retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local import REPO_ROOT
from local.functions import FunctionRuntime

log = logging.getLogger("local.scheduler")

DEFAULT_EVENT_FILE = REPO_ROOT / "events" / "schedule.json"
DEFAULT_FUNCTION = "ReleaseFunction"


def scheduled_event(template_event: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    """A fresh scheduled event: the Scheduler's context placeholders (or the sample's fixed values) filled in."""
    now = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "scheduled_time": ("<aws.scheduler.scheduled-time>", now),
        "execution_id": ("<aws.scheduler.execution-id>", str(uuid.uuid4())),
        "attempt": ("<aws.scheduler.attempt-number>", str(attempt)),
    }
    text = json.dumps(template_event)
    for placeholder, value in values.values():
        text = text.replace(placeholder, value)
    event = json.loads(text)
    if isinstance(event, dict) and event.get("source") == "escrow.schedule":
        for key, (_, value) in values.items():
            event[key] = value
    return event


class Scheduler:
    def __init__(
        self,
        runtime: FunctionRuntime,
        interval: float,
        event: dict[str, Any],
        function: str = DEFAULT_FUNCTION,
        run_immediately: bool = False,
    ) -> None:
        self.runtime = runtime
        self.interval = float(interval)
        self.event = event
        self.function = function
        self.run_immediately = run_immediately
        self.runs = 0
        self.failures = 0
        self.last_result: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def run_once(self) -> Any:
        event = scheduled_event(self.event)
        started = time.perf_counter()
        try:
            result = self.runtime.invoke(self.function, event)
        except Exception:  # noqa: BLE001 - logged by the runtime; the next run comes anyway
            self.failures += 1
            log.error("scheduled run of %s failed (%d failures so far)", self.function, self.failures)
            return None
        finally:
            self.runs += 1
        self.last_result = result
        log.info(
            "scheduled run of %s done in %.0f ms: %s",
            self.function,
            (time.perf_counter() - started) * 1000,
            json.dumps(result, ensure_ascii=False, default=str)[:500],
        )
        return result

    def _loop(self) -> None:
        if self.run_immediately and not self._stop.is_set():
            self.run_once()
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def load_schedule_event(
    path: str | Path | None = None, runtime: FunctionRuntime | None = None, function: str = DEFAULT_FUNCTION
) -> dict[str, Any]:
    """events/schedule.json, else the template's schedule Input for the function, else the documented event."""
    file = Path(path) if path else DEFAULT_EVENT_FILE
    if file.is_file():
        return json.loads(file.read_text(encoding="utf-8"))
    if runtime is not None:
        for schedule in runtime.spec(function).schedules:
            if isinstance(schedule.get("input"), dict):
                return dict(schedule["input"])
    return {"source": "escrow.schedule", "jobs": "all"}


def start_scheduler(
    runtime: FunctionRuntime,
    interval: float = 60.0,
    event_path: str | Path | None = None,
    function: str = DEFAULT_FUNCTION,
    run_immediately: bool = False,
) -> Scheduler:
    event = load_schedule_event(event_path, runtime, function)
    return Scheduler(runtime, interval, event, function, run_immediately).start()
