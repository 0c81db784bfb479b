"""Read-side queries of the operator console (escrow.ops): a room's whole history, payouts that wait or were
refused, the webhook log. Nothing here writes. Secrets (a payment's `secret`, account numbers) are never selected."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import in_order
from escrow.repositories._sql import marks as _marks
from escrow.states import PAYOUT_DUE, PayoutStatus

# Not completed yet: to send, being sent, or taken by Toss and not final.
WAITING_PAYOUTS = in_order(PAYOUT_DUE)


def requests_of_room(tx: Tx, chat_room_id: int) -> list[Row]:
    return tx.all(
        "SELECT id, chat_room_id, store_id, requester_id, amount, message, status, participant_count, release_at, "
        "expires_at, completed_at, closed_at, closed_by, close_reason, created_at, updated_at "
        "FROM payment_requests WHERE chat_room_id = %s ORDER BY id",
        (chat_room_id,),
    )


def members(tx: Tx, chat_room_id: int) -> list[Row]:
    return tx.all(
        "SELECT user_id, is_owner FROM chat_room_members WHERE chat_room_id = %s ORDER BY is_owner DESC, user_id",
        (chat_room_id,),
    )


def shares(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    if not request_ids:
        return []
    return tx.all(
        "SELECT id, payment_request_id, payer_id, amount, status, order_id, payment_key, method, toss_status, "
        "approved_at, paid_amount, refunded_amount, failure_code, failure_message, updated_at "
        f"FROM payments WHERE payment_request_id IN ({_marks(request_ids)}) ORDER BY payment_request_id, id",
        list(request_ids),
    )


def charges(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    """The Toss payments that fund the requests' shares (one per paymentKey), oldest first."""
    if not request_ids:
        return []
    return tx.all(
        "SELECT payment_key, order_id, payment_id, payment_request_id, amount, refunded_amount, status, toss_status, "
        f"approved_at FROM payment_charges WHERE payment_request_id IN ({_marks(request_ids)}) "
        "ORDER BY created_at, payment_key",
        list(request_ids),
    )


def orders(tx: Tx, payment_ids: Sequence[int]) -> list[Row]:
    if not payment_ids:
        return []
    return tx.all(
        "SELECT order_id, payment_id, payer_id, amount, status, payment_key, failure_code, failure_message, "
        f"created_at, updated_at FROM payment_orders WHERE payment_id IN ({_marks(payment_ids)}) "
        "ORDER BY payment_id, created_at",
        list(payment_ids),
    )


def ledger(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    if not request_ids:
        return []
    return tx.all(
        "SELECT id, payment_request_id, payment_id, entry_type, amount, reference, actor, reason, created_at "
        f"FROM ledger_entries WHERE payment_request_id IN ({_marks(request_ids)}) ORDER BY id",
        list(request_ids),
    )


def cancels(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    if not request_ids:
        return []
    return tx.all(
        "SELECT id, payment_id, payment_request_id, requested_by, reason, requested_amount, status, transaction_key, "
        "cancel_amount, refund_status, toss_code, toss_message, canceled_at, created_at, updated_at "
        f"FROM payment_cancels WHERE payment_request_id IN ({_marks(request_ids)}) ORDER BY id",
        list(request_ids),
    )


_SETTLEMENT_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.gross_amount, s.fee_bps, s.platform_fee, s.net_amount, s.released_by, "
    "s.ref_payout_id, s.payout_id, s.payout_status, s.payout_waiting_for, s.payout_attempts, s.payout_error_code, "
    "s.payout_error_message, s.payout_next_attempt_at, s.payout_lease_until, s.payout_requested_at, "
    "s.payout_completed_at, s.created_at, s.updated_at, "
    "r.chat_room_id, st.toss_seller_id, st.seller_status"
)
_SETTLEMENT_FROM = (
    "FROM payment_settlements s JOIN payment_requests r ON r.id = s.payment_request_id "
    "JOIN stores st ON st.store_id = s.store_id"
)


def settlements(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    if not request_ids:
        return []
    return tx.all(
        f"SELECT {_SETTLEMENT_COLUMNS} {_SETTLEMENT_FROM} "
        f"WHERE s.payment_request_id IN ({_marks(request_ids)}) ORDER BY s.id",
        list(request_ids),
    )


def settlement(tx: Tx, settlement_id: int) -> Row | None:
    return tx.one(f"SELECT {_SETTLEMENT_COLUMNS} {_SETTLEMENT_FROM} WHERE s.id = %s", (settlement_id,))


def store(tx: Tx, store_id: str) -> Row | None:
    return tx.one(
        "SELECT store_id, owner_id, name, bank_code, business_type, toss_seller_id, seller_status, registered_by "
        "FROM stores WHERE store_id = %s",
        (store_id,),
    )


def events(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    if not request_ids:
        return []
    return tx.all(
        "SELECT id, event_type, aggregate_id, attempts, last_error, created_at, published_at FROM outbox "
        f"WHERE aggregate_id IN ({_marks(request_ids)}) ORDER BY id",
        [str(i) for i in request_ids],
    )


def payouts(tx: Tx, *, waiting: bool, refused: bool, limit: int) -> list[Row]:
    """Payouts that are not done. `waiting`: not completed yet (scheduled, being sent, accepted by Toss);
    `refused`: failed (an operator must act) or scheduled again after Toss refused the last attempt."""
    conditions = []
    args: list[Any] = []
    if waiting:
        conditions.append(f"s.payout_status IN ({_marks(WAITING_PAYOUTS)})")
        args += WAITING_PAYOUTS
    if refused:
        conditions.append("(s.payout_status = %s OR (s.payout_status = %s AND s.payout_error_code IS NOT NULL))")
        args += [PayoutStatus.FAILED, PayoutStatus.SCHEDULED]
    where = " OR ".join(conditions) or "1 = 0"
    return tx.all(
        f"SELECT {_SETTLEMENT_COLUMNS} {_SETTLEMENT_FROM} WHERE {where} ORDER BY s.updated_at, s.id LIMIT %s",
        [*args, limit],
    )


_WEBHOOK_COLUMNS = (
    "id, transmission_id, event_id, event_type, retried_count, transmission_time, verification, outcome, detail, "
    "received_at, processed_at"
)


def webhooks(
    tx: Tx,
    *,
    outcome: str | None,
    event_type: str | None,
    since: datetime | None,
    within_seconds: int | None,
    limit: int,
) -> list[Row]:
    """Logged deliveries, newest first: received at or after `since` (UTC) and/or in the last `within_seconds` by
    the database's clock."""
    where: list[str] = []
    args: list[Any] = []
    if outcome:
        where.append("outcome = %s")
        args.append(outcome)
    if event_type:
        where.append("event_type = %s")
        args.append(event_type)
    if since is not None:
        where.append("received_at >= %s")
        args.append(since)
    if within_seconds is not None:
        where.append("received_at >= NOW(3) - INTERVAL %s SECOND")
        args.append(within_seconds)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    return tx.all(
        f"SELECT {_WEBHOOK_COLUMNS}, headers FROM payment_webhooks{clause} ORDER BY id DESC LIMIT %s",
        [*args, limit],
    )


def webhook(tx: Tx, webhook_id: int) -> Row | None:
    """One logged delivery with what a replay needs: the subject it named."""
    return tx.one(f"SELECT {_WEBHOOK_COLUMNS}, subject FROM payment_webhooks WHERE id = %s", (webhook_id,))


def webhook_by_user_agent(tx: Tx, user_agent: str, after_id: int) -> Row | None:
    """The delivery logged with this (unique) user-agent after `after_id`: how a replay finds its own log row."""
    pattern = '%"user-agent": "' + user_agent.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + '"%'
    return tx.one(
        f"SELECT {_WEBHOOK_COLUMNS} FROM payment_webhooks WHERE id > %s AND headers LIKE %s ORDER BY id LIMIT 1",
        (after_id, pattern),
    )


def last_webhook_id(tx: Tx) -> int:
    row = tx.one("SELECT COALESCE(MAX(id), 0) AS id FROM payment_webhooks")
    return int(row["id"]) if row else 0


def operator_actions(tx: Tx, targets: Sequence[str]) -> list[Row]:
    if not targets:
        return []
    return tx.all(
        "SELECT id, action, target, operator, reason, status, detail, created_at, finished_at FROM operator_actions "
        f"WHERE target IN ({_marks(targets)}) ORDER BY id",
        list(targets),
    )
