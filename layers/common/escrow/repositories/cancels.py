from __future__ import annotations

from typing import Any

from escrow.db import Row, Tx

_COLUMNS = (
    "id, payment_id, payment_request_id, request_key, requested_by, reason, requested_amount, status, "
    "transaction_key, cancel_amount, refund_status, toss_code, updated_at"
)


def find_by_key(tx: Tx, request_key: str) -> Row | None:
    """Callers hold the payment's row lock, which serialises every cancel of that payment. No FOR UPDATE here:
    on a key that does not exist yet it takes a gap lock, and two cancels of different payments then deadlock
    on their INSERTs."""
    return tx.one(f"SELECT {_COLUMNS} FROM payment_cancels WHERE request_key = %s", (request_key,))


def insert(
    tx: Tx, *, payment_id: int, request_id: int, request_key: str, requested_by: str, reason: str, amount: int | None
) -> int:
    return tx.insert(
        "INSERT INTO payment_cancels (payment_id, payment_request_id, request_key, requested_by, reason, "
        "requested_amount, status) VALUES (%s, %s, %s, %s, %s, %s, 'requested')",
        (payment_id, request_id, request_key, requested_by, reason, amount),
    )


def update(tx: Tx, cancel_id: int, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %s" for name in fields)
    tx.execute(f"UPDATE payment_cancels SET {assignments} WHERE id = %s", (*fields.values(), cancel_id))


def update_if_open(tx: Tx, cancel_id: int, **fields: Any) -> int:
    """Change a cancel only while its outcome is open: a concurrent worker may have recorded it done meanwhile."""
    assignments = ", ".join(f"{name} = %s" for name in fields)
    return tx.execute(
        f"UPDATE payment_cancels SET {assignments} WHERE id = %s AND status IN ('requested', 'unknown')",
        (*fields.values(), cancel_id),
    )


def in_flight_for_payment(tx: Tx, payment_id: int) -> list[Row]:
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_cancels WHERE payment_id = %s AND status IN ('requested', 'unknown')",
        (payment_id,),
    )


def known_transaction_keys(tx: Tx, payment_id: int) -> set[str]:
    rows = tx.all(
        "SELECT transaction_key FROM payment_cancels WHERE payment_id = %s AND transaction_key IS NOT NULL",
        (payment_id,),
    )
    return {r["transaction_key"] for r in rows}


def stale(tx: Tx, older_than_seconds: int, limit: int) -> list[Row]:
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_cancels WHERE status IN ('requested', 'unknown') "
        "AND updated_at < NOW(3) - INTERVAL %s SECOND ORDER BY id LIMIT %s",
        (older_than_seconds, limit),
    )
