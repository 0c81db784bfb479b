"""CancelFunction: refund a held share (fully or partly), or the owner cancels a whole request."""

from __future__ import annotations

from typing import Any

from escrow.http import Request, Router, current_principal, json_response, parse_body
from escrow.observability import lambda_entry
from escrow.services import refunds as service

app = Router()


@app.post("/api/v1/payment/cancel")
def cancel(request: Request) -> dict[str, Any]:
    from escrow.models import CancelBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, CancelBody)
    client_key = request.headers.get("idempotency-key")
    result = service.cancel(principal, body, client_key=client_key[:200] if client_key else None)
    return json_response(202 if result["refund_status"] == "refund_pending" else 200, result)


lambda_handler = lambda_entry(app.resolve)
