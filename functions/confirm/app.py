"""ConfirmFunction: issue a payer's order for the Toss widget, and confirm the payment with Toss (within the
invocation's deadline: escrow.deadline)."""

from __future__ import annotations

from typing import Any

from escrow.http import BEARER, EscrowResolver, documented
from escrow.models import ConfirmBody, Confirmed, PrepareBody, PreparedOrder
from escrow.observability import lambda_entry
from escrow.services import payments as service

app = EscrowResolver()
CONFIRM_ERRORS = (400, 401, 402, 403, 404, 409, 413, 422, 502, 503)


@app.post(
    "/api/v1/payment/prepare",
    summary="Issue the payer's orderId for the Toss widget (participant)",
    operation_id="post_payment_prepare",
    security=BEARER,
    responses=documented(200, PreparedOrder, (400, 401, 403, 404, 409, 413, 422, 503)),
)
def prepare(body: PrepareBody) -> dict[str, Any]:
    return service.prepare_payment(app.principal, body)


@app.post(
    "/api/v1/payment/initiate",
    summary="Confirm a payment with Toss (participant)",
    operation_id="post_payment_initiate",
    security=BEARER,
    responses=documented(200, Confirmed, CONFIRM_ERRORS),
)
def confirm(body: ConfirmBody) -> dict[str, Any]:
    return service.confirm_payment(app.principal, body, deadline=app.deadline)


@app.post(
    "/api/v1/payment/confirm",
    summary="Alias of /initiate",
    operation_id="post_payment_confirm",
    security=BEARER,
    responses=documented(200, Confirmed, CONFIRM_ERRORS),
)
def confirm_alias(body: ConfirmBody) -> dict[str, Any]:
    return service.confirm_payment(app.principal, body, deadline=app.deadline)


lambda_handler = lambda_entry(app.resolve)
