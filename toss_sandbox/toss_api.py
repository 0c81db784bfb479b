"""The Toss endpoints (/v1 payments, /v2 sellers/payouts/balances) and the pipeline every call goes through.

Pipeline of one call:

1. route match (unknown path -> 404 NOT_FOUND, known path with another method -> 405 METHOD_NOT_ALLOWED);
2. Basic auth (auth.py);
3. POST only: ``Idempotency-Key`` (idempotency.py) -> replay / 409 / 400, or claim the key;
4. ``TossPayments-Test-Code`` header (test keys only): answer that error without processing;
5. faults (faults.py), the handler, the "lose the answer" fault;
6. the call is recorded (``GET /sandbox/calls``).

v2 answers use the envelope ``{"version","traceId","entityType","entityBody"}`` (errors: ``entityType`` and
``entityBody`` null plus ``"error": {"code","message"}``) [TC https://techchat.tosspayments.com/m/1461347481341132882;
3P mion-kr/nestjs-toss-payments-seller-example]; ``v2_error_shape="v1"`` answers v2 errors as a bare
``{"code","message"}`` instead (UNCONFIRMED, for testing clients). A v2 answer is JWE-encrypted (``Content-Type:
text/plain``) exactly when the request carried ``TossPayments-api-security-mode: ENCRYPTION``; POSTs with a
body (register seller, request payouts) must carry it and an encrypted body, else 400 INVALID_REQUEST.
GETs and the body-less payout cancel may be sent either way.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .auth import authenticate
from .clock import iso
from .core import SandboxCore
from .errors import ERROR_TABLE, TossError
from .idempotency import MAX_KEY_LENGTH, Identity, Outcome
from .jwe import SECURITY_MODE_HEADER, SECURITY_MODE_VALUE, JweError, jwe_decrypt, jwe_encrypt
from .payments import PaymentDeclined
from .routing import Request, Response, Route, Router
from .schema import PaymentSchemaError
from .settings import API_VERSION
from .store import CallRecord

log = logging.getLogger("toss_sandbox.api")

TEST_CODE_HEADER = "TossPayments-Test-Code"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_CODE_RE = re.compile(r"^[A-Z0-9_]{1,100}$")


@dataclass
class CallContext:
    api_key: str = ""
    v2: bool = False
    encrypted: bool = False
    decline_code: str | None = None
    record: CallRecord | None = None


TossHandler = Callable[[Request, CallContext], Response]


class TossApi:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core
        self.router: Router[TossHandler] = Router()
        r = self.router
        r.add("POST", "/v1/payments/confirm", self.confirm)
        r.add("GET", "/v1/payments/orders/{orderId}", self.get_payment_by_order)
        r.add("GET", "/v1/payments/{paymentKey}", self.get_payment)
        r.add("POST", "/v1/payments/{paymentKey}/cancel", self.cancel_payment)
        r.add("POST", "/v2/sellers", self.register_seller)
        r.add("GET", "/v2/sellers", self.list_sellers)
        r.add("GET", "/v2/sellers/{sellerId}", self.get_seller)
        r.add("POST", "/v2/sellers/{sellerId}", self.update_seller)
        r.add("POST", "/v2/payouts", self.request_payouts)
        r.add("GET", "/v2/payouts", self.list_payouts)
        r.add("GET", "/v2/payouts/{payoutId}", self.get_payout)
        r.add("POST", "/v2/payouts/{payoutId}/cancel", self.cancel_payout)
        r.add("GET", "/v2/balances", self.get_balances)

    # ================================================================== pipeline
    def handle(self, req: Request) -> Response:
        started = time.monotonic()
        core = self.core
        route, params, path_exists = self.router.match(req.method, req.path)
        req.params = {k: unquote(v) for k, v in params.items()}
        req.route = route.name if route else f"{req.method} {req.path}"
        ctx = CallContext(v2=req.path.startswith("/v2/"))
        ctx.encrypted = ctx.v2 and (req.header(SECURITY_MODE_HEADER) or "").upper() == SECURITY_MODE_VALUE
        record = CallRecord(
            id=0,
            time=iso(core.clock.now()),
            method=req.method,
            path=req.path,
            route=req.route,
            idempotency_key=req.header(IDEMPOTENCY_HEADER) if req.method == "POST" else None,
            request_body=_loggable_body(req.body),
            test_code=req.header(TEST_CODE_HEADER),
        )
        ctx.record = record
        try:
            response = self._process(req, route, path_exists, ctx)
        except PaymentSchemaError as exc:
            log.error("SANDBOX BUG while answering %s: %s", req.route, exc)
            response = self._error(TossError("SANDBOX_SCHEMA_VIOLATION", str(exc)[:500]), ctx)
        except Exception:
            log.exception("SANDBOX BUG while answering %s", req.route)
            response = self._error(TossError("UNKNOWN_ERROR", "[sandbox] internal error, see the sandbox log"), ctx)
        trace_id = core.ids.trace_id()
        response.headers.setdefault("x-tosspayments-trace-id", trace_id)
        record.response_status = None if response.drop_after_seconds is not None else response.status
        record.response_code = response.code
        record.duration_ms = int((time.monotonic() - started) * 1000)
        with core.store.lock:
            record.id = core.store.next_call_id
            core.store.next_call_id += 1
            core.store.calls.append(record)
            core.store.calls_by_route[req.route] += 1
        if core.settings.verbose:
            log.info(
                "%s %s -> %s %s%s",
                req.method,
                req.path,
                response.status,
                response.code or "",
                f" [fault {record.fault}]" if record.fault else "",
            )
        return response

    def _process(self, req: Request, route: Route[TossHandler] | None, path_exists: bool, ctx: CallContext) -> Response:
        if route is None:
            return self._error(TossError("METHOD_NOT_ALLOWED" if path_exists else "NOT_FOUND"), ctx)
        try:
            ctx.api_key = authenticate(req.header("Authorization"), self.core.settings.secret_keys)
        except TossError as exc:
            return self._error(exc, ctx)
        identity: Identity | None = None
        key = req.header(IDEMPOTENCY_HEADER) if req.method == "POST" else None
        if key is not None:
            if not key or len(key) > MAX_KEY_LENGTH:
                return self._error(TossError("INVALID_IDEMPOTENCY_KEY"), ctx)
            identity = (key, ctx.api_key, req.path, req.method)
            outcome, stored = self.core.idempotency.begin(identity, self.core.clock.now())
            if outcome is Outcome.PROCESSING:
                response = self._error(TossError("IDEMPOTENT_REQUEST_PROCESSING"), ctx)
                response.headers["idempotency-key"] = key
                return response
            if outcome is Outcome.REPLAY and stored is not None:
                # [DOC https://docs.tosspayments.com/reference/using-api/idempotency-key] the first answer again
                with self.core.store.lock:
                    self.core.store.counters["idempotent_replays"] += 1
                assert ctx.record is not None
                ctx.record.replayed = True
                stored.headers["idempotency-key"] = key
                return stored
        bind = True
        try:
            response = self._run(req, route, ctx)
            if response.code == "IDEMPOTENT_REQUEST_PROCESSING":
                bind = False  # a forced 409 (test code / fault) must not poison the key
        except BaseException:
            if identity is not None:
                self.core.idempotency.release(identity)
            raise
        if identity is not None:
            if bind:
                self.core.idempotency.finish(identity, response, bind_5xx=self.core.settings.idempotency_bind_5xx)
            else:
                self.core.idempotency.release(identity)
            response.headers["idempotency-key"] = key or ""
        if self.core.faults.applies(req.path) and self.core.faults.draw_lose_answer():
            self._count_fault("lose_answer", ctx)
            response.drop_after_seconds = self.core.faults.timeout_seconds()
        return response

    def _run(self, req: Request, route: Route[TossHandler], ctx: CallContext) -> Response:
        core = self.core
        test_code = req.header(TEST_CODE_HEADER)
        if test_code and ctx.api_key.startswith("test_") and _CODE_RE.match(test_code.strip()):
            self._count_fault("test_code", ctx)
            return self._error(TossError(test_code.strip()), ctx)
        if core.faults.applies(req.path):
            latency = core.faults.latency_seconds()
            if latency > 0:
                self._count_fault("latency", ctx, record=False)
                core.stopping.wait(latency)
            fault = core.faults.draw_pre_fault(is_confirm=req.path == "/v1/payments/confirm")
            if fault is not None and fault.kind == "timeout":
                self._count_fault("timeout", ctx)
                core.stopping.wait(core.faults.timeout_seconds())
                return self._error(TossError(fault.code), ctx)
            if fault is not None and fault.kind in ("server_error", "failure_code"):
                self._count_fault(fault.kind, ctx)
                return self._error(TossError(fault.code, fault.message, fault.status), ctx)
            if fault is not None and fault.kind == "decline":
                ctx.decline_code = fault.code
        try:
            response: Response = route.handler(req, ctx)
        except TossError as exc:
            if isinstance(exc, PaymentDeclined):
                self._count_fault("decline", ctx)
            return self._error(exc, ctx)
        return response

    def _count_fault(self, kind: str, ctx: CallContext, *, record: bool = True) -> None:
        with self.core.store.lock:
            self.core.store.fault_counters[kind] += 1
        if record and ctx.record is not None:
            ctx.record.fault = kind

    # ================================================================== answers
    def _error(self, error: TossError, ctx: CallContext) -> Response:
        if not ctx.v2:
            return Response.json(error.status, error.body(), code=error.code)
        if self.core.settings.v2_error_shape == "v1":
            return self._v2_answer(error.status, error.body(), ctx, code=error.code)
        envelope = {
            "version": API_VERSION,
            "traceId": self.core.ids.trace_id(),
            "entityType": None,
            "entityBody": None,
            "error": error.body(),
        }
        return self._v2_answer(error.status, envelope, ctx, code=error.code)

    def _v2_ok(self, entity_type: str, entity: Any, ctx: CallContext) -> Response:
        # [DOC https://docs.tosspayments.com/guides/v2/payouts] answers to encrypted requests are encrypted.
        envelope = {
            "version": API_VERSION,
            "traceId": self.core.ids.trace_id(),
            "entityType": entity_type,
            "entityBody": entity,
        }
        return self._v2_answer(200, envelope, ctx)

    def _v2_answer(self, status: int, envelope: dict[str, Any], ctx: CallContext, code: str | None = None) -> Response:
        if not ctx.encrypted:
            return Response.json(status, envelope, code=code)
        payload = json.dumps(envelope, ensure_ascii=False)
        token = jwe_encrypt(payload, self.core.settings.security_key, iat=iso(self.core.clock.now()))
        return Response.text(status, token, code=code)

    @staticmethod
    def _json_body(req: Request) -> Any:
        try:
            return req.json()
        except (ValueError, UnicodeDecodeError):
            raise TossError("INVALID_REQUEST", "요청 본문이 올바른 JSON이 아닙니다.") from None

    def _encrypted_body(self, req: Request, ctx: CallContext) -> Any:
        if not ctx.encrypted:
            raise TossError(
                "INVALID_REQUEST",
                "지급대행 API는 TossPayments-api-security-mode: ENCRYPTION 헤더와 암호화된 본문(JWE)이 필요합니다.",
            )
        try:
            plain = jwe_decrypt(req.body, self.core.settings.security_key)
        except JweError as exc:
            raise TossError("INVALID_ENCRYPTION", f"{ERROR_TABLE['INVALID_ENCRYPTION'][1]} ({exc})") from None
        try:
            body = json.loads(plain.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TossError("INVALID_REQUEST", "복호화한 본문이 올바른 JSON이 아닙니다.") from None
        if ctx.record is not None:
            ctx.record.decrypted_body = body
        return body

    # ================================================================== v1 payments
    def confirm(self, req: Request, ctx: CallContext) -> Response:
        payment = self.core.payments.confirm(self._json_body(req), ctx.decline_code)
        return Response.json(200, payment)

    def get_payment(self, req: Request, ctx: CallContext) -> Response:
        return Response.json(200, self.core.payments.get_by_key(req.params["paymentKey"]))

    def get_payment_by_order(self, req: Request, ctx: CallContext) -> Response:
        return Response.json(200, self.core.payments.get_by_order(req.params["orderId"]))

    def cancel_payment(self, req: Request, ctx: CallContext) -> Response:
        payment = self.core.payments.cancel(req.params["paymentKey"], self._json_body(req))
        return Response.json(200, payment)

    # ================================================================== v2 payouts
    def register_seller(self, req: Request, ctx: CallContext) -> Response:
        seller = self.core.payouts.register_seller(self._encrypted_body(req, ctx))
        return self._v2_ok("seller", seller, ctx)

    def list_sellers(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("seller", self.core.payouts.list_sellers(), ctx)

    def get_seller(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("seller", self.core.payouts.get_seller(req.params["sellerId"]), ctx)

    def update_seller(self, req: Request, ctx: CallContext) -> Response:
        seller = self.core.payouts.update_seller(req.params["sellerId"], self._encrypted_body(req, ctx))
        return self._v2_ok("seller", seller, ctx)

    def request_payouts(self, req: Request, ctx: CallContext) -> Response:
        result = self.core.payouts.request_payouts(self._encrypted_body(req, ctx))
        return self._v2_ok("payout", result, ctx)

    def list_payouts(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("payout", self.core.payouts.list_payouts(), ctx)

    def get_payout(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("payout", self.core.payouts.get_payout(req.params["payoutId"]), ctx)

    def cancel_payout(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("payout", self.core.payouts.cancel_payout(req.params["payoutId"]), ctx)

    def get_balances(self, req: Request, ctx: CallContext) -> Response:
        return self._v2_ok("balance", self.core.payouts.balance_json(), ctx)


def _loggable_body(body: bytes) -> Any:
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
