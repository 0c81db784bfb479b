"""Refunds (`payment_cancels`): one row per refund, written before Toss is called; its id is the Idempotency-Key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, in_order, marks
from escrow.states import CANCEL, CANCEL_IN_FLIGHT, CANCEL_OPEN, CancelStatus

_COLUMNS = (
    "id, payment_id, payment_request_id, payment_key, request_key, requested_by, reason, requested_amount, status, "
    "attempt, next_attempt_at, transaction_key, cancel_amount, refund_status, toss_code, toss_message, updated_at"
)


def find_by_key(tx: Tx, request_key: str) -> Row | None:
    """Callers hold the payment's row lock, which serialises every cancel of that payment. No FOR UPDATE here:
    on a key that does not exist yet it takes a gap lock, and two cancels of different payments then deadlock
    on their INSERTs."""
    return tx.one(f"SELECT {_COLUMNS} FROM payment_cancels WHERE request_key = %s", (request_key,))


def insert(
    tx: Tx,
    *,
    payment_id: int,
    request_id: int,
    payment_key: str,
    request_key: str,
    requested_by: str,
    reason: str,
    amount: int | None,
) -> int:
    """A refund of (part of) one charge, `amount` None meaning all it holds."""
    CANCEL.check_initial(CancelStatus.REQUESTED)
    return tx.insert(
        "INSERT INTO payment_cancels (payment_id, payment_request_id, payment_key, request_key, requested_by, reason, "
        "requested_amount, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (payment_id, request_id, payment_key, request_key, requested_by, reason, amount, CancelStatus.REQUESTED),
    )


def get(tx: Tx, cancel_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_cancels WHERE id = %s", (cancel_id,))


def set_status(tx: Tx, cancel_id: int, current: str, new: CancelStatus, **fields: Any) -> None:
    """Move a refund from `current` (read under its payment's lock) to `new`, with the columns that go with it."""
    CANCEL.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payment_cancels SET status = %s{', ' + extra if extra else ''} WHERE id = %s"
    tx.execute(sql, (new, *fields.values(), cancel_id))


def set_status_if_open(tx: Tx, cancel_id: int, new: CancelStatus, **fields: Any) -> int:
    """Change a refund only while its outcome is open: a concurrent worker may have recorded it done meanwhile. The
    rows written are in flight (the WHERE says so), and every in-flight status may go to `new`."""
    CANCEL.check_each(CANCEL_IN_FLIGHT, new)
    open_ = in_order(CANCEL_IN_FLIGHT)
    extra = assignments(fields)
    return tx.execute(
        f"UPDATE payment_cancels SET status = %s{', ' + extra if extra else ''} "
        f"WHERE id = %s AND status IN ({marks(open_)})",
        (new, *fields.values(), cancel_id, *open_),
    )


def status(tx: Tx, cancel_id: int) -> str | None:
    row = tx.one("SELECT status FROM payment_cancels WHERE id = %s", (cancel_id,))
    return None if row is None else str(row["status"])


# A refund still to happen: open (asked of Toss with no outcome recorded, or waiting for the payer's refund account:
# CANCEL_OPEN), or refused for a reason that passes and waiting for the schedule to ask again (`next_attempt_at`: a
# refund we owe or promised). While one is, the share neither pays again, nor is added back, nor is released: the
# refund would come on top of the payment (leaving an amount owed that the refund minimum forbids), or out of money
# already paid to the store.
_STILL_TO_HAPPEN = "(status IN ({open_}) OR (status = %s AND next_attempt_at IS NOT NULL))"


def _still_to_happen(statuses: frozenset[CancelStatus] = CANCEL_OPEN) -> tuple[str, list[str]]:
    open_ = in_order(statuses)
    return _STILL_TO_HAPPEN.format(open_=marks(open_)), [*open_, CancelStatus.FAILED]


def in_flight_for_payment(tx: Tx, payment_id: int) -> list[Row]:
    """The share's refunds still to happen (see _STILL_TO_HAPPEN)."""
    where, args = _still_to_happen()
    return tx.all(f"SELECT {_COLUMNS} FROM payment_cancels WHERE payment_id = %s AND {where}", (payment_id, *args))


def payments_with_refund_in_flight(tx: Tx, payment_ids: Sequence[int]) -> set[int]:
    """Which of these payments have a refund still to happen, other than one waiting for the payer's refund account
    (`payments_waiting_for_account` says those; a release decides about them apart). One statement for many."""
    if not payment_ids:
        return set()
    where, args = _still_to_happen(CANCEL_IN_FLIGHT)
    rows = tx.all(
        f"SELECT DISTINCT payment_id FROM payment_cancels WHERE payment_id IN ({marks(payment_ids)}) AND {where}",
        [*payment_ids, *args],
    )
    return {r["payment_id"] for r in rows}


def waiting_for_account(tx: Tx, payment_key: str) -> list[Row]:
    """The charge's refunds waiting for the payer's refund account, oldest first."""
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_cancels WHERE payment_key = %s AND status = %s ORDER BY id",
        (payment_key, CancelStatus.NEEDS_ACCOUNT),
    )


def payments_waiting_for_account(tx: Tx, payment_ids: Sequence[int]) -> dict[int, list[str]]:
    """Which of these payments have a refund waiting for the payer's refund account, and the paymentKeys of those
    refunds (one statement)."""
    if not payment_ids:
        return {}
    rows = tx.all(
        f"SELECT DISTINCT payment_id, payment_key FROM payment_cancels WHERE payment_id IN ({marks(payment_ids)}) "
        "AND status = %s ORDER BY payment_id, payment_key",
        [*payment_ids, CancelStatus.NEEDS_ACCOUNT],
    )
    waiting: dict[int, list[str]] = {}
    for r in rows:
        waiting.setdefault(int(r["payment_id"]), []).append(str(r["payment_key"]))
    return waiting


def for_payment(tx: Tx, payment_id: int) -> list[Row]:
    """Every refund row of the share, oldest first."""
    return tx.all(f"SELECT {_COLUMNS} FROM payment_cancels WHERE payment_id = %s ORDER BY id", (payment_id,))


def for_request(tx: Tx, request_id: int) -> list[Row]:
    return tx.all(f"SELECT {_COLUMNS} FROM payment_cancels WHERE payment_request_id = %s ORDER BY id", (request_id,))


def stale(tx: Tx, older_than_seconds: int, limit: int, only: Sequence[int] | None = None) -> list[Row]:
    """Refunds with no recorded outcome untouched for this long, and refunds Toss refused for a reason that passes
    whose back-off has run out (asked again with a new key); `only`: among these ids (a planner's chunk)."""
    if only is not None and not only:
        return []
    open_ = in_order(CANCEL_IN_FLIGHT)
    among = f"AND id IN ({marks(only)}) " if only else ""
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_cancels WHERE ((status IN ({marks(open_)}) "
        "AND updated_at < NOW(3) - INTERVAL %s SECOND) OR (status = %s AND next_attempt_at <= NOW(3))) "
        f"{among}ORDER BY id LIMIT %s",
        (*open_, older_than_seconds, CancelStatus.FAILED, *(only or ()), limit),
    )


def claim(tx: Tx, cancel_id: int, seen_updated_at: datetime) -> bool:
    """Take a refund for this worker unless someone touched it since we read it (`updated_at` as we saw it)."""
    open_ = in_order({*CANCEL_IN_FLIGHT, CancelStatus.FAILED})
    taken = tx.execute(
        "UPDATE payment_cancels SET updated_at = NOW(3) "
        f"WHERE id = %s AND status IN ({marks(open_)}) AND updated_at = %s",
        (cancel_id, *open_, seen_updated_at),
    )
    return taken == 1
