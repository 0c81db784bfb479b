"""In-memory state of the sandbox. One re-entrant lock (``Store.lock``) guards all of it.

Rule: hold the lock only while reading or changing state; never while sleeping for a fault or talking to a
webhook receiver.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class CancelRecord:
    cancel_amount: int
    cancel_reason: str
    tax_free_amount: int
    refundable_amount: int
    canceled_at: datetime
    transaction_key: str


@dataclass
class VirtualAccountRecord:
    account_number: str
    bank_code: str
    customer_name: str
    due_date: datetime
    refund_status: str = "NONE"
    settlement_status: str = "INCOMPLETED"


@dataclass
class PaymentRecord:
    payment_key: str
    order_id: str
    order_name: str
    total_amount: int
    method: str
    status: str
    requested_at: datetime
    secret: str
    easy_pay_provider: str | None = None
    customer_name: str = "홍길동"
    approved_at: datetime | None = None
    balance_amount: int = 0
    tax_free_amount: int = 0
    use_escrow: bool = False
    last_transaction_key: str | None = None
    approve_no: str | None = None
    cancels: list[CancelRecord] = field(default_factory=list)
    virtual_account: VirtualAccountRecord | None = None
    failure: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    card_acquire_status: str = "READY"


@dataclass
class SellerRecord:
    id: str
    ref_seller_id: str
    business_type: str
    status: str
    company: dict[str, Any] | None
    individual: dict[str, Any] | None
    account: dict[str, Any]
    metadata: dict[str, Any] | None
    registered_at: datetime


@dataclass
class PayoutRecord:
    id: str
    ref_payout_id: str
    destination: str
    schedule_type: str
    payout_date: str
    amount: int
    currency: str
    transaction_description: str | None
    metadata: dict[str, Any] | None
    requested_at: datetime
    status: str
    error: dict[str, str] | None = None
    in_progress_since: datetime | None = None


@dataclass
class WebhookAttempt:
    retried_count: int
    transmission_time: str
    started_at: str
    status: int | None
    error: str | None
    duration_ms: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WebhookDelivery:
    transmission_id: str
    event_type: str
    url: str
    body: bytes
    signed: bool
    forged: bool
    created_at: str
    replay_of: str | None = None
    # For verbatim replays: headers to send unchanged.
    fixed_headers: dict[str, str] | None = None
    attempts: list[WebhookAttempt] = field(default_factory=list)
    state: str = "pending"  # pending | delivered | failed | canceled
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "transmissionId": self.transmission_id,
            "eventType": self.event_type,
            "url": self.url,
            "body": self.body.decode("utf-8"),
            "signed": self.signed,
            "forged": self.forged,
            "createdAt": self.created_at,
            "replayOf": self.replay_of,
            "state": self.state,
            "attempts": [
                {
                    "retriedCount": a.retried_count,
                    "transmissionTime": a.transmission_time,
                    "startedAt": a.started_at,
                    "status": a.status,
                    "error": a.error,
                    "durationMs": a.duration_ms,
                    "headers": a.headers,
                }
                for a in self.attempts
            ],
        }


@dataclass
class CallRecord:
    id: int
    time: str
    method: str
    path: str
    route: str
    idempotency_key: str | None
    request_body: Any
    decrypted_body: Any = None
    response_status: int | None = None
    response_code: str | None = None
    fault: str | None = None
    replayed: bool = False
    test_code: str | None = None
    duration_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "idempotencyKey": self.idempotency_key,
            "requestBody": self.request_body,
            "decryptedBody": self.decrypted_body,
            "responseStatus": self.response_status,
            "responseCode": self.response_code,
            "fault": self.fault,
            "replayed": self.replayed,
            "testCode": self.test_code,
            "durationMs": self.duration_ms,
        }


@dataclass
class Balance:
    available: int
    pending: int


@dataclass
class SaleRecord:
    """One approved payment's money on its way to availableAmount (balances.py)."""

    payment_key: str
    amount: int  # what is left of it after cancels
    approved_at: datetime
    pending_at: datetime
    settles_at: datetime
    state: str = "unsettled"  # unsettled (not yet in any balance) | pending | available

    def to_json(self) -> dict[str, Any]:
        return {
            "paymentKey": self.payment_key,
            "amount": self.amount,
            "state": self.state,
            "approvedAt": self.approved_at.isoformat(timespec="seconds"),
            "pendingAt": self.pending_at.isoformat(timespec="seconds"),
            "settlesAt": self.settles_at.isoformat(timespec="seconds"),
        }


class Store:
    """All mutable state. Services receive the store and take ``store.lock`` around each operation."""

    def __init__(self, available_balance: int = 0, pending_balance: int = 0) -> None:
        self.lock = threading.RLock()
        self._initial_balance = (available_balance, pending_balance)
        # Bumped by reset(); work queued before a reset (webhook retries) checks it and is dropped.
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.payments: dict[str, PaymentRecord] = {}
            self.payment_by_order: dict[str, str] = {}
            self.sellers: dict[str, SellerRecord] = {}
            self.seller_by_ref: dict[str, str] = {}
            self.payouts: dict[str, PayoutRecord] = {}
            self.payout_by_ref: dict[str, str] = {}
            self.balance = Balance(*self._initial_balance)
            self.sales: dict[str, SaleRecord] = {}
            # Keys of sales that are not yet available (the ticker only walks these).
            self.settling: set[str] = set()
            # Refund accounts the sandbox knows the holder of (POST /sandbox/bank-accounts): (bank code, number)
            # -> holder name. A refund to a known account with another holder name is refused.
            self.bank_accounts: dict[tuple[str, str], str] = {}
            # Refusals queued by POST /sandbox/payouts/refuse for the next POST /v2/payouts calls.
            self.payout_refusals: list[dict[str, Any]] = []
            self.calls: list[CallRecord] = []
            self.next_call_id = 1
            self.webhooks: list[WebhookDelivery] = []
            self.approved_payment_keys: set[str] = set()
            self.counters: Counter[str] = Counter()
            self.fault_counters: Counter[str] = Counter()
            self.calls_by_route: Counter[str] = Counter()
            self.schema_violations: list[dict[str, Any]] = []

    def set_initial_balance(self, available: int, pending: int) -> None:
        with self.lock:
            self._initial_balance = (available, pending)

    # -- lookups (caller holds the lock)
    def payment_by_order_id(self, order_id: str) -> PaymentRecord | None:
        key = self.payment_by_order.get(order_id)
        return self.payments.get(key) if key else None

    def webhook(self, transmission_id: str) -> WebhookDelivery | None:
        for delivery in self.webhooks:
            if delivery.transmission_id == transmission_id:
                return delivery
        return None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": sum(self.calls_by_route.values()),
                "callsByPath": dict(self.calls_by_route),
                "approvals": len(self.approved_payment_keys),
                "cancels": self.counters["cancels"],
                "payouts": self.counters["payouts"],
                "payoutsCompleted": self.counters["payouts_completed"],
                "payoutsFailed": self.counters["payouts_failed"],
                "sellers": len(self.sellers),
                "idempotentReplays": self.counters["idempotent_replays"],
                "faults": dict(self.fault_counters),
                "webhooks": {
                    "deliveries": len(self.webhooks),
                    "delivered": sum(1 for w in self.webhooks if w.state == "delivered"),
                    "failed": sum(1 for w in self.webhooks if w.state == "failed"),
                    "pending": sum(1 for w in self.webhooks if w.state == "pending"),
                    "attempts": sum(len(w.attempts) for w in self.webhooks),
                },
                "schemaViolations": len(self.schema_violations),
            }
