"""The ledger audit's reads (`escrow.audit`): read-only, every table of a batch of requests, and the fresh single-row
reads that confirm a disagreement with Toss before it is reported. `stale` columns compare `updated_at` with the
database's clock minus the reconciliation period (seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import marks

_STALE = "updated_at < NOW(3) - INTERVAL %s SECOND AS stale"


def request_ids(
    tx: Tx,
    *,
    chat_room_id: int | None,
    since: datetime | None,
    until: datetime | None,
    ids: Sequence[int] | None = None,
) -> list[int]:
    """The ids of the requests to audit: of one room, created in [since, until), and/or among `ids`, in id order."""
    where: list[str] = []
    args: list[Any] = []
    if chat_room_id is not None:
        where.append("chat_room_id = %s")
        args.append(chat_room_id)
    if since is not None:
        where.append("created_at >= %s")
        args.append(since)
    if until is not None:
        where.append("created_at < %s")
        args.append(until)
    if ids is not None:
        if not ids:
            return []
        where.append(f"id IN ({marks(ids)})")
        args.extend(ids)
    sql = "SELECT id FROM payment_requests" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    return [int(r["id"]) for r in tx.all(sql, args)]


def requests(tx: Tx, ids: Sequence[int]) -> list[Row]:
    return tx.all(
        "SELECT id, chat_room_id, store_id, amount, status, participant_count, funding_round, created_at, "
        "COALESCE(expires_at <= UTC_TIMESTAMP(3), 0) AS overdue "
        f"FROM payment_requests WHERE id IN ({marks(ids)}) ORDER BY id",
        list(ids),
    )


_SHARE = (
    "id, payment_request_id, payer_id, amount, status, order_id, payment_key, paid_amount, refunded_amount, "
    "removed_at, updated_at"
)


def shares(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        f"SELECT {_SHARE}, {_STALE} FROM payments WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        [period, *request_ids_],
    )


_CHARGE = "payment_key, order_id, payment_id, payment_request_id, amount, refunded_amount, status, updated_at"


def charges(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        f"SELECT {_CHARGE}, {_STALE} FROM payment_charges WHERE payment_request_id IN ({marks(request_ids_)}) "
        "ORDER BY created_at, payment_key",
        [period, *request_ids_],
    )


def orders(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        "SELECT o.order_id, o.payment_id, o.amount, o.status, o.payment_key, o.failure_code, o.updated_at, "
        "o.updated_at < NOW(3) - INTERVAL %s SECOND AS stale FROM payment_orders o "
        f"JOIN payments p ON p.id = o.payment_id WHERE p.payment_request_id IN ({marks(request_ids_)}) "
        "ORDER BY o.created_at, o.order_id",
        [period, *request_ids_],
    )


def ledger_entries(tx: Tx, request_ids_: Sequence[int]) -> list[Row]:
    return tx.all(
        "SELECT payment_request_id, payment_id, entry_type, amount, reference FROM ledger_entries "
        f"WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        list(request_ids_),
    )


_CANCEL = (
    "id, payment_id, payment_request_id, payment_key, request_key, requested_amount, status, attempt, "
    "next_attempt_at, transaction_key, cancel_amount, toss_code, updated_at"
)
# `retry_overdue`: a refund the schedule owes, refused for now, whose next attempt is older than the period.
_CANCEL_CLOCKS = (
    f"{_STALE}, (next_attempt_at IS NOT NULL AND next_attempt_at < NOW(3) - INTERVAL %s SECOND) AS retry_overdue"
)


def cancels(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        f"SELECT {_CANCEL}, {_CANCEL_CLOCKS} FROM payment_cancels "
        f"WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        [period, period, *request_ids_],
    )


def settlements(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    """`lease_over`: no lease, or a lease that ran out longer than the period ago."""
    return tx.all(
        "SELECT s.id, s.payment_request_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, "
        "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_waiting_for, s.payout_error_code, "
        "s.payout_lease_until, s.updated_at, s.updated_at < NOW(3) - INTERVAL %s SECOND AS stale, "
        "(s.payout_lease_until IS NULL OR s.payout_lease_until < NOW(3) - INTERVAL %s SECOND) AS lease_over "
        f"FROM payment_settlements s WHERE s.payment_request_id IN ({marks(request_ids_)}) ORDER BY s.id",
        [period, period, *request_ids_],
    )


FUNDING_EVENTS = ("EscrowFunded", "EscrowUnfunded")


def funding_events(tx: Tx, request_ids_: Sequence[int]) -> list[Row]:
    """The funding notices of these requests (`EscrowFunded:{id}:...`, `EscrowUnfunded:{id}:...`), in the order they
    were written. Found by the prefix of their unique dedupe key (an index range per request): the outbox has no
    index on aggregate_id, and a scan of it per batch would grow with every event ever written."""
    prefixes = [f"{event}:{rid}:%" for rid in request_ids_ for event in FUNDING_EVENTS]
    where = " OR ".join(["dedupe_key LIKE %s"] * len(prefixes))
    return tx.all(
        f"SELECT id, event_type, aggregate_id, dedupe_key FROM outbox WHERE ({where}) ORDER BY id",
        prefixes,
    )


def orphan_settlements(tx: Tx) -> list[Row]:
    """Settlements whose request does not exist."""
    return tx.all(
        "SELECT s.id, s.payment_request_id FROM payment_settlements s "
        "LEFT JOIN payment_requests r ON r.id = s.payment_request_id WHERE r.id IS NULL"
    )


def job_failures(tx: Tx) -> list[Row]:
    """Items a scheduled job set aside (their error, and when they are tried again), with the request each is of
    (`payment_request_id`: a request, an order or a refund; NULL for an item of another kind)."""
    return tx.all(
        "SELECT f.job, f.item_kind, f.item_id, f.error, f.attempts, f.first_failed_at, f.last_failed_at, "
        "f.next_attempt_at, CASE f.item_kind "
        "WHEN 'request' THEN (SELECT r.id FROM payment_requests r WHERE r.id = f.item_id) "
        "WHEN 'order' THEN (SELECT p.payment_request_id FROM payment_orders o JOIN payments p ON p.id = o.payment_id "
        "WHERE o.order_id = f.item_id) "
        "WHEN 'refund' THEN (SELECT c.payment_request_id FROM payment_cancels c WHERE c.id = f.item_id) "
        "END AS payment_request_id FROM job_failures f ORDER BY f.first_failed_at, f.job, f.item_kind, f.item_id"
    )


# --- fresh single reads (a disagreement with Toss is confirmed against these before it is reported) -------------


def request(tx: Tx, request_id: int) -> Row | None:
    return tx.one("SELECT id, status, amount FROM payment_requests WHERE id = %s", (request_id,))


def share(tx: Tx, payment_id: int) -> Row | None:
    return tx.one(f"SELECT {_SHARE} FROM payments WHERE id = %s", (payment_id,))


def charge(tx: Tx, payment_key: str, period: int) -> Row | None:
    return tx.one(f"SELECT {_CHARGE}, {_STALE} FROM payment_charges WHERE payment_key = %s", (period, payment_key))


def charge_for_order(tx: Tx, order_id: str, period: int) -> Row | None:
    return tx.one(f"SELECT {_CHARGE}, {_STALE} FROM payment_charges WHERE order_id = %s", (period, order_id))


def charges_of_share(tx: Tx, payment_id: int, period: int) -> list[Row]:
    return tx.all(
        f"SELECT {_CHARGE}, {_STALE} FROM payment_charges WHERE payment_id = %s ORDER BY created_at, payment_key",
        (period, payment_id),
    )


def cancels_of_charge(tx: Tx, payment_key: str, period: int) -> list[Row]:
    return tx.all(
        f"SELECT {_CANCEL}, {_CANCEL_CLOCKS} FROM payment_cancels WHERE payment_key = %s ORDER BY id",
        (period, period, payment_key),
    )


def order(tx: Tx, order_id: str, period: int) -> Row | None:
    return tx.one(
        "SELECT order_id, payment_id, amount, status, payment_key, failure_code, updated_at, "
        "updated_at < NOW(3) - INTERVAL %s SECOND AS stale FROM payment_orders WHERE order_id = %s",
        (period, order_id),
    )


def orders_of_share(tx: Tx, payment_id: int, period: int) -> list[Row]:
    return tx.all(
        "SELECT order_id, payment_id, amount, status, payment_key, failure_code, updated_at, "
        "updated_at < NOW(3) - INTERVAL %s SECOND AS stale FROM payment_orders WHERE payment_id = %s "
        "ORDER BY created_at, order_id",
        (period, payment_id),
    )
