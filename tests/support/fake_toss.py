"""An in-memory Toss for unit tests: the `TossPort` (`escrow.toss.port`) without a socket.

It answers the calls the services make the way the project's sandbox (`toss_sandbox/`) does: the same statuses, the
same error codes with the same HTTP statuses and messages (read from `toss_sandbox.errors`), the same Idempotency-Key
rules, balances and payout refusals. `tests/sandbox/test_fake_toss_contract.py` runs one set of scenarios against
this fake and against the sandbox through the real HTTP client, so the two cannot drift apart unnoticed.

What it plays (the sandbox's rule for each is in its module named in brackets):

* confirm [payments.py]: an authenticated payment (`authenticate`, the widget) is confirmed once, within 10 minutes,
  for its own orderId and amount; `DONE` for a card, `WAITING_FOR_DEPOSIT` for a virtual account (`deposit` pays it).
  Refusals: NOT_FOUND_PAYMENT, NOT_FOUND_PAYMENT_SESSION (another orderId, or the window passed: the payment becomes
  EXPIRED), ALREADY_PROCESSED_PAYMENT, INVALID_REQUEST (another amount; the payment stays IN_PROGRESS).
* lookups by paymentKey and by orderId (NOT_FOUND_PAYMENT).
* cancel [payments.py]: all that is left or part of it, `refundableAmount` checked against the balance
  (NOT_MATCHES_REFUNDABLE_AMOUNT), NOT_CANCELABLE_AMOUNT over the balance or at 0, ALREADY_CANCELED_PAYMENT,
  NOT_CANCELABLE_PAYMENT before approval, partial -> PARTIAL_CANCELED, the rest after partials -> PARTIAL_CANCELED
  with balance 0 (`rest_cancel_status`), a single full cancel -> CANCELED; a cancel takes the sale back.
* Idempotency-Key [idempotency.py]: identity (key, method, path); a repeat gets the first answer again, errors
  included (5xx too, as the sandbox's default `idempotency_bind_5xx=True`), whatever its body says.
* sellers and payouts v2 [payouts.py]: INDIVIDUAL / INDIVIDUAL_BUSINESS sellers start APPROVAL_REQUIRED, CORPORATE
  PARTIALLY_APPROVED; DUPLICATED_REF_SELLER_ID. A payout request is all or nothing: DUPLICATED_REF_PAYOUT_ID,
  NOT_FOUND_SELLER, FORBIDDEN_SELLER_PAYOUT (seller not PARTIALLY_APPROVED / APPROVED), NOT_ENOUGH_AMOUNT (the sum
  above `availableAmount`); EXPRESS payouts are IN_PROGRESS, their amount leaves `availableAmount` at once.
* balances [balances.py]: a sale becomes `availableAmount` `settlement_delay` after its approval, on the fake's clock
  (an `escrow.clock.FixedClock` the test moves); `set_balance` sets it directly; `get_balances` reads it.

Besides the port's calls it answers `get_balances`, `update_seller`, `list_sellers` and `list_payouts`, which the
payout work brings to the client.

Faults, each for the next call of one operation (`confirm`, `cancel`, `get_payment`, `get_payment_by_order`,
`register_seller`, `get_seller`, `request_payouts`, `get_payout`): `fail_next` (Toss answers that code; the answer is
bound to the key), `lose_next_answer` (Toss does it, the answer never arrives: `TossTimeout`), `unreachable_next`
(`TossConnectionError`: nothing reached Toss), `processing_next` (409 IDEMPOTENT_REQUEST_PROCESSING, not bound).
Every call is recorded in `calls`.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from escrow.clock import Clock, FixedClock
from escrow.toss.errors import TossApiError, TossConnectionError, TossTimeout
from escrow.toss.models import Payment
from toss_sandbox.errors import ERROR_TABLE

ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
CONFIRM_WINDOW = timedelta(minutes=10)
SETTLEMENT_DELAY = timedelta(days=2)
PAYABLE_SELLER_STATUSES = ("PARTIALLY_APPROVED", "APPROVED")
MAX_PAYOUT_ITEMS = 100
CARD = "카드"
VIRTUAL_ACCOUNT = "가상계좌"
OPERATIONS = (
    "confirm",
    "cancel",
    "get_payment",
    "get_payment_by_order",
    "register_seller",
    "get_seller",
    "request_payouts",
    "get_payout",
    "update_seller",
)


def toss_error(code: str, message: str | None = None) -> TossApiError:
    """The error the sandbox answers with `code`: its HTTP status and message."""
    status, text = ERROR_TABLE.get(code, (400, f"{code} (sandbox)"))
    return TossApiError(status, code, message or text)


@dataclass
class _Cancel:
    transaction_key: str
    amount: int
    reason: str
    refundable_after: int
    at: datetime


@dataclass
class _Payment:
    payment_key: str
    order_id: str
    amount: int
    method: str
    requested_at: datetime
    status: str = "IN_PROGRESS"
    balance: int = 0
    approved_at: datetime | None = None
    secret: str | None = None
    last_transaction_key: str | None = None
    cancels: list[_Cancel] = field(default_factory=list)
    failure: dict[str, str] | None = None


@dataclass
class _Sale:
    payment_key: str
    amount: int
    settles_at: datetime
    available: bool = False


@dataclass
class Call:
    operation: str
    idempotency_key: str | None
    body: Any
    replayed: bool = False
    fault: str | None = None


class FakeToss:
    """In-memory Toss (see the module's docstring). Structurally a `TossPort`."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        settlement_delay: timedelta = SETTLEMENT_DELAY,
        rest_cancel_status: str = "PARTIAL_CANCELED",
    ) -> None:
        self.clock: Clock = clock or FixedClock()
        self.settlement_delay = settlement_delay
        self.rest_cancel_status = rest_cancel_status
        self.payments: dict[str, _Payment] = {}
        self._by_order: dict[str, str] = {}
        self._answers: dict[tuple[str, str, str], Payment | dict[str, Any] | list[dict[str, Any]] | TossApiError] = {}
        self.sellers: dict[str, dict[str, Any]] = {}
        self._seller_refs: set[str] = set()
        self.payouts: dict[str, dict[str, Any]] = {}
        self._payout_refs: set[str] = set()
        self._sales: list[_Sale] = []
        self._available = 0
        self._faults: dict[str, list[tuple[str, str | None]]] = {op: [] for op in OPERATIONS}
        self._ids = itertools.count(1)
        self.calls: list[Call] = []

    # --- what the buyer and Toss's operators do (the sandbox's controls) --------------------------------------

    def authenticate(self, order_id: str, amount: int, *, method: str = CARD) -> str:
        """The payment window: the buyer authenticated a payment of `amount` for `order_id`. Returns its paymentKey."""
        if not ORDER_ID.match(order_id):
            raise toss_error("INVALID_ORDER_ID")
        for existing in self.payments.values():
            if existing.order_id == order_id:
                if existing.status != "IN_PROGRESS":
                    raise toss_error("DUPLICATED_ORDER_ID")
                existing.status = "EXPIRED"  # the same orderId authenticated again replaces the old payment
        payment_key = f"tfake{next(self._ids):06d}"
        self.payments[payment_key] = _Payment(payment_key, order_id, amount, method, self.clock(), balance=amount)
        self._by_order[order_id] = payment_key
        return payment_key

    def deposit(self, payment_key: str) -> None:
        """The buyer deposits into the virtual account: WAITING_FOR_DEPOSIT -> DONE, a sale."""
        p = self.payments[payment_key]
        if p.status != "WAITING_FOR_DEPOSIT":
            raise toss_error("INVALID_REQUEST", f"payment is {p.status}, not WAITING_FOR_DEPOSIT")
        p.status, p.approved_at = "DONE", self.clock()
        p.last_transaction_key = self._transaction_key()
        self._record_sale(p)

    def set_seller_status(self, seller_id: str, status: str) -> None:
        self.sellers[seller_id]["status"] = status

    def complete_payout(self, payout_id: str, status: str = "COMPLETED", code: str | None = None) -> None:
        """Toss finishes a payout: COMPLETED, or FAILED (its amount returns to `availableAmount`)."""
        payout = self.payouts[payout_id]
        payout["status"] = status
        if status == "FAILED":
            payout["error"] = {"code": code or "FAILED_PAYOUT", "message": "지급이 실패했습니다."}
            self._available += int(payout["amount"]["value"])

    def set_balance(self, available: int) -> None:
        self._available = available

    # --- faults --------------------------------------------------------------------------------------------------

    def fail_next(self, operation: str, code: str) -> None:
        self._fault(operation, "fail", code)

    def lose_next_answer(self, operation: str) -> None:
        self._fault(operation, "lose")

    def unreachable_next(self, operation: str) -> None:
        self._fault(operation, "unreachable")

    def processing_next(self, operation: str) -> None:
        self._fault(operation, "processing")

    def _fault(self, operation: str, kind: str, code: str | None = None) -> None:
        if operation not in self._faults:
            raise ValueError(f"no operation {operation!r}; one of {OPERATIONS}")
        self._faults[operation].append((kind, code))

    # --- the TossPort ------------------------------------------------------------------------------------------

    def confirm(self, payment_key: str, order_id: str, amount: int, *, idempotency_key: str) -> Payment:
        body = {"paymentKey": payment_key, "orderId": order_id, "amount": amount}
        answer = self._post("confirm", "/v1/payments/confirm", idempotency_key, body, lambda: self._confirm(body))
        assert isinstance(answer, Payment)
        return answer

    def get_payment(self, payment_key: str, *, read_timeout: float | None = None) -> Payment:
        def look() -> Payment:
            p = self.payments.get(payment_key)
            if p is None:
                raise toss_error("NOT_FOUND_PAYMENT")
            return self._render(p)

        answer = self._get("get_payment", payment_key, look)
        assert isinstance(answer, Payment)
        return answer

    def get_payment_by_order(self, order_id: str, *, read_timeout: float | None = None) -> Payment:
        def look() -> Payment:
            key = self._by_order.get(order_id)
            if key is None:
                raise toss_error("NOT_FOUND_PAYMENT")
            return self._render(self.payments[key])

        answer = self._get("get_payment_by_order", order_id, look)
        assert isinstance(answer, Payment)
        return answer

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
        body: dict[str, Any] = {"cancelReason": reason}
        if amount is not None:
            body["cancelAmount"] = amount
        if refundable_amount is not None:
            body["refundableAmount"] = refundable_amount
        if refund_account is not None:
            body["refundReceiveAccount"] = dict(refund_account)
        path = f"/v1/payments/{payment_key}/cancel"
        answer = self._post("cancel", path, idempotency_key, body, lambda: self._cancel(payment_key, body))
        assert isinstance(answer, Payment)
        return answer

    def register_seller(self, seller: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        answer = self._post("register_seller", "/v2/sellers", idempotency_key, seller, lambda: self._register(seller))
        assert isinstance(answer, dict)
        return answer

    def get_seller(self, seller_id: str) -> dict[str, Any]:
        def look() -> dict[str, Any]:
            if seller_id not in self.sellers:
                raise toss_error("NOT_FOUND_SELLER")
            return copy.deepcopy(self.sellers[seller_id])

        answer = self._get("get_seller", seller_id, look)
        assert isinstance(answer, dict)
        return answer

    def request_payouts(self, items: list[dict[str, Any]], *, idempotency_key: str) -> list[dict[str, Any]]:
        answer = self._post("request_payouts", "/v2/payouts", idempotency_key, items, lambda: self._payout(items))
        assert isinstance(answer, list)
        return answer

    def get_payout(self, payout_id: str) -> dict[str, Any]:
        def look() -> dict[str, Any]:
            if payout_id not in self.payouts:
                raise toss_error("NOT_FOUND_PAYOUT")
            return copy.deepcopy(self.payouts[payout_id])

        answer = self._get("get_payout", payout_id, look)
        assert isinstance(answer, dict)
        return answer

    def get_balances(self) -> dict[str, int]:
        """`GET /v2/balances`, as the client reads it: what can be paid out now, and what is on its way (KRW)."""
        self._settle()
        return {"available": self._available, "pending": sum(s.amount for s in self._sales if not s.available)}

    def list_sellers(self) -> list[dict[str, Any]]:
        """`GET /v2/sellers` (the first page: all of them here)."""
        return [copy.deepcopy(s) for s in self.sellers.values()]

    def update_seller(self, seller_id: str, changes: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """`POST /v2/sellers/{id}`: only the fields that change."""

        def update() -> dict[str, Any]:
            if seller_id not in self.sellers:
                raise toss_error("NOT_FOUND_SELLER")
            self.sellers[seller_id].update(copy.deepcopy(changes))
            return copy.deepcopy(self.sellers[seller_id])

        answer = self._post("update_seller", f"/v2/sellers/{seller_id}", idempotency_key, changes, update)
        assert isinstance(answer, dict)
        return answer

    def list_payouts(self) -> list[dict[str, Any]]:
        """`GET /v2/payouts` (the first page: all of them here)."""
        return [copy.deepcopy(p) for p in self.payouts.values()]

    # --- transport: faults and the Idempotency-Key ---------------------------------------------------------------

    def _take_fault(self, operation: str) -> tuple[str, str | None] | None:
        queue = self._faults[operation]
        return queue.pop(0) if queue else None

    def _post(
        self, operation: str, path: str, key: str, body: Any, run: Callable[[], Any]
    ) -> Payment | dict[str, Any] | list[dict[str, Any]]:
        if not key or len(key) > 300:
            raise ValueError("an Idempotency-Key must be 1-300 characters")  # as TossClient refuses to send it
        call = Call(operation, key, copy.deepcopy(body))
        self.calls.append(call)
        fault = self._take_fault(operation)
        if fault is not None and fault[0] == "unreachable":
            call.fault = "unreachable"
            raise TossConnectionError("could not connect to Toss: fake")
        identity = ("POST", path, key)
        if identity in self._answers:
            call.replayed = True
            return self._replay(self._answers[identity])
        if fault is not None and fault[0] == "processing":
            call.fault = "processing"
            raise toss_error("IDEMPOTENT_REQUEST_PROCESSING")
        answer: Payment | dict[str, Any] | list[dict[str, Any]] | TossApiError
        if fault is not None and fault[0] == "fail":
            call.fault = f"fail:{fault[1]}"
            answer = toss_error(str(fault[1]))
        else:
            try:
                answer = run()
            except TossApiError as exc:
                answer = exc
        self._answers[identity] = answer  # every answer is bound to its key, errors included
        if fault is not None and fault[0] == "lose":
            call.fault = "lose"
            raise TossTimeout(f"Toss did not answer POST {path} in time (fake)")
        return self._replay(answer)

    def _get(self, operation: str, subject: str, look: Callable[[], Any]) -> Any:
        call = Call(operation, None, subject)
        self.calls.append(call)
        fault = self._take_fault(operation)
        if fault is not None:
            call.fault = fault[0] if fault[0] != "fail" else f"fail:{fault[1]}"
            if fault[0] == "fail":
                raise toss_error(str(fault[1]))
            if fault[0] == "unreachable":
                raise TossConnectionError("could not connect to Toss: fake")
            raise TossTimeout(f"Toss did not answer the {operation} lookup in time (fake)")
        return look()

    @staticmethod
    def _replay(
        answer: Payment | dict[str, Any] | list[dict[str, Any]] | TossApiError,
    ) -> Payment | dict[str, Any] | list[dict[str, Any]]:
        if isinstance(answer, TossApiError):
            raise TossApiError(answer.status, answer.code, answer.message)
        if isinstance(answer, Payment):
            return Payment.from_api(copy.deepcopy(answer.raw))
        return copy.deepcopy(answer)

    # --- Toss's rules ---------------------------------------------------------------------------------------------

    def _confirm(self, body: dict[str, Any]) -> Payment:
        if not ORDER_ID.match(body["orderId"]):
            raise toss_error("INVALID_ORDER_ID")
        if not isinstance(body["amount"], int) or body["amount"] < 1:
            raise toss_error("INVALID_REQUEST", "amount는 1 이상의 숫자여야 합니다.")
        p = self.payments.get(body["paymentKey"])
        if p is None:
            raise toss_error("NOT_FOUND_PAYMENT")
        self._expire_if_due(p)
        if p.status == "EXPIRED":
            raise toss_error("NOT_FOUND_PAYMENT_SESSION")
        if p.status != "IN_PROGRESS":
            raise toss_error("ALREADY_PROCESSED_PAYMENT")
        if p.order_id != body["orderId"]:
            raise toss_error("NOT_FOUND_PAYMENT_SESSION")
        if p.amount != body["amount"]:
            raise toss_error("INVALID_REQUEST", "결제 금액이 인증된 결제 금액과 일치하지 않습니다.")
        p.last_transaction_key = self._transaction_key()
        p.secret = f"ps_fake{next(self._ids):08d}"
        if p.method == VIRTUAL_ACCOUNT:
            p.status = "WAITING_FOR_DEPOSIT"
            return self._render(p)
        p.status, p.approved_at = "DONE", self.clock()
        self._record_sale(p)
        return self._render(p)

    def _cancel(self, payment_key: str, body: dict[str, Any]) -> Payment:
        reason = body.get("cancelReason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise toss_error("INVALID_REQUEST", "cancelReason은 200자 이하의 필수 문자열입니다.")
        p = self.payments.get(payment_key)
        if p is None:
            raise toss_error("NOT_FOUND_PAYMENT")
        self._expire_if_due(p)
        if p.status == "CANCELED":
            raise toss_error("ALREADY_CANCELED_PAYMENT")
        waiting = p.status == "WAITING_FOR_DEPOSIT"
        if p.status not in ("DONE", "PARTIAL_CANCELED") and not waiting:
            raise toss_error("NOT_CANCELABLE_PAYMENT")
        refundable = body.get("refundableAmount")
        if refundable is not None and refundable != p.balance:
            raise toss_error("NOT_MATCHES_REFUNDABLE_AMOUNT")
        if p.balance <= 0:
            raise toss_error("NOT_CANCELABLE_AMOUNT")
        requested = body.get("cancelAmount")
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            raise toss_error("INVALID_REQUEST", "cancelAmount는 1 이상의 숫자여야 합니다.")
        amount = p.balance if requested is None else requested
        if amount > p.balance:
            raise toss_error("NOT_CANCELABLE_AMOUNT")
        partial = amount < p.balance
        if waiting and partial:
            raise toss_error("NOT_ALLOWED_PARTIAL_REFUND_WAITING_DEPOSIT")
        if p.method == VIRTUAL_ACCOUNT and not waiting:
            # After the deposit the sandbox wants refundReceiveAccount (its missing-account code by default).
            account = body.get("refundReceiveAccount")
            if not isinstance(account, dict) or not str(account.get("accountNumber") or "").isdigit():
                raise toss_error("INVALID_REFUND_ACCOUNT_INFO")
        if not waiting:
            self._take_back(p.payment_key, amount)
        had_cancels = bool(p.cancels)
        p.balance -= amount
        key = self._transaction_key()
        p.cancels.append(_Cancel(key, amount, reason, p.balance, self.clock()))
        p.last_transaction_key = key
        p.status = "PARTIAL_CANCELED" if partial else (self.rest_cancel_status if had_cancels else "CANCELED")
        return self._render(p)

    def _register(self, seller: dict[str, Any]) -> dict[str, Any]:
        ref = seller.get("refSellerId")
        if not isinstance(ref, str) or not ref or len(ref) > 20:
            raise toss_error("INVALID_REQUEST", "refSellerId is required (at most 20 characters)")
        if ref in self._seller_refs:
            raise toss_error("DUPLICATED_REF_SELLER_ID")
        business = seller.get("businessType")
        if business not in ("INDIVIDUAL", "INDIVIDUAL_BUSINESS", "CORPORATE"):
            raise toss_error("INVALID_REQUEST", "businessType must be INDIVIDUAL, INDIVIDUAL_BUSINESS or CORPORATE")
        self._seller_refs.add(ref)
        seller_id = f"seller_fake{next(self._ids):06d}"
        self.sellers[seller_id] = {
            **copy.deepcopy(seller),
            "id": seller_id,
            "status": "PARTIALLY_APPROVED" if business == "CORPORATE" else "APPROVAL_REQUIRED",
        }
        return copy.deepcopy(self.sellers[seller_id])

    def _payout(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not isinstance(items, list) or not items or len(items) > MAX_PAYOUT_ITEMS:
            raise toss_error("INVALID_REQUEST", f"1 to {MAX_PAYOUT_ITEMS} payout items per request")
        refs = [item["refPayoutId"] for item in items]
        if len(set(refs)) != len(refs) or any(ref in self._payout_refs for ref in refs):
            raise toss_error("DUPLICATED_REF_PAYOUT_ID")
        for item in items:
            seller = self.sellers.get(item["destination"])
            if seller is None:
                raise toss_error("NOT_FOUND_SELLER")
            if seller["status"] not in PAYABLE_SELLER_STATUSES:
                raise toss_error("FORBIDDEN_SELLER_PAYOUT")
        total = sum(int(item["amount"]["value"]) for item in items)
        self._settle()
        if total > self._available:
            raise toss_error("NOT_ENOUGH_AMOUNT")
        self._available -= total
        created = []
        for item in items:
            payout_id = f"FPA_fake{next(self._ids):06d}"
            express = item.get("scheduleType", "EXPRESS") == "EXPRESS"
            self.payouts[payout_id] = {
                **copy.deepcopy(item),
                "id": payout_id,
                "status": "IN_PROGRESS" if express else "REQUESTED",
                "requestedAt": self.clock().isoformat(),
                "error": None,
            }
            self._payout_refs.add(item["refPayoutId"])
            created.append(copy.deepcopy(self.payouts[payout_id]))
        return created

    # --- state ----------------------------------------------------------------------------------------------------

    def _expire_if_due(self, p: _Payment) -> None:
        if p.status == "IN_PROGRESS" and self.clock() - p.requested_at > CONFIRM_WINDOW:
            p.status = "EXPIRED"
            p.failure = {"code": "EXPIRED_PAYMENT", "message": "결제 유효 시간이 지나 만료되었습니다."}

    def _record_sale(self, p: _Payment) -> None:
        assert p.approved_at is not None
        self._sales.append(_Sale(p.payment_key, p.balance, p.approved_at + self.settlement_delay))

    def _settle(self) -> None:
        now = self.clock()
        for sale in self._sales:
            if not sale.available and now >= sale.settles_at:
                sale.available = True
                self._available += sale.amount

    def _take_back(self, payment_key: str, amount: int) -> None:
        """A cancel takes its amount back from where the sale's money is (on its way, or available)."""
        self._settle()
        for sale in self._sales:
            if sale.payment_key == payment_key:
                taken = min(amount, sale.amount)
                sale.amount -= taken
                if sale.available:
                    self._available -= taken
                return

    def _transaction_key(self) -> str:
        return f"txfake{next(self._ids):08d}"

    def _render(self, p: _Payment) -> Payment:
        self._expire_if_due(p)
        approved = p.status not in ("READY", "IN_PROGRESS", "ABORTED", "EXPIRED")
        data: dict[str, Any] = {
            "paymentKey": p.payment_key,
            "orderId": p.order_id,
            "status": p.status,
            "method": p.method,
            "totalAmount": p.amount,
            "balanceAmount": p.balance,
            "requestedAt": p.requested_at.isoformat(),
            "approvedAt": p.approved_at.isoformat() if p.approved_at else None,
            "lastTransactionKey": p.last_transaction_key,
            "secret": p.secret if approved else None,
            "cancels": [
                {
                    "transactionKey": c.transaction_key,
                    "cancelAmount": c.amount,
                    "cancelReason": c.reason,
                    "canceledAt": c.at.isoformat(),
                    "refundableAmount": c.refundable_after,
                    "cancelStatus": "DONE",
                }
                for c in p.cancels
            ]
            or None,
            "failure": dict(p.failure) if p.failure else None,
            "currency": "KRW",
        }
        return Payment.from_api(data)
