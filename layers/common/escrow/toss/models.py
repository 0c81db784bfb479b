"""Typed Toss objects. Unknown fields and enum values are ignored (Toss adds them without a new version)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

KST = timezone(timedelta(hours=9))  # Toss's times without an offset are Korea's
DUE_DATE_MARGIN = timedelta(hours=1)
FINAL_APPROVED = "DONE"
CANCELLED_STATUSES = ("CANCELED", "PARTIAL_CANCELED")
FAILED_STATUSES = ("ABORTED", "EXPIRED")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Cancel(_Lenient):
    transaction_key: str = Field(alias="transactionKey")
    cancel_amount: int = Field(alias="cancelAmount")
    cancel_reason: str | None = Field(default=None, alias="cancelReason")
    canceled_at: str | None = Field(default=None, alias="canceledAt")
    cancel_status: str | None = Field(default=None, alias="cancelStatus")
    refundable_amount: int | None = Field(default=None, alias="refundableAmount")


class Failure(_Lenient):
    code: str | None = None
    message: str | None = None


class VirtualAccount(_Lenient):
    due_date: str | None = Field(default=None, alias="dueDate")
    expired: bool | None = None


class Payment(_Lenient):
    payment_key: str = Field(alias="paymentKey")
    order_id: str = Field(alias="orderId")
    status: str
    total_amount: int = Field(alias="totalAmount")
    balance_amount: int = Field(default=0, alias="balanceAmount")
    method: str | None = None
    approved_at: str | None = Field(default=None, alias="approvedAt")
    requested_at: str | None = Field(default=None, alias="requestedAt")
    secret: str | None = None
    last_transaction_key: str | None = Field(default=None, alias="lastTransactionKey")
    cancels: list[Cancel] | None = None
    failure: Failure | None = None
    virtual_account: VirtualAccount | None = Field(default=None, alias="virtualAccount")
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Payment:
        payment = cls.model_validate(data)
        payment.raw = data
        return payment

    def deposit_window_closed(self, now: datetime) -> bool:
        """A virtual account waiting for a deposit that can no longer come: Toss says it expired, or its dueDate
        passed (Toss keeps it WAITING_FOR_DEPOSIT and sends no webhook; a deposit after dueDate is refused)."""
        va = self.virtual_account
        if self.status != "WAITING_FOR_DEPOSIT" or va is None:
            return False
        if va.expired is not None:
            return va.expired  # Toss's own word, by Toss's clock: a deposit it still takes is never taken for lost
        if not va.due_date:
            return False
        due = datetime.fromisoformat(va.due_date)
        # Without Toss's word, our clock may run ahead of Toss's: an hour's margin past the dueDate.
        return (due if due.tzinfo else due.replace(tzinfo=KST)) + DUE_DATE_MARGIN < now

    @property
    def is_done(self) -> bool:
        return self.status == FINAL_APPROVED

    @property
    def refunded_amount(self) -> int:
        return sum(c.cancel_amount for c in self.cancels or [] if (c.cancel_status or "DONE") == "DONE")
