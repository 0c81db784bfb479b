"""Settlements (`payment_settlements`: one per released request) and their payouts to the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, in_order, marks, rows
from escrow.states import OPERATOR_PAYOUT, PAYOUT, PAYOUT_AT_TOSS, PAYOUT_DUE, PayoutStatus

_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, "
    "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_attempts, s.payout_error_code, s.payout_lease_until, "
    "st.toss_seller_id, st.seller_status"
)
# What sending a payout needs: the settlement and its store's seller at Toss.
_PAYOUT_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.net_amount, s.ref_payout_id, s.payout_status, s.payout_attempts, "
    "s.payout_lease_until, s.payout_requested_at, st.toss_seller_id, st.seller_status"
)
_SELLER_NOT_REGISTERED = "the store has no registered payout account yet"


def ref_payout_id(request_id: int) -> str:
    """The settlement's refPayoutId at Toss: unique there, the last guard against paying a request twice."""
    return f"escrow-req-{request_id}"


@dataclass(frozen=True)
class NewSettlement:
    request_id: int
    store_id: str
    gross: int
    fee_bps: int
    fee: int
    net: int
    released_by: str

    @property
    def payout_status(self) -> PayoutStatus:
        return PayoutStatus.SCHEDULED if self.net > 0 else PayoutStatus.NOT_NEEDED


def insert_many(tx: Tx, settlements: Sequence[NewSettlement]) -> dict[int, int]:
    """Write the settlements of many requests in one statement and read their ids back in a second:
    {request id: settlement id}. `payment_request_id` is unique."""
    for s in settlements:
        PAYOUT.check_initial(s.payout_status)
    tx.execute(
        "INSERT INTO payment_settlements (payment_request_id, store_id, gross_amount, fee_bps, platform_fee, "
        f"net_amount, released_by, ref_payout_id, payout_status) VALUES {rows(len(settlements), 9)}",
        [
            value
            for s in settlements
            for value in (
                s.request_id,
                s.store_id,
                s.gross,
                s.fee_bps,
                s.fee,
                s.net,
                s.released_by,
                ref_payout_id(s.request_id),
                s.payout_status,
            )
        ],
    )
    request_ids = [s.request_id for s in settlements]
    return {
        row["payment_request_id"]: row["id"]
        for row in tx.all(
            "SELECT id, payment_request_id FROM payment_settlements "
            f"WHERE payment_request_id IN ({marks(request_ids)})",
            request_ids,
        )
    }


def for_request(tx: Tx, request_id: int) -> Row | None:
    return tx.one(
        f"SELECT {_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "WHERE s.payment_request_id = %s",
        (request_id,),
    )


def lock(tx: Tx, settlement_id: int) -> Row | None:
    return tx.one(
        f"SELECT {_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "WHERE s.id = %s FOR UPDATE",
        (settlement_id,),
    )


def by_payout(tx: Tx, *, payout_id: str | None, ref_payout_id: str | None) -> Row | None:
    return tx.one(
        f"SELECT {_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "WHERE s.payout_id = %s OR s.ref_payout_id = %s FOR UPDATE",
        (payout_id, ref_payout_id),
    )


def view(tx: Tx, settlement_id: int) -> Row | None:
    """The settlement as the release answer shows it (no lock)."""
    return tx.one(
        "SELECT id, gross_amount, platform_fee, net_amount, ref_payout_id, payout_id, payout_status, "
        "payout_error_code, payout_completed_at FROM payment_settlements WHERE id = %s",
        (settlement_id,),
    )


def update(tx: Tx, settlement_id: int, **fields: Any) -> None:
    """Columns other than the payout status (a status goes through set_payout_status)."""
    assert "payout_status" not in fields, "payout statuses are written with set_payout_status"
    tx.execute(f"UPDATE payment_settlements SET {assignments(fields)} WHERE id = %s", (*fields.values(), settlement_id))


def set_payout_status(tx: Tx, settlement_id: int, current: str, new: PayoutStatus, **fields: Any) -> None:
    """Move one locked settlement's payout from `current` (read under its lock) to `new`, with its columns."""
    PAYOUT.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payment_settlements SET payout_status = %s{', ' + extra if extra else ''} WHERE id = %s"
    tx.execute(sql, (new, *fields.values(), settlement_id))


def due_for_payout(tx: Tx, now: Any, limit: int) -> list[Row]:
    """Settlements whose payout must be (re)requested or polled, and whose lease (if any) has run out."""
    due = in_order(PAYOUT_DUE)
    return tx.all(
        f"SELECT id FROM payment_settlements WHERE payout_status IN ({marks(due)}) "
        "AND (payout_lease_until IS NULL OR payout_lease_until < %s) ORDER BY id LIMIT %s",
        (*due, now, limit),
    )


# --- claiming payouts to send -------------------------------------------------------------------------------


def lock_for_payout(tx: Tx, settlement_id: int) -> Row | None:
    return tx.one(
        f"SELECT {_PAYOUT_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "WHERE s.id = %s FOR UPDATE",
        (settlement_id,),
    )


def lock_unanswered(tx: Tx, now: datetime | None, limit: int) -> list[int]:
    """Payouts sent with no answer whose lease ran out, by batch marker (so a batch is rebuilt as it was sent);
    SKIP LOCKED: two runs at once take different ones."""
    rows_ = tx.all(
        "SELECT id FROM payment_settlements WHERE payout_status = %s "
        "AND (payout_lease_until IS NULL OR payout_lease_until < %s) "
        "ORDER BY payout_requested_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (PayoutStatus.REQUESTING, now, limit),
    )
    return [r["id"] for r in rows_]


def lock_scheduled(tx: Tx, now: datetime | None, untouched_since: datetime, limit: int) -> list[int]:
    """Scheduled payouts of stores with a seller at Toss, not touched since `untouched_since` (database clock), least
    recently touched first; SKIP LOCKED."""
    rows_ = tx.all(
        "SELECT s.id FROM payment_settlements s WHERE s.payout_status = %s "
        "AND (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) "
        "AND EXISTS (SELECT 1 FROM stores st WHERE st.store_id = s.store_id "
        "AND st.toss_seller_id IS NOT NULL) AND s.updated_at < %s "
        "ORDER BY s.updated_at, s.id LIMIT %s FOR UPDATE SKIP LOCKED",
        (PayoutStatus.SCHEDULED, now, untouched_since, limit),
    )
    return [r["id"] for r in rows_]


def payout_rows(tx: Tx, settlement_ids: Sequence[int]) -> list[Row]:
    """What sending these (already locked) payouts needs, in id order."""
    return tx.all(
        f"SELECT {_PAYOUT_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        f"WHERE s.id IN ({marks(settlement_ids)}) ORDER BY s.id",
        list(settlement_ids),
    )


def extend_lease(tx: Tx, settlement_ids: Sequence[int], lease_until: datetime | None) -> None:
    tx.execute(
        f"UPDATE payment_settlements SET payout_lease_until = %s WHERE id IN ({marks(settlement_ids)})",
        [lease_until, *settlement_ids],
    )


def mark_requesting(tx: Tx, batch: Sequence[Row], *, lease_until: datetime | None, marker: datetime | None) -> None:
    """Claim locked payouts as one new request to Toss: a new attempt each, one batch marker for all."""
    PAYOUT.check_each([s["payout_status"] for s in batch], PayoutStatus.REQUESTING)
    ids = [s["id"] for s in batch]
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, payout_attempts = payout_attempts + 1, "
        f"payout_lease_until = %s, payout_requested_at = %s WHERE id IN ({marks(ids)})",
        [PayoutStatus.REQUESTING, lease_until, marker, *ids],
    )


def remark(tx: Tx, settlement_ids: Sequence[int], *, marker: datetime | None, lease_until: datetime | None) -> None:
    """A new batch marker (hence a new key) for payouts still being sent."""
    tx.execute(
        "UPDATE payment_settlements SET payout_requested_at = %s, payout_lease_until = %s "
        f"WHERE id IN ({marks(settlement_ids)}) AND payout_status = %s",
        [marker, lease_until, *settlement_ids, PayoutStatus.REQUESTING],
    )


def unclaim(tx: Tx, settlement_ids: Sequence[int]) -> None:
    """End the lease of payouts claimed but not sent, so the next run sends them as they were batched."""
    tx.execute(
        f"UPDATE payment_settlements SET payout_lease_until = NULL WHERE id IN ({marks(settlement_ids)}) "
        "AND payout_status = %s",
        [*settlement_ids, PayoutStatus.REQUESTING],
    )


# --- Toss's answers ------------------------------------------------------------------------------------------


def record_accepted(tx: Tx, settlement_id: int, *, payout_id: Any, new: PayoutStatus, poll_at: datetime | None) -> None:
    """Toss took the payout: its id and status, and when to poll it. Only while still being sent by us (the rows
    written are requesting: the WHERE says so): a webhook may have settled it already."""
    PAYOUT.check(PayoutStatus.REQUESTING, new)
    tx.execute(
        "UPDATE payment_settlements SET payout_id = %s, payout_status = %s, payout_error_code = NULL, "
        "payout_error_message = NULL, payout_lease_until = %s WHERE id = %s AND payout_status = %s",
        (payout_id, new, poll_at, settlement_id, PayoutStatus.REQUESTING),
    )


def reschedule_unanswered_items(tx: Tx, settlement_ids: Sequence[int]) -> None:
    """Items Toss's answer did not list were not created: scheduled again (a new attempt, a new key)."""
    PAYOUT.check(PayoutStatus.REQUESTING, PayoutStatus.SCHEDULED)
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, "
        "payout_error_code = 'NOT_IN_PAYOUT_ANSWER', payout_error_message = 'Toss answered without this item', "
        "payout_lease_until = NULL "
        f"WHERE id IN ({marks(settlement_ids)}) AND payout_status = %s",
        [PayoutStatus.SCHEDULED, *settlement_ids, PayoutStatus.REQUESTING],
    )


def mark_already_at_toss(tx: Tx, settlement_id: int, *, message: str, poll_at: datetime | None) -> None:
    PAYOUT.check(PayoutStatus.REQUESTING, PayoutStatus.IN_PROGRESS)
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, "
        "payout_error_code = 'DUPLICATED_REF_PAYOUT_ID', payout_error_message = %s, payout_lease_until = %s "
        "WHERE id = %s AND payout_status = %s",
        (PayoutStatus.IN_PROGRESS, message, poll_at, settlement_id, PayoutStatus.REQUESTING),
    )


def mark_refused(
    tx: Tx, settlement_ids: Sequence[int], *, new: PayoutStatus, error_code: str, error_message: str
) -> None:
    """Toss refused the request: scheduled again (a later retry may succeed) or failed."""
    PAYOUT.check(PayoutStatus.REQUESTING, new)
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, payout_error_code = %s, payout_error_message = %s, "
        f"payout_lease_until = NULL WHERE id IN ({marks(settlement_ids)}) AND payout_status = %s",
        [new, error_code, error_message, *settlement_ids, PayoutStatus.REQUESTING],
    )


def note_unregistered_sellers(tx: Tx) -> None:
    """Say why scheduled payouts of stores with no payout account wait (once, not every run)."""
    tx.execute(
        "UPDATE payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "SET s.payout_error_code = 'SELLER_NOT_REGISTERED', s.payout_error_message = %s "
        "WHERE s.payout_status = %s AND st.toss_seller_id IS NULL "
        "AND (s.payout_error_code IS NULL OR s.payout_error_code <> 'SELLER_NOT_REGISTERED')",
        (_SELLER_NOT_REGISTERED, PayoutStatus.SCHEDULED),
    )


def note_unregistered_seller(tx: Tx, settlement_id: int) -> None:
    update(tx, settlement_id, payout_error_code="SELLER_NOT_REGISTERED", payout_error_message=_SELLER_NOT_REGISTERED)


# --- polling -------------------------------------------------------------------------------------------------


def to_poll(tx: Tx, now: datetime | None, limit: int) -> list[Row]:
    """Payouts Toss took and has not reported final, whose poll time has come, heard of least recently first."""
    at_toss = in_order(PAYOUT_AT_TOSS)
    return tx.all(
        f"SELECT id, payout_id FROM payment_settlements WHERE payout_status IN ({marks(at_toss)}) "
        "AND payout_id IS NOT NULL AND (payout_lease_until IS NULL OR payout_lease_until < %s) "
        "ORDER BY updated_at, id LIMIT %s",
        (*at_toss, now, limit),
    )


def poll_later(tx: Tx, settlement_id: int, poll_at: datetime | None) -> None:
    at_toss = in_order(PAYOUT_AT_TOSS)
    tx.execute(
        f"UPDATE payment_settlements SET payout_lease_until = %s WHERE id = %s AND payout_status IN ({marks(at_toss)})",
        (poll_at, settlement_id, *at_toss),
    )


def reschedule_by_operator(tx: Tx, settlement_id: int, current: str, **fields: Any) -> None:
    """An operator sends a failed payout back to the schedule (escrow.ops retry-payout, services/operator.py):
    checked against the operator's machine, not PAYOUT, where a failed payout is final."""
    OPERATOR_PAYOUT.check(current, PayoutStatus.SCHEDULED)
    extra = assignments(fields)
    sql = f"UPDATE payment_settlements SET payout_status = %s{', ' + extra if extra else ''} WHERE id = %s"
    tx.execute(sql, (PayoutStatus.SCHEDULED, *fields.values(), settlement_id))
