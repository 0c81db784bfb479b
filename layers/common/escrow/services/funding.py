"""The funding rule, in one place: a request is `completed` (funded) exactly while it is open and every current
participant's share is fully held. Every change of a share's money or of the participants ends by calling
`refresh_funding` in the same transaction, under the request's lock; it moves the request and announces the change
once: `EscrowFunded` (the store's "everyone paid" notice) each time the request becomes funded, and
`EscrowUnfunded` (its correction) each time it stops being funded. Each funding is a round (`funding_round`), so
a request funded, unfunded and funded again announces two rounds and one correction."""

from __future__ import annotations

from typing import Any

from escrow import db
from escrow.clock import Clock, db_time, iso, utcnow
from escrow.errors import Conflict
from escrow.observability import count
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.states import OPEN, RequestStatus


def funding_move(status: str, *, participants: int, fully_held: int) -> RequestStatus | None:
    """The funding rule as a decision: where a request goes once its shares changed (None: it stays as it is).
    Funded means open, at least one current participant, and every current participant holding the share in full."""
    if status not in OPEN:
        return None
    funded = participants > 0 and fully_held == participants
    if status == RequestStatus.PENDING and funded:
        return RequestStatus.COMPLETED
    if status == RequestStatus.COMPLETED and not funded:
        return RequestStatus.PENDING
    return None


def past_deadline(request: dict[str, Any], now: Clock = utcnow) -> bool:
    """The request's deadline (`expires_at`) has passed: nobody pays or joins any more. A request funded in time
    stays funded (it is released or cancelled as usual); one that is not is expired by the next scheduled run."""
    expires = request.get("expires_at")
    return expires is not None and expires <= db_time(now())


def refuse_after_deadline(request: dict[str, Any], what: str, now: Clock = utcnow) -> None:
    if past_deadline(request, now):
        raise Conflict(
            f"the request's deadline ({iso(request['expires_at'])}) has passed: {what} is no longer possible",
            code="REQUEST_DEADLINE_PASSED",
            expires_at=iso(request["expires_at"]),
        )


def refresh_funding(tx: db.Tx, request: dict[str, Any], *, why: str) -> str:
    """Re-decide a locked open request's funding after a change (`why`: what changed). Returns its status."""
    status = request["status"]
    if status not in OPEN:
        return str(status)
    funding = payments_repo.funding(tx, request["id"])
    move = funding_move(status, participants=funding["participants"], fully_held=funding["fully_held"])
    if move == RequestStatus.COMPLETED and past_deadline(request):
        # Funded only after its deadline (a virtual account opened in time, deposited late): not funded in time.
        # It stays pending; the next scheduled run expires it and refunds what it holds, as for any late payer.
        move = None
    round_ = int(request["funding_round"])
    if move == RequestStatus.COMPLETED:
        round_ += 1
        requests_repo.set_status(
            tx,
            request["id"],
            status,
            RequestStatus.COMPLETED,
            completed_at=db_time(utcnow()),
            funding_round=round_,
            participant_count=funding["participants"],
        )
        outbox_repo.add(
            tx,
            event_type="EscrowFunded",
            aggregate_id=request["id"],
            dedupe_key=f"EscrowFunded:{request['id']}:{round_}",
            payload={
                "payment_request_id": request["id"],
                "chat_room_id": request["chat_room_id"],
                "store_id": request["store_id"],
                "amount_per_participant": request["amount"],
                "participant_count": funding["participants"],
                "total_amount": request["amount"] * funding["participants"],
                "funding_round": round_,
            },
        )
        count("EscrowFunded")
        request.update(status=RequestStatus.COMPLETED, funding_round=round_)
        return RequestStatus.COMPLETED
    if move == RequestStatus.PENDING:
        requests_repo.set_status(tx, request["id"], status, RequestStatus.PENDING, completed_at=None)
        outbox_repo.add(
            tx,
            event_type="EscrowUnfunded",
            aggregate_id=request["id"],
            dedupe_key=f"EscrowUnfunded:{request['id']}:{round_}",
            payload={
                "payment_request_id": request["id"],
                "chat_room_id": request["chat_room_id"],
                "store_id": request["store_id"],
                "amount_per_participant": request["amount"],
                "participant_count": funding["participants"],
                "fully_paid_count": funding["fully_held"],
                "held_amount": funding["held_amount"],
                "funding_round": round_,
                "reason": why,
            },
        )
        count("EscrowUnfunded")
        request.update(status=RequestStatus.PENDING)
        return RequestStatus.PENDING
    return str(status)
