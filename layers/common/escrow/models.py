"""Request bodies of the public API. The brief's field names are kept exactly; unknown fields are refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

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
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


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


BANK_CODES = {
    "04": "KB국민은행",
    "05": "하나은행",
    "88": "신한은행",
    "20": "우리은행",
    "11": "NH농협은행",
    "03": "IBK기업은행",
    "23": "SC제일은행",
    "27": "씨티은행",
    "32": "부산은행",
    "31": "대구은행",
    "34": "광주은행",
    "35": "제주은행",
    "39": "경남은행",
    "92": "토스뱅크",
    "89": "케이뱅크",
    "90": "카카오뱅크",
    "45": "새마을금고",
    "07": "수협은행",
    "50": "저축은행중앙회",
    "71": "우체국예금보험",
    "64": "산림조합",
}  # the brief's list, exactly as the chat app sends it


class RegisterStoreBody(_Body):
    store_id: Annotated[StrictStr, Field(pattern=ID_PATTERN)]
    owner_id: UserId
    name: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    bank_code: StrictStr
    account_number: Annotated[StrictStr, Field(pattern=r"^[0-9]{6,20}$")]
    holder_name: Annotated[Text, Field(min_length=1, max_length=30)]
    business_type: Annotated[StrictStr, Field(pattern=r"^(INDIVIDUAL|INDIVIDUAL_BUSINESS|CORPORATE)$")] = "INDIVIDUAL"
    email: Annotated[StrictStr, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,100}$", max_length=100)]
    phone: Annotated[StrictStr, Field(pattern=r"^[0-9]{9,11}$")]
    company_name: Annotated[Text, Field(max_length=100)] | None = None
    representative_name: Annotated[Text, Field(max_length=60)] | None = None
    business_registration_number: Annotated[StrictStr, Field(pattern=r"^[0-9]{10}$")] | None = None

    @field_validator("bank_code")
    @classmethod
    def _known_bank(cls, value: str) -> str:
        if value not in BANK_CODES:
            raise ValueError("bank_code must be one of the brief's bank codes")
        return value
