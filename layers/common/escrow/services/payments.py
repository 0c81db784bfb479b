"""Paying a share: prepare an order, confirm it with Toss, and apply whatever Toss says about an order.

`apply_toss_payment` is the one place where a Toss payment changes our ledger; confirm, the webhook and the
reconciliation job all go through it, so they agree whatever order they arrive in.

A share owes the request's amount minus what it holds. It is paid by one Toss payment, or by several when the
payer pays again after a refund (the whole amount after a full refund, the difference after a partial one). Each
Toss payment that funds a share is a charge (`payment_charges`), bound to the share only once Toss has confirmed
the (paymentKey, orderId) pair: before that, an order only remembers the paymentKey it was tried with, so someone
else's paymentKey sent with your orderId cannot take it from you.
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
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import charges as charges_repo
from escrow.repositories import ledger
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import settlements as settlements_repo
from escrow.services.funding import refresh_funding, refuse_after_deadline
from escrow.states import (
    CONFIRMING,
    OPEN,
    ORDER_IN_FLIGHT,
    CancelStatus,
    ChargeStatus,
    OrderStatus,
    PaymentStatus,
    PayoutStatus,
    RequestStatus,
    share_status_for,
)
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.errors import passes
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.deadline import Deadline
    from escrow.models import ConfirmBody, PrepareBody
    from escrow.toss.models import Payment

_IN_FLIGHT_RETRIES = 4


def confirm_idempotency_key(order_id: str, attempt: int = 0) -> str:
    """One key per attempt to confirm an order: the same key when no answer arrived (Toss answers it with the first
    outcome), a new one after a Toss answer with an error code (which Toss replays for that key for 15 days)."""
    return f"confirm-{order_id}" if attempt == 0 else f"confirm-{order_id}-{attempt}"


def refund_idempotency_key(order_id: str, attempt: int = 0) -> str:
    """One key per attempt to cancel a charge we must not keep: a new attempt after a Toss answer with an error
    code gets a new key (Toss replays the first answer for a key, errors included, for 15 days)."""
    return f"auto-refund-{order_id}" if attempt == 0 else f"auto-refund-{order_id}-{attempt}"


def held(share: dict[str, Any]) -> int:
    return int(share["paid_amount"]) - int(share["refunded_amount"])


def owed(share: dict[str, Any]) -> int:
    return max(int(share["amount"]) - held(share), 0)


def _order_name(request: dict[str, Any]) -> str:
    return f"예약금 {request['store_id']} (방 {request['chat_room_id']})"[:100]


def _open_request(tx: db.Tx, chat_room_id: int) -> dict[str, Any]:
    request = requests_repo.lock_open_for_room(tx, chat_room_id)
    if request is None:
        raise NotFound("the room has no open payment request", code="PAYMENT_REQUEST_NOT_FOUND")
    return request


def _share(tx: db.Tx, request: dict[str, Any], payer_id: str) -> dict[str, Any]:
    share = payments_repo.lock_share(tx, request["id"], payer_id)
    if share is None or share["status"] == PaymentStatus.REMOVED:
        raise Forbidden("you are not a participant of this payment request", code="NOT_A_PARTICIPANT")
    return share


def _check_payable(tx: db.Tx, request: dict[str, Any], share: dict[str, Any]) -> int:
    """What the share owes now, or why it cannot pay now."""
    if share["status"] in CONFIRMING:
        raise Conflict("your payment is being confirmed; wait for its result", code="PAYMENT_IN_PROGRESS")
    if any(c["status"] == ChargeStatus.WAITING_FOR_DEPOSIT for c in charges_repo.for_share(tx, share["id"])):
        # One way to pay at a time: an account of this share still takes a deposit (a deposit Toss took back while
        # another confirm of the share was in flight leaves the share settled by that confirm, its account open).
        # Paid another way too, the deposit would come on top of a share already held.
        raise Conflict(
            "a virtual account of your share is waiting for its deposit; deposit into it, or pay again once it expires",
            code="PAYMENT_IN_PROGRESS",
        )
    if cancels_repo.in_flight_for_payment(tx, share["id"]):
        raise Conflict(
            "a refund of your share is still being settled; pay again once it is done", code="REFUND_IN_PROGRESS"
        )
    due = owed(share)
    if due <= 0 or share["status"] == PaymentStatus.RELEASED:
        raise Conflict("your share is already paid in full", code="ALREADY_PAID")
    refuse_after_deadline(request, "paying")
    return due


# --- prepare ------------------------------------------------------------------------------------------------


def prepare_payment(principal: Principal, body: PrepareBody) -> dict[str, Any]:
    """Issue (or hand back) the payer's orderId for the Toss widget, for what the share owes now (the whole amount,
    or what was refunded of it). Idempotent until the order is used."""
    with db.transaction() as tx:
        request = _open_request(tx, body.chat_room_id)
        share = _share(tx, request, principal.user_id)
        due = _check_payable(tx, request, share)
        order = payments_repo.find_order(tx, share["order_id"]) if share["order_id"] else None
        if order is not None and order["status"] == OrderStatus.ISSUED and order["amount"] == due:
            order_id = order["order_id"]
        else:
            order_id = new_order_id(request["id"])
            payments_repo.insert_order(
                tx,
                order_id=order_id,
                payment_id=share["id"],
                payer_id=principal.user_id,
                amount=due,
                status=OrderStatus.ISSUED,
            )
            payments_repo.update(tx, share["id"], order_id=order_id)
    return {
        "orderId": order_id,
        "amount": due,
        "orderName": _order_name(request),
        "chat_room_id": request["chat_room_id"],
        "payment_request_id": request["id"],
        "customerKey": principal.user_id,
        "share_amount": share["amount"],
        "held_amount": held(share),
    }


# --- confirm ------------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    payment_id: int
    request_id: int
    order_id: str
    payment_key: str
    amount: int
    done: bool = False  # Toss already approved this confirm: answer without calling Toss
    answer: dict[str, Any] | None = None  # what to answer then, when it is not "completed"
    key_attempt: int = 0  # which Idempotency-Key (see confirm_idempotency_key)


def _replay(payer_id: str, body: ConfirmBody) -> Attempt | None:
    """A confirm Toss already approved, sent again (a retry, a refresh, or an old body replayed): answer what is
    true now, without calling Toss. None when this paymentKey and orderId are no charge of this payer's."""
    with db.reader() as tx:
        charge = charges_repo.find(tx, body.paymentKey)
        if charge is None or charge["payer_id"] != payer_id or charge["order_id"] != body.orderId:
            return None
        request = requests_repo.find(tx, charge["payment_request_id"])
        share = payments_repo.find(tx, charge["payment_id"])
    assert request is not None and share is not None
    if request["chat_room_id"] != body.chat_room_id:
        return None
    attempt = Attempt(share["id"], request["id"], body.orderId, body.paymentKey, int(share["amount"]), done=True)
    status = share["status"]
    if charge["status"] == ChargeStatus.RELEASED or status == PaymentStatus.RELEASED:
        return replace(attempt, answer={"payment_status": "released"})
    if request["status"] in (RequestStatus.CANCELLED, RequestStatus.EXPIRED):
        raise Conflict(
            f"the request was {request['status']}; this payment is {status} (refunded {share['refunded_amount']} KRW)",
            code="REQUEST_CLOSED",
            payment_status=status,
            payment_request_status=request["status"],
            refunded_amount=share["refunded_amount"],
        )
    if status == PaymentStatus.REMOVED:
        raise Conflict(
            "you were removed from this request; what you paid is refunded",
            code="PARTICIPANT_REMOVED",
            payment_status=status,
            refunded_amount=share["refunded_amount"],
        )
    if charge["status"] == ChargeStatus.WAITING_FOR_DEPOSIT:
        return replace(attempt, answer={"payment_status": "in_progress", "toss_status": "WAITING_FOR_DEPOSIT"})
    if charge["status"] == ChargeStatus.CANCELLED:
        # A virtual account closed without a deposit (its due date passed): nothing was paid, nothing refunded.
        raise PaymentDeclined(
            "the virtual account was closed without a deposit; pay again", toss_code="VIRTUAL_ACCOUNT_EXPIRED"
        )
    if status == PaymentStatus.COMPLETED and charge["status"] == ChargeStatus.HELD:
        return attempt
    if status in CONFIRMING:
        raise Conflict(
            "another payment of your share is being confirmed; wait for its result", code="PAYMENT_IN_PROGRESS"
        )
    raise Conflict(
        f"this payment was refunded (your share is {status}; {owed(share)} KRW owed)",
        code="PAYMENT_REFUNDED",
        payment_status=status,
        refunded_amount=share["refunded_amount"],
        owed_amount=owed(share),
    )


def _begin_confirm(payer_id: str, body: ConfirmBody) -> Attempt:
    """Check everything, then record the attempt (in_progress) before Toss is called."""
    replayed = _replay(payer_id, body)
    if replayed is not None:
        return replayed
    try:
        with db.transaction() as tx:
            request = _open_request(tx, body.chat_room_id)
            share = _share(tx, request, payer_id)
            order = payments_repo.find_order(tx, body.orderId)
            charge = charges_repo.find_by_order(tx, body.orderId)
            if charge is not None and charge["payment_key"] == body.paymentKey and charge["payment_id"] == share["id"]:
                # Completed by a concurrent duplicate of this confirm after our first look: answer as a replay.
                raise _Replayed()
            if charges_repo.get(tx, body.paymentKey) is not None:
                # Toss confirmed this paymentKey for another order already: it is someone's charge, never this one.
                raise Conflict("this paymentKey belongs to another payment", code="PAYMENT_KEY_IN_USE")
            if share["status"] in CONFIRMING:
                if (
                    order is not None
                    and order["payment_id"] == share["id"]
                    and order["status"] in ORDER_IN_FLIGHT
                    and order["payment_key"] == body.paymentKey
                ):
                    # A retry or a concurrent duplicate: Toss's Idempotency-Key makes it one charge.
                    return Attempt(
                        share["id"],
                        request["id"],
                        body.orderId,
                        body.paymentKey,
                        int(order["amount"]),
                        key_attempt=int(order["confirm_attempt"]),
                    )
                code = (
                    "PAYMENT_IN_PROGRESS" if share["status"] == PaymentStatus.IN_PROGRESS else "PAYMENT_OUTCOME_UNKNOWN"
                )
                raise Conflict("an earlier payment of your share is still being settled", code=code)
            due = _check_payable(tx, request, share)
            key_attempt = 0
            if body.amount != due:
                raise ValidationFailed(
                    f"the amount must be {due} KRW (what your share owes now)",
                    code="AMOUNT_MISMATCH",
                    details=[{"field": "amount", "message": f"expected {due}"}],
                )
            if order is None:  # a new orderId of the app's own, bound to this payer on first use
                payments_repo.insert_order(
                    tx,
                    order_id=body.orderId,
                    payment_id=share["id"],
                    payer_id=payer_id,
                    amount=due,
                    status=OrderStatus.IN_PROGRESS,
                    payment_key=body.paymentKey,
                )
            elif (
                order["payment_id"] == share["id"]
                and order["status"] == OrderStatus.FAILED
                and order["payment_key"] == body.paymentKey
                and not passes(order["failure_code"])
            ):
                # The same confirm again after Toss declined it: the same answer, not a new attempt.
                raise PaymentDeclined(
                    order["failure_message"] or "the payment was declined", toss_code=order["failure_code"]
                )
            elif (
                order["payment_id"] == share["id"]
                and order["status"] == OrderStatus.FAILED
                and order["payment_key"] == body.paymentKey
            ):
                # Refused for a reason that passes (Toss's trouble, or our configuration) and answered 503 "pay again
                # shortly": the same confirm again is a new attempt, with a new key (Toss replays the error for the
                # old one). Toss approves a payment once, so this cannot charge twice.
                if order["amount"] != due:  # the share's debt changed since (a refund): not what this order was for
                    raise Conflict(
                        f"this order was prepared for {order['amount']} KRW, but your share owes {due} KRW now; "
                        "prepare a new order",
                        code="ORDER_OUTDATED",
                    )
                key_attempt = int(order["confirm_attempt"]) + 1
                payments_repo.bump_confirm_attempt(tx, body.orderId, int(order["confirm_attempt"]))
                payments_repo.set_order_status(
                    tx, body.orderId, order["status"], OrderStatus.IN_PROGRESS, failure_code=None, failure_message=None
                )
            elif order["payment_id"] != share["id"] or order["status"] != OrderStatus.ISSUED:
                raise Conflict("this orderId was already used; prepare a new order", code="ORDER_ID_ALREADY_USED")
            elif order["amount"] != due:
                raise Conflict(
                    f"this order was prepared for {order['amount']} KRW, but your share owes {due} KRW now; "
                    "prepare a new order",
                    code="ORDER_OUTDATED",
                )
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
                method=body.payment_method,
                failure_code=None,
                failure_message=None,
                confirm_started_at=db_time(utcnow()),
            )
            return Attempt(share["id"], request["id"], body.orderId, body.paymentKey, due, key_attempt=key_attempt)
    except _Replayed:
        replayed = _replay(payer_id, body)
        assert replayed is not None
        return replayed
    except AppError:
        raise
    except Exception as exc:
        if db.is_duplicate_key(exc):
            raise Conflict("this orderId belongs to another payment", code="ORDER_ID_ALREADY_USED") from exc
        raise


class _Replayed(Exception):
    """Raised inside the confirm's transaction to leave it (rolled back, nothing written) and answer as a replay."""


def _call_confirm(toss: TossPort, attempt: Attempt, deadline: Deadline | None = None) -> Payment:
    key = confirm_idempotency_key(attempt.order_id, attempt.key_attempt)
    for retry in range(_IN_FLIGHT_RETRIES + 1):
        try:
            return toss.confirm(attempt.payment_key, attempt.order_id, attempt.amount, idempotency_key=key)
        except TossApiError as exc:
            pause = 0.25 * (retry + 1)
            if (
                exc.code == "IDEMPOTENT_REQUEST_PROCESSING"
                and retry < _IN_FLIGHT_RETRIES
                and (deadline is None or deadline.allows(pause))
            ):
                time.sleep(pause)  # the first confirm with this key is still running at Toss
                continue
            if exc.outcome_unknown and exc.code != "IDEMPOTENT_REQUEST_PROCESSING":
                # An answer (a 5xx, say) that leaves the outcome open: it is bound to this key, so asking again
                # with it would only hear it again. The next confirm of this order uses a new key.
                _next_confirm_key(attempt)
            raise
    raise AssertionError("unreachable")


def _next_confirm_key(attempt: Attempt) -> None:
    with db.transaction() as tx:
        payments_repo.bump_confirm_attempt(tx, attempt.order_id, attempt.key_attempt)
    attempt.key_attempt += 1


def _look_up(toss: TossPort, attempt: Attempt, deadline: Deadline | None = None) -> Payment | None:
    """Toss's own record of the order, or None when Toss knows no such payment."""
    try:
        payment = toss.get_payment_by_order(attempt.order_id)
    except TossApiError as exc:
        if exc.code in ("NOT_FOUND_PAYMENT", "NOT_FOUND_PAYMENT_SESSION"):
            return None
        raise
    if payment.payment_key != attempt.payment_key and payment.status in ("READY", "IN_PROGRESS"):
        # The order's own payment at Toss is another paymentKey, not approved yet: the pair we were sent (someone
        # else's paymentKey with this orderId, say) is no payment at Toss. The order's real payment stays for its
        # payer to confirm.
        return None
    if payment.status == "IN_PROGRESS" and payment.payment_key == attempt.payment_key:
        # Authenticated but never approved: our confirm did not reach Toss. Send it (same key) now.
        payment = _call_confirm(toss, attempt, deadline)
    return payment


def confirm_payment(
    principal: Principal, body: ConfirmBody, *, toss: TossPort | None = None, deadline: Deadline | None = None
) -> dict[str, Any]:
    """Confirm a payment with Toss. With the invocation's `deadline`, every Toss call fits in what is left of it
    (escrow.deadline): a confirm Toss could not answer in time, or not be asked at all, is recorded as unknown and
    answered PAYMENT_OUTCOME_UNKNOWN before Lambda stops the invocation."""
    attempt = _begin_confirm(principal.user_id, body)
    payment: Payment | None
    if attempt.done:
        answer = attempt.answer or {"payment_status": "completed"}
        return {**answer, "paymentKey": attempt.payment_key, "orderId": attempt.order_id}
    toss = toss or get_toss_client(deadline)
    try:
        payment = _call_confirm(toss, attempt, deadline)
    except TossApiError as exc:
        if exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            # Another confirm of this very order is still running at Toss; it will settle the payment.
            raise Conflict(
                "this payment is being confirmed right now; ask again in a moment", code="PAYMENT_IN_PROGRESS"
            ) from exc
        if not exc.outcome_unknown:
            return _declined(attempt, exc)
        payment = _resolve_unknown(toss, attempt, exc, deadline)
    except TossError as exc:
        payment = _resolve_unknown(toss, attempt, exc, deadline)
    if payment is None:
        record_failure(attempt.order_id, "NOT_FOUND_PAYMENT", "Toss has no payment for this order", actor="confirm")
        raise PaymentDeclined(
            "Toss has no payment for this orderId and paymentKey; pay again", toss_code="NOT_FOUND_PAYMENT"
        )
    outcome = apply_toss_payment(payment, actor=principal.user_id, reason="confirm", toss=toss)
    return _answer(attempt, payment, outcome)


def _resolve_unknown(
    toss: TossPort, attempt: Attempt, cause: Exception, deadline: Deadline | None = None
) -> Payment | None:
    logger.warning(
        "confirm outcome unknown, looking the order up",
        extra={"order_id": attempt.order_id, "cause": type(cause).__name__},
    )
    try:
        return _look_up(toss, attempt, deadline)
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
    raise declined_error(exc)


def declined_error(exc: TossApiError) -> AppError:
    """The answer to a confirm Toss refused with a definite outcome (nothing was charged): our configuration or a
    passing trouble is a 503 to try again shortly; anything else is the payer's decline (402, with Toss's code)."""
    if exc.configuration or exc.retryable:
        return UpstreamUnavailable(
            "the payment could not be confirmed now; please pay again shortly", toss_code=exc.code
        )
    return PaymentDeclined(exc.message or "the payment was declined", toss_code=exc.code)


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
    with db.reader() as tx:
        found = payments_repo.find_order(tx, order_id)
    if found is None:
        return
    with db.transaction() as tx:
        requests_repo.lock(tx, found["payment_request_id"])
        share = payments_repo.lock(tx, found["payment_id"])
        order = payments_repo.find_order(tx, order_id)  # read again under the locks: its status now
        assert order is not None
        if order["status"] in (OrderStatus.DONE, OrderStatus.REFUND_PENDING, OrderStatus.REFUNDED):
            return  # Toss's record (a charge) was applied meanwhile: it wins over a failure
        payments_repo.set_order_status(
            tx, order_id, order["status"], OrderStatus.FAILED, failure_code=code, failure_message=message[:500]
        )
        if share and share["order_id"] == order_id and share["status"] in CONFIRMING:
            _back_from_confirming(tx, share, failure_code=code, failure_message=message[:500])
    logger.info("payment failed", extra={"order_id": order_id, "toss_code": code, "actor": actor})


def _back_from_confirming(tx: db.Tx, share: dict[str, Any], **fields: Any) -> None:
    """An attempt did not charge: the share is back to what it holds (nothing: failed or refunded; part of the
    share: partially_refunded)."""
    target = share_status_for(held(share), int(share["amount"]), ever_paid=int(share["paid_amount"]) > 0)
    payments_repo.set_status(tx, share["id"], share["status"], target, **fields)


def record_unknown(order_id: str, reason: str) -> None:
    with db.reader() as tx:
        found = payments_repo.find_order(tx, order_id)
    if found is None:
        return
    with db.transaction() as tx:
        requests_repo.lock(tx, found["payment_request_id"])
        share = payments_repo.lock(tx, found["payment_id"])
        order = payments_repo.find_order(tx, order_id)
        assert order is not None
        if order["status"] in ORDER_IN_FLIGHT:
            payments_repo.set_order_status(tx, order_id, order["status"], OrderStatus.UNKNOWN, failure_message=reason)
        if share and share["order_id"] == order_id and share["status"] in CONFIRMING:
            payments_repo.set_status(tx, share["id"], share["status"], PaymentStatus.UNKNOWN, failure_message=reason)


def apply_toss_payment(
    payment: Payment, *, actor: str, reason: str, toss: TossPort | None = None, refund_now: bool = True
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
        found = payments_repo.find_order(tx, payment.order_id)
    if found is None:
        logger.warning("Toss payment for an order we never issued", extra={"order_id": payment.order_id})
        return "ignored", None
    with db.transaction() as tx:
        request = requests_repo.lock(tx, found["payment_request_id"])
        share = payments_repo.lock(tx, found["payment_id"])
        assert request is not None and share is not None
        order = payments_repo.find_order(tx, payment.order_id)
        assert order is not None
        charge = charges_repo.find_by_order(tx, payment.order_id)
        live = share["order_id"] == payment.order_id

        if payment.status == "DONE":
            if charge is not None and charge["payment_key"] == payment.payment_key:
                if charge["status"] != ChargeStatus.WAITING_FOR_DEPOSIT:
                    return "already_completed", None
                return _deposited(tx, request, share, charge, payment, actor=actor)
            if order["status"] in (OrderStatus.REFUND_PENDING, OrderStatus.REFUNDED):
                return "refund_pending" if order["status"] == OrderStatus.REFUND_PENDING else "refunded_mismatch", None
            why = _why_not_keep(request, share, order, payment, live=live)
            if why is not None:
                # Money we must not keep: a second charge for a paid share, a stale order, a wrong amount, a request
                # closed (cancelled, expired, released) or a participant removed while this confirm was in flight.
                payments_repo.set_order_status(
                    tx,
                    payment.order_id,
                    order["status"],
                    OrderStatus.REFUND_PENDING,
                    failure_code=why,
                    payment_key=payment.payment_key,
                )
                if live and share["status"] in CONFIRMING:
                    _back_from_confirming(tx, share, failure_code=why, failure_message=_REFUND_REASONS[why])
                _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason=why)
                return "refund_pending", why
            charges_repo.insert(
                tx,
                payment_key=payment.payment_key,
                order_id=payment.order_id,
                payment_id=share["id"],
                request_id=request["id"],
                amount=payment.total_amount,
                status=ChargeStatus.HELD,
                toss_status=payment.status,
                toss_method=(payment.method or "")[:32] or None,
                secret=payment.secret,
                approved_at=db_time(_parse_time(payment.approved_at)),
            )
            payments_repo.refresh_amounts(tx, share["id"])
            target = share_status_for(held(share) + payment.total_amount, int(share["amount"]), ever_paid=True)
            payments_repo.set_status(
                tx,
                share["id"],
                share["status"],
                target,
                payment_key=payment.payment_key,
                order_id=payment.order_id,
                toss_status=payment.status,
                toss_method=(payment.method or "")[:32] or None,
                approved_at=db_time(_parse_time(payment.approved_at)),
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
            refresh_funding(tx, request, why="payment_confirmed")
            return ("completed" if target == PaymentStatus.COMPLETED else "pending"), None

        if payment.status == "WAITING_FOR_DEPOSIT":
            if charge is None and live and share["status"] in CONFIRMING and payment.total_amount == order["amount"]:
                # Toss confirmed the pair: the virtual account is this share's, waiting for the payer's deposit.
                charges_repo.insert(
                    tx,
                    payment_key=payment.payment_key,
                    order_id=payment.order_id,
                    payment_id=share["id"],
                    request_id=request["id"],
                    amount=payment.total_amount,
                    status=ChargeStatus.WAITING_FOR_DEPOSIT,
                    toss_status=payment.status,
                    toss_method=(payment.method or "")[:32] or None,
                    secret=payment.secret,
                    approved_at=None,
                )
                payments_repo.update(tx, share["id"], toss_status=payment.status, last_toss_response=response)
            elif charge is not None and charge["status"] in (ChargeStatus.HELD, ChargeStatus.RELEASED):
                if reason == "confirm":
                    # The confirm's own answer, older than the deposit a webhook applied meanwhile: no deposit error.
                    # A reversal is learnt only from Toss's record now (the DEPOSIT_CALLBACK's lookup, the schedule).
                    return "already_completed", None
                return _deposit_reversed(tx, request, share, charge, payment), None
            elif (
                charge is not None
                and charge["status"] == ChargeStatus.WAITING_FOR_DEPOSIT
                and payment.deposit_window_closed(utcnow())
            ):
                return _account_expired(tx, share, charge, order, payment), None
            return "waiting_for_deposit", None

        if payment.status in ("ABORTED", "EXPIRED"):
            if order["status"] in (OrderStatus.DONE, OrderStatus.REFUND_PENDING, OrderStatus.REFUNDED):
                return "ignored", None  # an approved order never goes back (Toss's record of this order is final)
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
                _back_from_confirming(
                    tx,
                    share,
                    toss_status=payment.status,
                    failure_code=code,
                    failure_message=message[:500],
                    last_toss_response=response,
                )
            return "failed", None

        # READY / IN_PROGRESS: not final at Toss; CANCELED / PARTIAL_CANCELED are the refund flow's business.
        return ("pending" if payment.status in ("READY", "IN_PROGRESS") else "ignored"), None


def _why_not_keep(
    request: dict[str, Any], share: dict[str, Any], order: dict[str, Any], payment: Payment, *, live: bool
) -> str | None:
    """Why a charge Toss approved for this order must be refunded, or None when it funds the share."""
    if live and payment.total_amount != order["amount"]:
        return "AMOUNT_MISMATCH"
    if request["status"] != RequestStatus.PENDING or share["status"] in (PaymentStatus.REMOVED, PaymentStatus.RELEASED):
        return "REQUEST_CLOSED" if live and share["status"] in CONFIRMING else "UNEXPECTED_CHARGE"
    if not live or share["status"] not in _AWAITING_CHARGE:
        return "UNEXPECTED_CHARGE"
    if held(share) + payment.total_amount > int(share["amount"]):
        return "UNEXPECTED_CHARGE"  # more than the share owes: never keep a second payment of one share
    return None


def _deposited(
    tx: db.Tx, request: dict[str, Any], share: dict[str, Any], charge: dict[str, Any], payment: Payment, *, actor: str
) -> tuple[str, str | None]:
    """A virtual account's deposit (DEPOSIT_CALLBACK DONE, or a lookup): the charge is held from now on."""
    if share["status"] == PaymentStatus.RELEASED and ledger.reversals_of(tx, charge["payment_key"]) > 0:
        # The released share's deposit that Toss took back, deposited again: it is the store's money again (the
        # held payout waits for exactly this: `escrow.ops retry-payout`), never a deposit after close to refund.
        charges_repo.set_status(tx, charge["payment_key"], charge["status"], ChargeStatus.RELEASED, toss_status="DONE")
        _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason="deposit_again_after_release")
        logger.warning(
            "a reversed released deposit was deposited again; its held payout may be retried",
            extra={"payment_request_id": request["id"], "payment_id": share["id"]},
        )
        return "deposited_again_after_release", None
    if request["status"] != RequestStatus.PENDING or share["status"] in (PaymentStatus.REMOVED, PaymentStatus.RELEASED):
        # Deposited after the request closed or the payer was removed (the account could not be closed in time): the
        # money is the payer's. It is held as the share's, and a refund of it is queued for the schedule in this
        # same transaction (a refund that was only "to do" was kept for good: found by the audit's chaos run).
        charges_repo.set_status(tx, charge["payment_key"], charge["status"], ChargeStatus.HELD, toss_status="DONE")
        payments_repo.refresh_amounts(tx, share["id"])
        if share["status"] in CONFIRMING:
            fresh = payments_repo.lock(tx, share["id"])
            assert fresh is not None
            _back_from_confirming(
                tx, fresh, failure_code="REQUEST_CLOSED", failure_message=_REFUND_REASONS["REQUEST_CLOSED"]
            )
        order = payments_repo.find_order(tx, payment.order_id)
        if order is not None and order["status"] != OrderStatus.DONE:
            payments_repo.set_order_status(tx, payment.order_id, order["status"], OrderStatus.DONE)
        _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason="deposit_after_close")
        from escrow.services import refunds  # refunds imports this module

        refunds.queue_refunds(
            tx,
            request["id"],
            actor="system",
            reason="요청 종료 후 입금되어 자동 환불",
            tag="after-close",
            payment_id=share["id"],
        )
        return "refund_pending", None
    charges_repo.set_status(
        tx,
        charge["payment_key"],
        charge["status"],
        ChargeStatus.HELD,
        toss_status="DONE",
        approved_at=db_time(_parse_time(payment.approved_at)),
    )
    payments_repo.refresh_amounts(tx, share["id"])
    target = share_status_for(held(share) + payment.total_amount, int(share["amount"]), ever_paid=True)
    payments_repo.set_status(
        tx,
        share["id"],
        share["status"],
        target,
        payment_key=payment.payment_key,
        toss_status="DONE",
        approved_at=db_time(_parse_time(payment.approved_at)),
    )
    order = payments_repo.find_order(tx, payment.order_id)
    if order is not None and order["status"] != OrderStatus.DONE:
        payments_repo.set_order_status(tx, payment.order_id, order["status"], OrderStatus.DONE)
    _record_charge(tx, request["id"], share["id"], payment, actor=actor, reason="deposit")
    count("PaymentsConfirmed")
    refresh_funding(tx, request, why="deposit")
    return ("completed" if target == PaymentStatus.COMPLETED else "pending"), None


def _deposit_reversed(
    tx: db.Tx, request: dict[str, Any], share: dict[str, Any], charge: dict[str, Any], payment: Payment
) -> str:
    """Toss moved a deposited virtual account back to WAITING_FOR_DEPOSIT (a deposit error). Before release the
    share no longer holds the money (the request unfunds); after release the money is already the store's: the
    settlement's payout is held back and an alarm is raised."""
    reversed_amount = int(charge["amount"]) - int(charge["refunded_amount"])
    charges_repo.set_status(
        tx, charge["payment_key"], charge["status"], ChargeStatus.WAITING_FOR_DEPOSIT, toss_status=payment.status
    )
    ledger.record(
        tx,
        request_id=request["id"],
        payment_id=share["id"],
        entry_type="reversal",
        amount=reversed_amount,
        reference=f"reversal:{charge['payment_key']}:{payment.last_transaction_key or 'deposit'}",
        actor="toss",
        reason="virtual account deposit reversed by Toss",
    )
    count("DepositsReversed")
    if charge["status"] == ChargeStatus.RELEASED:
        logger.error(
            "a released virtual-account deposit was reversed; holding the payout",
            extra={"payment_request_id": request["id"], "payment_id": share["id"]},
        )
        count("ReleasedDepositsReversed")
        _hold_payout(tx, request["id"])
        return "deposit_reversed_after_release"
    payments_repo.refresh_amounts(tx, share["id"])
    # The share waits for the account again (in_progress), unless it was removed, or another confirm of it is in
    # flight (in_progress, unknown): that confirm's outcome decides the share's status, from what it holds now
    # (unknown -> in_progress is no transition: the reversal was refused on every delivery, the share kept counting
    # the money Toss took back, and the request could be funded and released with it).
    if share["status"] not in CONFIRMING and share["status"] != PaymentStatus.REMOVED:
        payments_repo.set_status(
            tx, share["id"], share["status"], PaymentStatus.IN_PROGRESS, toss_status=payment.status
        )
    if share["status"] == PaymentStatus.REMOVED or request["status"] not in OPEN:
        # The account is open for deposits again, for a participant removed or a request closed: close it, as the
        # removal or the close does for an account waiting for its deposit (its refund row is what the schedule
        # sends: Toss cancels a waiting account). Left open, a removed participant added back and depositing again
        # met pending -> completed (no transition) on every delivery: money at Toss in no book of ours.
        from escrow.services import refunds  # refunds imports this module

        # A refund of the deposit that waited for the payer's refund account has no deposit to return any more:
        # it closes the account instead, which Toss does without an account (a new attempt, a new key).
        for waiting in cancels_repo.waiting_for_account(tx, charge["payment_key"]):
            cancels_repo.set_status(
                tx,
                waiting["id"],
                waiting["status"],
                CancelStatus.REQUESTED,
                attempt=int(waiting["attempt"]) + 1,
                next_attempt_at=None,
            )
        refunds.queue_refunds(
            tx,
            request["id"],
            actor="system",
            reason="입금 취소로 다시 열린 가상계좌 닫기",
            tag="reversed",
            payment_id=share["id"],
        )
    refresh_funding(tx, request, why="deposit_reversed")
    return "deposit_reversed"


def _account_expired(
    tx: db.Tx, share: dict[str, Any], charge: dict[str, Any], order: dict[str, Any], payment: Payment
) -> str:
    """A virtual account whose deposit can no longer come (its dueDate passed): nothing was paid into it, so the
    share is payable again (another account, or a card) instead of waiting for good."""
    key = charge["payment_key"]
    charges_repo.set_status(tx, key, charge["status"], ChargeStatus.CANCELLED, toss_status=payment.status)
    why = "the virtual account's deposit deadline passed without a deposit; pay again"
    if order["status"] in ORDER_IN_FLIGHT:
        payments_repo.set_order_status(
            tx,
            order["order_id"],
            order["status"],
            OrderStatus.FAILED,
            failure_code="VIRTUAL_ACCOUNT_EXPIRED",
            failure_message=why,
        )
    payments_repo.refresh_amounts(tx, share["id"])
    fresh = payments_repo.lock(tx, share["id"])
    assert fresh is not None
    if fresh["status"] in CONFIRMING and fresh["order_id"] == order["order_id"]:
        _back_from_confirming(tx, fresh, failure_code="VIRTUAL_ACCOUNT_EXPIRED", failure_message=why)
    count("VirtualAccountsExpired")
    return "failed"


def _hold_payout(tx: db.Tx, request_id: int) -> None:
    """A released deposit Toss took back: the store's payout is not sent (failed with DEPOSIT_REVERSED, for a person
    to decide: the payer deposits again, then `escrow.ops retry-payout`). A payout already at Toss cannot be held:
    the alarm (ReleasedDepositsReversed) is what tells someone."""
    found = settlements_repo.for_request(tx, request_id)
    settlement = settlements_repo.lock(tx, found["id"]) if found is not None else None
    if settlement is None or settlement["payout_status"] != PayoutStatus.SCHEDULED:
        return
    settlements_repo.set_payout_status(
        tx,
        settlement["id"],
        settlement["payout_status"],
        PayoutStatus.FAILED,
        payout_error_code="DEPOSIT_REVERSED",
        payout_error_message="Toss took a released virtual-account deposit back; the payout is held",
    )


# A share whose charge we take: its live attempt was sent to Toss (or had failed: Toss's record wins).
_AWAITING_CHARGE = CONFIRMING | {PaymentStatus.FAILED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}

_REFUND_REASONS = {
    "AMOUNT_MISMATCH": "Toss approved an amount we did not ask for; refunded",
    "REQUEST_CLOSED": "the request closed while this payment was confirmed; refunded",
    "UNEXPECTED_CHARGE": "a charge for a share that was not waiting for one; refunded",
}


def _record_charge(tx: db.Tx, request_id: int, payment_id: int, payment: Payment, *, actor: str, reason: str) -> None:
    """Money Toss took for this share: one ledger entry per paymentKey, whatever happens to it next; a virtual
    account deposited again after Toss took a deposit back (a reversal) is a charge again, of its own."""
    reversals = ledger.reversals_of(tx, payment.payment_key)
    ledger.record(
        tx,
        request_id=request_id,
        payment_id=payment_id,
        entry_type="charge",
        amount=payment.total_amount,
        reference=payment.payment_key if reversals == 0 else f"{payment.payment_key}:deposit-{reversals + 1}",
        actor=actor,
        reason=reason,
    )


def refund_unexpected_charge(payment: Payment, why: str, *, toss: TossPort | None = None) -> str:
    """Cancel a charge we must not keep (wrong amount, a second charge for one share, a closed request)."""
    toss = toss or get_toss_client()
    with db.reader() as tx:
        order = payments_repo.find_order(tx, payment.order_id)
    assert order is not None
    attempt = int(order["refund_attempt"])
    try:
        cancelled = toss.cancel(
            payment.payment_key,
            f"자동 환불: {why}",
            idempotency_key=refund_idempotency_key(payment.order_id, attempt),
            refundable_amount=payment.balance_amount or None,
        )
    except TossApiError as exc:
        logger.error(
            "automatic refund refused; the schedule asks again with a new key",
            extra={"order_id": payment.order_id, "toss_code": exc.code},
        )
        with db.transaction() as tx:  # Toss answered: its answer is bound to that key; the next attempt gets a new one
            payments_repo.bump_refund_attempt(tx, payment.order_id, attempt)
        count("RefundsRefused")
        return "refund_pending"
    except TossError as exc:
        logger.error(
            "automatic refund not answered; the schedule asks again with the same key",
            extra={"order_id": payment.order_id, "error": str(exc)[:200]},
        )
        return "refund_pending"
    return _mark_refunded(payment.order_id, cancelled, actor="system", why=why)


# --- the schedule: orders left without an outcome -----------------------------------------------------------


def reconcile_order(order: dict[str, Any], *, toss: TossPort) -> str:
    """Settle one order the schedule found in flight or refund_pending (`payments_repo.orders_to_reconcile`):
    look it up at Toss and apply what Toss says, or cancel a charge we must not keep. Returns the outcome (as
    apply_toss_payment does)."""
    if order["status"] == OrderStatus.REFUND_PENDING:
        payment = toss.get_payment(order["payment_key"])
        if payment.balance_amount > 0:
            return refund_unexpected_charge(payment, "UNEXPECTED_CHARGE", toss=toss)
        return _mark_refunded(order["order_id"], payment, actor="reconcile", why="UNEXPECTED_CHARGE")
    attempt = Attempt(
        order["payment_id"],
        0,
        order["order_id"],
        order["payment_key"] or "",
        order["amount"],
        key_attempt=int(order["confirm_attempt"]),
    )
    found = _look_up(toss, attempt) if order["payment_key"] else None
    if found is None:
        record_failure(order["order_id"], "NOT_FOUND_PAYMENT", "Toss has no payment for this order", actor="reconcile")
        return "failed"
    outcome = apply_toss_payment(found, actor="reconcile", reason="reconciliation", toss=toss)
    if outcome == "waiting_for_deposit":
        # Nothing changed (the payer has not deposited yet): to the back of the queue, so that accounts waiting for
        # days never crowd out the confirms whose outcome is unknown (the schedule takes the oldest first).
        with db.transaction() as tx:
            payments_repo.touch_order(tx, order["order_id"])
    return outcome


def _mark_refunded(order_id: str, payment: Payment, *, actor: str, why: str) -> str:
    """Toss holds nothing more of a charge we must not keep (our cancel went through, its answer lost or not, or it
    was cancelled at Toss): record its refunds in the ledger and close the order. Only once Toss's balance is 0:
    a partial cancel made elsewhere leaves the rest to refund."""
    with db.transaction() as tx:
        order = payments_repo.lock_order(tx, order_id)
        if order is None or order["status"] != OrderStatus.REFUND_PENDING:
            return "refunded_mismatch"
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
                actor=actor,
                reason=(cancel.cancel_reason or why)[:200],
            )
        if payment.balance_amount > 0:
            return "refund_pending"
        payments_repo.set_order_status(tx, order_id, order["status"], OrderStatus.REFUNDED)
    count("UnexpectedChargesRefunded")
    return "refunded_mismatch"


def _parse_time(value: str | None) -> Any:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value)
