"""ReleaseFunction: release a room's deposit to the store (HTTP), register store payout accounts (admin), and run
the scheduled jobs (EventBridge Scheduler input `{"source": "escrow.schedule", "jobs": "all"}`).

Neither HTTP route calls Toss: a release answers with its settlement scheduled and a registration with the seller
pending; the scheduled run's `payouts` and `sellers` jobs make the Toss calls (up to 60 s each)."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path

from escrow import db
from escrow.http import BEARER, JSON, EscrowResolver, documented
from escrow.models import ID_PATTERN, RegisteredStore, RegisterStoreBody, ReleaseBody, Released
from escrow.observability import lambda_entry, logger
from escrow.services import release as service
from escrow.services import stores

app = EscrowResolver()

StoreId = Annotated[str, Path(pattern=ID_PATTERN, description="the store's id")]


@app.post(
    "/api/v1/payment/release",
    summary="Release a fully paid room's deposit to the store (owner or admin); the schedule pays it out",
    operation_id="post_payment_release",
    security=BEARER,
    responses=documented(200, Released, (400, 401, 403, 404, 409, 413, 422, 503)),
)
def release(body: ReleaseBody) -> dict[str, Any]:
    return service.release_room(app.principal, body.chat_room_id)


@app.post(
    "/api/v1/admin/stores",
    summary="Register (or correct) a store's payout account; the scheduled run registers it with Toss payouts (admin)",
    operation_id="post_admin_stores",
    security=BEARER,
    status_code=202,
    responses=documented(
        202,
        RegisteredStore,
        (400, 401, 403, 409, 413, 422, 503),
        description="recorded: the registration is pending, the scheduled run sends it to Toss",
        also={200: (RegisteredStore, "the store is registered with this content already: nothing new to send")},
    ),
)
def register_store(body: RegisterStoreBody) -> Response[dict[str, Any]]:
    status, answer = stores.register_store(app.principal, body)
    return Response(status, JSON, answer)


@app.get(
    "/api/v1/admin/stores/<storeId>",
    summary="A store's payout account and its seller at Toss: registration status, Toss's refusal (admin)",
    operation_id="get_admin_stores_storeId",
    security=BEARER,
    responses=documented(200, RegisteredStore, (401, 403, 404, 503)),
)
def store(storeId: StoreId) -> dict[str, Any]:  # noqa: N803 - the path parameter's name in the API
    return stores.get_store(app.principal, storeId)


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
