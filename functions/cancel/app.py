"""CancelFunction: refund a held share (fully or partly), or the owner cancels a whole request."""

from __future__ import annotations

from typing import Any

from escrow.http import current_principal, json_response, make_resolver, parse_body, run
from escrow.models import CancelBody
from escrow.observability import lambda_entry
from escrow.services import refunds as service

app = make_resolver()


@app.post("/api/v1/payment/cancel")
def cancel() -> Any:
    principal = current_principal(app)
    body = parse_body(app, CancelBody)
    client_key = (app.current_event.headers or {}).get("idempotency-key")
    result = service.cancel(principal, body, client_key=client_key[:200] if client_key else None)
    return json_response(202 if result["refund_status"] == "refund_pending" else 200, result)


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run(app, event, context)


lambda_handler = lambda_entry(_handle)
