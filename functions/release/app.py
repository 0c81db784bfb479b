"""ReleaseFunction: release a room's deposit to the store (HTTP), register store payout accounts (admin), and run
the scheduled jobs (EventBridge Scheduler input `{"source": "escrow.schedule", "jobs": "all"}`)."""

from __future__ import annotations

from typing import Any

from escrow import db
from escrow.http import BEARER, EscrowResolver, documented
from escrow.models import RegisteredStore, RegisterStoreBody, ReleaseBody, Released
from escrow.observability import lambda_entry, logger
from escrow.services import release as service
from escrow.services import stores

app = EscrowResolver()


@app.post(
    "/api/v1/payment/release",
    summary="Release a fully paid room's deposit to the store (owner or admin)",
    operation_id="post_payment_release",
    security=BEARER,
    responses=documented(200, Released, (400, 401, 403, 404, 409, 413, 422, 503)),
)
def release(body: ReleaseBody) -> dict[str, Any]:
    return service.release_room(app.principal, body.chat_room_id)


@app.post(
    "/api/v1/admin/stores",
    summary="Register a store's payout account with Toss payouts (admin)",
    operation_id="post_admin_stores",
    security=BEARER,
    status_code=201,
    responses=documented(201, RegisteredStore, (400, 401, 403, 409, 413, 422, 503)),
)
def register_store(body: RegisterStoreBody) -> dict[str, Any]:
    return stores.register_store(app.principal, body)


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
