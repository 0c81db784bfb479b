"""ConfirmFunction: issue a payer's order for the Toss widget, and confirm the payment with Toss."""

from __future__ import annotations

from typing import Any

from escrow.http import current_principal, json_response, make_resolver, parse_body, run
from escrow.models import ConfirmBody, PrepareBody
from escrow.observability import lambda_entry
from escrow.services import payments as service

app = make_resolver()


@app.post("/api/v1/payment/prepare")
def prepare() -> Any:
    principal = current_principal(app)
    body = parse_body(app, PrepareBody)
    return json_response(200, service.prepare_payment(principal, body))


@app.post("/api/v1/payment/initiate")
@app.post("/api/v1/payment/confirm")
def confirm() -> Any:
    principal = current_principal(app)
    body = parse_body(app, ConfirmBody)
    return json_response(200, service.confirm_payment(principal, body))


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run(app, event, context)


lambda_handler = lambda_entry(_handle)
