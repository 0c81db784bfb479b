"""Request bodies of the public API. The brief's field names are kept exactly; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

MIN_AMOUNT = 100          # KRW; Toss refuses tiny card payments (BELOW_MINIMUM_AMOUNT)
MAX_AMOUNT = 10_000_000   # KRW per participant; a deposit above this is a typo, not a booking
MAX_PARTICIPANTS = 100

ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{6,64}$"


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 and c not in "\n\t" or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
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
    return value.astimezone(timezone.utc)


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
