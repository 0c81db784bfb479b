"""RequestFunction: open a payment request for a room, and show a room's payment status."""

from __future__ import annotations

from typing import Any

from escrow.errors import NotFound
from escrow.http import current_principal, json_response, make_resolver, parse_body, run
from escrow.models import CreatePaymentRequestBody
from escrow.observability import lambda_entry
from escrow.services import requests as service

app = make_resolver()


@app.post("/api/v1/payment/request")
def create_request() -> Any:
    principal = current_principal(app)
    body = parse_body(app, CreatePaymentRequestBody)
    return json_response(201, service.create_payment_request(principal, body))


@app.get("/api/v1/payment/status/<chat_room_id>")
def room_status(chat_room_id: str) -> Any:
    principal = current_principal(app)
    if not chat_room_id.isascii() or not chat_room_id.isdigit() or not 0 < int(chat_room_id) <= 2**62:
        raise NotFound("chatRoomId must be a positive integer", code="INVALID_CHAT_ROOM_ID")
    return json_response(200, service.room_status(principal, int(chat_room_id)))


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run(app, event, context)


lambda_handler = lambda_entry(_handle)
