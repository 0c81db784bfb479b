"""Payout balances: what Toss's ``GET /v2/balances`` answers and what a payout may take.

Rules [DOC https://docs.tosspayments.com/reference/additional, "지급대행" balance semantics]:

* sales become ``pendingAmount`` shortly before the settlement date and ``availableAmount`` after Toss's
  settlement cycle; only ``availableAmount`` can be paid out (KRW). The cycle is contract-specific (D+N,
  UNCONFIRMED): a sale enters ``pendingAmount`` ``pending_after_seconds`` after approval and becomes available
  ``settlement_delay_seconds`` after approval, on the sandbox clock (``POST /sandbox/clock`` moves it).
* a sale is an approval: a card-like payment confirmed to ``DONE``, or a virtual-account deposit.
* a cancel takes its amount back from where that sale's money is (not yet visible, pending or available);
  a deposit error (``DONE`` -> ``WAITING_FOR_DEPOSIT``) takes the whole sale back. How Toss shows a refund
  that exceeds what is available (netting against later settlements) is UNCONFIRMED: the sandbox lets
  ``availableAmount`` go below zero rather than hide the debt.
* a payout takes its amount from ``availableAmount`` when requested; it returns on payout cancel or ``FAILED``
  (payouts.py).

Every function expects ``core.store.lock`` to be held by the caller or takes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .store import SaleRecord

if TYPE_CHECKING:
    from .core import SandboxCore


class BalanceService:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core

    def record_sale(self, payment_key: str, amount: int, approved_at: datetime) -> SaleRecord:
        settings = self.core.settings
        sale = SaleRecord(
            payment_key=payment_key,
            amount=amount,
            approved_at=approved_at,
            pending_at=approved_at + timedelta(seconds=settings.pending_after_seconds),
            settles_at=approved_at + timedelta(seconds=settings.settlement_delay_seconds),
        )
        store = self.core.store
        with store.lock:
            previous = store.sales.get(payment_key)
            if previous is not None and previous.amount > 0:
                self.take_back(payment_key, previous.amount)
            store.sales[payment_key] = sale
            store.settling.add(payment_key)
            self._advance(sale, self.core.clock.now())
        return sale

    def take_back(self, payment_key: str, amount: int) -> int:
        """Remove ``amount`` of a sale from wherever it is; returns what was taken (0 for unknown sales, e.g.
        payments made outside the API)."""
        store = self.core.store
        with store.lock:
            sale = store.sales.get(payment_key)
            if sale is None:
                return 0
            taken = min(amount, sale.amount)
            sale.amount -= taken
            if sale.state == "pending":
                store.balance.pending -= taken
            elif sale.state == "available":
                store.balance.available -= taken
            return taken

    def _advance(self, sale: SaleRecord, now: datetime) -> None:
        balance = self.core.store.balance
        if sale.state == "unsettled" and now >= sale.pending_at:
            sale.state = "pending"
            balance.pending += sale.amount
        if sale.state == "pending" and now >= sale.settles_at:
            sale.state = "available"
            balance.pending -= sale.amount
            balance.available += sale.amount
        if sale.state == "available":
            self.core.store.settling.discard(sale.payment_key)

    def settle_due(self) -> None:
        """Move every sale whose time has come (called by the ticker and before balances are read)."""
        store = self.core.store
        now = self.core.clock.now()
        with store.lock:
            for key in list(store.settling):
                sale = store.sales.get(key)
                if sale is None:
                    store.settling.discard(key)
                    continue
                self._advance(sale, now)

    def available(self) -> int:
        self.settle_due()
        return self.core.store.balance.available

    def to_json(self) -> dict[str, Any]:
        """``GET /v2/balances`` entity: ``{pendingAmount: {currency, value}, availableAmount: {...}}``."""
        self.settle_due()
        with self.core.store.lock:
            balance = self.core.store.balance
            return {
                "pendingAmount": {"currency": "KRW", "value": balance.pending},
                "availableAmount": {"currency": "KRW", "value": balance.available},
            }

    def sales_json(self) -> list[dict[str, Any]]:
        with self.core.store.lock:
            return [sale.to_json() for sale in self.core.store.sales.values()]
