"""WebhookFunction: every Toss webhook delivery is logged, verified for its type and processed once. No JWT.
With an allowlist of sending addresses (TOSS_WEBHOOK_ALLOWED_IPS), a delivery from any other address is refused.

The route takes the body as raw bytes, not as a validated model: every delivery is logged before it is parsed, and
Toss's signatures are computed over the exact bytes sent.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from escrow import webhook_source
from escrow.http import JSON, EscrowResolver, documented
from escrow.models import WebhookAck
from escrow.observability import lambda_entry
from escrow.services import webhooks as service

app = EscrowResolver(authenticated=False)


def _answer(outcome: service.Outcome) -> Response[Any]:
    """What Toss is told: 200 stops its retries, 503 asks for the delivery again, 400/401/403 refuse it."""
    result = outcome.result
    if result in (service.Result.PROCESSED, service.Result.DUPLICATE, service.Result.IGNORED):
        return Response(200, JSON, {"status": result.value})
    if result is service.Result.SOURCE_NOT_ALLOWED:
        return Response(403, JSON, {"error": {"code": "WEBHOOK_SOURCE_NOT_ALLOWED", "message": outcome.reason}})
    if result is service.Result.REJECTED:
        return Response(401, JSON, {"error": {"code": "WEBHOOK_NOT_VERIFIED", "message": outcome.reason}})
    if result is service.Result.INVALID_JSON:
        return Response(400, JSON, {"error": {"code": "INVALID_JSON", "message": "the body is not a JSON object"}})
    if result is service.Result.TOO_LARGE:
        return Response(413, JSON, {"error": {"code": "PAYLOAD_TOO_LARGE", "message": outcome.reason}})
    if result is service.Result.THROTTLED:
        return Response(429, JSON, {"error": {"code": "TOO_MANY_DELIVERIES", "message": outcome.reason}})
    return Response(503, JSON, {"error": {"code": "TRY_AGAIN", "message": "could not process the webhook now"}})


@app.post(
    "/api/v1/payment/webhook",
    summary="Toss webhooks (no JWT; verified per event type)",
    operation_id="post_payment_webhook",
    responses=documented(200, WebhookAck, (400, 401, 403, 413, 429, 503), webhook=True),
)
def webhook() -> Response[Any]:
    event = app.current_event
    source = webhook_source.source_ip(event.raw_event)
    return _answer(service.receive(dict(event.headers), app.raw_body, source_ip=source, deadline=app.deadline))


lambda_handler = lambda_entry(app.resolve)
