from __future__ import annotations

from escrow.db import Tx


def record(
    tx: Tx,
    *,
    request_id: int,
    payment_id: int | None,
    entry_type: str,
    amount: int,
    reference: str,
    actor: str,
    reason: str,
) -> bool:
    """Record a money movement once: (entry_type, reference) is unique, a repeat records nothing."""
    inserted = tx.execute(
        "INSERT INTO ledger_entries (payment_request_id, payment_id, entry_type, amount, reference, actor, "
        "reason) VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE id = id",
        (request_id, payment_id, entry_type, amount, reference, actor, reason[:200]),
    )
    return inserted == 1
