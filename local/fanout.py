"""Plays the jobs queue and JobsWorkerFunction on one machine: an in-process queue with SQS's delivery rules and N
worker processes, each a warm JobsWorkerFunction container.

* `LocalQueue`: a message waits until a worker takes it (in flight), is deleted when the worker's answer does not
  list it in batchItemFailures, and waits again when it does, or when the worker process dies while holding it (as
  SQS does once the visibility timeout passes); after `max_receives` deliveries it moves to `dead` (the DLQ).
* `WorkerPool`: N processes (`python -m local.fanout`), each loading functions/jobs_worker/app.py once and invoking
  its handler with real SQS event shapes, one event per line on stdin, the answer on stdout. A process that dies is
  started again; what it held is delivered again.

The planner is the scheduled run with this queue: `jobs.run_scheduled(queue=pool.queue)` (or, for a ReleaseFunction
loaded in this process, `escrow.services.fanout.use_queue(queue)`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from local import REPO_ROOT

WORKER_FILE = REPO_ROOT / "functions" / "jobs_worker" / "app.py"
QUEUE_ARN = "arn:aws:sqs:ap-northeast-2:123456789012:escrow-local-jobs"


@dataclass
class Message:
    body: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    receives: int = 0
    sent_at: float = field(default_factory=time.time)


class LocalQueue:
    def __init__(self, max_receives: int = 5) -> None:
        self.max_receives = max_receives
        self._waiting: deque[Message] = deque()
        self._in_flight: dict[str, Message] = {}
        self.dead: list[Message] = []
        self.sent = 0
        self.deliveries = 0
        self._cond = threading.Condition()

    # --- the planner's side (escrow.services.fanout.Queue) ---
    def send(self, messages: Sequence[Mapping[str, Any]]) -> None:
        with self._cond:
            for m in messages:
                self._waiting.append(Message(json.dumps(m, separators=(",", ":"))))
            self.sent += len(messages)
            self._cond.notify_all()

    def pending(self) -> int:
        """Messages waiting for a worker (as SQS's ApproximateNumberOfMessages)."""
        with self._cond:
            return len(self._waiting)

    # --- the workers' side ---
    def receive(self, max_messages: int = 1, timeout: float = 0.5) -> list[Message]:
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout)
            taken: list[Message] = []
            while self._waiting and len(taken) < max_messages:
                m = self._waiting.popleft()
                m.receives += 1
                self._in_flight[m.id] = m
                taken.append(m)
            self.deliveries += len(taken)
            return taken

    def delete(self, message_id: str) -> None:
        with self._cond:
            self._in_flight.pop(message_id, None)
            self._cond.notify_all()

    def release(self, message_id: str) -> None:
        """Not done (reported failed, or its worker died): visible again, or to the dead-letter list."""
        with self._cond:
            m = self._in_flight.pop(message_id, None)
            if m is not None:
                (self.dead if m.receives >= self.max_receives else self._waiting).append(m)
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message is worked off (deleted or dead)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._in_flight:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.2 if left is None else min(left, 0.2))
            return True


def sqs_event(messages: Sequence[Message]) -> dict[str, Any]:
    """An SQS event as Lambda's event source mapping hands it to the function."""
    return {
        "Records": [
            {
                "messageId": m.id,
                "receiptHandle": base64.b64encode(f"{m.id}:{m.receives}".encode()).decode(),
                "body": m.body,
                "attributes": {
                    "ApproximateReceiveCount": str(m.receives),
                    "SentTimestamp": str(int(m.sent_at * 1000)),
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(m.body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "ap-northeast-2",
            }
            for m in messages
        ]
    }


class Worker:
    """One worker process and the thread that feeds it from the queue."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.proc: subprocess.Popen[str] | None = None
        self.holding: list[Message] = []
        self.invocations = 0
        self.restarts = 0
        self.peak_rss_kib = 0
        self.thread = threading.Thread(target=self._run, name=f"jobs-worker-{index}", daemon=True)

    def start(self) -> None:
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        env = {**os.environ, **self.pool.env}
        layer = str(REPO_ROOT / "layers" / "common")
        parts = [layer, str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
        self.proc = subprocess.Popen(  # noqa: S603 - our own module, this interpreter
            [sys.executable, "-m", "local.fanout", "--timeout", str(self.pool.timeout_s)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.pool.stderr,
            text=True,
        )

    def _run(self) -> None:
        while not self.pool.stopping:
            messages = self.pool.queue.receive(self.pool.batch_size)
            if not messages:
                continue
            self.holding = messages
            answer = self._invoke(messages)
            if answer is None:  # the process died holding them: delivered again, the worker started again
                for m in messages:
                    self.pool.queue.release(m.id)
                self.holding = []
                if self.pool.stopping:
                    return
                self.restarts += 1
                self._spawn()
                continue
            failed = {f.get("itemIdentifier") for f in answer.get("batchItemFailures", [])}
            for m in messages:
                (self.pool.queue.release if m.id in failed else self.pool.queue.delete)(m.id)
            self.holding = []

    def _invoke(self, messages: Sequence[Message]) -> dict[str, Any] | None:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"event": sqs_event(messages)}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError, ValueError):
            line = ""
        if not line:
            with contextlib.suppress(Exception):
                proc.wait(5)
            return None
        data = json.loads(line)
        self.invocations += 1
        self.peak_rss_kib = max(self.peak_rss_kib, int(data.get("hwm_kib") or 0))
        answer: dict[str, Any] = data.get("answer") or {}
        return answer

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class WorkerPool:
    def __init__(
        self,
        workers: int,
        *,
        queue: LocalQueue | None = None,
        env: Mapping[str, str] | None = None,
        batch_size: int = 1,
        timeout_s: float = 300,
        stderr: IO[str] | int | None = None,
    ) -> None:
        self.queue = queue or LocalQueue()
        self.env = dict(env or {})
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.stderr = stderr
        self.stopping = False
        self.workers = [Worker(self, i) for i in range(workers)]

    def __enter__(self) -> WorkerPool:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.thread.join(10)


# --- the worker process ------------------------------------------------------------------------------------------


def _peak_rss_kib() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def serve(timeout_s: float) -> int:
    """One warm JobsWorkerFunction container: an SQS event per line on stdin, the answer per line on stdout."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the function prints (its logs) goes to stderr, not into the answers
    sys.stdout = sys.stderr
    from local.functions import FakeLambdaContext, load_module

    module = load_module("escrow_fn_JobsWorkerFunction", WORKER_FILE)
    for line in sys.stdin:
        request = json.loads(line)
        context = FakeLambdaContext("JobsWorkerFunction", timeout_s=timeout_s, memory_limit_in_mb=512)
        try:
            answer = module.lambda_handler(request["event"], context)
        except Exception:  # noqa: BLE001 - as Lambda: the invocation failed, every message of it comes back
            traceback.print_exc()
            answer = {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in request["event"]["Records"]]}
        out.write(json.dumps({"answer": answer, "hwm_kib": _peak_rss_kib()}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=300)
    sys.exit(serve(parser.parse_args().timeout))
