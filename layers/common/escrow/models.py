"""Request bodies and answers of the public API. The brief's field names are kept exactly; unknown fields in a
request are refused.

The request models are validated by Powertools' resolver (the handlers' signatures name them). The answer models
describe what the services return, for the OpenAPI description only: nothing validates an answer at run time, and
`defer_build` keeps them from costing a cold start anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from escrow.money import MAX_AMOUNT, MAX_PARTICIPANTS, MIN_AMOUNT

ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{6,64}$"


def _no_control_chars(value: str) -> str:
    # C0 and C1 control characters (but newline and tab), and lone UTF-16 surrogates: a surrogate cannot be encoded
    # as UTF-8 for MySQL, so letting one through failed the request with a 500 instead of a 422.
    if any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) <= 159 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("must not contain control characters or lone surrogates")
    return value


Text = Annotated[StrictStr, AfterValidator(_no_control_chars)]
UserId = Annotated[StrictStr, Field(pattern=ID_PATTERN)]
RoomId = Annotated[StrictInt, Field(gt=0, le=2**62)]
Amount = Annotated[StrictInt, Field(ge=MIN_AMOUNT, le=MAX_AMOUNT)]


class _Body(BaseModel):
    # defer_build: a function builds the validator of the one or two bodies it takes, on first use, not all six.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, defer_build=True)


def _aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("must carry a time zone offset, e.g. 2026-12-01T18:00:00+09:00")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+14:00 has no UTC year; pydantic would let this become a 500
        raise ValueError("is out of range") from exc


class CreatePaymentRequestBody(_Body):
    chat_room_id: RoomId
    store_id: Annotated[StrictStr, Field(pattern=ID_PATTERN)]
    amount: Amount
    message: Annotated[Text, Field(max_length=500)] | None = None
    participant_ids: Annotated[list[UserId], Field(min_length=1, max_length=MAX_PARTICIPANTS)] | None = None
    release_at: datetime | None = None
    expires_at: datetime | None = None

    @field_validator("release_at", "expires_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _aware_utc(value)

    @field_validator("participant_ids")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("participant ids must be unique")
        return value


class PrepareBody(_Body):
    chat_room_id: RoomId


class ConfirmBody(_Body):
    chat_room_id: RoomId
    amount: StrictInt
    paymentKey: Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]  # noqa: N815
    orderId: Annotated[StrictStr, Field(pattern=ORDER_ID_PATTERN)]  # noqa: N815
    payment_method: Annotated[Text, Field(max_length=32)] | None = None


class CancelBody(_Body):
    """Either a share (`paymentKey`, the brief's body, optional `cancelAmount`) or a whole request
    (`chat_room_id`, room owner only)."""

    paymentKey: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None  # noqa: N815
    chat_room_id: RoomId | None = None
    cancelReason: Annotated[Text, Field(min_length=1, max_length=200)]  # noqa: N815
    cancelAmount: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)] | None = None  # noqa: N815

    # A model validator, not a field validator on chat_room_id: a field validator does not run when the field is
    # absent, so a body naming neither target got through and crashed the cancel handler with a 500.
    @model_validator(mode="after")
    def _one_target(self) -> CancelBody:
        if (self.chat_room_id is None) == (self.paymentKey is None):
            raise ValueError("give either paymentKey or chat_room_id, not both")
        return self


class ReleaseBody(_Body):
    chat_room_id: RoomId


class ParticipantBody(_Body):
    """A participant added to or removed from the room's open request (room owner only)."""

    chat_room_id: RoomId
    user_id: UserId
    reason: Annotated[Text, Field(min_length=1, max_length=200)] | None = None


class RoomMembersBody(_Body):
    """The chat service's membership of a room: its owner and its other members."""

    owner_id: UserId
    member_ids: Annotated[list[UserId], Field(max_length=1000)]
    version: Annotated[StrictInt, Field(ge=0, le=2**62)] | None = None


class RegisterStoreBody(_Body):
    store_id: Annotated[StrictStr, Field(pattern=ID_PATTERN)]
    owner_id: UserId
    name: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    # A bank code (the brief's, Toss's or the 3-digit standard code) or the bank's name: escrow.banks resolves it
    # (422 UNKNOWN_BANK otherwise).
    bank_code: Annotated[StrictStr, Field(min_length=1, max_length=40)]
    account_number: Annotated[StrictStr, Field(pattern=r"^[0-9]{6,20}$")]
    holder_name: Annotated[Text, Field(min_length=1, max_length=30)]
    business_type: Annotated[StrictStr, Field(pattern=r"^(INDIVIDUAL|INDIVIDUAL_BUSINESS|CORPORATE)$")] = "INDIVIDUAL"
    email: Annotated[StrictStr, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,100}$", max_length=100)]
    phone: Annotated[StrictStr, Field(pattern=r"^[0-9]{9,11}$")]
    company_name: Annotated[Text, Field(max_length=100)] | None = None
    representative_name: Annotated[Text, Field(max_length=60)] | None = None
    business_registration_number: Annotated[StrictStr, Field(pattern=r"^[0-9]{10}$")] | None = None


# --- answers (documentation only) ----------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(defer_build=True)


class ErrorBody(_Answer):
    code: str = Field(description="machine-readable error code")
    message: str
    toss_code: str | None = Field(default=None, description="Toss's own code, when Toss refused")
    details: list[dict[str, Any]] | None = None


class ErrorResponse(_Answer):
    error: ErrorBody


class CreatedRequest(_Answer):
    payment_request_id: int
    status: str = Field(description="pending")


class RequestSummary(_Answer):
    payment_request_id: int
    requester_id: str
    amount: int
    status: str = Field(description="pending | completed | released | cancelled | expired")
    chat_room_id: int
    store_id: str
    message: str | None
    owner_id: str | None = Field(default=None, description="the room's current owner (from the chat service)")
    participant_count: int = Field(description="current participants (removed ones not counted)")
    paid_count: int = Field(description="participants whose share is held in full (or released)")
    total_amount: int = Field(description="amount x current participants")
    held_amount: int = Field(default=0, description="what the current participants hold now")
    funding_round: int = Field(default=0, description="how many times the request became fully funded")
    release_at: str | None
    expires_at: str | None
    completed_at: str | None
    created_at: str | None


class ShareStatus(_Answer):
    payer_id: str
    payment_amount: int
    payment_status: str = Field(
        description="pending | in_progress | completed | failed | unknown | released | refunded | partially_refunded"
    )
    paid_at: str | None
    refunded_amount: int
    held_amount: int = Field(default=0, description="held now (paid - refunded); completed: held == payment_amount")
    owed_amount: int = Field(default=0, description="what the participant pays to hold their share in full again")


class RemovedParticipant(_Answer):
    payer_id: str
    payment_status: str = Field(description="removed")
    refunded_amount: int
    held_amount: int = Field(description="0 once the refund of what they held is done")
    removed_at: str | None


class PayoutBalance(_Answer):
    available_amount: int | None = Field(description="Toss's availableAmount at the last reading (GET /v2/balances)")
    pending_amount: int | None = Field(description="Toss's pendingAmount at the last reading")
    needed_amount: int = Field(
        description="what availableAmount must reach for this payout: its net and every older one waiting"
    )


class Settlement(_Answer):
    settlement_id: int
    gross_amount: int
    platform_fee: int
    net_amount: int
    ref_payout_id: str
    payout_id: str | None
    payout_status: str = Field(
        description="scheduled | requesting | requested | in_progress | completed | failed | not_needed | canceled"
    )
    payout_waiting_for: str | None = Field(
        description="for a scheduled payout: schedule (the next scheduled run sends it) | balance (Toss's available "
        "payout balance does not cover it yet: card sales settle after a cycle) | seller (the store has no seller Toss "
        "pays yet) | retry (Toss refused it or did not settle it; tried again at payout_next_attempt_at); else null"
    )
    payout_attempts: int
    payout_error_code: str | None = Field(description="Toss's code of the last refusal or failure")
    payout_error_message: str | None
    payout_next_attempt_at: str | None = Field(description="when a payout waiting for a retry is tried again")
    payout_completed_at: str | None
    released_at: str | None
    balance_checked_at: str | None = Field(
        default=None, description="when waiting for the balance: when it was last read"
    )
    balance: PayoutBalance | None = Field(default=None, description="when waiting for the balance, to admins only")


class RoomStatus(_Answer):
    payment_request: RequestSummary
    payments: list[ShareStatus] = Field(description="the current participants")
    removed_participants: list[RemovedParticipant] = Field(default_factory=list)
    settlement: Settlement | None = Field(
        default=None, description="the settlement and its payout, once the request is released"
    )


class ParticipantAdded(_Answer):
    payment_request_id: int
    payer_id: str
    payment_amount: int
    payment_status: str = Field(description="pending")
    participant_count: int
    payment_request_status: str = Field(description="pending (a funded request waits for the new participant)")


class ParticipantRemoved(_Answer):
    payment_request_id: int
    payer_id: str
    payment_status: str = Field(description="removed")
    refund_status: str = Field(description="not_needed | refunded | refund_pending")
    refunded_amount: int
    refunds: list[dict[str, Any]]
    participant_count: int
    payment_request_status: str = Field(description="pending | completed (everyone left holds their share)")


class RoomMembers(_Answer):
    chat_room_id: int
    applied: bool = Field(description="false for an update older than the one applied (version)")
    owner_id: str | None = None
    member_ids: list[str] | None = None
    owner_changed: bool | None = None
    reason: str | None = None


class PreparedOrder(_Answer):
    orderId: str  # noqa: N815
    amount: int
    orderName: str  # noqa: N815
    chat_room_id: int
    payment_request_id: int
    customerKey: str  # noqa: N815
    share_amount: int | None = Field(default=None, description="the share's whole amount")
    held_amount: int | None = Field(default=None, description="what the share holds already; amount is what is owed")


class Confirmed(_Answer):
    payment_status: str = Field(
        description="completed; in_progress for a virtual account awaiting deposit; released when a confirm Toss "
        "approved earlier is sent again after the release"
    )
    paymentKey: str | None = None  # noqa: N815
    orderId: str | None = None  # noqa: N815
    toss_status: str | None = None


class RefundResult(_Answer):
    success: bool
    refund_status: str = Field(description="refunded | partially_refunded | refund_pending")
    paymentKey: str | None = None  # noqa: N815
    refunded_amount: int | None = Field(default=None, description="refunded of this paymentKey so far")
    remaining_amount: int | None = None
    refunds: list[dict[str, Any]] | None = None
    payment_request_status: str | None = None
    already_cancelled: bool | None = Field(default=None, description="the request was cancelled by an earlier call")
    message: str | None = None


class ReleasedPayment(_Answer):
    payer_id: str
    paymentKey: str  # noqa: N815
    status: str = Field(description="RELEASED")
    amount: int


class Released(_Answer):
    released_payments: list[ReleasedPayment]
    payment_request_id: int
    settlement: Settlement = Field(description="scheduled: the scheduled run sends the payout (no Toss call here)")


class RegisteredStore(_Answer):
    store_id: str
    owner_id: str
    name: str | None
    registration_status: str | None = Field(
        description="pending (the scheduled run sends it to Toss) | sending | registered | refused (see "
        "seller_error_code; register again to correct it)"
    )
    ref_seller_id: str | None = Field(description="our refSellerId at Toss")
    seller_id: str | None = Field(description="Toss's seller id, once registered")
    seller_status: str | None = Field(
        description="Toss's: APPROVAL_REQUIRED | PARTIALLY_APPROVED | KYC_REQUIRED | APPROVED"
    )
    business_type: str | None
    bank_code: str | None = Field(description="the bank's 3-digit standard code (what payouts send Toss)")
    bank_name: str | None
    account_number_masked: str | None
    holder_name: str | None
    seller_attempts: int
    seller_error_code: str | None = Field(description="Toss's code of the last refusal")
    seller_error_message: str | None
    seller_next_attempt_at: str | None = Field(description="when an error Toss may overcome is tried again")


class WebhookAck(_Answer):
    status: str = Field(description="processed | duplicate | ignored")


# What each error status means on the JWT-authenticated routes (the codes a client can act on).
ERRORS = {
    400: "INVALID_JSON: the body is not JSON (or is empty, nested too deep, not UTF-8, or holds a lone UTF-16 "
    "surrogate); bodies are read as JSON whatever their content-type",
    401: "AUTH_REQUIRED, INVALID_TOKEN, TOKEN_EXPIRED (with `WWW-Authenticate: Bearer`)",
    402: "PAYMENT_DECLINED (with toss_code)",
    403: "NOT_ROOM_OWNER, NOT_ROOM_MEMBER, NOT_A_PARTICIPANT, NOT_ALLOWED_TO_CANCEL, ADMIN_ONLY, SERVICE_ONLY",
    404: "ROOM_NOT_FOUND (no membership from the chat service yet), PAYMENT_REQUEST_NOT_FOUND, PAYMENT_NOT_FOUND, "
    "INVALID_CHAT_ROOM_ID, NOT_A_PARTICIPANT, STORE_NOT_FOUND",
    409: "OPEN_REQUEST_EXISTS, ALREADY_PAID, PAYMENT_IN_PROGRESS, PAYMENT_OUTCOME_UNKNOWN, ORDER_ID_ALREADY_USED, "
    "PAYMENT_KEY_IN_USE, ALREADY_RELEASED (with the first release's released_payments and settlement), "
    "ALREADY_REFUNDED, NOT_REFUNDABLE, REFUND_IN_PROGRESS, REQUEST_NOT_FUNDED, NOT_RELEASABLE, "
    "SELLER_REGISTRATION_IN_PROGRESS, SELLER_BUSINESS_TYPE_FIXED, REFUND_REFUSED, INVALID_STATE_TRANSITION, "
    "AMOUNT_MISMATCH_REFUNDED, REQUEST_CLOSED_REFUNDED, REQUEST_CLOSED, PAYMENT_REFUNDED, PARTICIPANT_REMOVED, "
    "ORDER_OUTDATED, ALREADY_A_PARTICIPANT, LAST_PARTICIPANT, REQUEST_CHANGED, REQUEST_DEADLINE_PASSED (no paying or "
    "joining after expires_at)",
    413: "PAYLOAD_TOO_LARGE: bodies are limited to 64 KiB",
    422: "VALIDATION_ERROR (with details [{field, message}]), AMOUNT_MISMATCH, NOT_ROOM_MEMBERS, NO_PARTICIPANTS, "
    "UNKNOWN_STORE, CANCEL_AMOUNT_TOO_LARGE, CANCEL_AMOUNT_BELOW_MINIMUM (a refund may not leave 1-99 KRW owed), "
    "COMPANY_DETAILS_REQUIRED, UNKNOWN_BANK, TOO_MANY_PARTICIPANTS, "
    "TOO_MANY_MEMBERS",
    502: "PAYMENT_OUTCOME_UNKNOWN, REFUND_OUTCOME_UNKNOWN: Toss gave no definite answer; settled automatically",
    503: "DATABASE_UNAVAILABLE, DATABASE_BUSY, TOSS_UNAVAILABLE, SECRETS_UNAVAILABLE, SERVICE_NOT_CONFIGURED, "
    "AUTH_NOT_CONFIGURED: nothing was changed, try again (with `outcome: unknown` when the database connection was "
    "lost after the change may have been saved: repeat the same request to learn its outcome)",
}
# The webhook (no JWT) answers its own codes; Toss retries anything but a 200.
WEBHOOK_ERRORS = {
    **ERRORS,
    400: "INVALID_JSON: the body is not a JSON object (logged, not processed)",
    401: "WEBHOOK_NOT_VERIFIED: bad or missing signature, transmission time older than Toss's retries, secret "
    "mismatch, malformed ids",
    403: "WEBHOOK_SOURCE_NOT_ALLOWED: sent from an address outside TOSS_WEBHOOK_ALLOWED_IPS (logged, not processed)",
    413: "PAYLOAD_TOO_LARGE: larger than any Toss webhook (32 KiB)",
    429: "TOO_MANY_DELIVERIES: too many deliveries for one payment just now; Toss delivers it again",
    503: "DATABASE_UNAVAILABLE, TRY_AGAIN, SECRETS_UNAVAILABLE: not processed now; Toss delivers it again",
}
