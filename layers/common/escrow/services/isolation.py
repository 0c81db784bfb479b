"""Failure isolation for the scheduled jobs: an item that fails is set aside (`job_failures`: its error, attempts,
when to try again, with a growing back-off), counted (metric JobItemsFailed, alarmed) and skipped until then, and
the rest of the job goes on. One poison request must never stop everyone's payouts and events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from escrow import db
from escrow.clock import db_time, utcnow
from escrow.errors import AppError
from escrow.observability import count, logger
from escrow.repositories import jobs as jobs_repo

FIRST_RETRY = timedelta(minutes=5)
LONGEST_RETRY = timedelta(hours=12)


def set_aside(job: str, kind: str, item_id: int | str, exc: BaseException) -> None:
    """Record an item a scheduled job could not process (its error without personal data: the exception's class and
    message, which hold ids and numbers, not names or accounts) and when to try it again."""
    error = f"{type(exc).__name__}: {exc}"[:500]
    with db.transaction() as tx:
        attempts = jobs_repo.attempts(tx, job=job, item_kind=kind, item_id=str(item_id))
        retry = min(FIRST_RETRY * 2**attempts, LONGEST_RETRY)
        jobs_repo.record(
            tx, job=job, item_kind=kind, item_id=str(item_id), error=error, retry_at=db_time(utcnow() + retry)
        )
    logger.error("scheduled item set aside", extra={"job": job, "item": f"{kind}:{item_id}", "error": error[:200]})
    count("JobItemsFailed")


def waiting(job: str, kind: str, item_ids: Sequence[int | str], now: datetime) -> set[str]:
    """Which of these items wait for a later attempt."""
    with db.reader() as tx:
        return jobs_repo.waiting(tx, job=job, item_kind=kind, item_ids=[str(i) for i in item_ids], now=db_time(now))


def infrastructure(exc: BaseException) -> bool:
    """A failure of the database itself (503): nothing to isolate; the run fails and the Scheduler retries it."""
    return isinstance(exc, AppError) and exc.status == 503 and exc.code.startswith("DATABASE")


def cleared(job: str, kind: str, item_ids: Sequence[int | str], earlier: set[str]) -> None:
    """Items set aside before (`earlier`: those a job retried) that went through now are no longer set aside."""
    done = [str(i) for i in item_ids if str(i) in earlier]
    if done:
        with db.transaction() as tx:
            jobs_repo.clear(tx, job=job, item_kind=kind, item_ids=done)


def set_aside_before(job: str, kind: str, item_ids: Sequence[int | str]) -> set[str]:
    """Which of these items were set aside earlier (and are due again now)."""
    with db.reader() as tx:
        return jobs_repo.set_aside(tx, job=job, item_kind=kind, item_ids=[str(i) for i in item_ids])
