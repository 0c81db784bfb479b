"""Settlements (`payment_settlements`: one per released request) and their payouts to the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, in_order, marks, rows
from escrow.states import (
    OPERATOR_PAYOUT,
    PAYABLE_SELLER_STATUSES,
    PAYOUT,
    PAYOUT_AT_TOSS,
    PayoutStatus,
    PayoutWaitingFor,
)
from escrow.toss.ids import toss_name

_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, "
    "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_attempts, s.payout_error_code, s.payout_lease_until, "
    "st.toss_seller_id, st.seller_status"
)
# What sending a payout needs: the settlement and its store's seller at Toss.
_PAYOUT_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.net_amount, s.ref_payout_id, s.payout_status, s.payout_attempts, "
    "s.payout_refusals, s.payout_lease_until, s.payout_requested_at, st.toss_seller_id, st.seller_status"
)
_SELLER_NOT_REGISTERED = "the store has no registered payout account yet"


def ref_payout_id(request_id: int) -> str:
    """The settlement's refPayoutId at Toss: unique there, the last guard against paying a request twice. It carries
    the stack prefix (escrow.toss.ids), so another stack's request of the same id is another payout."""
    return toss_name(f"escrow-req-{request_id}")


def retry_ref_payout_id(request_id: int, attempt: int) -> str:
    """A new refPayoutId for a payout Toss created and FAILED, retried by an operator: Toss refuses a refPayoutId it
    has seen (DUPLICATED_REF_PAYOUT_ID)."""
    return toss_name(f"escrow-req-{request_id}-a{attempt}")


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
        f"net_amount, released_by, ref_payout_id, payout_status, payout_waiting_for) "
        f"VALUES {rows(len(settlements), 10)}",
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
                PayoutWaitingFor.SCHEDULE if s.payout_status == PayoutStatus.SCHEDULED else None,
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


_VIEW = (
    "SELECT s.id, s.payment_request_id, s.gross_amount, s.platform_fee, s.net_amount, s.ref_payout_id, s.payout_id, "
    "s.payout_status, s.payout_waiting_for, s.payout_attempts, s.payout_error_code, s.payout_error_message, "
    "s.payout_next_attempt_at, s.payout_completed_at, s.created_at, st.toss_seller_id, st.seller_status, "
    "b.available_amount AS balance_available, b.pending_amount AS balance_pending, b.checked_at AS balance_checked_at "
    "FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
    "LEFT JOIN payout_balance b ON b.id = 1 "
)


def view(tx: Tx, settlement_id: int) -> Row | None:
    """The settlement as the release and status answers show it, with the last balance reading (no lock)."""
    return tx.one(_VIEW + "WHERE s.id = %s", (settlement_id,))


def view_for_request(tx: Tx, request_id: int) -> Row | None:
    return tx.one(_VIEW + "WHERE s.payment_request_id = %s", (request_id,))


def needed_before(tx: Tx, settlement_id: int) -> int:
    """What the balance must cover for this payout to go: its own net and that of every older payout waiting for the
    balance (they go first)."""
    row = tx.one(
        "SELECT COALESCE(SUM(net_amount), 0) AS needed FROM payment_settlements "
        "WHERE payout_waiting_for = %s AND payout_status = %s AND id <= %s",
        (PayoutWaitingFor.BALANCE, PayoutStatus.SCHEDULED, settlement_id),
    )
    return int(row["needed"]) if row else 0


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


# --- claiming payouts to send -------------------------------------------------------------------------------


def _among(column: str, only: Sequence[int] | None) -> str:
    return f"AND {column} IN ({marks(only)}) " if only else ""


def _by_id(only: Sequence[int] | None) -> str:
    """Among given ids, a locking read goes by the primary key: through the queue index InnoDB would lock every
    row it scans (in REPEATABLE READ, those the id filter then drops too), and another worker's SKIP LOCKED read
    would skip its whole chunk."""
    return " FORCE INDEX (PRIMARY)" if only else ""


def lock_unanswered(tx: Tx, now: datetime | None, limit: int, only: Sequence[int] | None = None) -> list[int]:
    """Payouts sent with no answer whose lease ran out, by batch marker (so a batch is rebuilt as it was sent);
    SKIP LOCKED: two runs at once take different ones. `only`: among these ids (a planner's chunk)."""
    if only is not None and not only:
        return []
    rows_ = tx.all(
        f"SELECT id FROM payment_settlements{_by_id(only)} WHERE payout_status = %s "
        f"AND (payout_lease_until IS NULL OR payout_lease_until < %s) {_among('id', only)}"
        "ORDER BY payout_requested_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (PayoutStatus.REQUESTING, now, *(only or ()), limit),
    )
    return [r["id"] for r in rows_]


def lock_scheduled(tx: Tx, now: datetime | None, limit: int, only: Sequence[int] | None = None) -> list[int]:
    """Scheduled payouts of stores with a seller at Toss whose back-off (if any) is over, oldest first (the payout
    balance pays them in the order they were released); SKIP LOCKED. `only`: among these ids."""
    if only is not None and not only:
        return []
    rows_ = tx.all(
        f"SELECT s.id FROM payment_settlements s{_by_id(only)} WHERE s.payout_status = %s "
        "AND (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) "
        "AND (s.payout_next_attempt_at IS NULL OR s.payout_next_attempt_at <= %s) "
        "AND EXISTS (SELECT 1 FROM stores st WHERE st.store_id = s.store_id AND st.toss_seller_id IS NOT NULL) "
        f"{_among('s.id', only)}ORDER BY s.id LIMIT %s FOR UPDATE SKIP LOCKED",
        (PayoutStatus.SCHEDULED, now, now, *(only or ()), limit),
    )
    return [r["id"] for r in rows_]


def to_plan(tx: Tx, now: datetime | None, limit: int) -> list[Row]:
    """What the scheduled planner hands to workers (no lock; each worker locks and re-checks): payouts sent with no
    answer whose lease ran out (with their batch marker) and scheduled payouts due, as lock_unanswered and
    lock_scheduled see them, oldest first, with the amount and the seller's status."""
    return tx.all(
        "SELECT s.id, s.payout_status, s.payout_requested_at, s.net_amount, st.seller_status "
        "FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "WHERE (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) AND (s.payout_status = %s "
        "OR (s.payout_status = %s AND (s.payout_next_attempt_at IS NULL OR s.payout_next_attempt_at <= %s) "
        "AND st.toss_seller_id IS NOT NULL)) ORDER BY s.id LIMIT %s",
        (now, PayoutStatus.REQUESTING, PayoutStatus.SCHEDULED, now, limit),
    )


def scheduled_due(tx: Tx, now: datetime | None) -> bool:
    """Whether any scheduled payout could be sent now (so the run reads Toss's payout balance)."""
    return (
        tx.one(
            "SELECT s.id FROM payment_settlements s WHERE s.payout_status = %s "
            "AND (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) "
            "AND (s.payout_next_attempt_at IS NULL OR s.payout_next_attempt_at <= %s) "
            "AND EXISTS (SELECT 1 FROM stores st WHERE st.store_id = s.store_id AND st.toss_seller_id IS NOT NULL) "
            "LIMIT 1",
            (PayoutStatus.SCHEDULED, now, now),
        )
        is not None
    )


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
        "UPDATE payment_settlements SET payout_status = %s, payout_waiting_for = NULL, "
        "payout_attempts = payout_attempts + 1, payout_lease_until = %s, payout_requested_at = %s, "
        f"payout_next_attempt_at = NULL WHERE id IN ({marks(ids)})",
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
        "UPDATE payment_settlements SET payout_id = %s, payout_status = %s, payout_waiting_for = NULL, "
        "payout_error_code = NULL, payout_error_message = NULL, payout_refusals = 0, payout_next_attempt_at = NULL, "
        "payout_lease_until = %s WHERE id = %s AND payout_status = %s",
        (payout_id, new, poll_at, settlement_id, PayoutStatus.REQUESTING),
    )


def reschedule_unanswered_items(tx: Tx, settlement_ids: Sequence[int], *, next_attempt_at: datetime | None) -> None:
    """Items Toss's answer did not list were not created: scheduled again (a new attempt, a new key)."""
    PAYOUT.check(PayoutStatus.REQUESTING, PayoutStatus.SCHEDULED)
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, payout_waiting_for = %s, "
        "payout_error_code = 'NOT_IN_PAYOUT_ANSWER', payout_error_message = 'Toss answered without this item', "
        "payout_lease_until = NULL, payout_next_attempt_at = %s "
        f"WHERE id IN ({marks(settlement_ids)}) AND payout_status = %s",
        [PayoutStatus.SCHEDULED, PayoutWaitingFor.RETRY, next_attempt_at, *settlement_ids, PayoutStatus.REQUESTING],
    )


def mark_already_at_toss(
    tx: Tx, settlement_id: int, *, payout_id: str | None, message: str, poll_at: datetime | None
) -> None:
    """Toss refused our request as DUPLICATED_REF_PAYOUT_ID: it holds a payout under this refPayoutId, made by an
    earlier request whose answer we did not read. It is polled (by id, or found by its refPayoutId) to its end."""
    PAYOUT.check(PayoutStatus.REQUESTING, PayoutStatus.IN_PROGRESS)
    tx.execute(
        "UPDATE payment_settlements SET payout_status = %s, payout_id = COALESCE(%s, payout_id), "
        "payout_waiting_for = NULL, payout_error_code = 'DUPLICATED_REF_PAYOUT_ID', payout_error_message = %s, "
        "payout_refusals = 0, payout_next_attempt_at = NULL, payout_lease_until = %s "
        "WHERE id = %s AND payout_status = %s",
        (PayoutStatus.IN_PROGRESS, payout_id, message, poll_at, settlement_id, PayoutStatus.REQUESTING),
    )


@dataclass(frozen=True)
class Refusal:
    """What a refusal (or an error answer) writes on the payouts of one request to Toss."""

    new: PayoutStatus  # scheduled (tried again) or failed (a person must act)
    code: str
    message: str
    waiting_for: PayoutWaitingFor | None = None
    counts: bool = True  # counts toward the back-off (payout_refusals); a balance refusal does not


def mark_refused(tx: Tx, batch: Sequence[Row], refusal: Refusal, next_attempt_at: dict[int, datetime | None]) -> None:
    """Toss refused the request (or answered it with an error): every settlement of it is scheduled again after its
    own back-off (`next_attempt_at`: settlement id -> time), or failed. Only rows still being sent are written."""
    PAYOUT.check(PayoutStatus.REQUESTING, refusal.new)
    increment = 1 if refusal.counts else 0
    for at in sorted(set(next_attempt_at.values()), key=lambda t: (t is not None, t)):
        ids = [s["id"] for s in batch if next_attempt_at[s["id"]] == at]
        tx.execute(
            "UPDATE payment_settlements SET payout_status = %s, payout_waiting_for = %s, payout_error_code = %s, "
            "payout_error_message = %s, payout_refusals = payout_refusals + %s, payout_next_attempt_at = %s, "
            f"payout_lease_until = NULL WHERE id IN ({marks(ids)}) AND payout_status = %s",
            [
                refusal.new,
                refusal.waiting_for,
                refusal.code,
                refusal.message,
                increment,
                at,
                *ids,
                PayoutStatus.REQUESTING,
            ],
        )


def note_unregistered_sellers(tx: Tx) -> None:
    """Say why scheduled payouts of stores with no payout account wait (once, not every run)."""
    tx.execute(
        "UPDATE payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "SET s.payout_waiting_for = %s, s.payout_error_code = 'SELLER_NOT_REGISTERED', s.payout_error_message = %s "
        "WHERE s.payout_status = %s AND st.toss_seller_id IS NULL "
        "AND (s.payout_error_code IS NULL OR s.payout_error_code <> 'SELLER_NOT_REGISTERED')",
        (PayoutWaitingFor.SELLER, _SELLER_NOT_REGISTERED, PayoutStatus.SCHEDULED),
    )


def note_waiting_for_balance(tx: Tx, now: datetime | None, from_id: int) -> None:
    """The balance did not cover the payout `from_id`: it and every due payout after it (oldest first) wait for it."""
    tx.execute(
        "UPDATE payment_settlements s SET s.payout_waiting_for = %s "
        "WHERE s.payout_status = %s AND s.id >= %s "
        "AND (s.payout_waiting_for IS NULL OR s.payout_waiting_for <> %s) "
        "AND (s.payout_next_attempt_at IS NULL OR s.payout_next_attempt_at <= %s) "
        "AND EXISTS (SELECT 1 FROM stores st WHERE st.store_id = s.store_id AND st.toss_seller_id IS NOT NULL)",
        (PayoutWaitingFor.BALANCE, PayoutStatus.SCHEDULED, from_id, PayoutWaitingFor.BALANCE, now),
    )


def waiting_for_balance(tx: Tx) -> int:
    """How many payouts wait for the payout balance now (the gauge PayoutsWaitingForBalance)."""
    row = tx.one(
        "SELECT COUNT(*) AS n FROM payment_settlements WHERE payout_waiting_for = %s AND payout_status = %s",
        (PayoutWaitingFor.BALANCE, PayoutStatus.SCHEDULED),
    )
    return int(row["n"]) if row else 0


def record_balance(tx: Tx, *, available: int, pending: int, checked_at: datetime | None) -> None:
    """Toss's payout balance as the payout job read it (one row: the last reading)."""
    tx.execute(
        "INSERT INTO payout_balance (id, available_amount, pending_amount, checked_at) VALUES (1, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE available_amount = VALUES(available_amount), "
        "pending_amount = VALUES(pending_amount), checked_at = VALUES(checked_at)",
        (available, pending, checked_at),
    )


def seller_payable_since_sent(tx: Tx, settlement_ids: Sequence[int]) -> list[int]:
    """Of these settlements being sent, those whose store's seller Toss pays now by our record, changed since the
    payout was sent (seller.changed arrived while the request was in flight, which `seller_became_payable` leaves
    alone): a refusal for the seller is already out of date for them."""
    if not settlement_ids:
        return []
    found = tx.all(
        "SELECT s.id FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        f"WHERE s.id IN ({marks(settlement_ids)}) AND st.seller_status IN ({marks(PAYABLE_SELLER_STATUSES)}) "
        "AND st.updated_at >= s.payout_requested_at",
        [*settlement_ids, *sorted(PAYABLE_SELLER_STATUSES)],
    )
    return [int(r["id"]) for r in found]


def seller_became_payable(tx: Tx, seller_id: str | None) -> int:
    """Toss now pays the store's seller (seller.changed): its payouts that waited for the seller, and the back-off
    of those Toss refused for it, end; the next run sends them."""
    return tx.execute(
        "UPDATE payment_settlements s JOIN stores st ON st.store_id = s.store_id "
        "SET s.payout_waiting_for = %s, s.payout_next_attempt_at = NULL "
        "WHERE st.toss_seller_id = %s AND s.payout_status = %s AND s.payout_waiting_for = %s",
        (PayoutWaitingFor.SCHEDULE, seller_id, PayoutStatus.SCHEDULED, PayoutWaitingFor.SELLER),
    )


# --- polling -------------------------------------------------------------------------------------------------


def to_poll(tx: Tx, now: datetime | None, limit: int, only: Sequence[int] | None = None) -> list[Row]:
    """Payouts Toss took and has not reported final, whose poll time has come, heard of least recently first (with
    no payout_id: one Toss holds under our refPayoutId that we have not found yet). `only`: among these ids."""
    if only is not None and not only:
        return []
    at_toss = in_order(PAYOUT_AT_TOSS)
    return tx.all(
        "SELECT s.id, s.payment_request_id, s.store_id, s.payout_id, s.ref_payout_id, s.net_amount, st.toss_seller_id "
        "FROM payment_settlements s "
        f"JOIN stores st ON st.store_id = s.store_id WHERE s.payout_status IN ({marks(at_toss)}) "
        f"AND (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) {_among('s.id', only)}"
        "ORDER BY s.updated_at, s.id LIMIT %s",
        (*at_toss, now, *(only or ()), limit),
    )


def set_payout_id(tx: Tx, settlement_id: int, payout_id: str) -> None:
    """The id of a payout Toss holds under our refPayoutId, found by listing Toss's payouts."""
    tx.execute(
        "UPDATE payment_settlements SET payout_id = %s WHERE id = %s AND payout_id IS NULL", (payout_id, settlement_id)
    )


def poll_later(tx: Tx, settlement_id: int, poll_at: datetime | None) -> None:
    at_toss = in_order(PAYOUT_AT_TOSS)
    tx.execute(
        f"UPDATE payment_settlements SET payout_lease_until = %s WHERE id = %s AND payout_status IN ({marks(at_toss)})",
        (poll_at, settlement_id, *at_toss),
    )


def reschedule_by_operator(tx: Tx, settlement_id: int, current: str, **fields: Any) -> None:
    """An operator sends a failed payout back to the schedule (escrow.ops retry-payout, services/operator.py):
    checked against the operator's machine, not PAYOUT, where a failed payout is final. The next run sends it as a new
    attempt (payout_attempts + 1: a new Idempotency-Key) with no back-off; `fields` may carry a new refPayoutId
    (retry_ref_payout_id) when Toss had made a payout under the old one."""
    OPERATOR_PAYOUT.check(current, PayoutStatus.SCHEDULED)
    fields = {
        "payout_waiting_for": PayoutWaitingFor.SCHEDULE,
        "payout_refusals": 0,
        "payout_next_attempt_at": None,
        **fields,
    }
    extra = assignments(fields)
    sql = f"UPDATE payment_settlements SET payout_status = %s, {extra} WHERE id = %s"
    tx.execute(sql, (PayoutStatus.SCHEDULED, *fields.values(), settlement_id))
