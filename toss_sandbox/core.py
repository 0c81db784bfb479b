"""Wiring of one sandbox instance: settings, state, clock, randomness, services, background ticker."""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import timedelta
from typing import Any

from .balances import BalanceService
from .clock import SandboxClock, iso
from .faults import FaultInjector
from .idempotency import IdempotencyRegistry
from .ids import IdFactory
from .payments import PaymentService
from .payouts import PayoutService
from .schema import PaymentSchema, PaymentSchemaError
from .settings import RUNTIME_MUTABLE_FIELDS, SandboxSettings
from .store import Store
from .webhooks import WebhookService

log = logging.getLogger("toss_sandbox")

TICK_SECONDS = 0.05


class SandboxCore:
    def __init__(self, settings: SandboxSettings) -> None:
        self.initial_settings = settings.copy()
        self.settings = settings.copy()
        self.store = Store(settings.available_balance, settings.pending_balance)
        self.clock = SandboxClock()
        self.ids = IdFactory(settings.seed)
        self.schema = PaymentSchema(settings.openapi_path)
        self.faults = FaultInjector(self.store.lock, self.ids)
        self.idempotency = IdempotencyRegistry(self.store.lock, settings.idempotency_ttl_seconds)
        self.balances = BalanceService(self)
        self.payments = PaymentService(self)
        self.payouts = PayoutService(self)
        self.webhooks = WebhookService(self)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.webhooks.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="toss-sandbox-ticker", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self.webhooks.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    @property
    def stopping(self) -> threading.Event:
        """Set when the sandbox stops; fault sleeps wait on it so that stop() is never held up."""
        return self._stop

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:
                log.exception("sandbox ticker failed")

    def tick(self) -> None:
        """Time-driven changes: confirm windows expiring, sales settling, scheduled payouts, payout completion."""
        self.payments.expire_due()
        self.balances.settle_due()
        self.payouts.sweep()

    # ------------------------------------------------------------------ schema
    def check_payment(self, payment: dict[str, Any]) -> None:
        try:
            self.schema.check(payment)
        except PaymentSchemaError as exc:
            with self.store.lock:
                self.store.schema_violations.append(
                    {
                        "time": iso(self.clock.now()),
                        "paymentKey": payment.get("paymentKey"),
                        "errors": str(exc),
                        "stack": "".join(traceback.format_stack(limit=8)),
                    }
                )
            if self.settings.strict_schema:
                raise

    # ------------------------------------------------------------------ control helpers
    def reset(self) -> None:
        """Back to the start state: no payments, sellers, payouts, calls, deliveries; start settings."""
        with self.store.lock:
            self.settings = self.initial_settings.copy()
            self.store.set_initial_balance(self.settings.available_balance, self.settings.pending_balance)
            self.store.reset()
            self.idempotency.reset()
            self.idempotency.ttl = timedelta(seconds=self.settings.idempotency_ttl_seconds)
            self.faults.reset()
            self.clock.reset()
            self.ids.reseed(self.settings.seed)
        self.webhooks.clear_queue()

    def update_settings(self, changes: dict[str, Any]) -> SandboxSettings:
        unknown = set(changes) - RUNTIME_MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"settings that cannot be changed at run time or do not exist: {sorted(unknown)}")
        with self.store.lock:
            candidate = self.settings.copy()
            for name, value in changes.items():
                if name == "webhook_retry_delays":
                    if not isinstance(value, list):
                        raise ValueError("webhook_retry_delays must be a list of seconds")
                    value = [float(v) for v in value]
                if name in ("secret_keys", "webhook_event_types") and not isinstance(value, list):
                    raise ValueError(f"{name} must be a list")
                setattr(candidate, name, value)
            candidate.validate()
            self.settings = candidate
            # Settings that mirror live state take effect at once.
            if "available_balance" in changes:
                self.store.balance.available = int(candidate.available_balance)
            if "pending_balance" in changes:
                self.store.balance.pending = int(candidate.pending_balance)
            if "idempotency_ttl_seconds" in changes:
                self.idempotency.ttl = timedelta(seconds=candidate.idempotency_ttl_seconds)
            return candidate
