"""ReleaseFunction: release a room's deposit to the store (HTTP), register store payout accounts (admin), and run
the scheduled jobs (EventBridge Scheduler input `{"source": "escrow.schedule", "jobs": "all"}`).

Neither HTTP route calls Toss: a release answers with its settlement scheduled and a registration with the seller
pending; the scheduled run's `payouts` and `sellers` jobs make the Toss calls (up to 60 s each)."""

from __future__ import annotations

from typing import Any

from escrow import db
from escrow.http import Request, Router, current_principal, json_response, parse_body
from escrow.observability import lambda_entry, logger
from escrow.services import release as service
from escrow.services import stores

app = Router()


@app.post("/api/v1/payment/release")
def release(request: Request) -> dict[str, Any]:
    from escrow.models import ReleaseBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, ReleaseBody)
    return json_response(200, service.release_room(principal, body.chat_room_id))


@app.post("/api/v1/admin/stores")
def register_store(request: Request) -> dict[str, Any]:
    from escrow.models import RegisterStoreBody  # pydantic only where a body is parsed

    principal = current_principal(request)
    body = parse_body(request, RegisterStoreBody)
    status, answer = stores.register_store(principal, body)
    return json_response(status, answer)


@app.get("/api/v1/admin/stores/{store_id}")
def store(request: Request, store_id: str) -> dict[str, Any]:
    principal = current_principal(request)
    return json_response(200, stores.get_store(principal, store_id))


def _scheduled(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from escrow.services import jobs  # HTTP invocations never need the scheduled jobs

    db.new_invocation()
    remaining = getattr(context, "get_remaining_time_in_millis", lambda: 900_000)
    report = jobs.run_scheduled(remaining_ms=remaining, jobs=event.get("jobs", "all"))
    logger.info("scheduled run finished", extra={"report": report})
    return report  # an exception instead fails the run: Scheduler retries, then sends it to the dead-letter queue


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "requestContext" not in event and (event.get("source") == "escrow.schedule" or "jobs" in event):
        return _scheduled(event, context)
    return app.resolve(event, context)


lambda_handler = lambda_entry(_handle)
