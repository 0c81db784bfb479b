"""RequestFunction: open a payment request for a room, change who takes part in it, show a room's payment status,
and take the room's membership from the chat service."""

from __future__ import annotations

from typing import Any

from escrow.errors import Forbidden, NotFound
from escrow.http import Request, Router, current_principal, json_response, parse_body
from escrow.observability import lambda_entry
from escrow.services import requests as service
from escrow.services import rooms

app = Router()

_MAX_ROOM_ID_DIGITS = 19  # 2**62 has 19 digits; int() of a longer string is wasted work (and over 4300 digits, a 500)


def _room_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_ROOM_ID_DIGITS or not 0 < int(raw) <= 2**62:
        raise NotFound("chatRoomId must be a positive integer", code="INVALID_CHAT_ROOM_ID")
    return int(raw)


@app.post("/api/v1/payment/request")
def create_request(request: Request) -> dict[str, Any]:
    from escrow.models import CreatePaymentRequestBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, CreatePaymentRequestBody)
    return json_response(201, service.create_payment_request(principal, body))


@app.get("/api/v1/payment/status/{chat_room_id}")
def room_status(request: Request, chat_room_id: str) -> dict[str, Any]:
    principal = current_principal(request)
    return json_response(200, service.room_status(principal, _room_id(chat_room_id)))


@app.post("/api/v1/payment/participants/add")
def add_participant(request: Request) -> dict[str, Any]:
    from escrow.models import ParticipantBody

    principal = current_principal(request)
    body = parse_body(request, ParticipantBody)
    return json_response(201, service.add_participant(principal, body))


@app.post("/api/v1/payment/participants/remove")
def remove_participant(request: Request) -> dict[str, Any]:
    from escrow.models import ParticipantBody

    principal = current_principal(request)
    body = parse_body(request, ParticipantBody)
    result = service.remove_participant(principal, body)
    return json_response(202 if result["refund_status"] == "refund_pending" else 200, result)


@app.route("PUT", "/api/v1/admin/rooms/{chat_room_id}/members")
def put_room_members(request: Request, chat_room_id: str) -> dict[str, Any]:
    from escrow.models import RoomMembersBody

    principal = current_principal(request)
    if not rooms.is_trusted_source(principal):
        raise Forbidden("only the chat service or an administrator can set a room's members", code="SERVICE_ONLY")
    body = parse_body(request, RoomMembersBody)
    result = rooms.sync_membership(
        _room_id(chat_room_id), body.owner_id, body.member_ids, updated_by=principal.user_id, version=body.version
    )
    return json_response(200, result)


lambda_handler = lambda_entry(app.resolve)
