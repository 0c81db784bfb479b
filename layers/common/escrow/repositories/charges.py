"""Charges (`payment_charges`): the Toss payments that fund a share, bound to it once Toss confirmed the pair
(paymentKey, orderId). A share paid again after a refund has several."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, marks
from escrow.states import CHARGE, ChargeStatus

_COLUMNS = (
    "payment_key, order_id, payment_id, payment_request_id, amount, refunded_amount, status, toss_status, toss_method, "
    "secret, approved_at, created_at"
)


def insert(
    tx: Tx,
    *,
    payment_key: str,
    order_id: str,
    payment_id: int,
    request_id: int,
    amount: int,
    status: ChargeStatus,
    toss_status: str | None,
    toss_method: str | None,
    secret: str | None,
    approved_at: datetime | None,
) -> None:
    CHARGE.check_initial(status)
    tx.execute(
        "INSERT INTO payment_charges (payment_key, order_id, payment_id, payment_request_id, amount, status, "
        "toss_status, toss_method, secret, approved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (payment_key, order_id, payment_id, request_id, amount, status, toss_status, toss_method, secret, approved_at),
    )


def find(tx: Tx, payment_key: str) -> Row | None:
    """The charge and its share's ids (no lock: the ids never change)."""
    return tx.one(
        "SELECT c.payment_key, c.order_id, c.payment_id, c.payment_request_id, c.status, p.payer_id "
        "FROM payment_charges c JOIN payments p ON p.id = c.payment_id WHERE c.payment_key = %s",
        (payment_key,),
    )


def get(tx: Tx, payment_key: str) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_charges WHERE payment_key = %s", (payment_key,))


def update_refunded(tx: Tx, payment_key: str, refunded_amount: int) -> None:
    tx.execute("UPDATE payment_charges SET refunded_amount = %s WHERE payment_key = %s", (refunded_amount, payment_key))


def find_by_order(tx: Tx, order_id: str) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_charges WHERE order_id = %s", (order_id,))


def for_share(tx: Tx, payment_id: int) -> list[Row]:
    """The share's charges, oldest first. Read under the share's lock (every change of a charge holds it)."""
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_charges WHERE payment_id = %s ORDER BY created_at, payment_key", (payment_id,)
    )


def released_but_taken_back(tx: Tx, request_id: int) -> list[Row]:
    """The request's charges of released shares that wait for a deposit again (Toss took the deposit back after the
    release, or closed the account): money the store was promised that we do not hold."""
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_charges WHERE payment_request_id = %s AND status IN (%s, %s) "
        "AND payment_id IN (SELECT id FROM payments WHERE payment_request_id = %s AND status = %s)",
        (request_id, ChargeStatus.WAITING_FOR_DEPOSIT, ChargeStatus.CANCELLED, request_id, "released"),
    )


def for_request(tx: Tx, request_id: int) -> list[Row]:
    return tx.all(
        f"SELECT {_COLUMNS} FROM payment_charges WHERE payment_request_id = %s ORDER BY created_at, payment_key",
        (request_id,),
    )


def set_status(tx: Tx, payment_key: str, current: str, new: ChargeStatus, **fields: Any) -> None:
    CHARGE.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payment_charges SET status = %s{', ' + extra if extra else ''} WHERE payment_key = %s"
    tx.execute(sql, (new, *fields.values(), payment_key))


def release_for_shares(tx: Tx, payment_ids: list[int]) -> None:
    """Every held charge of these (locked, released) shares goes to the store."""
    if not payment_ids:
        return
    CHARGE.check(ChargeStatus.HELD, ChargeStatus.RELEASED)
    tx.execute(
        f"UPDATE payment_charges SET status = %s WHERE payment_id IN ({marks(payment_ids)}) AND status = %s",
        (ChargeStatus.RELEASED, *payment_ids, ChargeStatus.HELD),
    )


def secret_for_order(tx: Tx, order_id: str) -> str | None:
    """Toss's `secret` of the payment made for this order (DEPOSIT_CALLBACK carries it)."""
    row = tx.one("SELECT secret FROM payment_charges WHERE order_id = %s", (order_id,))
    secret: str | None = (row or {}).get("secret")
    return secret
