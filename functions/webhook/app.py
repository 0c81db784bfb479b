"""WebhookFunction: every Toss webhook delivery is logged, verified for its type and processed once. No JWT."""

from __future__ import annotations

from typing import Any

from escrow.http import json_response, make_resolver, raw_body, run
from escrow.observability import lambda_entry
from escrow.services import webhooks as service

app = make_resolver()


@app.post("/api/v1/payment/webhook")
def webhook() -> Any:
    answer = service.receive(dict(app.current_event.headers or {}), raw_body(app))
    return json_response(answer.status, answer.body)


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run(app, event, context)


lambda_handler = lambda_entry(_handle)
