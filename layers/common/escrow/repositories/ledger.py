"""The ledger (`ledger_entries`): every money movement once; (entry_type, reference) is unique."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

from escrow.db import Row, Tx
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


def reversals_of(tx: Tx, payment_key: str) -> int:
    """How many times Toss took a deposit of this paymentKey back (a virtual account's deposit errors)."""
    found = tx.one(
        "SELECT COUNT(*) AS n FROM ledger_entries WHERE entry_type = 'reversal' AND reference LIKE %s",
        (f"reversal:{payment_key}:%",),
    )
    return int(found["n"]) if found else 0


def released_shares(tx: Tx, request_id: int) -> list[Row]:
    """The shares a request's release moved to the store, with what each released and its paymentKey."""
    return tx.all(
        "SELECT p.payer_id, p.payment_key, l.amount FROM ledger_entries l JOIN payments p ON p.id = l.payment_id "
        "WHERE l.payment_request_id = %s AND l.entry_type = 'release' ORDER BY p.id",
        (request_id,),
    )
