"""Test controls under ``/sandbox/`` (not part of Toss; no auth). Errors answer ``{"code","message"}``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .banks import refund_bank
from .checkout import CheckoutWindow
from .clock import iso
from .core import SandboxCore
from .errors import TossError
from .faults import FaultConfigError
from .routing import Request, Response, Router
from .schema import PaymentSchemaError

log = logging.getLogger("toss_sandbox.controls")


class Controls:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core
        self.checkout = CheckoutWindow(core)
        self.router: Router[Callable[[Request], Response]] = Router()
        r = self.router
        r.add("GET", "/sandbox/health", self.health)
        r.add("GET", "/sandbox/checkout", self.checkout.page)
        r.add("POST", "/sandbox/checkout", self.checkout.submit)
        r.add("POST", "/sandbox/payments", self.create_payment)
        r.add("GET", "/sandbox/payments", self.list_payments)
        r.add("POST", "/sandbox/payments/{paymentKey}/deposit", self.deposit)
        r.add("POST", "/sandbox/payments/{paymentKey}/deposit-error", self.deposit_error)
        r.add("POST", "/sandbox/bank-accounts", self.register_bank_account)
        r.add("GET", "/sandbox/faults", self.get_faults)
        r.add("POST", "/sandbox/faults", self.set_faults)
        r.add("DELETE", "/sandbox/faults", self.reset_faults)
        r.add("GET", "/sandbox/calls", self.get_calls)
        r.add("DELETE", "/sandbox/calls", self.clear_calls)
        r.add("GET", "/sandbox/stats", self.stats)
        r.add("GET", "/sandbox/clock", self.get_clock)
        r.add("POST", "/sandbox/clock", self.advance_clock)
        r.add("POST", "/sandbox/sellers/{sellerId}/status", self.seller_status)
        r.add("GET", "/sandbox/balance", self.get_balance)
        r.add("POST", "/sandbox/balance", self.set_balance)
        r.add("GET", "/sandbox/sales", self.sales)
        r.add("POST", "/sandbox/payouts/refuse", self.refuse_payouts)
        r.add("POST", "/sandbox/payouts/{payoutId}/complete", self.complete_payout)
        r.add("GET", "/sandbox/config", self.get_config)
        r.add("POST", "/sandbox/config", self.set_config)
        r.add("POST", "/sandbox/webhooks/send", self.send_webhook)
        r.add("GET", "/sandbox/webhooks", self.get_webhooks)
        r.add("DELETE", "/sandbox/webhooks", self.clear_webhooks)
        r.add("GET", "/sandbox/schema-violations", self.schema_violations)
        r.add("POST", "/sandbox/reset", self.reset)

    def handle(self, req: Request) -> Response:
        route, params, path_exists = self.router.match(req.method, req.path)
        if route is None:
            status = 405 if path_exists else 404
            return Response.json(status, {"code": "NOT_FOUND", "message": f"no control {req.method} {req.path}"})
        req.params = {k: unquote(v) for k, v in params.items()}
        try:
            return route.handler(req)
        except TossError as exc:
            return Response.json(exc.status, exc.body(), code=exc.code)
        except (FaultConfigError, ValueError, TypeError) as exc:
            return Response.json(400, {"code": "INVALID_REQUEST", "message": str(exc)}, code="INVALID_REQUEST")
        except PaymentSchemaError as exc:  # a sandbox bug (or a broken openapi_path): say so, keep the connection
            error = TossError("SANDBOX_SCHEMA_VIOLATION", str(exc)[:500])
            return Response.json(error.status, error.body(), code=error.code)
        except Exception:
            log.exception("SANDBOX BUG in control %s %s", req.method, req.path)
            error = TossError("UNKNOWN_ERROR", "[sandbox] internal error, see the sandbox log")
            return Response.json(error.status, error.body(), code=error.code)

    @staticmethod
    def _body(req: Request) -> Any:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            raise TossError("INVALID_REQUEST", "body is not JSON") from None
        return {} if body is None else body

    @staticmethod
    def _object(req: Request) -> dict[str, Any]:
        body = Controls._body(req)
        if not isinstance(body, dict):
            raise TossError("INVALID_REQUEST", "body must be a JSON object")
        return body

    # ------------------------------------------------------------------ payments
    def health(self, req: Request) -> Response:
        return Response.json(200, {"ok": True, "now": iso(self.core.clock.now())})

    def create_payment(self, req: Request) -> Response:
        return Response.json(200, self.core.payments.create_authenticated(self._body(req)))

    def list_payments(self, req: Request) -> Response:
        core = self.core
        with core.store.lock:
            payments = [core.payments.render(p) for p in core.store.payments.values()]
        return Response.json(200, {"items": payments})

    def deposit(self, req: Request) -> Response:
        return Response.json(200, self.core.payments.deposit(req.params["paymentKey"], self._body(req)))

    def deposit_error(self, req: Request) -> Response:
        return Response.json(200, self.core.payments.deposit(req.params["paymentKey"], {"revert": True}))

    def register_bank_account(self, req: Request) -> Response:
        """``{bank, accountNumber, holderName}``: the holder of an account, so that a refund naming another
        holder is refused with INVALID_REFUND_ACCOUNT_INFO (unknown accounts are accepted as given)."""
        body = self._object(req)
        bank = refund_bank(body.get("bank"))
        number, holder = body.get("accountNumber"), body.get("holderName")
        if bank is None or not isinstance(number, str) or not number.isdigit() or not isinstance(holder, str):
            raise TossError("INVALID_REQUEST", "give bank (Toss code or name), accountNumber (digits), holderName")
        with self.core.store.lock:
            self.core.store.bank_accounts[(bank.toss, number)] = holder
        return Response.json(200, {"bank": bank.toss, "accountNumber": number, "holderName": holder})

    # ------------------------------------------------------------------ faults
    def get_faults(self, req: Request) -> Response:
        return Response.json(200, self.core.faults.snapshot().to_json())

    def set_faults(self, req: Request) -> Response:
        return Response.json(200, self.core.faults.update(self._object(req)).to_json())

    def reset_faults(self, req: Request) -> Response:
        self.core.faults.reset()
        return Response.json(200, self.core.faults.snapshot().to_json())

    # ------------------------------------------------------------------ calls and stats
    def get_calls(self, req: Request) -> Response:
        path_prefix = (req.query.get("path") or [""])[0]
        method = (req.query.get("method") or [""])[0].upper()
        with self.core.store.lock:
            calls = [
                c.to_json()
                for c in self.core.store.calls
                if c.path.startswith(path_prefix) and (not method or c.method == method)
            ]
        return Response.json(200, {"items": calls})

    def clear_calls(self, req: Request) -> Response:
        with self.core.store.lock:
            self.core.store.calls.clear()
            self.core.store.calls_by_route.clear()  # stats.calls / callsByPath count the log's calls
        return Response.json(200, {"items": []})

    def stats(self, req: Request) -> Response:
        return Response.json(200, self.core.store.stats())

    def schema_violations(self, req: Request) -> Response:
        with self.core.store.lock:
            return Response.json(200, {"items": list(self.core.store.schema_violations)})

    # ------------------------------------------------------------------ clock
    def get_clock(self, req: Request) -> Response:
        clock = self.core.clock
        return Response.json(200, {"now": iso(clock.now()), "offsetSeconds": clock.offset_seconds})

    def advance_clock(self, req: Request) -> Response:
        seconds = self._object(req).get("advance_seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise TossError("INVALID_REQUEST", "advance_seconds must be a number")
        self.core.clock.advance(float(seconds))
        self.core.tick()  # expire confirm windows / start scheduled payouts before answering
        return self.get_clock(req)

    # ------------------------------------------------------------------ payouts
    def seller_status(self, req: Request) -> Response:
        return Response.json(200, self.core.payouts.set_seller_status(req.params["sellerId"], self._body(req)))

    def get_balance(self, req: Request) -> Response:
        return Response.json(200, self.core.payouts.balance_json())

    def set_balance(self, req: Request) -> Response:
        return Response.json(200, self.core.payouts.set_balance(self._body(req)))

    def sales(self, req: Request) -> Response:
        self.core.balances.settle_due()
        return Response.json(200, {"items": self.core.balances.sales_json(), **self.core.balances.to_json()})

    def refuse_payouts(self, req: Request) -> Response:
        return Response.json(200, self.core.payouts.queue_refusal(self._body(req)))

    def complete_payout(self, req: Request) -> Response:
        return Response.json(200, self.core.payouts.complete(req.params["payoutId"], self._body(req)))

    # ------------------------------------------------------------------ configuration
    def get_config(self, req: Request) -> Response:
        return Response.json(200, self.core.settings.public_view())

    def set_config(self, req: Request) -> Response:
        return Response.json(200, self.core.update_settings(self._object(req)).public_view())

    # ------------------------------------------------------------------ webhooks
    def send_webhook(self, req: Request) -> Response:
        delivery = self.core.webhooks.send_on_demand(self._object(req))
        with self.core.store.lock:
            return Response.json(200, delivery.to_json())

    def get_webhooks(self, req: Request) -> Response:
        event_type = (req.query.get("eventType") or [""])[0]
        with self.core.store.lock:
            items = [w.to_json() for w in self.core.store.webhooks if not event_type or w.event_type == event_type]
        return Response.json(200, {"items": items})

    def clear_webhooks(self, req: Request) -> Response:
        with self.core.store.lock:
            for delivery in self.core.store.webhooks:
                if delivery.state == "pending":
                    delivery.state = "canceled"  # queued retries are dropped
            self.core.store.webhooks.clear()
        return Response.json(200, {"items": []})

    # ------------------------------------------------------------------ reset
    def reset(self, req: Request) -> Response:
        self.core.reset()
        return Response.json(200, {"ok": True})
