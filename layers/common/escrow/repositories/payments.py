"""Shares (`payments`) and their orders (`payment_orders`: every orderId issued or used)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, in_order, marks
from escrow.states import ORDER, ORDER_TO_RECONCILE, PAYMENT, ChargeStatus, OrderStatus, PaymentStatus

_COLUMNS = (
    "id, payment_request_id, payer_id, amount, status, order_id, payment_key, method, toss_status, approved_at, "
    "paid_amount, refunded_amount, secret, failure_code, confirm_started_at, removed_at, updated_at"
)


def insert_shares(tx: Tx, request_id: int, payer_ids: Sequence[str], amount: int) -> None:
    PAYMENT.check_initial(PaymentStatus.PENDING)
    tx.executemany(
        "INSERT INTO payments (payment_request_id, payer_id, amount, status) VALUES (%s, %s, %s, %s)",
        [(request_id, payer, amount, PaymentStatus.PENDING) for payer in payer_ids],
    )


def insert_share(tx: Tx, request_id: int, payer_id: str, amount: int) -> int:
    PAYMENT.check_initial(PaymentStatus.PENDING)
    return tx.insert(
        "INSERT INTO payments (payment_request_id, payer_id, amount, status) VALUES (%s, %s, %s, %s)",
        (request_id, payer_id, amount, PaymentStatus.PENDING),
    )


def for_request(tx: Tx, request_id: int) -> list[Row]:
    return tx.all(
        "SELECT id, payer_id, amount, status, paid_amount, refunded_amount, approved_at, payment_key, removed_at "
        "FROM payments WHERE payment_request_id = %s ORDER BY id",
        (request_id,),
    )


def lock_share(tx: Tx, request_id: int, payer_id: str) -> Row | None:
    return tx.one(
        f"SELECT {_COLUMNS} FROM payments WHERE payment_request_id = %s AND payer_id = %s FOR UPDATE",
        (request_id, payer_id),
    )


def find(tx: Tx, payment_id: int) -> Row | None:
    """The share, without a lock."""
    return tx.one(f"SELECT {_COLUMNS} FROM payments WHERE id = %s", (payment_id,))


def lock(tx: Tx, payment_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payments WHERE id = %s FOR UPDATE", (payment_id,))


def lock_for_request(tx: Tx, request_id: int) -> list[Row]:
    """Every share of one request, locked in id order."""
    return tx.all(
        "SELECT id, payer_id, amount, payment_key, paid_amount, refunded_amount, status FROM payments "
        "WHERE payment_request_id = %s ORDER BY id FOR UPDATE",
        (request_id,),
    )


def lock_for_requests(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    """Every share of these requests, locked in id order (one statement for a chunk of requests)."""
    return tx.all(
        "SELECT id, payment_request_id, payer_id, amount, payment_key, status, paid_amount, refunded_amount "
        f"FROM payments WHERE payment_request_id IN ({marks(request_ids)}) ORDER BY id FOR UPDATE",
        list(request_ids),
    )


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


def funding(tx: Tx, request_id: int) -> Row:
    """The request's current participants (every share but removed ones) and how many of them hold their share in
    full. Read under the request's lock: every change of a share's money takes it first."""
    row = tx.one(
        "SELECT COUNT(*) AS participants, COALESCE(SUM(status = %s AND paid_amount - refunded_amount >= amount), 0) "
        "AS fully_held, COALESCE(SUM(paid_amount - refunded_amount), 0) AS held_amount FROM payments "
        "WHERE payment_request_id = %s AND status <> %s",
        (PaymentStatus.COMPLETED, request_id, PaymentStatus.REMOVED),
    )
    assert row is not None
    return {k: int(v) for k, v in row.items()}


def refresh_amounts(tx: Tx, payment_id: int) -> None:
    """The share's paid and refunded amounts from its charges (called after a charge changed, under the share's
    lock): paid = what Toss took for it, refunded = what went back."""
    tx.execute(
        "UPDATE payments p SET "
        "paid_amount = (SELECT COALESCE(SUM(c.amount), 0) FROM payment_charges c WHERE c.payment_id = p.id "
        "AND c.status IN (%s, %s, %s)), "
        "refunded_amount = (SELECT COALESCE(SUM(c.refunded_amount), 0) FROM payment_charges c "
        "WHERE c.payment_id = p.id AND c.status IN (%s, %s, %s)) WHERE p.id = %s",
        (*_COUNTED, *_COUNTED, payment_id),
    )


_COUNTED = (ChargeStatus.HELD, ChargeStatus.RELEASED, ChargeStatus.REFUNDED)


# --- orders: every orderId issued or used -------------------------------------------------------------------


def find_order(tx: Tx, order_id: str) -> Row | None:
    return tx.one(
        "SELECT o.order_id, o.payment_id, o.payer_id, o.amount, o.status, o.payment_key, o.failure_code, "
        "o.failure_message, o.confirm_attempt, o.refund_attempt, p.payment_request_id "
        "FROM payment_orders o JOIN payments p ON p.id = o.payment_id WHERE o.order_id = %s",
        (order_id,),
    )


def lock_order(tx: Tx, order_id: str) -> Row | None:
    """The order and its share's ids, the order row locked."""
    return tx.one(
        "SELECT o.payment_id, o.status, o.refund_attempt, p.payment_request_id FROM payment_orders o "
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


def bump_confirm_attempt(tx: Tx, order_id: str, seen: int) -> None:
    """Toss answered this order's confirm with an error that leaves the outcome open (a 5xx): that answer is bound to
    the key, so the next confirm of the order uses a new one."""
    tx.execute(
        "UPDATE payment_orders SET confirm_attempt = confirm_attempt + 1 WHERE order_id = %s AND confirm_attempt = %s",
        (order_id, seen),
    )


def bump_refund_attempt(tx: Tx, order_id: str, seen: int) -> None:
    """Toss answered a cancel of this unexpected charge with an error: the next attempt uses a new key."""
    tx.execute(
        "UPDATE payment_orders SET refund_attempt = refund_attempt + 1 WHERE order_id = %s AND refund_attempt = %s",
        (order_id, seen),
    )


def supersede_issued_orders(tx: Tx, payment_id: int, keep_order_id: str) -> None:
    """The share's other issued orders will not be used: every row written is issued (the WHERE says so)."""
    ORDER.check(OrderStatus.ISSUED, OrderStatus.SUPERSEDED)
    tx.execute(
        "UPDATE payment_orders SET status = %s WHERE payment_id = %s AND status = %s AND order_id <> %s",
        (OrderStatus.SUPERSEDED, payment_id, OrderStatus.ISSUED, keep_order_id),
    )


def touch_order(tx: Tx, order_id: str) -> None:
    """Looked at now (updated_at): an order still waiting goes to the back of the reconciliation's queue."""
    tx.execute("UPDATE payment_orders SET updated_at = NOW(3) WHERE order_id = %s", (order_id,))


def orders_to_reconcile(tx: Tx, older_than_seconds: int, limit: int) -> list[Row]:
    """Orders with no outcome yet, or a charge still to refund, untouched for this long (database clock)."""
    statuses = in_order(ORDER_TO_RECONCILE)
    return tx.all(
        "SELECT order_id, payment_id, payment_key, amount, status, confirm_attempt FROM payment_orders "
        f"WHERE status IN ({marks(statuses)}) "
        "AND updated_at < NOW(3) - INTERVAL %s SECOND ORDER BY updated_at LIMIT %s",
        (*statuses, older_than_seconds, limit),
    )
