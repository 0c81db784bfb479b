"""ReleaseFunction: release a room's deposit to the store (HTTP), register store payout accounts (admin), and run
the scheduled jobs (EventBridge Scheduler input `{"source": "escrow.schedule", "jobs": "all"}`)."""

from __future__ import annotations

from typing import Any

from escrow import db
from escrow.http import current_principal, json_response, make_resolver, parse_body, run
from escrow.models import RegisterStoreBody, ReleaseBody
from escrow.observability import lambda_entry, logger
from escrow.services import jobs, stores
from escrow.services import release as service

app = make_resolver()


@app.post("/api/v1/payment/release")
def release() -> Any:
    principal = current_principal(app)
    body = parse_body(app, ReleaseBody)
    return json_response(200, service.release_room(principal, body.chat_room_id))


@app.post("/api/v1/admin/stores")
def register_store() -> Any:
    principal = current_principal(app)
    body = parse_body(app, RegisterStoreBody)
    return json_response(201, stores.register_store(principal, body))


def _scheduled(event: dict[str, Any], context: Any) -> dict[str, Any]:
    db.new_invocation()
    remaining = getattr(context, "get_remaining_time_in_millis", lambda: 900_000)
    report = jobs.run_scheduled(remaining_ms=remaining, jobs=event.get("jobs", "all"))
    logger.info("scheduled run finished", extra={"report": report})
    return report  # an exception instead fails the run: Scheduler retries, then sends it to the dead-letter queue


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "requestContext" not in event and (event.get("source") == "escrow.schedule" or "jobs" in event):
        return _scheduled(event, context)
    return run(app, event, context)


lambda_handler = lambda_entry(_handle)
