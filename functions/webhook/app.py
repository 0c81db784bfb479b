"""WebhookFunction: every Toss webhook delivery is logged, verified for its type and processed once. No JWT."""

from __future__ import annotations

from typing import Any

from escrow.http import Request, Router, json_response, raw_body
from escrow.observability import lambda_entry
from escrow.services import webhooks as service

app = Router()


@app.post("/api/v1/payment/webhook")
def webhook(request: Request) -> dict[str, Any]:
    answer = service.receive(request.headers, raw_body(request))
    return json_response(answer.status, answer.body)


lambda_handler = lambda_entry(app.resolve)
