"""Releasing held money to the store: one settlement per request, one Toss payout per settlement."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.config import get_settings
from escrow.errors import Conflict, Forbidden, NotFound
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import ledger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import settlements as settlements_repo
from escrow.states import HELD_PAYMENT_STATUSES, check_payment, check_request
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

if TYPE_CHECKING:
    from escrow.auth import Principal

PAYOUT_LEASE = timedelta(minutes=3)
# Refusals that a later retry can overcome (seller not approved yet, balance not settled yet, Toss busy).
PAYOUT_RETRY_LATER = {
    "FORBIDDEN_SELLER_PAYOUT",
    "INSUFFICIENT_BALANCE",
    "NOT_ENOUGH_BALANCE",
    "NOT_ALLOWED_HOLIDAY",
    "SECURITY_KEY_MISSING",
    "SELLER_NOT_REGISTERED",
}


def platform_fee(gross: int, bps: int) -> int:
    return gross * bps // 10_000  # rounded down: the store never gets less than its share


def release_room(principal: Principal, chat_room_id: int, *, toss: TossClient | None = None) -> dict[str, Any]:
    with db.transaction() as tx:
        request = requests_repo.lock_open_for_room(tx, chat_room_id)
        if request is None:
            latest = tx.one(
                "SELECT id, status, requester_id FROM payment_requests WHERE chat_room_id = %s "
                "ORDER BY id DESC LIMIT 1",
                (chat_room_id,),
            )
            if latest is None:
                raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
            _authorise(principal, latest)
            if latest["status"] == "released":
                raise Conflict(
                    "this request was already released; nothing more was released",
                    code="ALREADY_RELEASED",
                    payment_request_id=latest["id"],
                )
            raise Conflict(f"the request is {latest['status']} and cannot be released", code="NOT_RELEASABLE")
        _authorise(principal, request)
        released, settlement_id = _release_locked(tx, request, actor=principal.user_id)
    settle = request_payout(settlement_id, toss=toss)
    return {"released_payments": released, "payment_request_id": request["id"], "settlement": settle}


def _authorise(principal: Principal, request: dict[str, Any]) -> None:
    if principal.user_id != request["requester_id"] and not principal.is_admin:
        raise Forbidden("only the room's owner can release the deposit", code="NOT_ROOM_OWNER")


def _release_locked(tx: db.Tx, request: dict[str, Any], *, actor: str) -> tuple[list[dict[str, Any]], int]:
    """Release every held share of a locked, fully paid request; write the settlement and the event."""
    if request["status"] != "completed":
        raise Conflict("not every participant has paid yet", code="REQUEST_NOT_FUNDED")
    shares = tx.all(
        "SELECT id, payer_id, payment_key, status, paid_amount, refunded_amount FROM payments "
        "WHERE payment_request_id = %s ORDER BY id FOR UPDATE",
        (request["id"],),
    )
    for share in shares:
        if cancels_repo.in_flight_for_payment(tx, share["id"]):
            raise Conflict(
                "a refund in this room is still in progress; release after it settles", code="REFUND_IN_PROGRESS"
            )
    released = []
    gross = 0
    for share in shares:
        if share["status"] not in HELD_PAYMENT_STATUSES:
            continue
        held = share["paid_amount"] - share["refunded_amount"]
        check_payment(share["status"], "released")
        payments_repo.update(tx, share["id"], status="released")
        ledger.record(
            tx,
            request_id=request["id"],
            payment_id=share["id"],
            entry_type="release",
            amount=held,
            reference=f"release:{share['id']}",
            actor=actor,
            reason="released to the store",
        )
        gross += held
        released.append(
            {"payer_id": share["payer_id"], "paymentKey": share["payment_key"], "status": "RELEASED", "amount": held}
        )
    bps = get_settings().platform_fee_bps
    fee = platform_fee(gross, bps)
    settlement_id = settlements_repo.insert(
        tx,
        request_id=request["id"],
        store_id=request["store_id"],
        gross=gross,
        fee_bps=bps,
        fee=fee,
        net=gross - fee,
        released_by=actor,
    )
    check_request(request["status"], "released")
    requests_repo.set_status(
        tx, request["id"], "released", closed_at=db_time(utcnow()), closed_by=actor, close_reason="released"
    )
    outbox_repo.add(
        tx,
        event_type="EscrowReleased",
        aggregate_id=request["id"],
        dedupe_key=f"EscrowReleased:{request['id']}",
        payload={
            "payment_request_id": request["id"],
            "chat_room_id": request["chat_room_id"],
            "store_id": request["store_id"],
            "gross_amount": gross,
            "platform_fee": fee,
            "net_amount": gross - fee,
            "settlement_id": settlement_id,
            "released_payments": released,
        },
    )
    count("EscrowReleased")
    count("AmountReleasedKRW", gross)
    return released, settlement_id


def release_due(
    limit: int,
    *,
    now: Callable[[], datetime] = utcnow,
    toss: TossClient | None = None,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Auto-release completed requests whose release_at has passed. Safe to run twice at once."""
    with db.reader() as tx:
        due = tx.all(
            "SELECT id FROM payment_requests WHERE status = 'completed' AND release_at <= %s "
            "ORDER BY release_at LIMIT %s",
            (db_time(now()), limit),
        )
    released = skipped = 0
    settlement_ids = []
    for row in due:
        if deadline():
            break
        with db.transaction() as tx:
            request = requests_repo.lock(tx, row["id"])
            if request is None or request["status"] != "completed":
                skipped += 1
                continue
            try:
                _, settlement_id = _release_locked(tx, request, actor="schedule")
            except Conflict as exc:
                logger.info("auto-release postponed", extra={"payment_request_id": row["id"], "reason": exc.code})
                skipped += 1
                continue
        settlement_ids.append(settlement_id)
        released += 1
    return {"released": released, "skipped": skipped, "settlements": len(settlement_ids)}


def _payout_item(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "refPayoutId": s["ref_payout_id"],
        "destination": s["toss_seller_id"],
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": s["net_amount"]},
        "transactionDescription": "모임예약금",
        "metadata": {"paymentRequestId": str(s["payment_request_id"]), "storeId": s["store_id"][:500]},
    }


def _claim(settlement_id: int, now: datetime) -> dict[str, Any] | None:
    """Take the payout of one settlement for this run (a lease), or None when it is not ours to send."""
    with db.transaction() as tx:
        s = settlements_repo.lock(tx, settlement_id)
        if s is None or s["payout_status"] not in ("scheduled", "requesting"):
            return None
        if s["payout_lease_until"] is not None and s["payout_lease_until"] > db_time(now):
            return None
        if not s["toss_seller_id"]:
            settlements_repo.update(
                tx,
                s["id"],
                payout_error_code="SELLER_NOT_REGISTERED",
                payout_error_message="the store has no registered payout account yet",
            )
            return None
        # A fresh attempt after a definite refusal gets a new Idempotency-Key; a retry after no answer reuses it.
        attempts = s["payout_attempts"] + (1 if s["payout_status"] == "scheduled" else 0)
        settlements_repo.update(
            tx,
            s["id"],
            payout_status="requesting",
            payout_attempts=attempts,
            payout_lease_until=db_time(now + PAYOUT_LEASE),
            payout_requested_at=db_time(now),
        )
        return {**s, "payout_attempts": attempts}


def request_payout(
    settlement_id: int, *, toss: TossClient | None = None, now: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    claimed = _claim(settlement_id, now())
    if claimed is not None:
        toss = toss or get_toss_client()
        key = f"payout-{claimed['id']}-{claimed['payout_attempts']}"
        try:
            items = toss.request_payouts([_payout_item(claimed)], idempotency_key=key)
            _record_payout(claimed["id"], items[0] if items else {})
        except TossApiError as exc:
            _payout_refused(claimed["id"], exc)
        except TossError as exc:
            logger.warning(
                "payout answer lost; the lease runs out and the schedule asks again with the same key",
                extra={"settlement_id": claimed["id"], "error": str(exc)},
            )
    return settlement_view(settlement_id)


def _record_payout(settlement_id: int, item: dict[str, Any]) -> None:
    status = str(item.get("status") or "REQUESTED").lower()
    with db.transaction() as tx:
        settlements_repo.update(
            tx,
            settlement_id,
            payout_id=item.get("id"),
            payout_status=status,
            payout_error_code=None,
            payout_error_message=None,
            payout_lease_until=None,
        )
    count("PayoutsRequested")


def _payout_refused(settlement_id: int, exc: TossApiError) -> None:
    later = exc.code in PAYOUT_RETRY_LATER or exc.retryable
    with db.transaction() as tx:
        settlements_repo.update(
            tx,
            settlement_id,
            payout_status="scheduled" if later else "failed",
            payout_error_code=exc.code,
            payout_error_message=exc.message[:500],
            payout_lease_until=None,
        )
    logger.warning(
        "payout refused", extra={"settlement_id": settlement_id, "toss_code": exc.code, "retry_later": later}
    )
    count("PayoutsRefused")


def apply_payout_status(payout: dict[str, Any], *, actor: str) -> str:
    """Toss's word on a payout (webhook or poll): COMPLETED / FAILED close the settlement."""
    status = str(payout.get("status") or "").upper()
    with db.transaction() as tx:
        s = settlements_repo.by_payout(tx, payout_id=payout.get("id"), ref_payout_id=payout.get("refPayoutId"))
        if s is None:
            return "unknown_payout"
        if s["payout_status"] in ("completed", "failed"):
            return "already_final"
        fields: dict[str, Any] = {"payout_id": payout.get("id") or s["payout_id"]}
        if status == "COMPLETED":
            fields.update(payout_status="completed", payout_completed_at=db_time(utcnow()), payout_lease_until=None)
            outbox_repo.add(
                tx,
                event_type="PayoutCompleted",
                aggregate_id=s["payment_request_id"],
                dedupe_key=f"PayoutCompleted:{s['id']}",
                payload={
                    "payment_request_id": s["payment_request_id"],
                    "store_id": s["store_id"],
                    "net_amount": s["net_amount"],
                    "payout_id": fields["payout_id"],
                },
            )
        elif status == "FAILED":
            error = payout.get("error") or {}
            fields.update(
                payout_status="failed",
                payout_error_code=error.get("code"),
                payout_error_message=(error.get("message") or "")[:500],
                payout_lease_until=None,
            )
        elif status in ("IN_PROGRESS", "REQUESTED"):
            fields.update(payout_status=status.lower())
        else:
            return "ignored"
        settlements_repo.update(tx, s["id"], **fields)
    logger.info("payout status", extra={"settlement_id": s["id"], "status": status, "actor": actor})
    return status.lower()


def payouts_due(
    limit: int,
    *,
    toss: TossClient | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Retry scheduled payouts and poll those still in progress."""
    with db.reader() as tx:
        rows = settlements_repo.due_for_payout(tx, db_time(now()), limit)
    requested = polled = 0
    for row in rows:
        if deadline():
            break
        with db.reader() as tx:
            s = tx.one("SELECT payout_status, payout_id FROM payment_settlements WHERE id = %s", (row["id"],))
        if s is None:
            continue
        if s["payout_status"] in ("scheduled", "requesting"):
            request_payout(row["id"], toss=toss, now=now)
            requested += 1
        elif s["payout_id"]:
            try:
                payout = (toss or get_toss_client()).get_payout(s["payout_id"])
            except TossError as exc:
                logger.warning("payout poll failed", extra={"settlement_id": row["id"], "error": str(exc)})
                continue
            apply_payout_status(payout, actor="schedule")
            polled += 1
    return {"payouts_requested": requested, "payouts_polled": polled}


def settlement_view(settlement_id: int) -> dict[str, Any]:
    with db.reader() as tx:
        s = tx.one(
            "SELECT id, gross_amount, platform_fee, net_amount, ref_payout_id, payout_id, payout_status, "
            "payout_error_code, payout_completed_at FROM payment_settlements WHERE id = %s",
            (settlement_id,),
        )
    assert s is not None
    return {
        "settlement_id": s["id"],
        "gross_amount": s["gross_amount"],
        "platform_fee": s["platform_fee"],
        "net_amount": s["net_amount"],
        "ref_payout_id": s["ref_payout_id"],
        "payout_id": s["payout_id"],
        "payout_status": s["payout_status"],
        "payout_error_code": s["payout_error_code"],
        "payout_completed_at": iso(s["payout_completed_at"]),
    }
