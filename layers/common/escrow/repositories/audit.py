"""The ledger audit's reads (`escrow.audit`): read-only, every table of a batch of requests. `stale` columns compare
`updated_at` with the database's clock minus the reconciliation period (seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import marks


def request_ids(tx: Tx, *, chat_room_id: int | None, since: datetime | None, until: datetime | None) -> list[int]:
    """The ids of the requests to audit: of one room and/or created in [since, until), in id order."""
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
    sql = "SELECT id FROM payment_requests" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    return [int(r["id"]) for r in tx.all(sql, args)]


def requests(tx: Tx, ids: Sequence[int]) -> list[Row]:
    return tx.all(
        "SELECT id, chat_room_id, store_id, amount, status, participant_count, created_at "
        f"FROM payment_requests WHERE id IN ({marks(ids)}) ORDER BY id",
        list(ids),
    )


def shares(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        "SELECT id, payment_request_id, payer_id, amount, status, order_id, payment_key, paid_amount, "
        "refunded_amount, updated_at, updated_at < NOW(3) - INTERVAL %s SECOND AS stale "
        f"FROM payments WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        [period, *request_ids_],
    )


def orders(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        "SELECT o.order_id, o.payment_id, o.amount, o.status, o.payment_key, o.updated_at, "
        "o.updated_at < NOW(3) - INTERVAL %s SECOND AS stale FROM payment_orders o "
        f"JOIN payments p ON p.id = o.payment_id WHERE p.payment_request_id IN ({marks(request_ids_)}) "
        "ORDER BY o.created_at",
        [period, *request_ids_],
    )


def ledger_entries(tx: Tx, request_ids_: Sequence[int]) -> list[Row]:
    return tx.all(
        "SELECT payment_request_id, payment_id, entry_type, amount, reference FROM ledger_entries "
        f"WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        list(request_ids_),
    )


def cancels(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    return tx.all(
        "SELECT id, payment_id, payment_request_id, status, transaction_key, cancel_amount, updated_at, "
        "updated_at < NOW(3) - INTERVAL %s SECOND AS stale "
        f"FROM payment_cancels WHERE payment_request_id IN ({marks(request_ids_)}) ORDER BY id",
        [period, *request_ids_],
    )


def settlements(tx: Tx, request_ids_: Sequence[int], period: int) -> list[Row]:
    """`lease_over`: no lease, or a lease that ran out longer than the period ago."""
    return tx.all(
        "SELECT s.id, s.payment_request_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, "
        "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_error_code, s.payout_lease_until, s.updated_at, "
        "s.updated_at < NOW(3) - INTERVAL %s SECOND AS stale, "
        "(s.payout_lease_until IS NULL OR s.payout_lease_until < NOW(3) - INTERVAL %s SECOND) AS lease_over "
        f"FROM payment_settlements s WHERE s.payment_request_id IN ({marks(request_ids_)}) ORDER BY s.id",
        [period, period, *request_ids_],
    )


def orphan_settlements(tx: Tx) -> list[Row]:
    """Settlements whose request does not exist."""
    return tx.all(
        "SELECT s.id, s.payment_request_id FROM payment_settlements s "
        "LEFT JOIN payment_requests r ON r.id = s.payment_request_id WHERE r.id IS NULL"
    )


def share(tx: Tx, payment_id: int) -> Row | None:
    return tx.one(
        "SELECT id, payment_request_id, payer_id, amount, status, order_id, payment_key, paid_amount, "
        "refunded_amount FROM payments WHERE id = %s",
        (payment_id,),
    )


def order_with_share(tx: Tx, order_id: str, period: int) -> Row | None:
    """The order and its share's live attempt and status."""
    return tx.one(
        "SELECT o.order_id, o.payment_id, o.amount, o.status, o.payment_key, "
        "o.updated_at < NOW(3) - INTERVAL %s SECOND AS stale, p.order_id AS live_order_id, "
        "p.payment_key AS live_payment_key, p.status AS share_status "
        "FROM payment_orders o JOIN payments p ON p.id = o.payment_id WHERE o.order_id = %s",
        (period, order_id),
    )
