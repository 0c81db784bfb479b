"""Opening a payment request for a room, and the room's status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.errors import Conflict, Forbidden, NotFound, ValidationFailed
from escrow.observability import count, logger
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import rooms as rooms_repo
from escrow.repositories import stores as stores_repo
from escrow.states import PAID_NOT_FULLY_REFUNDED, RequestStatus

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.models import CreatePaymentRequestBody


def _participants(body: CreatePaymentRequestBody, caller: str, members: list[dict[str, Any]]) -> list[str]:
    if members:
        owners = {m["user_id"] for m in members if m["is_owner"]}
        if caller not in owners:
            raise Forbidden("only the room's owner can open a payment request", code="NOT_ROOM_OWNER")
        member_ids = {m["user_id"] for m in members}
        if body.participant_ids is None:
            participants = sorted(member_ids - owners)
        else:
            outsiders = sorted(set(body.participant_ids) - member_ids)
            if outsiders:
                raise ValidationFailed(
                    "participants must be members of the room",
                    code="NOT_ROOM_MEMBERS",
                    details=[{"field": "participant_ids", "message": f"not members: {outsiders}"}],
                )
            participants = list(body.participant_ids)
    else:
        if body.participant_ids is None:
            raise ValidationFailed(
                "participant_ids is required for a room the service has no member list for",
                details=[{"field": "participant_ids", "message": "required"}],
            )
        participants = list(body.participant_ids)
    if not participants:
        raise ValidationFailed(
            "the request has no participant to pay (the owner does not pay unless listed)", code="NO_PARTICIPANTS"
        )
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
            if stores_repo.find(tx, body.store_id) is None:
                raise ValidationFailed(
                    "unknown store_id",
                    code="UNKNOWN_STORE",
                    details=[{"field": "store_id", "message": "no such store"}],
                )
            participants = _participants(body, principal.user_id, rooms_repo.members(tx, body.chat_room_id))
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
    return {"payment_request_id": request_id, "status": RequestStatus.PENDING}


def room_status(principal: Principal, chat_room_id: int) -> dict[str, Any]:
    """The brief's status shape, one entry per participant. Two SQL statements."""
    with db.reader() as tx:
        view = requests_repo.status_view(tx, chat_room_id, principal.user_id)
        shares = payments_repo.for_request(tx, view["id"]) if view["id"] is not None else []
    known_members = int(view["member_rows"]) > 0
    if known_members:
        allowed = bool(view["is_member"])
    else:
        allowed = view["id"] is not None and (
            view["requester_id"] == principal.user_id or any(s["payer_id"] == principal.user_id for s in shares)
        )
    if not allowed:
        raise Forbidden("only members of the room can see its payments", code="NOT_ROOM_MEMBER")
    if view["id"] is None:
        raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
    paid = sum(1 for s in shares if s["status"] in PAID_NOT_FULLY_REFUNDED)
    return {
        "payment_request": {
            "payment_request_id": view["id"],
            "requester_id": view["requester_id"],
            "amount": view["amount"],
            "status": view["status"],
            "chat_room_id": view["chat_room_id"],
            "store_id": view["store_id"],
            "message": view["message"],
            "participant_count": view["participant_count"],
            "paid_count": paid,
            "total_amount": view["amount"] * view["participant_count"],
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
            }
            for s in shares
        ],
    }
