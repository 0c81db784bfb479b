"""RequestFunction: open a payment request for a room, and show a room's payment status."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path

from escrow.errors import NotFound
from escrow.http import BEARER, EscrowResolver, documented
from escrow.models import CreatedRequest, CreatePaymentRequestBody, RoomStatus
from escrow.observability import lambda_entry
from escrow.services import requests as service

app = EscrowResolver()

ChatRoomId = Annotated[int, Path(ge=1, le=2**62, description="the chat room's id")]


@app.post(
    "/api/v1/payment/request",
    summary="Open a payment request for a room (room owner)",
    operation_id="post_payment_request",
    security=BEARER,
    status_code=201,
    responses=documented(201, CreatedRequest, (400, 401, 403, 409, 413, 422, 503)),
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


lambda_handler = lambda_entry(app.resolve)
