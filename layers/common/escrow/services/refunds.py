"""Cancelling held money back to payers through Toss: one share (fully or partly) or a whole request.

Each refund is a `payment_cancels` row written before Toss is called; its id is the Idempotency-Key, so a retry
after a lost answer can never refund twice, and a repeated identical cancel answers the first outcome.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, utcnow
from escrow.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    PaymentOutcomeUnknown,
    UpstreamUnavailable,
    ValidationFailed,
)
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import ledger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.states import CANCEL_IN_FLIGHT, HELD, REFUND_RECORDABLE, CancelStatus, PaymentStatus, RequestStatus
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.models import CancelBody
    from escrow.toss.models import Payment


def cancel_idempotency_key(cancel_id: int) -> str:
    return f"cancel-{cancel_id}"


def _request_key(payment_id: int, actor: str, amount: int | None, reason: str, client_key: str | None) -> str:
    if client_key:
        return "client:" + hashlib.sha256(f"{payment_id}|{client_key}".encode()).hexdigest()[:100]
    basis = f"{payment_id}|{actor}|{amount if amount is not None else 'all'}|{reason}"
    return "auto:" + hashlib.sha256(basis.encode()).hexdigest()[:100]


def _outcome(payment: dict[str, Any]) -> dict[str, Any]:
    refunded = payment["status"] == PaymentStatus.REFUNDED
    return {
        "success": True,
        "refund_status": "refunded" if refunded else "partially_refunded",
        "paymentKey": payment["payment_key"],
        "refunded_amount": payment["refunded_amount"],
        "remaining_amount": payment["paid_amount"] - payment["refunded_amount"],
    }


def _find_payment(payment_key: str) -> dict[str, Any]:
    """The payment's ids, read before its transaction begins (they never change). Read inside the transaction, this
    plain read took the transaction's snapshot before the row locks were granted, so the later plain reads (refunds
    in flight, Toss transactions already recorded) missed what a concurrent transaction had just committed: two
    cancels of one share at once both passed the in-flight guard and both went to Toss, and the loser then recorded
    the winner's Toss transaction a second time (duplicate key, a 500). A webhook racing a cancel is the same race."""
    with db.reader() as tx:
        found = payments_repo.find_ids_by_key(tx, payment_key)
    if found is None:
        raise NotFound("no payment with this paymentKey", code="PAYMENT_NOT_FOUND")
    return found


def _lock_payment(tx: db.Tx, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    request = requests_repo.lock(tx, found["payment_request_id"])
    payment = payments_repo.lock(tx, found["id"])
    assert request is not None and payment is not None
    return request, payment


def cancel(
    principal: Principal, body: CancelBody, *, client_key: str | None = None, toss: TossClient | None = None
) -> dict[str, Any]:
    if body.chat_room_id is not None:
        return cancel_request(principal, body.chat_room_id, body.cancelReason, toss=toss)
    assert body.paymentKey is not None
    return cancel_share(
        principal, body.paymentKey, body.cancelReason, body.cancelAmount, client_key=client_key, toss=toss
    )


def cancel_share(
    principal: Principal,
    payment_key: str,
    reason: str,
    amount: int | None,
    *,
    client_key: str | None = None,
    toss: TossClient | None = None,
) -> dict[str, Any]:
    found = _find_payment(payment_key)
    with db.transaction() as tx:
        request, payment = _lock_payment(tx, found)
        if principal.user_id not in (payment["payer_id"], request["requester_id"]) and not principal.is_admin:
            raise Forbidden("only the payer or the room's owner can cancel this payment", code="NOT_ALLOWED_TO_CANCEL")
        key = _request_key(payment["id"], principal.user_id, amount, reason, client_key)
        existing = cancels_repo.find_by_key(tx, key)
        if existing is not None and existing["status"] == CancelStatus.DONE:
            return _outcome(payment)  # the same cancel again: same answer, nothing more refunded
        if existing is None or existing["status"] == CancelStatus.FAILED:
            # A failed earlier attempt is a new attempt too: the share must still be refundable. (Skipping this let a
            # cancel that had failed at Toss, repeated after the room was released, refund released money.)
            _check_refundable(payment, amount)
            if cancels_repo.in_flight_for_payment(tx, payment["id"]):
                raise Conflict(
                    "another refund of this payment is in progress; try again shortly", code="REFUND_IN_PROGRESS"
                )
        if existing is None:
            cancel_id = cancels_repo.insert(
                tx,
                payment_id=payment["id"],
                request_id=request["id"],
                request_key=key,
                requested_by=principal.user_id,
                reason=reason,
                amount=amount,
            )
        else:
            # No answer earlier (requested/unknown), or a failure: ask again with the same key. In flight again,
            # so a release waits for it.
            cancel_id = existing["id"]
            cancels_repo.set_status(tx, cancel_id, existing["status"], CancelStatus.REQUESTED)
    result = send_refund(
        cancel_id,
        payment["payment_key"],
        reason,
        amount,
        payment["paid_amount"] - payment["refunded_amount"],
        toss=toss,
    )
    if result["refunded_amount"] == payment["refunded_amount"] and result["status"] == payment["status"]:
        with db.reader() as tx:
            cancel_status = cancels_repo.status(tx, cancel_id)
        if cancel_status == CancelStatus.FAILED:
            # Toss holds no refund for this cancel (a 5xx there, nothing refunded): this used to answer
            # 200 "partially_refunded" with refunded_amount 0.
            raise UpstreamUnavailable("Toss did not refund the payment; nothing was refunded, try again shortly")
    return _outcome(result)


def _check_refundable(payment: dict[str, Any], amount: int | None) -> None:
    status = payment["status"]
    if status == PaymentStatus.RELEASED:
        raise Conflict("this payment was already released to the store and cannot be refunded", code="ALREADY_RELEASED")
    if status == PaymentStatus.REFUNDED:
        raise Conflict("this payment was already refunded in full", code="ALREADY_REFUNDED")
    if status not in HELD:
        raise Conflict(f"only held payments can be refunded (this one is {status})", code="NOT_REFUNDABLE")
    remaining = payment["paid_amount"] - payment["refunded_amount"]
    if amount is not None and amount > remaining:
        raise ValidationFailed(
            f"cancelAmount is more than the remaining {remaining} KRW",
            code="CANCEL_AMOUNT_TOO_LARGE",
            details=[{"field": "cancelAmount", "message": f"at most {remaining}"}],
        )


def send_refund(
    cancel_id: int, payment_key: str, reason: str, amount: int | None, remaining: int, *, toss: TossClient | None = None
) -> dict[str, Any]:
    """Ask Toss for the refund of cancel row `cancel_id` (its id is the Idempotency-Key, so asking again after a lost
    answer is safe) and record what Toss holds afterwards. Returns the payment row."""
    toss = toss or get_toss_client()
    partial = amount is not None and amount < remaining
    try:
        result = toss.cancel(
            payment_key, reason, idempotency_key=cancel_idempotency_key(cancel_id), amount=amount if partial else None
        )
    except TossApiError as exc:
        if exc.outcome_unknown or exc.retryable:
            return _after_unknown_cancel(cancel_id, payment_key, exc, toss)
        if exc.code in ("ALREADY_CANCELED_PAYMENT", "NOT_CANCELABLE_AMOUNT", "NOT_MATCHES_REFUNDABLE_AMOUNT"):
            # Toss may already hold the refund we want (a cancel made elsewhere, or ours with a lost answer).
            return _after_unknown_cancel(cancel_id, payment_key, exc, toss)
        with db.transaction() as tx:
            cancels_repo.set_status_if_open(
                tx, cancel_id, CancelStatus.FAILED, toss_code=exc.code, toss_message=exc.message[:500]
            )
        raise Conflict(f"Toss refused the refund: {exc.message}", code="REFUND_REFUSED", toss_code=exc.code) from exc
    except TossError as exc:
        return _after_unknown_cancel(cancel_id, payment_key, exc, toss)
    return apply_cancels(result, cancel_id=cancel_id, actor="cancel")


def _after_unknown_cancel(cancel_id: int, payment_key: str, cause: Exception, toss: TossClient) -> dict[str, Any]:
    try:
        result = toss.get_payment(payment_key)
    except TossError as exc:
        with db.transaction() as tx:
            cancels_repo.set_status_if_open(tx, cancel_id, CancelStatus.UNKNOWN, toss_message=str(cause)[:500])
        raise PaymentOutcomeUnknown(
            "Toss did not confirm the refund; it will be settled automatically", code="REFUND_OUTCOME_UNKNOWN"
        ) from exc
    return apply_cancels(result, cancel_id=cancel_id, actor="cancel")


def apply_cancels(payment: Payment, *, cancel_id: int | None, actor: str) -> dict[str, Any]:
    """Record every cancel transaction Toss lists for the payment that we have not recorded yet.

    Our cancel row `cancel_id` (when given) takes the first unrecorded transaction; the others were made outside
    our API (the merchant dashboard) and get rows of their own. Returns the payment row afterwards.
    """
    found = _find_payment(payment.payment_key)  # before the transaction: see _find_payment
    with db.transaction() as tx:
        request = requests_repo.lock(tx, found["payment_request_id"])
        share = payments_repo.lock(tx, found["id"])
        assert request is not None and share is not None
        rows = {r["id"]: r for r in cancels_repo.for_payment(tx, share["id"])}
        known = {r["transaction_key"] for r in rows.values() if r["transaction_key"] is not None}
        new = [
            c for c in payment.cancels or [] if c.transaction_key not in known and (c.cancel_status or "DONE") == "DONE"
        ]
        claimed = cancel_id
        for entry in new:
            if claimed is not None:
                row_id, claimed = claimed, None
                current = rows[row_id]["status"]
            else:
                current = CancelStatus.REQUESTED
                row_id = cancels_repo.insert(
                    tx,
                    payment_id=share["id"],
                    request_id=request["id"],
                    request_key=f"toss:{entry.transaction_key}",
                    requested_by="toss",
                    reason=(entry.cancel_reason or "cancelled at Toss")[:200],
                    amount=entry.cancel_amount,
                )
            cancels_repo.set_status(
                tx,
                row_id,
                current,
                CancelStatus.DONE,
                transaction_key=entry.transaction_key,
                cancel_amount=entry.cancel_amount,
                canceled_at=db_time(utcnow()),
            )
            ledger.record(
                tx,
                request_id=request["id"],
                payment_id=share["id"],
                entry_type="refund",
                amount=entry.cancel_amount,
                reference=entry.transaction_key,
                actor=actor,
                reason=(entry.cancel_reason or "refund")[:200],
            )
        refunded_total = payment.refunded_amount
        if new and share["status"] in REFUND_RECORDABLE:
            fully = payment.balance_amount == 0 or refunded_total >= share["paid_amount"]
            target = PaymentStatus.REFUNDED if fully else PaymentStatus.PARTIALLY_REFUNDED
            payments_repo.set_status(
                tx,
                share["id"],
                share["status"],
                target,
                refunded_amount=min(refunded_total, share["paid_amount"]),
                toss_status=payment.status,
            )
            outbox_repo.add(
                tx,
                event_type="PaymentRefunded",
                aggregate_id=request["id"],
                dedupe_key=f"PaymentRefunded:{share['id']}:{refunded_total}",
                payload={
                    "payment_request_id": request["id"],
                    "chat_room_id": request["chat_room_id"],
                    "payer_id": share["payer_id"],
                    "paymentKey": payment.payment_key,
                    "paid_amount": share["paid_amount"],
                    "refunded_amount": refunded_total,
                    "held_amount": max(share["paid_amount"] - refunded_total, 0),
                    "refund_status": target,
                },
            )
            count("PaymentsRefunded")
            if fully and request["status"] == RequestStatus.COMPLETED:
                requests_repo.set_status(tx, request["id"], request["status"], RequestStatus.PENDING, completed_at=None)
        elif cancel_id is not None and not new:
            # Nothing new at Toss for our cancel: it did not happen. The payer may ask again. (Its status was read
            # above, in this transaction's snapshot.)
            ours = rows.get(cancel_id)
            if ours is not None and ours["status"] in CANCEL_IN_FLIGHT:
                cancels_repo.set_status(
                    tx, cancel_id, ours["status"], CancelStatus.FAILED, toss_code="NOT_CANCELLED_AT_TOSS"
                )
        share = payments_repo.lock(tx, share["id"])
        assert share is not None
    logger.info("refund recorded", extra={"payment_id": share["id"], "status": share["status"]})
    return share


def cancel_request(
    principal: Principal, chat_room_id: int, reason: str, *, toss: TossClient | None = None
) -> dict[str, Any]:
    """The room owner cancels the whole request: it closes at once, then every held share is refunded."""
    with db.transaction() as tx:
        request = requests_repo.lock_open_for_room(tx, chat_room_id)
        if request is None:
            raise NotFound("the room has no open payment request", code="PAYMENT_REQUEST_NOT_FOUND")
        if principal.user_id != request["requester_id"] and not principal.is_admin:
            raise Forbidden("only the room's owner can cancel the whole request", code="NOT_ROOM_OWNER")
        requests_repo.set_status(
            tx,
            request["id"],
            request["status"],
            RequestStatus.CANCELLED,
            closed_at=db_time(utcnow()),
            closed_by=principal.user_id,
            close_reason=reason,
        )
        targets = queue_refunds(tx, request["id"], actor=principal.user_id, reason=reason, tag="room-cancel")
        outbox_repo.add(
            tx,
            event_type="PaymentRequestCancelled",
            aggregate_id=request["id"],
            dedupe_key=f"PaymentRequestCancelled:{request['id']}",
            payload={
                "payment_request_id": request["id"],
                "chat_room_id": chat_room_id,
                "store_id": request["store_id"],
                "amount_per_participant": request["amount"],
                "participant_count": request["participant_count"],
                "refund_amount": sum(t["remaining"] for t in targets),
                "reason": reason,
                "cancelled_by": principal.user_id,
            },
        )
    results = refund_queued(targets, toss=toss)
    return _summary(results)


def queue_refunds(tx: db.Tx, request_id: int, *, actor: str, reason: str, tag: str) -> list[dict[str, Any]]:
    """Lock every held share of a request and write one cancel row each (keyed so a rerun writes none), in the
    caller's transaction (the one that closes the request). Send them with `refund_queued` after it commits."""
    shares = payments_repo.lock_for_request(tx, request_id)
    targets = []
    for share in shares:
        if share["status"] not in HELD:
            continue
        key = f"{tag}:{request_id}:{share['id']}"
        existing = cancels_repo.find_by_key(tx, key)
        cancel_id = (
            existing["id"]
            if existing
            else cancels_repo.insert(
                tx,
                payment_id=share["id"],
                request_id=request_id,
                request_key=key,
                requested_by=actor,
                reason=reason,
                amount=None,
            )
        )
        targets.append(
            {
                "cancel_id": cancel_id,
                "payment_key": share["payment_key"],
                "reason": reason,
                "remaining": share["paid_amount"] - share["refunded_amount"],
            }
        )
    return targets


def refund_queued(targets: Iterable[dict[str, Any]], *, toss: TossClient | None = None) -> list[dict[str, Any]]:
    results = []
    for t in targets:
        try:
            share = send_refund(t["cancel_id"], t["payment_key"], t["reason"], None, t["remaining"], toss=toss)
            results.append({"paymentKey": t["payment_key"], "refund_status": share["status"]})
        except AppError as exc:
            logger.warning("refund not finished; the schedule will retry", extra={"error_code": exc.code})
            results.append({"paymentKey": t["payment_key"], "refund_status": "refund_pending", "error": exc.code})
    return results


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    pending = [r for r in results if r["refund_status"] != "refunded"]
    return {
        "success": True,
        "refund_status": "refunded" if not pending else "refund_pending",
        "refunds": results,
        "payment_request_status": "cancelled",
    }
