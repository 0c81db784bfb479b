"""ConfirmFunction: issue a payer's order for the Toss widget, and confirm the payment with Toss."""

from __future__ import annotations

from typing import Any

from escrow.http import Request, Router, current_principal, json_response, parse_body
from escrow.observability import lambda_entry
from escrow.services import payments as service

app = Router()


@app.post("/api/v1/payment/prepare")
def prepare(request: Request) -> dict[str, Any]:
    from escrow.models import PrepareBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, PrepareBody)
    return json_response(200, service.prepare_payment(principal, body))


@app.post("/api/v1/payment/initiate")
@app.post("/api/v1/payment/confirm")
def confirm(request: Request) -> dict[str, Any]:
    from escrow.models import ConfirmBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, ConfirmBody)
    return json_response(200, service.confirm_payment(principal, body))


lambda_handler = lambda_entry(app.resolve)
