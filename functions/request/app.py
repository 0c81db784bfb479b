"""RequestFunction: open a payment request for a room, and show a room's payment status."""

from __future__ import annotations

from typing import Any

from escrow.errors import NotFound
from escrow.http import Request, Router, current_principal, json_response, parse_body
from escrow.observability import lambda_entry
from escrow.services import requests as service

app = Router()


@app.post("/api/v1/payment/request")
def create_request(request: Request) -> dict[str, Any]:
    from escrow.models import CreatePaymentRequestBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, CreatePaymentRequestBody)
    return json_response(201, service.create_payment_request(principal, body))


@app.get("/api/v1/payment/status/{chat_room_id}")
def room_status(request: Request, chat_room_id: str) -> dict[str, Any]:
    principal = current_principal(request)
    if not chat_room_id.isascii() or not chat_room_id.isdigit() or not 0 < int(chat_room_id) <= 2**62:
        raise NotFound("chatRoomId must be a positive integer", code="INVALID_CHAT_ROOM_ID")
    return json_response(200, service.room_status(principal, int(chat_room_id)))


lambda_handler = lambda_entry(app.resolve)
