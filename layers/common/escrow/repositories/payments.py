"""Shares (`payments`) and their orders (`payment_orders`: every orderId issued or used)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, in_order, marks
from escrow.states import HELD, ORDER, ORDER_TO_RECONCILE, PAYMENT, OrderStatus, PaymentStatus

_COLUMNS = (
    "id, payment_request_id, payer_id, amount, status, order_id, payment_key, method, toss_status, approved_at, "
    "paid_amount, refunded_amount, secret, failure_code, confirm_started_at, updated_at"
)


def insert_shares(tx: Tx, request_id: int, payer_ids: Sequence[str], amount: int) -> None:
    PAYMENT.check_initial(PaymentStatus.PENDING)
    tx.executemany(
        "INSERT INTO payments (payment_request_id, payer_id, amount, status) VALUES (%s, %s, %s, %s)",
        [(request_id, payer, amount, PaymentStatus.PENDING) for payer in payer_ids],
    )


def for_request(tx: Tx, request_id: int) -> list[Row]:
    return tx.all(
        "SELECT payer_id, amount, status, paid_amount, refunded_amount, approved_at, payment_key "
        "FROM payments WHERE payment_request_id = %s ORDER BY id",
        (request_id,),
    )


def lock_share(tx: Tx, request_id: int, payer_id: str) -> Row | None:
    return tx.one(
        f"SELECT {_COLUMNS} FROM payments WHERE payment_request_id = %s AND payer_id = %s FOR UPDATE",
        (request_id, payer_id),
    )


def lock(tx: Tx, payment_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payments WHERE id = %s FOR UPDATE", (payment_id,))


def lock_for_request(tx: Tx, request_id: int) -> list[Row]:
    """Every share of one request, locked in id order."""
    return tx.all(
        "SELECT id, payment_key, paid_amount, refunded_amount, status FROM payments "
        "WHERE payment_request_id = %s ORDER BY id FOR UPDATE",
        (request_id,),
    )


def lock_for_requests(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    """Every share of these requests, locked in id order (one statement for a chunk of requests)."""
    return tx.all(
        "SELECT id, payment_request_id, payer_id, payment_key, status, paid_amount, refunded_amount FROM payments "
        f"WHERE payment_request_id IN ({marks(request_ids)}) ORDER BY id FOR UPDATE",
        list(request_ids),
    )


def find_ids_by_key(tx: Tx, payment_key: str) -> Row | None:
    """The share's ids (they never change), by its paymentKey."""
    return tx.one("SELECT id, payment_request_id FROM payments WHERE payment_key = %s", (payment_key,))


def find_with_room_by_key(tx: Tx, payment_key: str) -> Row | None:
    """The share holding this paymentKey and its request's room (no lock)."""
    return tx.one(
        "SELECT p.id, p.payment_request_id, p.payer_id, p.order_id, p.amount, p.status, r.chat_room_id "
        "FROM payments p JOIN payment_requests r ON r.id = p.payment_request_id WHERE p.payment_key = %s",
        (payment_key,),
    )


def refund_view(tx: Tx, payment_id: int) -> Row | None:
    """What a refund of the share needs to know (no lock)."""
    return tx.one("SELECT payment_key, paid_amount, refunded_amount FROM payments WHERE id = %s", (payment_id,))


def secret_for_order(tx: Tx, order_id: str) -> str | None:
    """The share's `secret` (Toss's, for DEPOSIT_CALLBACK), by its live orderId."""
    row = tx.one("SELECT secret FROM payments WHERE order_id = %s", (order_id,))
    secret: str | None = (row or {}).get("secret")
    return secret


def update(tx: Tx, payment_id: int, **fields: Any) -> None:
    """Columns other than the status (a status goes through set_status)."""
    assert "status" not in fields, "statuses are written with set_status"
    tx.execute(f"UPDATE payments SET {assignments(fields)} WHERE id = %s", (*fields.values(), payment_id))


def set_status(tx: Tx, payment_id: int, current: str, new: PaymentStatus, **fields: Any) -> None:
    """Move one locked share from `current` (as read under its lock) to `new`, with the columns that go with it."""
    PAYMENT.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payments SET status = %s{', ' + extra if extra else ''} WHERE id = %s"
    tx.execute(sql, (new, *fields.values(), payment_id))


def release_many(tx: Tx, shares: Sequence[Mapping[str, Any]]) -> None:
    """Mark locked shares released, one statement for all (each row's transition checked)."""
    PAYMENT.check_each([s["status"] for s in shares], PaymentStatus.RELEASED)
    ids = [s["id"] for s in shares]
    tx.execute(f"UPDATE payments SET status = %s WHERE id IN ({marks(ids)})", [PaymentStatus.RELEASED, *ids])


def count_held(tx: Tx, request_id: int) -> int:
    held = in_order(HELD)
    row = tx.one(
        f"SELECT COUNT(*) AS n FROM payments WHERE payment_request_id = %s AND status IN ({marks(held)})",
        (request_id, *held),
    )
    return int(row["n"]) if row else 0


# --- orders: every orderId issued or used -------------------------------------------------------------------


def find_order(tx: Tx, order_id: str) -> Row | None:
    return tx.one(
        "SELECT o.order_id, o.payment_id, o.payer_id, o.amount, o.status, o.payment_key, o.failure_code, "
        "o.failure_message, p.payment_request_id "
        "FROM payment_orders o JOIN payments p ON p.id = o.payment_id WHERE o.order_id = %s",
        (order_id,),
    )


def lock_order(tx: Tx, order_id: str) -> Row | None:
    """The order and its share's ids, the order row locked."""
    return tx.one(
        "SELECT o.payment_id, o.status, p.payment_request_id FROM payment_orders o "
        "JOIN payments p ON p.id = o.payment_id WHERE o.order_id = %s FOR UPDATE",
        (order_id,),
    )


def insert_order(
    tx: Tx,
    *,
    order_id: str,
    payment_id: int,
    payer_id: str,
    amount: int,
    status: OrderStatus,
    payment_key: str | None = None,
) -> None:
    ORDER.check_initial(status)
    tx.execute(
        "INSERT INTO payment_orders (order_id, payment_id, payer_id, amount, status, payment_key) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (order_id, payment_id, payer_id, amount, status, payment_key),
    )


def set_order_status(tx: Tx, order_id: str, current: str, new: OrderStatus, **fields: Any) -> None:
    """Move an order from `current` to `new`. Orders change under their share's lock (or, for a charge to refund,
    the order's own), and `current` is the status the caller read."""
    ORDER.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payment_orders SET status = %s{', ' + extra if extra else ''} WHERE order_id = %s"
    tx.execute(sql, (new, *fields.values(), order_id))


def supersede_issued_orders(tx: Tx, payment_id: int, keep_order_id: str) -> None:
    """The share's other issued orders will not be used: every row written is issued (the WHERE says so)."""
    ORDER.check(OrderStatus.ISSUED, OrderStatus.SUPERSEDED)
    tx.execute(
        "UPDATE payment_orders SET status = %s WHERE payment_id = %s AND status = %s AND order_id <> %s",
        (OrderStatus.SUPERSEDED, payment_id, OrderStatus.ISSUED, keep_order_id),
    )


def orders_to_reconcile(tx: Tx, older_than_seconds: int, limit: int) -> list[Row]:
    """Orders with no outcome yet, or a charge still to refund, untouched for this long (database clock)."""
    statuses = in_order(ORDER_TO_RECONCILE)
    return tx.all(
        "SELECT order_id, payment_id, payment_key, amount, status FROM payment_orders "
        f"WHERE status IN ({marks(statuses)}) "
        "AND updated_at < NOW(3) - INTERVAL %s SECOND ORDER BY updated_at LIMIT %s",
        (*statuses, older_than_seconds, limit),
    )
