"""Scheduled work that scales out: the scheduled run plans, workers work.

One scheduled run doing every job itself takes minutes per 10,000 due items (most of it Toss calls, one after
another: README, "Scheduled work at scale"). With a jobs queue (JOBS_QUEUE_URL) the scheduled run becomes a planner
for the jobs whose work grows with the number of due items:

* `release` (due requests), `expire` (overdue requests and the refunds of what they hold), `reconcile_cancels`
  (refunds to ask Toss about again), `payouts` (payouts to request, and payouts to poll).

It reads the due items' ids (no lock) and enqueues them in chunks (JOBS_CHUNK_SIZE ids per message, with the job's
name); JobsWorkerFunction (an SQS event source, with bounded reserved concurrency) takes each chunk and runs the
same service code as the sequential run, restricted to the chunk's ids (`only=`). The other jobs (reconcile_payments,
sellers, publish, webhook_retention) stay in the scheduled run: their work is small or bounded per run.

Why a chunk may be delivered twice, or processed by two workers at once, and still do nothing twice: each worker
re-reads every item's current state (due again now, or skipped) and changes it under the same row locks and claims
the sequential run uses (SKIP LOCKED request locks, the refund claim, the payout lease); Toss calls carry the same
Idempotency-Keys. A failure of one item is set aside in `job_failures` as before (the rest of the chunk goes on); a
failure of the database (or a worker out of time) fails the message, which SQS delivers again (partial batch
responses: only that message), and after JOBS_MAX_RECEIVES deliveries moves to the jobs dead-letter queue (alarmed).

Payouts: the planner reads Toss's payout balance once and sets aside, per chunk, the amount of the payouts in it
(`payouts.plan_payouts`); a worker sends only what its chunk's amount covers, so workers sending at once never
overdraw the balance together. Toss's rate limits: each worker paces its own Toss calls (`PacedToss`, a token bucket
of TOSS_CALLS_PER_SECOND per worker), and the reserved concurrency bounds the workers, so the stack's rate is at most
their product.

One plan at a time: while messages of the last plan still wait to be taken (the workers do not keep up) the planner
enqueues nothing new. Chunks being worked on, or failed and waiting to come back, do not hold it up: their items may
be planned again, which is harmless (each is re-checked) if wasted work.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.config import get_settings
from escrow.deadline import Deadline
from escrow.errors import AppError
from escrow.observability import count, logger
from escrow.repositories import requests as requests_repo
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

# The jobs the planner fans out (the names of services.jobs.DEFAULT_JOBS), and the message kinds they become.
PLANNED_JOBS = ("reconcile_cancels", "expire", "release", "payouts")
KINDS = ("refunds", "expire", "release", "payouts", "payout_polls")
PLAN_LIMIT = 20_000  # items per job per plan; the next plan takes the rest


class Queue(Protocol):
    """Where the planner puts chunks: SQS when deployed (`SqsQueue`), in-process locally (`local.fanout`)."""

    def send(self, messages: Sequence[Mapping[str, Any]]) -> None: ...

    def pending(self) -> int:
        """Messages waiting to be taken by a worker (not those being worked on, or failed and waiting to come
        back: a chunk that fails for half an hour must not hold up every plan meanwhile)."""
        ...


class SqsQueue:
    """The jobs queue (boto3 is imported only when the planner runs)."""

    def __init__(self, url: str, client: Any = None):
        self.url = url
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("sqs")
        return self._client

    def send(self, messages: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(messages), 10):  # SendMessageBatch takes 10 entries
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(m, separators=(",", ":"))}
                for i, m in enumerate(messages[start : start + 10])
            ]
            for _ in range(3):
                answer = self.client().send_message_batch(QueueUrl=self.url, Entries=entries)
                failed = {f["Id"] for f in answer.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    break
            if entries:
                # Not planned this time: the items stay due and the next plan takes them.
                raise RuntimeError(f"the jobs queue refused {len(entries)} messages")

    def pending(self) -> int:
        attributes = self.client().get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])


_local_queue: Queue | None = None


def use_queue(queue: Queue | None) -> None:
    """The local runner's in-process queue (local.fanout) for scheduled runs in this process; None: as configured."""
    global _local_queue
    _local_queue = queue


def configured_queue() -> Queue | None:
    if _local_queue is not None:
        return _local_queue
    url = get_settings().jobs_queue_url
    return SqsQueue(url) if url else None


def _chunks(kind: str, ids: Sequence[int], size: int, at: datetime, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"job": kind, "ids": list(ids[i : i + size]), "planned_at": iso(at), **extra} for i in range(0, len(ids), size)
    ]


def plan(
    jobs: Iterable[str],
    *,
    queue: Queue,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    limit: int = PLAN_LIMIT,
) -> dict[str, int]:
    """Enqueue the due items of these jobs (of PLANNED_JOBS) in chunks; nothing while the last plan is not done."""
    from escrow.services import jobs as jobs_service
    from escrow.services import payouts as payout_service

    wanted = [j for j in PLANNED_JOBS if j in set(jobs)]
    if not wanted:
        return {}
    waiting = queue.pending()
    if waiting:
        logger.info("chunks of the last plan still wait for a worker; nothing planned", extra={"messages": waiting})
        return {"plan_skipped_queue_busy": 1, "messages_in_queue": waiting}
    size = get_settings().jobs_chunk_size
    at = now()
    messages: list[dict[str, Any]] = []
    report: dict[str, int] = {}
    if "reconcile_cancels" in wanted:
        ids = [int(c["id"]) for c in jobs_service.refunds_due(limit)]
        messages += _chunks("refunds", ids, size, at)
        report["refunds_planned"] = len(ids)
    if "expire" in wanted:
        with db.reader() as tx:
            ids = requests_repo.due_for_expiry(tx, db_time(at), limit)
        messages += _chunks("expire", ids, size, at)
        report["expiries_planned"] = len(ids)
    if "release" in wanted:
        with db.reader() as tx:
            ids = requests_repo.due_for_release(tx, db_time(at), limit)
        messages += _chunks("release", ids, size, at)
        report["releases_planned"] = len(ids)
    if "payouts" in wanted:
        chunks, payout_report = payout_service.plan_payouts(toss=toss, now=now, limit=limit)
        messages += [m for ids, budget in chunks for m in _chunks("payouts", ids, max(1, len(ids)), at, budget=budget)]
        polls = payout_service.plan_polls(now=now)
        messages += _chunks("payout_polls", polls, size, at)
        report.update(payout_report, payout_polls_planned=len(polls))
    queue.send(messages)
    report["messages"] = len(messages)
    count("JobChunksPlanned", len(messages))
    return report


# --- the worker's side ------------------------------------------------------------------------------------------


class ChunkUnfinished(RuntimeError):
    """The worker ran out of time before the end of a chunk: the message is delivered again (what is done is
    skipped then)."""


BUSY_RETRIES = 3  # a chunk that meets a deadlock (workers at once, InnoDB's gap locks) is worked again at once


def work(
    message: Mapping[str, Any],
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
    invocation: Deadline | None = None,
) -> dict[str, int]:
    """Work off one chunk. Raises (and so fails the message) only for what the chunk cannot isolate: the database
    unavailable, a message we cannot read, or no time left.

    Workers at once can deadlock in InnoDB (gap locks of different requests' rows); the loser's transaction is rolled
    back whole (DATABASE_BUSY), and the chunk is worked again here, a few times, before the message fails: what the
    first attempt finished is skipped the second time.

    `invocation`: the Lambda invocation's deadline; each Toss call's timeouts are cut to fit in it (escrow.deadline),
    so a worker is not stopped by Lambda in the middle of a call."""
    toss = toss or paced(get_toss_client(invocation))
    for attempt in range(1, BUSY_RETRIES + 1):
        try:
            return _work(message, toss=toss, now=now, deadline=deadline)
        except AppError as exc:
            if exc.code != "DATABASE_BUSY" or attempt == BUSY_RETRIES or deadline():
                raise
            count("JobChunksRetriedBusy")
            logger.info("a jobs chunk met a deadlock; working it again", extra={"attempt": attempt})
            time.sleep(random.uniform(0.02, 0.2) * attempt)  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable")


def _work(
    message: Mapping[str, Any],
    *,
    toss: TossPort | None,
    now: Callable[[], datetime],
    deadline: Callable[[], bool],
) -> dict[str, int]:
    from escrow.services import jobs as jobs_service
    from escrow.services import payouts as payout_service
    from escrow.services import release as release_service

    kind = message.get("job")
    raw_ids = message.get("ids")
    if kind not in KINDS or not isinstance(raw_ids, list) or not all(isinstance(i, int) for i in raw_ids):
        raise ValueError(f"not a jobs chunk: job {kind!r}")  # a message of no use: to the dead-letter queue
    ids: list[int] = raw_ids
    toss = toss or paced(get_toss_client())  # (work() passes its own; a direct call gets the configured one)
    result: dict[str, int]
    if kind == "release":
        result = release_service.release_due(len(ids), now=now, deadline=deadline, only=ids)
    elif kind == "expire":
        result = jobs_service.expire_overdue(len(ids), now=now, toss=toss, deadline=deadline, only=ids)
    elif kind == "refunds":
        result = jobs_service.reconcile_cancels(len(ids), toss=toss, deadline=deadline, only=ids)
    elif kind == "payouts":
        budget = payout_service.Budget(available=int(message.get("budget") or 0))
        result = payout_service.payouts_due(
            len(ids), toss=toss, now=now, deadline=deadline, budget=budget, only=ids, poll=False
        )
    else:
        result = payout_service.poll_payouts(ids, toss=toss, now=now, deadline=deadline)
    if deadline():
        raise ChunkUnfinished(f"out of time in a {kind} chunk of {len(ids)}")
    return result


class TokenBucket:
    """At most `rate` takes per second on average, `burst` at once; take() waits for a token (thread-safe)."""

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.rate, self.burst = rate, max(burst, 1.0)
        self._tokens = self.burst
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token; returns the seconds waited for it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            # Wait for the one token that is missing and take it: the bucket is empty after (time slept beyond it
            # is not credited, so the rate is never exceeded).
            pause = (1 - self._tokens) / self.rate
            self._sleep(pause)
            self._tokens = 0.0
            self._at = max(self._clock(), now + pause)
            return pause


class PacedToss:
    """A TossPort whose every call first takes a token of the worker's bucket."""

    def __init__(self, toss: TossPort, bucket: TokenBucket):
        self._toss, self._bucket = toss, bucket

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._toss, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._bucket.take()
            return attribute(*args, **kwargs)

        return call


_bucket: TokenBucket | None = None
_bucket_lock = threading.Lock()


def paced(toss: TossPort) -> TossPort:
    """The worker's Toss client behind its token bucket (one per worker process); as it is with no rate set."""
    global _bucket
    rate = get_settings().toss_calls_per_second
    if rate <= 0:
        return toss
    with _bucket_lock:
        if _bucket is None or _bucket.rate != rate:
            _bucket = TokenBucket(rate, burst=max(1.0, rate / 2))
        bucket = _bucket
    return cast(TossPort, PacedToss(toss, bucket))
