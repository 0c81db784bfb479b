"""The ledger (`ledger_entries`): every money movement once; (entry_type, reference) is unique."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

from escrow.db import Tx
from escrow.repositories._sql import rows


@dataclass(frozen=True)
class Entry:
    request_id: int
    payment_id: int | None
    entry_type: str
    amount: int
    reference: str
    actor: str
    reason: str


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


def record_many(tx: Tx, entries: Sequence[Entry]) -> None:
    """Many movements in one statement, each once (as `record` does)."""
    if not entries:
        return
    tx.execute(
        "INSERT INTO ledger_entries (payment_request_id, payment_id, entry_type, amount, reference, actor, reason) "
        f"VALUES {rows(len(entries), 7)} ON DUPLICATE KEY UPDATE id = id",
        [value for entry in entries for value in astuple(entry)],
    )
