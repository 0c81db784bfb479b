"""CancelFunction: refund a held share (fully or partly), or the owner cancels a whole request."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header

from escrow.http import BEARER, JSON, EscrowResolver, documented
from escrow.models import CancelBody, RefundResult
from escrow.observability import lambda_entry
from escrow.services import refunds as service

app = EscrowResolver()

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="optional; a repeated cancel with the same key answers the first outcome and refunds nothing more",
    ),
]


@app.post(
    "/api/v1/payment/cancel",
    summary="Refund a held share (payer or owner), or cancel a whole request (owner)",
    operation_id="post_payment_cancel",
    security=BEARER,
    responses=documented(
        200,
        RefundResult,
        (400, 401, 403, 404, 409, 413, 422, 502, 503),
        also={
            202: (
                RefundResult,
                "a whole request was cancelled; some refunds are still pending at Toss (refund_status refund_pending) "
                "and are settled automatically",
            )
        },
    ),
)
def cancel(body: CancelBody, idempotency_key: IdempotencyKey = None) -> Response[dict[str, Any]]:
    result = service.cancel(
        app.principal, body, client_key=idempotency_key[:200] if idempotency_key else None, deadline=app.deadline
    )
    return Response(202 if result["refund_status"] == "refund_pending" else 200, JSON, result)


lambda_handler = lambda_entry(app.resolve)
