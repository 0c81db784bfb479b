"""What the services need of Toss: the `TossPort`.

The services take it as a parameter (`toss=`) and fall back to the HTTP client (`escrow.toss.client.TossClient`,
which implements it) when none is given. Tests pass the Toss sandbox through the real client, or, in the unit tests,
the in-memory fake `tests/support/fake_toss.py`, which plays the sandbox's answers for these calls without a socket.

Every POST carries an Idempotency-Key (Toss replays the first answer to a key, errors included); failures raise the
errors of `escrow.toss.errors`: `TossApiError` (Toss answered with a code), `TossTimeout` (no answer: the call may
have happened) and `TossConnectionError` (it never reached Toss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from escrow.toss.models import Payment


class TossPort(Protocol):
    # --- Core API v1: payments ---------------------------------------------------------------------------

    def confirm(self, payment_key: str, order_id: str, amount: int, *, idempotency_key: str) -> Payment:
        """`POST /v1/payments/confirm`: approve an authenticated payment."""
        ...

    def get_payment(self, payment_key: str, *, read_timeout: float | None = None) -> Payment:
        """`GET /v1/payments/{paymentKey}`."""
        ...

    def get_payment_by_order(self, order_id: str, *, read_timeout: float | None = None) -> Payment:
        """`GET /v1/payments/orders/{orderId}`: the lookup after a confirm whose answer was lost."""
        ...

    def cancel(
        self,
        payment_key: str,
        reason: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        refundable_amount: int | None = None,
        refund_account: Mapping[str, str] | None = None,
    ) -> Payment:
        """`POST /v1/payments/{paymentKey}/cancel`: all that is left (`amount` None) or part of it. With
        `refundable_amount`, Toss refuses (NOT_MATCHES_REFUNDABLE_AMOUNT) unless it is the payment's balance.
        `refund_account` (`{bank, accountNumber, holderName}`, Toss's bank code) is `refundReceiveAccount`, which a
        deposited virtual-account payment needs; it is personal data: never logged."""
        ...

    # --- payouts v2 (지급대행) ------------------------------------------------------------------------------

    def register_seller(self, seller: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """`POST /v2/sellers`."""
        ...

    def update_seller(self, seller_id: str, changes: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """`POST /v2/sellers/{id}`: only the fields that change."""
        ...

    def get_seller(self, seller_id: str) -> dict[str, Any]:
        """`GET /v2/sellers/{id}`."""
        ...

    def list_sellers(self) -> list[dict[str, Any]]:
        """`GET /v2/sellers`: how a seller whose answer was lost is found by its refSellerId (the first page)."""
        ...

    def request_payouts(self, items: list[dict[str, Any]], *, idempotency_key: str) -> list[dict[str, Any]]:
        """`POST /v2/payouts`: up to 100 items, all or nothing."""
        ...

    def get_payout(self, payout_id: str) -> dict[str, Any]:
        """`GET /v2/payouts/{id}`."""
        ...

    def list_payouts(self) -> list[dict[str, Any]]:
        """`GET /v2/payouts`: how a payout whose id we never learnt is found by its refPayoutId (the first page)."""
        ...

    def get_balances(self) -> dict[str, int]:
        """`GET /v2/balances`: `{"available": ..., "pending": ...}` in KRW; what payouts may spend is available."""
        ...
