"""Opening a payment request for a room, changing who takes part in it, and the room's status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.errors import Conflict, Forbidden, NotFound, ValidationFailed
from escrow.money import MAX_PARTICIPANTS
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import rooms as rooms_repo
from escrow.repositories import stores as stores_repo
from escrow.services import refunds, rooms
from escrow.services.funding import refresh_funding, refuse_after_deadline
from escrow.states import CANCEL_IN_FLIGHT, CONFIRMING, PAID_IN_FULL, PaymentStatus, RequestStatus

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.deadline import Deadline
    from escrow.models import CreatePaymentRequestBody, ParticipantBody
    from escrow.toss.port import TossPort


def _too_many(count_: int) -> ValidationFailed:
    return ValidationFailed(
        f"a request takes at most {MAX_PARTICIPANTS} participants ({count_} asked)",
        code="TOO_MANY_PARTICIPANTS",
        details=[{"field": "participant_ids", "message": f"at most {MAX_PARTICIPANTS}"}],
    )


def _participants(body: CreatePaymentRequestBody, room: rooms.Room, members: list[dict[str, Any]]) -> list[str]:
    member_ids = {m["user_id"] for m in members}
    if body.participant_ids is None:
        participants = sorted(member_ids - {room.owner_id})
    else:
        outsiders = sorted(set(body.participant_ids) - member_ids)
        if outsiders:
            raise ValidationFailed(
                "participants must be members of the room",
                code="NOT_ROOM_MEMBERS",
                details=[{"field": "participant_ids", "message": f"not members: {outsiders}"}],
            )
        participants = list(body.participant_ids)
    if not participants:
        raise ValidationFailed(
            "the request has no participant to pay (the owner does not pay unless listed)", code="NO_PARTICIPANTS"
        )
    if len(participants) > MAX_PARTICIPANTS:
        # Amount x participants must fit the settlement's columns: 100 x 10,000,000 KRW = 1e9 < 2^32.
        raise _too_many(len(participants))
    return participants


def _check_deadlines(body: CreatePaymentRequestBody, now: datetime) -> None:
    for name in ("release_at", "expires_at"):
        value = getattr(body, name)
        if value is not None and value <= now:
            raise ValidationFailed(f"{name} must be in the future", details=[{"field": name, "message": "in the past"}])


def create_payment_request(
    principal: Principal, body: CreatePaymentRequestBody, *, now: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    _check_deadlines(body, now())
    try:
        with db.transaction() as tx:
            room = rooms.known_room(tx, body.chat_room_id)
            if principal.user_id != room.owner_id:
                raise Forbidden("only the room's owner can open a payment request", code="NOT_ROOM_OWNER")
            if stores_repo.find(tx, body.store_id) is None:
                raise ValidationFailed(
                    "unknown store_id",
                    code="UNKNOWN_STORE",
                    details=[{"field": "store_id", "message": "no such store"}],
                )
            participants = _participants(body, room, rooms_repo.members(tx, body.chat_room_id))
            request_id = requests_repo.insert(
                tx,
                chat_room_id=body.chat_room_id,
                store_id=body.store_id,
                requester_id=principal.user_id,
                amount=body.amount,
                message=body.message,
                participant_count=len(participants),
                release_at=db_time(body.release_at),
                expires_at=db_time(body.expires_at),
            )
            payments_repo.insert_shares(tx, request_id, participants, body.amount)
    except Exception as exc:
        if db.is_duplicate_key(exc, "uq_payment_requests_open_room"):
            raise Conflict("the room already has an open payment request", code="OPEN_REQUEST_EXISTS") from exc
        raise
    count("PaymentRequestsOpened")
    logger.info(
        "payment request opened",
        extra={"payment_request_id": request_id, "chat_room_id": body.chat_room_id, "participants": len(participants)},
    )
    return {"payment_request_id": request_id, "status": "pending"}


# --- who takes part ------------------------------------------------------------------------------------------


def _open_for_owner(tx: db.Tx, principal: Principal, chat_room_id: int, what: str) -> dict[str, Any]:
    room = rooms.known_room(tx, chat_room_id)
    rooms.require_owner(principal, room, what)
    request = requests_repo.lock_open_for_room(tx, chat_room_id)
    if request is None:
        raise NotFound("the room has no open payment request", code="PAYMENT_REQUEST_NOT_FOUND")
    return request


def add_participant(principal: Principal, body: ParticipantBody) -> dict[str, Any]:
    """The owner adds a room member to the open request: they owe the request's amount, and a funded request waits
    for them again (its earlier notice is corrected)."""
    with db.transaction() as tx:
        request = _open_for_owner(tx, principal, body.chat_room_id, "add participants")
        refuse_after_deadline(request, "adding a participant")
        if not rooms_repo.is_member(tx, body.chat_room_id, body.user_id):
            raise ValidationFailed(
                "participants must be members of the room",
                code="NOT_ROOM_MEMBERS",
                details=[{"field": "user_id", "message": "not a member of the room"}],
            )
        shares = payments_repo.lock_for_request(tx, request["id"])
        current = [s for s in shares if s["status"] != PaymentStatus.REMOVED]
        existing = next((s for s in shares if s["payer_id"] == body.user_id), None)
        if existing is not None and existing["status"] != PaymentStatus.REMOVED:
            raise Conflict("this member already takes part in the request", code="ALREADY_A_PARTICIPANT")
        if len(current) + 1 > MAX_PARTICIPANTS:
            raise _too_many(len(current) + 1)
        if existing is not None:
            if (
                cancels_repo.in_flight_for_payment(tx, existing["id"])
                or existing["paid_amount"] != existing["refunded_amount"]
            ):
                raise Conflict(
                    "the refund of this member's earlier payment is still being settled; add them again shortly",
                    code="REFUND_IN_PROGRESS",
                )
            payments_repo.set_status(
                tx, existing["id"], existing["status"], PaymentStatus.PENDING, removed_at=None, removed_by=None
            )
        else:
            payments_repo.insert_share(tx, request["id"], body.user_id, int(request["amount"]))
        requests_repo.set_participant_count(tx, request["id"], len(current) + 1)
        status = refresh_funding(tx, request, why="participant_added")
    count("ParticipantsAdded")
    return {
        "payment_request_id": request["id"],
        "payer_id": body.user_id,
        "payment_amount": int(request["amount"]),
        "payment_status": "pending",
        "participant_count": len(current) + 1,
        "payment_request_status": status,
    }


def remove_participant(
    principal: Principal, body: ParticipantBody, *, toss: TossPort | None = None, deadline: Deadline | None = None
) -> dict[str, Any]:
    """The owner takes a participant out of the open request, and what they hold is refunded in the same flow (its
    Toss calls within `deadline`; a refund there is no time left for is pending). When everyone left holds their
    share in full, the request is funded (a new notice, with the new total)."""
    reason = body.reason or "참여자 제외"
    with db.transaction() as tx:
        request = _open_for_owner(tx, principal, body.chat_room_id, "remove participants")
        shares = payments_repo.lock_for_request(tx, request["id"])
        share = next((s for s in shares if s["payer_id"] == body.user_id), None)
        if share is None or share["status"] == PaymentStatus.REMOVED:
            raise NotFound("this user does not take part in the request", code="NOT_A_PARTICIPANT")
        current = [s for s in shares if s["status"] != PaymentStatus.REMOVED]
        if len(current) == 1:
            raise Conflict(
                "the last participant cannot be removed; cancel the request instead", code="LAST_PARTICIPANT"
            )
        if share["status"] in CONFIRMING:
            raise Conflict(
                "this participant's payment is being confirmed; remove them once it is settled",
                code="PAYMENT_IN_PROGRESS",
            )
        if any(c["status"] in CANCEL_IN_FLIGHT for c in cancels_repo.in_flight_for_payment(tx, share["id"])):
            raise Conflict(
                "a refund of this participant's payment is still being settled; try again shortly",
                code="REFUND_IN_PROGRESS",
            )
        payments_repo.set_status(
            tx,
            share["id"],
            share["status"],
            PaymentStatus.REMOVED,
            removed_at=db_time(utcnow()),
            removed_by=principal.user_id,
        )
        requests_repo.set_participant_count(tx, request["id"], len(current) - 1)
        targets = refunds.queue_refunds(
            tx, request["id"], actor=principal.user_id, reason=reason, tag="removed", payment_id=share["id"]
        )
        if request["status"] == RequestStatus.COMPLETED:
            # The store's notice named a total that changes: correct it, then announce the new funding if any.
            requests_repo.set_status(tx, request["id"], request["status"], RequestStatus.PENDING, completed_at=None)
            from escrow.repositories import outbox as outbox_repo

            outbox_repo.add(
                tx,
                event_type="EscrowUnfunded",
                aggregate_id=request["id"],
                dedupe_key=f"EscrowUnfunded:{request['id']}:{request['funding_round']}",
                payload={
                    "payment_request_id": request["id"],
                    "chat_room_id": request["chat_room_id"],
                    "store_id": request["store_id"],
                    "funding_round": request["funding_round"],
                    "reason": "participant_removed",
                },
            )
            request["status"] = RequestStatus.PENDING
        status = refresh_funding(tx, request, why="participant_removed")
    results = refunds.refund_queued(targets, toss=toss, deadline=deadline)
    pending = [r for r in results if r["refund_status"] != "refunded"]
    refunded = sum(int(r.get("refunded_amount", 0)) for r in results)
    count("ParticipantsRemoved")
    logger.info("participant removed", extra={"payment_request_id": request["id"], "refunds": len(results)})
    return {
        "payment_request_id": request["id"],
        "payer_id": body.user_id,
        "payment_status": "removed",
        "refund_status": "not_needed" if not results else ("refunded" if not pending else "refund_pending"),
        "refunded_amount": refunded,
        "refunds": results,
        "participant_count": len(current) - 1,
        "payment_request_status": status,
    }


# --- the room's status ---------------------------------------------------------------------------------------


def room_status(principal: Principal, chat_room_id: int) -> dict[str, Any]:
    """The brief's status shape, one entry per current participant (fields only added). Two SQL statements."""
    with db.reader() as tx:
        view = requests_repo.status_view(tx, chat_room_id, principal.user_id)
        shares = payments_repo.for_request(tx, view["id"]) if view["id"] is not None else []
    if not view["known_room"]:
        raise NotFound(
            "the service has no membership for this room; the chat service must send it first",
            code="ROOM_NOT_FOUND",
        )
    if not view["is_member"] and not principal.is_admin:
        raise Forbidden("only members of the room can see its payments", code="NOT_ROOM_MEMBER")
    if view["id"] is None:
        raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
    current = [s for s in shares if s["status"] != PaymentStatus.REMOVED]
    removed = [s for s in shares if s["status"] == PaymentStatus.REMOVED]

    def held(s: dict[str, Any]) -> int:
        return int(s["paid_amount"]) - int(s["refunded_amount"])

    paid = sum(1 for s in current if s["status"] in PAID_IN_FULL)
    # Released: the settlement and its payout (what it waits for: Toss's payout balance, the store's seller, a retry).
    settlement = None
    if view["status"] == RequestStatus.RELEASED:
        from escrow.services import payouts  # only a released request's status needs it

        settlement = payouts.settlement_for_request(view["id"], principal)
    return {
        "payment_request": {
            "payment_request_id": view["id"],
            "requester_id": view["requester_id"],
            "amount": view["amount"],
            "status": view["status"],
            "chat_room_id": view["chat_room_id"],
            "store_id": view["store_id"],
            "message": view["message"],
            "owner_id": view["owner_id"],
            "participant_count": len(current),
            "paid_count": paid,
            "total_amount": view["amount"] * len(current),
            "held_amount": sum(held(s) for s in current if s["status"] != PaymentStatus.RELEASED),
            "funding_round": view["funding_round"],
            "release_at": iso(view["release_at"]),
            "expires_at": iso(view["expires_at"]),
            "completed_at": iso(view["completed_at"]),
            "created_at": iso(view["created_at"]),
        },
        "payments": [
            {
                "payer_id": s["payer_id"],
                "payment_amount": s["amount"],
                "payment_status": s["status"],
                "paid_at": iso(s["approved_at"]),
                "refunded_amount": s["refunded_amount"],
                "held_amount": 0 if s["status"] == PaymentStatus.RELEASED else held(s),
                "owed_amount": 0 if s["status"] == PaymentStatus.RELEASED else max(int(s["amount"]) - held(s), 0),
            }
            for s in current
        ],
        "removed_participants": [
            {
                "payer_id": s["payer_id"],
                "payment_status": s["status"],
                "refunded_amount": s["refunded_amount"],
                "held_amount": held(s),
                "removed_at": iso(s["removed_at"]),
            }
            for s in removed
        ],
        "settlement": settlement,
    }
