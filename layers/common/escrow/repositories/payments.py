from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from escrow.db import Row, Tx

_COLUMNS = (
    "id, payment_request_id, payer_id, amount, status, order_id, payment_key, method, toss_status, approved_at, "
    "paid_amount, refunded_amount, secret, failure_code, confirm_started_at, updated_at"
)


def insert_shares(tx: Tx, request_id: int, payer_ids: Sequence[str], amount: int) -> None:
    tx.executemany(
        "INSERT INTO payments (payment_request_id, payer_id, amount, status) VALUES (%s, %s, %s, 'pending')",
        [(request_id, payer, amount) for payer in payer_ids],
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


def update(tx: Tx, payment_id: int, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %s" for name in fields)
    tx.execute(f"UPDATE payments SET {assignments} WHERE id = %s", (*fields.values(), payment_id))


def count_held(tx: Tx, request_id: int) -> int:
    row = tx.one(
        "SELECT COUNT(*) AS n FROM payments WHERE payment_request_id = %s "
        "AND status IN ('completed', 'partially_refunded')",
        (request_id,),
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


def insert_order(
    tx: Tx, *, order_id: str, payment_id: int, payer_id: str, amount: int, status: str, payment_key: str | None = None
) -> None:
    tx.execute(
        "INSERT INTO payment_orders (order_id, payment_id, payer_id, amount, status, payment_key) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (order_id, payment_id, payer_id, amount, status, payment_key),
    )


def update_order(tx: Tx, order_id: str, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %s" for name in fields)
    tx.execute(f"UPDATE payment_orders SET {assignments} WHERE order_id = %s", (*fields.values(), order_id))


def supersede_issued_orders(tx: Tx, payment_id: int, keep_order_id: str) -> None:
    tx.execute(
        "UPDATE payment_orders SET status = 'superseded' "
        "WHERE payment_id = %s AND status = 'issued' AND order_id <> %s",
        (payment_id, keep_order_id),
    )
