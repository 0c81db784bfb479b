"""Items a scheduled job set aside (`job_failures`): one row per (job, item), with its error and when to try again.
A job skips its items that wait here, so one item that always fails does not stop the others."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from escrow.db import Tx
from escrow.repositories._sql import marks


def record(tx: Tx, *, job: str, item_kind: str, item_id: str, error: str, retry_at: datetime | None) -> int:
    """Record (or count again) a failure; returns the number of attempts so far."""
    tx.execute(
        "INSERT INTO job_failures (job, item_kind, item_id, error, next_attempt_at) VALUES (%s, %s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE error = VALUES(error), attempts = attempts + 1, last_failed_at = NOW(3), "
        "next_attempt_at = VALUES(next_attempt_at)",
        (job, item_kind, item_id, error[:500], retry_at),
    )
    row = tx.one(
        "SELECT attempts FROM job_failures WHERE job = %s AND item_kind = %s AND item_id = %s",
        (job, item_kind, item_id),
    )
    return int(row["attempts"]) if row else 1


def attempts(tx: Tx, *, job: str, item_kind: str, item_id: str) -> int:
    row = tx.one(
        "SELECT attempts FROM job_failures WHERE job = %s AND item_kind = %s AND item_id = %s",
        (job, item_kind, item_id),
    )
    return int(row["attempts"]) if row else 0


def waiting(tx: Tx, *, job: str, item_kind: str, item_ids: Sequence[str], now: datetime | None) -> set[str]:
    """Which of these items wait for a later attempt."""
    if not item_ids:
        return set()
    rows = tx.all(
        f"SELECT item_id FROM job_failures WHERE job = %s AND item_kind = %s AND item_id IN ({marks(item_ids)}) "
        "AND next_attempt_at > %s",
        (job, item_kind, *item_ids, now),
    )
    return {str(r["item_id"]) for r in rows}


def clear(tx: Tx, *, job: str, item_kind: str, item_ids: Sequence[str]) -> int:
    """Items that went through after all: no longer set aside."""
    if not item_ids:
        return 0
    return tx.execute(
        f"DELETE FROM job_failures WHERE job = %s AND item_kind = %s AND item_id IN ({marks(item_ids)})",
        (job, item_kind, *item_ids),
    )


def open_failures(tx: Tx) -> list[dict[str, object]]:
    return tx.all(
        "SELECT job, item_kind, item_id, error, attempts, last_failed_at, next_attempt_at FROM job_failures "
        "ORDER BY last_failed_at DESC LIMIT 500"
    )


def set_aside(tx: Tx, *, job: str, item_kind: str, item_ids: Sequence[str]) -> set[str]:
    """Which of these items have a failure row (due again or not)."""
    if not item_ids:
        return set()
    rows = tx.all(
        f"SELECT item_id FROM job_failures WHERE job = %s AND item_kind = %s AND item_id IN ({marks(item_ids)})",
        (job, item_kind, *item_ids),
    )
    return {str(r["item_id"]) for r in rows}
