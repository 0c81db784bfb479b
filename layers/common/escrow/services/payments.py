"""Paying a share: prepare an order, confirm it with Toss, and apply whatever Toss says about an order.

`apply_toss_payment` is the one place where a Toss payment changes our ledger; confirm, the webhook and the
reconciliation job all go through it, so they agree whatever order they arrive in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, new_order_id, utcnow
from escrow.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    PaymentDeclined,
    PaymentOutcomeUnknown,
    UpstreamUnavailable,
    ValidationFailed,
)
from escrow.observability import count, logger
from escrow.repositories import ledger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.states import CONFIRMING, ORDER_IN_FLIGHT, PAID, OrderStatus, PaymentStatus, RequestStatus
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.models import ConfirmBody, PrepareBody
    from escrow.toss.models import Payment

_IN_FLIGHT_RETRIES = 4


def confirm_idempotency_key(order_id: str) -> str:
    return f"confirm-{order_id}"


def refund_idempotency_key(order_id: str) -> str:
    return f"auto-refund-{order_id}"


def _order_name(request: dict[str, Any]) -> str:
    return f"예약금 {request['store_id']} (방 {request['chat_room_id']})"[:100]


def _open_request(tx: db.Tx, chat_room_id: int) -> dict[str, Any]:
    request = requests_repo.lock_open_for_room(tx, chat_room_id)
    if request is None:
        raise NotFound("the room has no open payment request", code="PAYMENT_REQUEST_NOT_FOUND")
    return request


def _share(tx: db.Tx, request: dict[str, Any], payer_id: str) -> dict[str, Any]:
    share = payments_repo.lock_share(tx, request["id"], payer_id)
    if share is None:
        raise Forbidden("you are not a participant of this payment request", code="NOT_A_PARTICIPANT")
    return share


# --- prepare ------------------------------------------------------------------------------------------------


def prepare_payment(principal: Principal, body: PrepareBody) -> dict[str, Any]:
    """Issue (or hand back) the payer's orderId for the Toss widget. Idempotent until the order is used."""
    with db.transaction() as tx:
        request = _open_request(tx, body.chat_room_id)
        share = _share(tx, request, principal.user_id)
        if share["status"] in PAID:
            raise Conflict("your share is already paid", code="ALREADY_PAID")
        if share["status"] in CONFIRMING:
            raise Conflict("your payment is being confirmed; wait for its result", code="PAYMENT_IN_PROGRESS")
        order = payments_repo.find_order(tx, share["order_id"]) if share["order_id"] else None
        if order is not None and order["status"] == OrderStatus.ISSUED:
            order_id = order["order_id"]
        else:
            order_id = new_order_id(request["id"])
            payments_repo.insert_order(
                tx,
                order_id=order_id,
                payment_id=share["id"],
                payer_id=principal.user_id,
                amount=share["amount"],
                status=OrderStatus.ISSUED,
            )
            payments_repo.update(tx, share["id"], order_id=order_id, payment_key=None)
    return {
        "orderId": order_id,
        "amount": share["amount"],
        "orderName": _order_name(request),
        "chat_room_id": request["chat_room_id"],
        "payment_request_id": request["id"],
        "customerKey": principal.user_id,
    }


# --- confirm ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    payment_id: int
    request_id: int
    order_id: str
    payment_key: str
    amount: int
    done: bool = False  # already completed with this paymentKey: answer without calling Toss


def _already_paid_with(payer_id: str, body: ConfirmBody) -> Attempt | None:
    """A repeat of a successful confirm answers the same success, even after the request was released or closed
    (it is no longer the room's open request then, so the checks below would not find it)."""
    with db.reader() as tx:
        row = payments_repo.find_with_room_by_key(tx, body.paymentKey)
    if row is None or row["status"] not in PAID or row["payer_id"] != payer_id:
        return None
    if row["chat_room_id"] != body.chat_room_id or row["order_id"] != body.orderId:
        return None
    return Attempt(row["id"], row["payment_request_id"], body.orderId, body.paymentKey, row["amount"], done=True)


def _begin_confirm(payer_id: str, body: ConfirmBody) -> Attempt:
    """Check everything, then record the attempt (in_progress) before Toss is called."""
    done = _already_paid_with(payer_id, body)
    if done is not None:
        return done
    try:
        with db.transaction() as tx:
            request = _open_request(tx, body.chat_room_id)
            share = _share(tx, request, payer_id)
            same_attempt = share["order_id"] == body.orderId and share["payment_key"] == body.paymentKey
            attempt = Attempt(share["id"], request["id"], body.orderId, body.paymentKey, share["amount"])
            if share["status"] in PAID:
                if share["payment_key"] == body.paymentKey:
                    return replace(attempt, done=True)
                raise Conflict("your share is already paid", code="ALREADY_PAID")
            if body.amount != share["amount"]:
                raise ValidationFailed(
                    f"the amount must be {share['amount']} KRW for this request",
                    code="AMOUNT_MISMATCH",
                    details=[{"field": "amount", "message": f"expected {share['amount']}"}],
                )
            if share["status"] in CONFIRMING:
                if same_attempt:
                    return attempt  # a retry or a concurrent duplicate: Toss's Idempotency-Key makes it one charge
                code = (
                    "PAYMENT_IN_PROGRESS" if share["status"] == PaymentStatus.IN_PROGRESS else "PAYMENT_OUTCOME_UNKNOWN"
                )
                raise Conflict("an earlier payment of your share is still being settled", code=code)
            # pending or failed: a new attempt with the prepared orderId or a new one bound to this payer
            order = payments_repo.find_order(tx, body.orderId)
            if order is None:
                payments_repo.insert_order(
                    tx,
                    order_id=body.orderId,
                    payment_id=share["id"],
                    payer_id=payer_id,
                    amount=share["amount"],
                    status=OrderStatus.IN_PROGRESS,
                    payment_key=body.paymentKey,
                )
            elif (
                order["payment_id"] == share["id"]
                and order["status"] == OrderStatus.FAILED
                and order["payment_key"] == body.paymentKey
            ):
                # The same confirm again after Toss declined it: the same answer, not a new attempt.
                raise PaymentDeclined(
                    order["failure_message"] or "the payment was declined", toss_code=order["failure_code"]
                )
            elif order["payment_id"] != share["id"] or order["status"] != OrderStatus.ISSUED:
                raise Conflict("this orderId was already used; prepare a new order", code="ORDER_ID_ALREADY_USED")
            else:
                payments_repo.set_order_status(
                    tx, body.orderId, order["status"], OrderStatus.IN_PROGRESS, payment_key=body.paymentKey
                )
            payments_repo.supersede_issued_orders(tx, share["id"], body.orderId)
            payments_repo.set_status(
                tx,
                share["id"],
                share["status"],
                PaymentStatus.IN_PROGRESS,
                order_id=body.orderId,
                payment_key=body.paymentKey,
                method=body.payment_method,
                failure_code=None,
                failure_message=None,
                confirm_started_at=db_time(utcnow()),
            )
            return attempt
    except AppError:
        raise
    except Exception as exc:
        if db.is_duplicate_key(exc):
            raise Conflict("this paymentKey or orderId belongs to another payment", code="PAYMENT_KEY_IN_USE") from exc
        raise


def _call_confirm(toss: TossClient, attempt: Attempt) -> Payment:
    key = confirm_idempotency_key(attempt.order_id)
    for retry in range(_IN_FLIGHT_RETRIES + 1):
        try:
            return toss.confirm(attempt.payment_key, attempt.order_id, attempt.amount, idempotency_key=key)
        except TossApiError as exc:
            if exc.code == "IDEMPOTENT_REQUEST_PROCESSING" and retry < _IN_FLIGHT_RETRIES:
                time.sleep(0.25 * (retry + 1))  # the first confirm with this key is still running at Toss
                continue
            raise
    raise AssertionError("unreachable")


def _look_up(toss: TossClient, attempt: Attempt) -> Payment | None:
    """Toss's own record of the order, or None when Toss knows no such payment."""
    try:
        payment = toss.get_payment_by_order(attempt.order_id)
    except TossApiError as exc:
        if exc.code in ("NOT_FOUND_PAYMENT", "NOT_FOUND_PAYMENT_SESSION"):
            return None
        raise
    if payment.status == "IN_PROGRESS" and payment.payment_key == attempt.payment_key:
        # Authenticated but never approved: our confirm did not reach Toss. Send it (same key) now.
        payment = _call_confirm(toss, attempt)
    return payment


def confirm_payment(principal: Principal, body: ConfirmBody, *, toss: TossClient | None = None) -> dict[str, Any]:
    attempt = _begin_confirm(principal.user_id, body)
    payment: Payment | None
    if attempt.done:
        return {"payment_status": "completed", "paymentKey": attempt.payment_key, "orderId": attempt.order_id}
    toss = toss or get_toss_client()
    try:
        payment = _call_confirm(toss, attempt)
    except TossApiError as exc:
        if exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            # Another confirm of this very order is still running at Toss; it will settle the payment.
            raise Conflict(
                "this payment is being confirmed right now; ask again in a moment", code="PAYMENT_IN_PROGRESS"
            ) from exc
        if not exc.outcome_unknown:
            return _declined(attempt, exc)
        payment = _resolve_unknown(toss, attempt, exc)
    except TossError as exc:
        payment = _resolve_unknown(toss, attempt, exc)
    if payment is None:
        record_failure(attempt.order_id, "NOT_FOUND_PAYMENT", "Toss has no payment for this order", actor="confirm")
        raise PaymentDeclined(
            "Toss has no payment for this orderId and paymentKey; pay again", toss_code="NOT_FOUND_PAYMENT"
        )
    outcome = apply_toss_payment(payment, actor=principal.user_id, reason="confirm")
    return _answer(attempt, payment, outcome)


def _resolve_unknown(toss: TossClient, attempt: Attempt, cause: Exception) -> Payment | None:
    logger.warning(
        "confirm outcome unknown, looking the order up",
        extra={"order_id": attempt.order_id, "cause": type(cause).__name__},
    )
    try:
        return _look_up(toss, attempt)
    except TossApiError as exc:
        if exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            raise Conflict(
                "this payment is being confirmed right now; ask again in a moment", code="PAYMENT_IN_PROGRESS"
            ) from exc
        if not exc.outcome_unknown:
            _declined(attempt, exc)
        cause = exc
    except TossError as exc:
        cause = exc
    record_unknown(attempt.order_id, f"{type(cause).__name__}: {cause}"[:500])
    count("PaymentsOutcomeUnknown")
    raise PaymentOutcomeUnknown(
        "Toss did not confirm the outcome; the payment will be settled automatically, do not pay again",
        order_id=attempt.order_id,
    )


def _declined(attempt: Attempt, exc: TossApiError) -> dict[str, Any]:
    record_failure(attempt.order_id, exc.code, exc.message, actor="confirm")
    count("PaymentsDeclined")
    if exc.configuration or exc.retryable:
        raise UpstreamUnavailable(
            "the payment could not be confirmed now; please pay again shortly", toss_code=exc.code
        )
    raise PaymentDeclined(exc.message or "the payment was declined", toss_code=exc.code)


def _answer(attempt: Attempt, payment: Payment, outcome: str) -> dict[str, Any]:
    if outcome in ("completed", "already_completed"):
        return {"payment_status": "completed", "paymentKey": payment.payment_key, "orderId": payment.order_id}
    if outcome == "waiting_for_deposit":
        return {"payment_status": "in_progress", "toss_status": payment.status, "orderId": payment.order_id}
    if outcome == "refunded_request_closed":
        raise Conflict(
            "the request was closed (cancelled, expired or released) while you paid; the payment was refunded",
            code="REQUEST_CLOSED_REFUNDED",
        )
    if outcome == "refunded_mismatch":
        raise Conflict(
            "Toss approved a different amount; the payment was cancelled and refunded", code="AMOUNT_MISMATCH_REFUNDED"
        )
    if outcome == "failed":
        code = payment.failure.code if payment.failure and payment.failure.code else payment.status
        raise PaymentDeclined("the payment did not go through; pay again", toss_code=code)
    raise PaymentOutcomeUnknown(
        "the payment is not settled yet; it will be settled automatically", order_id=attempt.order_id
    )


# --- what Toss says about an order ------------------------------------------------------------------------


def record_failure(order_id: str, code: str, message: str, *, actor: str) -> None:
    with db.transaction() as tx:
        order = payments_repo.find_order(tx, order_id)
        if order is None:
            return
        requests_repo.lock(tx, order["payment_request_id"])
        share = payments_repo.lock(tx, order["payment_id"])
        payments_repo.set_order_status(
            tx, order_id, order["status"], OrderStatus.FAILED, failure_code=code, failure_message=message[:500]
        )
        if share and share["order_id"] == order_id and share["status"] in CONFIRMING:
            payments_repo.set_status(
                tx,
                share["id"],
                share["status"],
                PaymentStatus.FAILED,
                failure_code=code,
                failure_message=message[:500],
            )
    logger.info("payment failed", extra={"order_id": order_id, "toss_code": code, "actor": actor})


def record_unknown(order_id: str, reason: str) -> None:
    with db.transaction() as tx:
        order = payments_repo.find_order(tx, order_id)
        if order is None:
            return
        requests_repo.lock(tx, order["payment_request_id"])
        share = payments_repo.lock(tx, order["payment_id"])
        if order["status"] in ORDER_IN_FLIGHT:
            payments_repo.set_order_status(tx, order_id, order["status"], OrderStatus.UNKNOWN, failure_message=reason)
        if share and share["order_id"] == order_id and share["status"] in CONFIRMING:
            payments_repo.set_status(tx, share["id"], share["status"], PaymentStatus.UNKNOWN, failure_message=reason)


def apply_toss_payment(
    payment: Payment, *, actor: str, reason: str, toss: TossClient | None = None, refund_now: bool = True
) -> str:
    """Bring our ledger in line with Toss's record of one order. Safe to call any number of times.

    Returns one of: completed, already_completed, waiting_for_deposit, failed, pending (Toss not final yet),
    refunded_mismatch (Toss charged an amount or an order we did not expect; it was cancelled), refund_pending
    (such a charge still to be cancelled), ignored.
    """
    outcome, refund = _apply(payment, actor=actor, reason=reason)
    if refund is not None and refund_now:  # otherwise the order stays refund_pending for the schedule
        outcome = refund_unexpected_charge(payment, refund, toss=toss)
        if outcome == "refunded_mismatch" and refund == "REQUEST_CLOSED":
            outcome = "refunded_request_closed"
    return outcome


def _apply(payment: Payment, *, actor: str, reason: str) -> tuple[str, str | None]:
    response = json.dumps(payment.raw, ensure_ascii=False)[:60000] if payment.raw else None
    # The order's ids never change: read them before the transaction, so that its first statement is a lock.
    # (InnoDB takes a transaction's read snapshot at its first plain read; after the locks, plain reads are fresh.)
    with db.reader() as tx:
        order = payments_repo.find_order(tx, payment.order_id)
    if order is None:
        logger.warning("Toss payment for an order we never issued", extra={"order_id": payment.order_id})
        return "ignored", None
    with db.transaction() as tx:
        request = requests_repo.lock(tx, order["payment_request_id"])
        share = payments_repo.lock(tx, order["payment_id"])
        assert request is not None and share is not None
        live = share["order_id"] == payment.order_id

        if payment.status == "DONE":
            if live and share["status"] in PAID and share["payment_key"] == payment.payment_key:
                return "already_completed", None
            expected_amount = live and payment.total_amount == share["amount"]
            request_open = request["status"] == RequestStatus.PENDING
            if not live or not expected_amount or not request_open or share["status"] not in _AWAITING_CHARGE:
                # Money we must not keep: a second charge for a paid share, a stale order, a wrong amount.
                # (A request cancelled or expired while this confirm was in flight lands here too.)
                if live and not expected_amount:
                    why = "AMOUNT_MISMATCH"
                elif live and not request_open and share["status"] in CONFIRMING:
                    why = "REQUEST_CLOSED"
                else:
                    why = "UNEXPECTED_CHARGE"
                payments_repo.set_order_status(
                    tx,
                    payment.order_id,
                    order["status"],
                    OrderStatus.REFUND_PENDING,
                    failure_code=why,
                    payment_key=payment.payment_key,
                )
                if live and share["status"] in CONFIRMING:
                    payments_repo.set_status(
                        tx,
                        share["id"],
                        share["status"],
                        PaymentStatus.FAILED,
                        failure_code=why,
                        failure_message=_REFUND_REASONS[why],
                    )
                _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason=why)
                return "refund_pending", why
            payments_repo.set_status(
                tx,
                share["id"],
                share["status"],
                PaymentStatus.COMPLETED,
                payment_key=payment.payment_key,
                toss_status=payment.status,
                toss_method=(payment.method or "")[:32] or None,
                approved_at=db_time(_parse_time(payment.approved_at)),
                paid_amount=payment.total_amount,
                secret=payment.secret,
                failure_code=None,
                failure_message=None,
                last_toss_response=response,
            )
            payments_repo.set_order_status(
                tx, payment.order_id, order["status"], OrderStatus.DONE, payment_key=payment.payment_key
            )
            _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason=reason)
            count("PaymentsConfirmed")
            # Held shares, read after the request lock (every share's completion takes it first), so concurrent
            # confirms of one room see each other. A share partly refunded before the others paid is still held.
            paid = payments_repo.count_held(tx, request["id"])
            if request["status"] == RequestStatus.PENDING and paid == request["participant_count"]:
                requests_repo.set_status(
                    tx, request["id"], request["status"], RequestStatus.COMPLETED, completed_at=db_time(utcnow())
                )
                outbox_repo.add(
                    tx,
                    event_type="EscrowFunded",
                    aggregate_id=request["id"],
                    dedupe_key=f"EscrowFunded:{request['id']}:{paid}:{request['participant_count']}",
                    payload={
                        "payment_request_id": request["id"],
                        "chat_room_id": request["chat_room_id"],
                        "store_id": request["store_id"],
                        "amount_per_participant": request["amount"],
                        "participant_count": request["participant_count"],
                        "total_amount": request["amount"] * request["participant_count"],
                    },
                )
                count("EscrowFunded")
            return "completed", None

        if payment.status == "WAITING_FOR_DEPOSIT":
            if live:
                payments_repo.update(
                    tx, share["id"], toss_status=payment.status, secret=payment.secret, last_toss_response=response
                )
            return "waiting_for_deposit", None

        if payment.status in ("ABORTED", "EXPIRED"):
            code = payment.failure.code if payment.failure and payment.failure.code else payment.status
            message = (payment.failure.message if payment.failure else None) or payment.status
            payments_repo.set_order_status(
                tx,
                payment.order_id,
                order["status"],
                OrderStatus.FAILED,
                failure_code=code,
                failure_message=message[:500],
            )
            if live and share["status"] in CONFIRMING:
                payments_repo.set_status(
                    tx,
                    share["id"],
                    share["status"],
                    PaymentStatus.FAILED,
                    toss_status=payment.status,
                    failure_code=code,
                    failure_message=message[:500],
                    last_toss_response=response,
                )
            return "failed", None

        # READY / IN_PROGRESS: not final at Toss; CANCELED / PARTIAL_CANCELED are the refund flow's business.
        return ("pending" if payment.status in ("READY", "IN_PROGRESS") else "ignored"), None


# A share whose charge we take: its live attempt was sent to Toss (or had failed: Toss's record wins).
_AWAITING_CHARGE = CONFIRMING | {PaymentStatus.FAILED}

_REFUND_REASONS = {
    "AMOUNT_MISMATCH": "Toss approved an amount we did not ask for; refunded",
    "REQUEST_CLOSED": "the request closed while this payment was confirmed; refunded",
    "UNEXPECTED_CHARGE": "a charge for a share that was not waiting for one; refunded",
}


def _record_charge(tx: db.Tx, request_id: int, payment_id: int, payment: Payment, *, actor: str, reason: str) -> None:
    """Money Toss took for this share: one ledger entry per paymentKey, whatever happens to it next."""
    ledger.record(
        tx,
        request_id=request_id,
        payment_id=payment_id,
        entry_type="charge",
        amount=payment.total_amount,
        reference=payment.payment_key,
        actor=actor,
        reason=reason,
    )


def refund_unexpected_charge(payment: Payment, why: str, *, toss: TossClient | None = None) -> str:
    """Cancel a charge we must not keep (wrong amount, or a second charge for one share)."""
    toss = toss or get_toss_client()
    try:
        cancelled = toss.cancel(
            payment.payment_key, f"자동 환불: {why}", idempotency_key=refund_idempotency_key(payment.order_id)
        )
    except TossError as exc:
        logger.error(
            "automatic refund failed; reconciliation will retry",
            extra={"order_id": payment.order_id, "error": str(exc)},
        )
        return "refund_pending"
    with db.transaction() as tx:
        order = payments_repo.find_order(tx, payment.order_id)
        assert order is not None
        payments_repo.set_order_status(tx, payment.order_id, order["status"], OrderStatus.REFUNDED)
        for cancel in cancelled.cancels or []:
            ledger.record(
                tx,
                request_id=order["payment_request_id"],
                payment_id=order["payment_id"],
                entry_type="refund",
                amount=cancel.cancel_amount,
                reference=cancel.transaction_key,
                actor="system",
                reason=why,
            )
    count("UnexpectedChargesRefunded")
    return "refunded_mismatch"


# --- the schedule: orders left without an outcome -----------------------------------------------------------


def reconcile_order(order: dict[str, Any], *, toss: TossClient) -> str:
    """Settle one order the schedule found in flight or refund_pending (`payments_repo.orders_to_reconcile`):
    look it up at Toss and apply what Toss says, or cancel a charge we must not keep. Returns the outcome (as
    apply_toss_payment does)."""
    if order["status"] == OrderStatus.REFUND_PENDING:
        payment = toss.get_payment(order["payment_key"])
        if payment.balance_amount > 0:
            return refund_unexpected_charge(payment, "UNEXPECTED_CHARGE", toss=toss)
        return _mark_refunded(order["order_id"], payment)
    attempt = Attempt(order["payment_id"], 0, order["order_id"], order["payment_key"] or "", order["amount"])
    found = _look_up(toss, attempt) if order["payment_key"] else None
    if found is None:
        record_failure(order["order_id"], "NOT_FOUND_PAYMENT", "Toss has no payment for this order", actor="reconcile")
        return "failed"
    return apply_toss_payment(found, actor="reconcile", reason="reconciliation", toss=toss)


def _mark_refunded(order_id: str, payment: Payment) -> str:
    """Toss already holds nothing for a charge we must not keep (our cancel went through and its answer was lost,
    or it was cancelled at Toss): record its refunds in the ledger, as refund_unexpected_charge does, and close it.
    (Marking the order refunded without the refund entries left its charge in the ledger for ever.)"""
    with db.transaction() as tx:
        order = payments_repo.lock_order(tx, order_id)
        if order is None or order["status"] != OrderStatus.REFUND_PENDING:
            return "refunded_mismatch"
        payments_repo.set_order_status(tx, order_id, order["status"], OrderStatus.REFUNDED)
        for cancel in payment.cancels or []:
            if (cancel.cancel_status or "DONE") != "DONE":
                continue
            ledger.record(
                tx,
                request_id=order["payment_request_id"],
                payment_id=order["payment_id"],
                entry_type="refund",
                amount=cancel.cancel_amount,
                reference=cancel.transaction_key,
                actor="reconcile",
                reason=(cancel.cancel_reason or "UNEXPECTED_CHARGE")[:200],
            )
    return "refunded_mismatch"


def _parse_time(value: str | None) -> Any:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value)
