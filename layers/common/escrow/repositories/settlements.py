from __future__ import annotations

from typing import Any

from escrow.db import Row, Tx

_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, "
    "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_attempts, s.payout_error_code, s.payout_lease_until, "
    "st.toss_seller_id, st.seller_status"
)


def insert(
    tx: Tx, *, request_id: int, store_id: str, gross: int, fee_bps: int, fee: int, net: int, released_by: str
) -> int:
    settlement_id = tx.insert(
        "INSERT INTO payment_settlements (payment_request_id, store_id, gross_amount, fee_bps, platform_fee, "
        "net_amount, released_by, ref_payout_id, payout_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            request_id,
            store_id,
            gross,
            fee_bps,
            fee,
            net,
            released_by,
            f"escrow-req-{request_id}",
            "scheduled" if net > 0 else "not_needed",
        ),
    )
    return settlement_id


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


def update(tx: Tx, settlement_id: int, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %s" for name in fields)
    tx.execute(f"UPDATE payment_settlements SET {assignments} WHERE id = %s", (*fields.values(), settlement_id))


def due_for_payout(tx: Tx, now: Any, limit: int) -> list[Row]:
    """Settlements whose payout must be (re)requested or polled, and whose lease (if any) has run out."""
    return tx.all(
        "SELECT id FROM payment_settlements WHERE payout_status IN ('scheduled', 'requesting', 'in_progress', "
        "'requested') AND (payout_lease_until IS NULL OR payout_lease_until < %s) ORDER BY id LIMIT %s",
        (now, limit),
    )
