"""WebhookFunction: every Toss webhook delivery is logged, verified for its type and processed once. No JWT.

The route takes the body as raw bytes, not as a validated model: every delivery is logged before it is parsed, and
Toss's signatures are computed over the exact bytes sent.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from escrow.http import JSON, EscrowResolver, documented
from escrow.models import WebhookAck
from escrow.observability import lambda_entry
from escrow.services import webhooks as service

app = EscrowResolver(authenticated=False)


@app.post(
    "/api/v1/payment/webhook",
    summary="Toss webhooks (no JWT; verified per event type)",
    operation_id="post_payment_webhook",
    responses=documented(200, WebhookAck, (400, 401, 413, 503), webhook=True),
)
def webhook() -> Response[Any]:
    answer = service.receive(dict(app.current_event.headers), app.raw_body)
    return Response(answer.status, JSON, answer.body)


lambda_handler = lambda_entry(app.resolve)
