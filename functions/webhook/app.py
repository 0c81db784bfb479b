"""WebhookFunction: every Toss webhook delivery is logged, verified for its type and processed once. No JWT."""

from __future__ import annotations

from typing import Any

from escrow.http import Request, Router, json_response, raw_body
from escrow.observability import lambda_entry
from escrow.services import webhooks as service

app = Router()


def _answer(outcome: service.Outcome) -> dict[str, Any]:
    """What Toss is told: 200 stops its retries, 503 asks for the delivery again, 400/401 refuse it."""
    result = outcome.result
    if result in (service.Result.PROCESSED, service.Result.DUPLICATE, service.Result.IGNORED):
        return json_response(200, {"status": result.value})
    if result is service.Result.REJECTED:
        return json_response(401, {"error": {"code": "WEBHOOK_NOT_VERIFIED", "message": outcome.reason}})
    if result is service.Result.INVALID_JSON:
        return json_response(400, {"error": {"code": "INVALID_JSON", "message": "the body is not a JSON object"}})
    if result is service.Result.TOO_LARGE:
        return json_response(413, {"error": {"code": "PAYLOAD_TOO_LARGE", "message": outcome.reason}})
    if result is service.Result.THROTTLED:
        return json_response(429, {"error": {"code": "TOO_MANY_DELIVERIES", "message": outcome.reason}})
    return json_response(503, {"error": {"code": "TRY_AGAIN", "message": "could not process the webhook now"}})


@app.post("/api/v1/payment/webhook")
def webhook(request: Request) -> dict[str, Any]:
    return _answer(service.receive(request.headers, raw_body(request)))


lambda_handler = lambda_entry(app.resolve)
