"""Payments: the widget simulation, confirm, lookups, cancel, virtual-account deposits and expiry.

Every function here expects to be called with ``core.store.lock`` held (the Toss API layer does that) or
takes the lock itself; none of them sleeps.

Sources: confirm, lookups and the Payment object [DOC https://docs.tosspayments.com/en/api-guide; the
community transcription of the Core API reference, see data/PROVENANCE.md]; the 10-minute confirm window
[DOC https://docs.tosspayments.com/reference/using-api/webhook-events]; cancels [3P-live summary of
https://docs.tosspayments.com/guides/v2/cancel-payment; codes DOC https://docs.tosspayments.com/reference/error-codes];
virtual accounts [DOC https://docs.tosspayments.com/reference/using-api/webhook-events,
https://docs.tosspayments.com/resources/faq].

Choices where the sources leave room (listed in docs/toss-behaviours.md):

* confirm with an ``orderId`` that is not the one the buyer authenticated -> 404 NOT_FOUND_PAYMENT_SESSION
  (no payment session exists for that pair); the payment stays IN_PROGRESS.
* confirm with a different ``amount`` -> 400 INVALID_REQUEST; the payment stays IN_PROGRESS (the merchant may
  retry with the right amount inside the window).
* confirm of a payment that is DONE, CANCELED, PARTIAL_CANCELED, WAITING_FOR_DEPOSIT or ABORTED -> 400
  ALREADY_PROCESSED_PAYMENT; of an EXPIRED one -> 404 NOT_FOUND_PAYMENT_SESSION.
* ``amount`` must be a JSON number (a string amount -> 400 INVALID_REQUEST) with no fractional part.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .banks import refund_bank
from .clock import iso
from .errors import TossError
from .settings import API_VERSION
from .store import CancelRecord, PaymentRecord, VirtualAccountRecord

if TYPE_CHECKING:
    from .core import SandboxCore

ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
MAX_PAYMENT_KEY = 200
MAX_REASON = 200

CARD = "카드"
EASY_PAY = "간편결제"
VIRTUAL_ACCOUNT = "가상계좌"
TRANSFER = "계좌이체"
MOBILE_PHONE = "휴대폰"

# Accepted spellings of ``method`` in POST /sandbox/payments.
METHOD_ALIASES = {
    CARD: CARD,
    "CARD": CARD,
    EASY_PAY: EASY_PAY,
    "EASY_PAY": EASY_PAY,
    "TOSSPAY": EASY_PAY,
    VIRTUAL_ACCOUNT: VIRTUAL_ACCOUNT,
    "VIRTUAL_ACCOUNT": VIRTUAL_ACCOUNT,
    TRANSFER: TRANSFER,
    "TRANSFER": TRANSFER,
    MOBILE_PHONE: MOBILE_PHONE,
    "MOBILE_PHONE": MOBILE_PHONE,
}

# Card-funded methods need at least 100 KRW (BELOW_MINIMUM_AMOUNT; the schema's card.amount minimum is 100).
MINIMUM_AMOUNT = {CARD: 100, EASY_PAY: 100, TRANSFER: 200, VIRTUAL_ACCOUNT: 1, MOBILE_PHONE: 100}

APPROVED_STATES = ("DONE", "PARTIAL_CANCELED")
OPEN_STATES = ("READY", "IN_PROGRESS")
EXPIRED_FAILURE = {"code": "EXPIRED_PAYMENT", "message": "결제 유효 시간이 지나 만료되었습니다."}

CARD_ISSUER = "11"  # KB국민카드 in Toss's card company codes
VA_BANK = "20"  # 우리은행
TRANSFER_BANK = "88"  # 신한은행


class PaymentDeclined(TossError):
    """A decline injected by ``failure_rate``: the payment became ABORTED."""


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_whole_amount(value: Any, *, minimum: int) -> int | None:
    """The integer value of a JSON number >= minimum without a fractional part, else None."""
    if not is_number(value) or value != int(value) or value < minimum:
        return None
    return int(value)


def split_vat(taxable: int) -> tuple[int, int]:
    """(suppliedAmount, vat) of a VAT-inclusive amount: vat = round(amount / 11)."""
    vat = (taxable * 10 + 55) // 110
    return taxable - vat, vat


class PaymentService:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core

    # ------------------------------------------------------------------ rendering
    def to_json(self, p: PaymentRecord) -> dict[str, Any]:
        """The full Payment object (API version 2022-11-16) of a record."""
        mid = self.core.settings.mid
        approved = p.status not in ("READY", "IN_PROGRESS", "ABORTED", "EXPIRED")
        taxable = max(p.balance_amount - p.tax_free_amount, 0)
        supplied, vat = split_vat(taxable)
        card = None
        if approved and p.method in (CARD, EASY_PAY):
            card = {
                "issuerCode": CARD_ISSUER,
                "acquirerCode": CARD_ISSUER,
                "number": "12345678****000*",
                "installmentPlanMonths": 0,
                "isInterestFree": False,
                "interestPayer": None,
                "approveNo": p.approve_no or "00000000",
                "useCardPoint": False,
                "cardType": "신용",
                "ownerType": "개인",
                "acquireStatus": p.card_acquire_status,
                "amount": p.total_amount,
            }
        easy_pay = None
        if p.method == EASY_PAY:
            easy_pay = {"provider": p.easy_pay_provider or "토스페이", "amount": 0, "discountAmount": 0}
        virtual_account = None
        if p.virtual_account is not None:
            va = p.virtual_account
            virtual_account = {
                "accountType": "일반",
                "accountNumber": va.account_number,
                "bankCode": va.bank_code,
                "customerName": va.customer_name,
                "depositorName": va.customer_name if p.status != "WAITING_FOR_DEPOSIT" else None,
                "dueDate": iso(va.due_date),
                "refundStatus": va.refund_status,
                # The deposit deadline passed: the payment stays WAITING_FOR_DEPOSIT (no webhook)
                # [DOC https://docs.tosspayments.com/reference/using-api/webhook-events].
                "expired": p.status == "WAITING_FOR_DEPOSIT" and self.core.clock.now() > va.due_date,
                "settlementStatus": va.settlement_status,
                "refundReceiveAccount": None,
            }
        transfer = None
        if approved and p.method == TRANSFER:
            transfer = {"bankCode": TRANSFER_BANK, "settlementStatus": "INCOMPLETED"}
        mobile_phone = None
        if approved and p.method == MOBILE_PHONE:
            mobile_phone = {
                "customerMobilePhone": "01000000000",
                "settlementStatus": "INCOMPLETED",
                "receiptUrl": f"https://dashboard.tosspayments.com/receipt/phone?paymentKey={p.payment_key}",
            }
        cancels = None
        if p.cancels:
            cancels = [
                {
                    "transactionKey": c.transaction_key,
                    "cancelReason": c.cancel_reason,
                    "taxExemptionAmount": 0,
                    "canceledAt": iso(c.canceled_at),
                    "transferDiscountAmount": 0,
                    "easyPayDiscountAmount": 0,
                    "cardDiscountAmount": 0,
                    "receiptKey": None,
                    "cancelAmount": c.cancel_amount,
                    "taxFreeAmount": c.tax_free_amount,
                    "refundableAmount": c.refundable_amount,
                    "cancelStatus": "DONE",
                    "cancelRequestId": None,
                }
                for c in p.cancels
            ]
        return {
            "mId": mid,
            "lastTransactionKey": p.last_transaction_key,
            "paymentKey": p.payment_key,
            "orderId": p.order_id,
            "orderName": p.order_name,
            "taxExemptionAmount": 0,
            "status": p.status,
            "requestedAt": iso(p.requested_at),
            "approvedAt": iso(p.approved_at) if p.approved_at else None,
            "useEscrow": p.use_escrow,
            "cultureExpense": False,
            "card": card,
            "virtualAccount": virtual_account,
            "transfer": transfer,
            "mobilePhone": mobile_phone,
            "giftCertificate": None,
            "cashReceipt": None,
            "cashReceipts": None,
            "discount": None,
            "cancels": cancels,
            "secret": p.secret if p.status not in ("READY", "IN_PROGRESS", "ABORTED", "EXPIRED") else None,
            "type": "NORMAL",
            "easyPay": easy_pay,
            "country": "KR",
            "failure": dict(p.failure) if p.failure else None,
            "isPartialCancelable": not p.use_escrow,
            "receipt": {
                "url": f"https://dashboard.tosspayments.com/receipt/redirection?transactionId={p.payment_key}&ref=PX"
            },
            "checkout": {"url": f"https://api.tosspayments.com/v1/payments/{p.payment_key}/checkout"},
            "currency": "KRW",
            "totalAmount": p.total_amount,
            "balanceAmount": p.balance_amount,
            "suppliedAmount": supplied,
            "vat": vat,
            "taxFreeAmount": p.tax_free_amount,
            "metadata": dict(p.metadata) if p.metadata else None,
            "method": p.method,
            "version": API_VERSION,
        }

    def render(self, p: PaymentRecord) -> dict[str, Any]:
        """``to_json`` plus the schema check (a mismatch raises PaymentSchemaError)."""
        payment = self.to_json(p)
        self.core.check_payment(payment)
        return payment

    # ------------------------------------------------------------------ widget (test control)
    def create_authenticated(self, body: Any) -> dict[str, Any]:
        """Play the widget: the buyer authenticated, the payment is IN_PROGRESS and awaits confirm.

        The same orderId while an earlier payment for it is still READY/IN_PROGRESS replaces it: the earlier
        payment expires at once (EXPIRED + webhook) and lookups by orderId return the new one. An orderId that
        was already approved or canceled is refused with 400 DUPLICATED_ORDER_ID.
        """
        if not isinstance(body, dict):
            raise TossError("INVALID_REQUEST", "body must be a JSON object")
        order_id = body.get("orderId")
        if not isinstance(order_id, str) or not ORDER_ID_RE.match(order_id):
            raise TossError("INVALID_ORDER_ID")
        method = METHOD_ALIASES.get(str(body.get("method") or CARD))
        if method is None:
            raise TossError("INVALID_REQUEST", f"unsupported method {body.get('method')!r}")
        amount = as_whole_amount(body.get("amount"), minimum=1)
        if amount is None:
            raise TossError("INVALID_REQUEST", "amount must be a whole number >= 1")
        if amount < MINIMUM_AMOUNT[method]:
            raise TossError("BELOW_MINIMUM_AMOUNT")
        order_name = body.get("orderName") or "토스 티셔츠 외 2건"
        if not isinstance(order_name, str) or len(order_name) > 100:
            raise TossError("INVALID_REQUEST", "orderName must be a string of at most 100 characters")
        tax_free = as_whole_amount(body.get("taxFreeAmount", 0), minimum=0)
        if tax_free is None or tax_free > amount:
            raise TossError("INVALID_REQUEST", "taxFreeAmount must be a whole number between 0 and amount")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 5):
            raise TossError("INVALID_REQUEST", "metadata must be an object with at most 5 pairs")
        core = self.core
        now = core.clock.now()
        with core.store.lock:
            previous = core.store.payment_by_order_id(order_id)
            if previous is not None:
                if previous.status in OPEN_STATES:
                    self._expire(previous, now)
                elif previous.status not in ("ABORTED", "EXPIRED"):
                    raise TossError("DUPLICATED_ORDER_ID")
            key = core.ids.payment_key(now)
            while key in core.store.payments:
                key = core.ids.payment_key(now)
            record = PaymentRecord(
                payment_key=key,
                order_id=order_id,
                order_name=order_name,
                total_amount=amount,
                balance_amount=amount,
                tax_free_amount=tax_free,
                method=method,
                status="IN_PROGRESS",
                requested_at=now,
                secret=core.ids.payment_secret(),
                easy_pay_provider=str(body.get("easyPayProvider") or "토스페이"),
                customer_name=str(body.get("customerName") or "홍길동"),
                use_escrow=bool(body.get("useEscrow", False)),
                metadata={str(k): str(v) for k, v in metadata.items()} if metadata else None,
            )
            core.store.payments[key] = record
            core.store.payment_by_order[order_id] = key
            self.render(record)
        return {"paymentKey": key, "orderId": order_id, "amount": amount, "paymentType": "NORMAL"}

    # ------------------------------------------------------------------ expiry
    def _expire(self, p: PaymentRecord, now: datetime) -> None:
        p.status = "EXPIRED"
        p.failure = dict(EXPIRED_FAILURE)
        self.core.webhooks.payment_status_changed(self.render(p), now)

    def expire_if_due(self, p: PaymentRecord, now: datetime) -> bool:
        window = timedelta(seconds=self.core.settings.confirm_window_seconds)
        if p.status == "IN_PROGRESS" and now - p.requested_at > window:
            self._expire(p, now)
            return True
        return False

    def expire_due(self) -> int:
        """Expire every IN_PROGRESS payment whose confirm window has passed (sandbox clock)."""
        now = self.core.clock.now()
        with self.core.store.lock:
            return sum(1 for p in list(self.core.store.payments.values()) if self.expire_if_due(p, now))

    # ------------------------------------------------------------------ lookups
    def get_by_key(self, payment_key: str) -> dict[str, Any]:
        with self.core.store.lock:
            p = self.core.store.payments.get(payment_key)
            if p is None:
                raise TossError("NOT_FOUND_PAYMENT")
            self.expire_if_due(p, self.core.clock.now())
            return self.render(p)

    def get_by_order(self, order_id: str) -> dict[str, Any]:
        with self.core.store.lock:
            p = self.core.store.payment_by_order_id(order_id)
            if p is None:
                raise TossError("NOT_FOUND_PAYMENT")
            self.expire_if_due(p, self.core.clock.now())
            return self.render(p)

    # ------------------------------------------------------------------ confirm
    def confirm(self, body: Any, decline_code: str | None = None) -> dict[str, Any]:
        """POST /v1/payments/confirm. ``decline_code`` (from ``failure_rate``) declines at approval time."""
        if not isinstance(body, dict):
            raise TossError("INVALID_REQUEST", "요청 본문이 JSON 객체가 아닙니다.")
        payment_key = body.get("paymentKey")
        order_id = body.get("orderId")
        if not isinstance(payment_key, str) or not payment_key or len(payment_key) > MAX_PAYMENT_KEY:
            raise TossError("INVALID_REQUEST", "paymentKey는 200자 이하의 필수 문자열입니다.")
        if not isinstance(order_id, str) or not order_id:
            raise TossError("INVALID_REQUEST", "orderId는 필수 값입니다.")
        if not ORDER_ID_RE.match(order_id):
            raise TossError("INVALID_ORDER_ID")
        amount = as_whole_amount(body.get("amount"), minimum=1)
        if amount is None:
            raise TossError("INVALID_REQUEST", "amount는 1 이상의 숫자여야 합니다.")
        core = self.core
        now = core.clock.now()
        with core.store.lock:
            p = core.store.payments.get(payment_key)
            if p is None:
                raise TossError("NOT_FOUND_PAYMENT")
            self.expire_if_due(p, now)
            if p.status == "EXPIRED":
                raise TossError("NOT_FOUND_PAYMENT_SESSION")
            if p.status != "IN_PROGRESS":
                raise TossError("ALREADY_PROCESSED_PAYMENT")
            if p.order_id != order_id:
                raise TossError("NOT_FOUND_PAYMENT_SESSION")
            if p.total_amount != amount:
                raise TossError("INVALID_REQUEST", "결제 금액이 인증된 결제 금액과 일치하지 않습니다.")
            if decline_code is not None:
                error = PaymentDeclined(decline_code)
                p.status = "ABORTED"
                p.failure = error.body()
                core.webhooks.payment_status_changed(self.render(p), now)
                raise error
            p.last_transaction_key = core.ids.transaction_key()
            if p.method == VIRTUAL_ACCOUNT:
                p.status = "WAITING_FOR_DEPOSIT"
                p.virtual_account = VirtualAccountRecord(
                    account_number="X" + core.ids.digits(13),
                    bank_code=VA_BANK,
                    customer_name=p.customer_name,
                    due_date=now + timedelta(seconds=core.settings.virtual_account_valid_seconds),
                )
                payment = self.render(p)
                core.webhooks.deposit_callback(p, now)
                return payment
            p.status = "DONE"
            p.approved_at = now
            p.approve_no = core.ids.approve_no()
            core.store.approved_payment_keys.add(p.payment_key)
            core.balances.record_sale(p.payment_key, p.total_amount, now)
            payment = self.render(p)
            core.webhooks.payment_status_changed(payment, now)
            return payment

    # ------------------------------------------------------------------ virtual-account deposit (control)
    def deposit(self, payment_key: str, body: Any) -> dict[str, Any]:
        """Simulate the buyer's deposit (the developer center's test deposit [DOC
        https://docs.tosspayments.com/resources/faq]); ``{"revert": true}`` plays a deposit error.

        * deposit: ``WAITING_FOR_DEPOSIT`` -> ``DONE``; DEPOSIT_CALLBACK (flat body with the ``secret``) and, if
          registered, PAYMENT_STATUS_CHANGED; the amount becomes a sale on its way to the payout balance. A
          deposit after ``dueDate`` is refused (the account expired).
        * deposit error: ``DONE`` -> ``WAITING_FOR_DEPOSIT`` (API 2022-11-16; was ``CANCELED`` up to 1.4)
          [DOC https://docs.tosspayments.com/reference/using-api/webhook-events]; DEPOSIT_CALLBACK with status
          ``WAITING_FOR_DEPOSIT``; no PAYMENT_STATUS_CHANGED (it is sent only for DONE, ABORTED, EXPIRED,
          CANCELED, PARTIAL_CANCELED); the sale is taken back from the balance.
        """
        revert = isinstance(body, dict) and bool(body.get("revert"))
        core = self.core
        now = core.clock.now()
        with core.store.lock:
            p = core.store.payments.get(payment_key)
            if p is None:
                raise TossError("NOT_FOUND_PAYMENT")
            if p.virtual_account is None:
                raise TossError("INVALID_REQUEST", "not a virtual-account payment")
            if revert:
                if p.status != "DONE" or p.cancels:
                    raise TossError("INVALID_REQUEST", f"only a deposited, uncancelled payment can bounce ({p.status})")
                p.status = "WAITING_FOR_DEPOSIT"
                p.approved_at = None
                core.store.approved_payment_keys.discard(p.payment_key)
                core.balances.take_back(p.payment_key, p.balance_amount)
                core.store.sales.pop(p.payment_key, None)
            else:
                if p.status != "WAITING_FOR_DEPOSIT":
                    raise TossError("INVALID_REQUEST", f"payment is {p.status}, not WAITING_FOR_DEPOSIT")
                if now > p.virtual_account.due_date:
                    raise TossError("INVALID_REQUEST", "the virtual account expired (dueDate passed)")
                p.status = "DONE"
                p.approved_at = now
                core.store.approved_payment_keys.add(p.payment_key)
                core.balances.record_sale(p.payment_key, p.balance_amount, now)
            p.last_transaction_key = core.ids.transaction_key()
            payment = self.render(p)
            if not revert:
                core.webhooks.payment_status_changed(payment, now)
            core.webhooks.deposit_callback(p, now)
            return payment

    # ------------------------------------------------------------------ cancel
    def cancel(self, payment_key: str, body: Any) -> dict[str, Any]:
        """POST /v1/payments/{paymentKey}/cancel [3P-live summary of https://docs.tosspayments.com/guides/v2/cancel-payment]."""
        if not isinstance(body, dict):
            raise TossError("INVALID_REQUEST", "요청 본문이 JSON 객체가 아닙니다.")
        reason = body.get("cancelReason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise TossError("INVALID_REQUEST", "cancelReason은 200자 이하의 필수 문자열입니다.")
        requested: int | None = None
        if body.get("cancelAmount") is not None:
            requested = as_whole_amount(body["cancelAmount"], minimum=1)
            if requested is None:
                raise TossError("INVALID_REQUEST", "cancelAmount는 1 이상의 숫자여야 합니다.")
        tax_free = as_whole_amount(body.get("taxFreeAmount") or 0, minimum=0)
        if tax_free is None:
            raise TossError("INVALID_REQUEST", "taxFreeAmount는 0 이상의 숫자여야 합니다.")
        refundable = body.get("refundableAmount")
        if refundable is not None and not is_number(refundable):
            raise TossError("INVALID_REQUEST", "refundableAmount는 숫자여야 합니다.")
        core = self.core
        now = core.clock.now()
        with core.store.lock:
            p = core.store.payments.get(payment_key)
            if p is None:
                raise TossError("NOT_FOUND_PAYMENT")
            self.expire_if_due(p, now)
            if p.status == "CANCELED":
                raise TossError("ALREADY_CANCELED_PAYMENT")
            waiting = p.status == "WAITING_FOR_DEPOSIT"
            if p.status not in APPROVED_STATES and not waiting:
                raise TossError("NOT_CANCELABLE_PAYMENT")
            window = core.settings.consecutive_cancel_window_seconds
            if window > 0 and p.cancels and (now - p.cancels[-1].canceled_at).total_seconds() < window:
                raise TossError("FORBIDDEN_CONSECUTIVE_REQUEST")
            if refundable is not None and refundable != p.balance_amount:
                raise TossError("NOT_MATCHES_REFUNDABLE_AMOUNT")
            if p.balance_amount <= 0:
                raise TossError("NOT_CANCELABLE_AMOUNT")
            amount = p.balance_amount if requested is None else requested
            if amount > p.balance_amount:
                raise TossError("NOT_CANCELABLE_AMOUNT")
            partial = amount < p.balance_amount
            if waiting and partial:
                raise TossError("NOT_ALLOWED_PARTIAL_REFUND_WAITING_DEPOSIT")
            if partial and p.use_escrow:
                raise TossError("NOT_ALLOWED_PARTIAL_REFUND")
            # Before the deposit a virtual account is cancelled like any payment, full amount only and without a
            # refund account (an account given anyway is ignored: Toss's reaction is unknown); after it the refund
            # account is mandatory [3P-live summary of https://docs.tosspayments.com/guides/v2/cancel-payment].
            if p.method == VIRTUAL_ACCOUNT and not waiting:
                self._check_refund_account(body.get("refundReceiveAccount"))
            if tax_free > min(amount, p.tax_free_amount):
                raise TossError("INVALID_REQUEST", "taxFreeAmount가 취소 가능한 면세 금액보다 큽니다.")
            had_cancels = bool(p.cancels)
            if not waiting:
                core.balances.take_back(p.payment_key, amount)
            p.balance_amount -= amount
            p.tax_free_amount -= tax_free if partial else p.tax_free_amount
            transaction_key = core.ids.transaction_key()
            p.cancels.append(
                CancelRecord(
                    cancel_amount=amount,
                    cancel_reason=reason,
                    tax_free_amount=tax_free,
                    refundable_amount=p.balance_amount,
                    canceled_at=now,
                    transaction_key=transaction_key,
                )
            )
            p.last_transaction_key = transaction_key
            if partial:
                p.status = "PARTIAL_CANCELED"
            elif had_cancels:
                # [3P-live] cancelling the rest after partial cancels stays PARTIAL_CANCELED, balance 0.
                p.status = core.settings.rest_cancel_status
            else:
                p.status = "CANCELED"
            if p.balance_amount == 0:
                p.card_acquire_status = "CANCELED"
                if p.virtual_account is not None and not waiting:
                    p.virtual_account.refund_status = "COMPLETED"
            core.store.counters["cancels"] += 1
            payment = self.render(p)
            core.webhooks.payment_status_changed(payment, now)
            if p.virtual_account is not None:
                core.webhooks.deposit_callback(p, now)
            return payment

    def _check_refund_account(self, account: Any) -> None:
        """A deposited virtual-account payment is refunded to ``refundReceiveAccount {bank, accountNumber,
        holderName}``, which is mandatory and validated [3P-live summary of
        https://docs.tosspayments.com/guides/v2/cancel-payment; real payload
        TC https://techchat.tosspayments.com/m/1313689625872826430 (``bank: "88"``)]. Codes: INVALID_BANK,
        INVALID_REFUND_ACCOUNT_NUMBER, INVALID_REFUND_ACCOUNT_INFO (number/holder mismatch)
        [DOC https://docs.tosspayments.com/reference/error-codes]; the code for a missing account is a setting
        (``refund_account_missing_code``, UNCONFIRMED)."""
        settings = self.core.settings
        if account is None:
            raise TossError(
                settings.refund_account_missing_code,
                "입금 완료된 가상계좌 결제를 환불하려면 refundReceiveAccount가 필요합니다.",
                400,
            )
        if not isinstance(account, dict):
            raise TossError("INVALID_REQUEST", "refundReceiveAccount는 객체여야 합니다.")
        # Toss's numeric codes or Korean names (API 2022-11-16 accepts names in requests)
        # [DOC https://docs.tosspayments.com/reference/release-note]; the field is ``bank``, not ``bankCode``.
        bank = refund_bank(account.get("bank"))
        if bank is None:
            raise TossError("INVALID_BANK")
        number = account.get("accountNumber")
        if not isinstance(number, str) or not number.isdigit() or not 1 <= len(number) <= 20:
            raise TossError("INVALID_REFUND_ACCOUNT_NUMBER")
        holder = account.get("holderName")
        if not isinstance(holder, str) or not holder.strip() or len(holder) > 60:
            raise TossError("INVALID_REFUND_ACCOUNT_INFO")
        with self.core.store.lock:
            known_holder = self.core.store.bank_accounts.get((bank.toss, number))
        if known_holder is not None and known_holder != holder:
            raise TossError("INVALID_REFUND_ACCOUNT_INFO")
