"""The OpenAPI description, generated from the code: the request models the handlers validate with, the
response shapes they return, and the error codes they raise. `python -m escrow.openapi > openapi.json`.

Only this command imports this module; no handler does, so it costs nothing at cold start.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel, Field

from escrow.models import (
    CancelBody,
    ConfirmBody,
    CreatePaymentRequestBody,
    ParticipantBody,
    PrepareBody,
    RegisterStoreBody,
    ReleaseBody,
    RoomMembersBody,
)


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable error code")
    message: str
    toss_code: str | None = Field(default=None, description="Toss's own code, when Toss refused")
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CreatedRequest(BaseModel):
    payment_request_id: int
    status: str = Field(description="pending")


class RequestSummary(BaseModel):
    payment_request_id: int
    requester_id: str
    amount: int
    status: str = Field(description="pending | completed | released | cancelled | expired")
    chat_room_id: int
    store_id: str
    message: str | None
    owner_id: str | None = Field(description="the room's current owner (from the chat service)")
    participant_count: int = Field(description="current participants (removed ones not counted)")
    paid_count: int = Field(description="participants whose share is held in full (or released)")
    total_amount: int = Field(description="amount x current participants")
    held_amount: int = Field(description="what the current participants hold now")
    funding_round: int = Field(description="how many times the request became fully funded")
    release_at: str | None
    expires_at: str | None
    completed_at: str | None
    created_at: str | None


class ShareStatus(BaseModel):
    payer_id: str
    payment_amount: int
    payment_status: str = Field(
        description="pending | in_progress | completed | failed | unknown | released | refunded | partially_refunded"
    )
    paid_at: str | None
    refunded_amount: int
    held_amount: int = Field(description="held now (paid - refunded); completed means held == payment_amount")
    owed_amount: int = Field(description="what the participant pays to hold their share in full (pay again)")


class RemovedParticipant(BaseModel):
    payer_id: str
    payment_status: str = Field(description="removed")
    refunded_amount: int
    held_amount: int = Field(description="0 once the refund of what they held is done")
    removed_at: str | None


class RoomStatus(BaseModel):
    payment_request: RequestSummary
    payments: list[ShareStatus]
    removed_participants: list[RemovedParticipant]


class ParticipantAdded(BaseModel):
    payment_request_id: int
    payer_id: str
    payment_amount: int
    payment_status: str = Field(description="pending")
    participant_count: int
    payment_request_status: str = Field(description="pending (a funded request waits for the new participant)")


class ParticipantRemoved(BaseModel):
    payment_request_id: int
    payer_id: str
    payment_status: str = Field(description="removed")
    refund_status: str = Field(description="not_needed | refunded | refund_pending")
    refunded_amount: int
    refunds: list[dict[str, Any]]
    participant_count: int
    payment_request_status: str = Field(description="pending | completed (everyone left holds their share)")


class RoomMembers(BaseModel):
    chat_room_id: int
    applied: bool = Field(description="false for an update older than the one applied (version)")
    owner_id: str | None = None
    member_ids: list[str] | None = None
    owner_changed: bool | None = None
    reason: str | None = None


class PreparedOrder(BaseModel):
    orderId: str  # noqa: N815
    amount: int
    orderName: str  # noqa: N815
    chat_room_id: int
    payment_request_id: int
    customerKey: str  # noqa: N815
    share_amount: int = Field(description="the share's whole amount")
    held_amount: int = Field(description="what the share holds already (amount is what is owed now)")


class Confirmed(BaseModel):
    payment_status: str = Field(description="completed (or in_progress for a virtual account awaiting deposit)")
    paymentKey: str | None = None  # noqa: N815
    orderId: str | None = None  # noqa: N815
    toss_status: str | None = None


class RefundResult(BaseModel):
    success: bool
    refund_status: str = Field(description="refunded | partially_refunded | refund_pending")
    paymentKey: str | None = None  # noqa: N815
    refunded_amount: int | None = None
    remaining_amount: int | None = None
    refunds: list[dict[str, Any]] | None = None
    payment_request_status: str | None = None


class ReleasedPayment(BaseModel):
    payer_id: str
    paymentKey: str  # noqa: N815
    status: str = Field(description="RELEASED")
    amount: int


class Settlement(BaseModel):
    settlement_id: int
    gross_amount: int
    platform_fee: int
    net_amount: int
    ref_payout_id: str
    payout_id: str | None
    payout_status: str = Field(description="scheduled | requesting | requested | in_progress | completed | failed")
    payout_error_code: str | None
    payout_completed_at: str | None


class Released(BaseModel):
    released_payments: list[ReleasedPayment]
    payment_request_id: int
    settlement: Settlement


class RegisteredStore(BaseModel):
    store_id: str
    owner_id: str
    seller_id: str | None
    seller_status: str | None
    bank_code: str
    account_number_masked: str | None
    holder_name: str


class WebhookAck(BaseModel):
    status: str = Field(description="processed | duplicate | ignored")


ERRORS = {
    400: "INVALID_JSON: the body is not JSON (or is nested too deep, or holds a lone UTF-16 surrogate)",
    401: "AUTH_REQUIRED, INVALID_TOKEN, TOKEN_EXPIRED",
    402: "PAYMENT_DECLINED (with toss_code)",
    403: "NOT_ROOM_OWNER, NOT_ROOM_MEMBER, NOT_A_PARTICIPANT, NOT_ALLOWED_TO_CANCEL, ADMIN_ONLY, SERVICE_ONLY",
    404: "ROOM_NOT_FOUND (no membership from the chat service yet), PAYMENT_REQUEST_NOT_FOUND, PAYMENT_NOT_FOUND, "
    "INVALID_CHAT_ROOM_ID, NOT_A_PARTICIPANT",
    409: "OPEN_REQUEST_EXISTS, ALREADY_PAID, PAYMENT_IN_PROGRESS, PAYMENT_OUTCOME_UNKNOWN, ORDER_ID_ALREADY_USED, "
    "PAYMENT_KEY_IN_USE, ALREADY_RELEASED, ALREADY_REFUNDED, NOT_REFUNDABLE, REFUND_IN_PROGRESS, "
    "REQUEST_NOT_FUNDED, NOT_RELEASABLE, STORE_ALREADY_REGISTERED, REFUND_REFUSED, INVALID_STATE_TRANSITION, "
    "AMOUNT_MISMATCH_REFUNDED, REQUEST_CLOSED_REFUNDED, SELLER_REFUSED, REQUEST_CLOSED, PAYMENT_REFUNDED, "
    "PARTICIPANT_REMOVED, ORDER_OUTDATED, ALREADY_A_PARTICIPANT, LAST_PARTICIPANT",
    413: "PAYLOAD_TOO_LARGE: bodies are limited to 64 KiB",
    422: "VALIDATION_ERROR (with details), AMOUNT_MISMATCH, NOT_ROOM_MEMBERS, NO_PARTICIPANTS, UNKNOWN_STORE, "
    "CANCEL_AMOUNT_TOO_LARGE, COMPANY_DETAILS_REQUIRED, TOO_MANY_PARTICIPANTS, TOO_MANY_MEMBERS",
    502: "PAYMENT_OUTCOME_UNKNOWN, REFUND_OUTCOME_UNKNOWN: Toss gave no definite answer; settled automatically",
    503: "DATABASE_UNAVAILABLE, DATABASE_BUSY, TOSS_UNAVAILABLE, SERVICE_NOT_CONFIGURED, AUTH_NOT_CONFIGURED: "
    "nothing was changed, try again (with `outcome: unknown` when the change may have been saved: repeat the same "
    "request to learn its outcome)",
}
# The webhook (no JWT) answers its own codes; Toss retries anything but a 200.
WEBHOOK_ERRORS = {
    **ERRORS,
    400: "INVALID_JSON: the body is not a JSON object (logged, not processed)",
    401: "WEBHOOK_NOT_VERIFIED: bad or missing signature, transmission time older than Toss's retries, secret "
    "mismatch, malformed ids",
    413: "PAYLOAD_TOO_LARGE: larger than any Toss webhook (32 KiB)",
    429: "TOO_MANY_DELIVERIES: too many deliveries for one payment just now; Toss delivers it again",
    503: "DATABASE_UNAVAILABLE, TRY_AGAIN: not processed now; Toss delivers it again",
}

# Answers other than the main success one: (status, response model, description).
EXTRA_SUCCESS: dict[tuple[str, str], tuple[int, type[BaseModel], str]] = {
    ("post", "/api/v1/payment/cancel"): (
        202,
        RefundResult,
        "a whole request was cancelled, or a refund asked, and some refunds are still pending at Toss "
        "(refund_status refund_pending): settled automatically, do not ask again",
    ),
    ("post", "/api/v1/payment/participants/remove"): (
        202,
        ParticipantRemoved,
        "removed; the refund of what they held is still pending at Toss and is settled automatically",
    ),
}

# (method, path, summary, request model, success status, response model, error statuses, authenticated)
ROUTES: list[tuple[str, str, str, type[BaseModel] | None, int, type[BaseModel], list[int], bool]] = [
    (
        "post",
        "/api/v1/payment/request",
        "Open a payment request for a room (room owner)",
        CreatePaymentRequestBody,
        201,
        CreatedRequest,
        [400, 401, 403, 404, 409, 413, 422, 503],
        True,
    ),
    (
        "get",
        "/api/v1/payment/status/{chatRoomId}",
        "A room's payment status (room members)",
        None,
        200,
        RoomStatus,
        [401, 403, 404, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/participants/add",
        "Add a room member to the open request (room owner)",
        ParticipantBody,
        201,
        ParticipantAdded,
        [400, 401, 403, 404, 409, 413, 422, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/participants/remove",
        "Remove a participant from the open request; what they hold is refunded (room owner)",
        ParticipantBody,
        200,
        ParticipantRemoved,
        [400, 401, 403, 404, 409, 413, 422, 503],
        True,
    ),
    (
        "put",
        "/api/v1/admin/rooms/{chatRoomId}/members",
        "The room's membership, from the chat service (service or admin token)",
        RoomMembersBody,
        200,
        RoomMembers,
        [400, 401, 403, 404, 413, 422, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/prepare",
        "Issue the payer's orderId for the Toss widget (participant)",
        PrepareBody,
        200,
        PreparedOrder,
        [400, 401, 403, 404, 409, 413, 422, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/initiate",
        "Confirm a payment with Toss (participant)",
        ConfirmBody,
        200,
        Confirmed,
        [400, 401, 402, 403, 404, 409, 413, 422, 502, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/confirm",
        "Alias of /initiate",
        ConfirmBody,
        200,
        Confirmed,
        [400, 401, 402, 403, 404, 409, 413, 422, 502, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/cancel",
        "Refund a held share (payer or owner), or cancel a whole request (owner)",
        CancelBody,
        200,
        RefundResult,
        [400, 401, 403, 404, 409, 413, 422, 502, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/release",
        "Release a fully paid room's deposit to the store (owner or admin)",
        ReleaseBody,
        200,
        Released,
        [400, 401, 403, 404, 409, 413, 422, 503],
        True,
    ),
    (
        "post",
        "/api/v1/admin/stores",
        "Register a store's payout account with Toss payouts (admin)",
        RegisterStoreBody,
        201,
        RegisteredStore,
        [400, 401, 403, 409, 413, 422, 503],
        True,
    ),
    (
        "post",
        "/api/v1/payment/webhook",
        "Toss webhooks (no JWT; verified per event type)",
        None,
        200,
        WebhookAck,
        [400, 401, 413, 429, 503],
        False,
    ),
]


def build() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error_ref = ref(ErrorResponse)
    paths: dict[str, Any] = {}
    for method, path, summary, body, status, response, errors, secured in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": (method + path.replace("/api/v1", "").replace("/", "_").replace("{", "").replace("}", "")),
            "responses": {
                str(status): {"description": "success", "content": {"application/json": {"schema": ref(response)}}}
            },
        }
        extra = EXTRA_SUCCESS.get((method, path))
        if extra is not None:
            op["responses"][str(extra[0])] = {
                "description": extra[2],
                "content": {"application/json": {"schema": ref(extra[1])}},
            }
        for code in errors:
            op["responses"][str(code)] = {
                "description": (ERRORS if secured else WEBHOOK_ERRORS)[code],
                "content": {"application/json": {"schema": error_ref}},
            }
        if secured:
            op["security"] = [{"bearerAuth": []}]
        else:
            op["security"] = []
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
        elif method in ("post", "put"):
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        if "{chatRoomId}" in path:
            op["parameters"] = [
                {"name": "chatRoomId", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
            ]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Group deposit escrow API",
            "version": "1.0.0",
            "description": "Room owners collect deposits from participants through Toss Payments; the service "
            "holds them in escrow, releases them to the store, and refunds on cancel. Errors are "
            '`{"error": {"code", "message"}}`.',
        },
        "servers": [{"url": "http://127.0.0.1:3000", "description": "local runner"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def render() -> str:
    return json.dumps(build(), ensure_ascii=False, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
