"""RequestFunction: open a payment request for a room, change who takes part in it, show a room's payment status,
and take the room's membership from the chat service."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path

from escrow.errors import Forbidden, NotFound
from escrow.http import BEARER, JSON, EscrowResolver, documented
from escrow.models import (
    CreatedRequest,
    CreatePaymentRequestBody,
    ParticipantAdded,
    ParticipantBody,
    ParticipantRemoved,
    RoomMembers,
    RoomMembersBody,
    RoomStatus,
)
from escrow.observability import lambda_entry
from escrow.services import requests as service
from escrow.services import rooms

app = EscrowResolver()

ChatRoomId = Annotated[int, Path(ge=1, le=2**62, description="the chat room's id")]


@app.post(
    "/api/v1/payment/request",
    summary="Open a payment request for a room (room owner)",
    operation_id="post_payment_request",
    security=BEARER,
    status_code=201,
    responses=documented(201, CreatedRequest, (400, 401, 403, 404, 409, 413, 422, 503)),
)
def create_request(body: CreatePaymentRequestBody) -> dict[str, Any]:
    return service.create_payment_request(app.principal, body)


@app.get(
    "/api/v1/payment/status/<chatRoomId>",
    summary="A room's payment status (room members)",
    operation_id="get_payment_status_chatRoomId",
    security=BEARER,
    responses=documented(200, RoomStatus, (401, 403, 404, 503)),
)
def room_status(chatRoomId: ChatRoomId) -> dict[str, Any]:  # noqa: N803 - the brief's path parameter name
    # Validation turned the segment into an int, and pydantic's int also takes "1.0"; a room id is written in digits.
    segment = app.current_event.path.rsplit("/", 1)[-1]
    if not (segment.isascii() and segment.isdigit()):
        raise NotFound("chatRoomId must be a positive integer", code="INVALID_CHAT_ROOM_ID")
    return service.room_status(app.principal, chatRoomId)


def _digits_only() -> None:
    # Validation turned the segment into an int, and pydantic's int also takes "1.0"; a room id is written in digits.
    segment = app.current_event.path.split("/")[5]
    if not (segment.isascii() and segment.isdigit()):
        raise NotFound("chatRoomId must be a positive integer", code="INVALID_CHAT_ROOM_ID")


@app.post(
    "/api/v1/payment/participants/add",
    summary="Add a room member to the open request (room owner)",
    operation_id="post_payment_participants_add",
    security=BEARER,
    status_code=201,
    responses=documented(201, ParticipantAdded, (400, 401, 403, 404, 409, 413, 422, 503)),
)
def add_participant(body: ParticipantBody) -> dict[str, Any]:
    return service.add_participant(app.principal, body)


@app.post(
    "/api/v1/payment/participants/remove",
    summary="Remove a participant from the open request; what they hold is refunded (room owner)",
    operation_id="post_payment_participants_remove",
    security=BEARER,
    responses=documented(
        200,
        ParticipantRemoved,
        (400, 401, 403, 404, 409, 413, 422, 503),
        also={
            202: (
                ParticipantRemoved,
                "removed; the refund of what they held is still pending at Toss and is settled automatically",
            )
        },
    ),
)
def remove_participant(body: ParticipantBody) -> Response[dict[str, Any]]:
    result = service.remove_participant(app.principal, body, deadline=app.deadline)
    return Response(202 if result["refund_status"] == "refund_pending" else 200, JSON, result)


@app.put(
    "/api/v1/admin/rooms/<chatRoomId>/members",
    summary="The room's membership, from the chat service (a service or admin token)",
    operation_id="put_admin_rooms_chatRoomId_members",
    security=BEARER,
    responses=documented(200, RoomMembers, (400, 401, 403, 404, 413, 422, 503)),
)
def put_room_members(chatRoomId: ChatRoomId, body: RoomMembersBody) -> dict[str, Any]:  # noqa: N803
    if not rooms.is_trusted_source(app.principal):
        raise Forbidden("only the chat service or an administrator can set a room's members", code="SERVICE_ONLY")
    _digits_only()
    return rooms.sync_membership(
        chatRoomId, body.owner_id, body.member_ids, updated_by=app.principal.user_id, version=body.version
    )


lambda_handler = lambda_entry(app.resolve)
