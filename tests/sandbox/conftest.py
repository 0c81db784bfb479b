"""Fixtures for the Toss sandbox's own tests: a sandbox per test, a Toss client, a webhook receiver."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from toss_sandbox import (
    DEFAULT_SECRET_KEYS,
    DEFAULT_SECURITY_KEY,
    Sandbox,
    basic_auth_header,
    jwe_decrypt,
    jwe_encrypt,
    start_sandbox,
)

SECRET_KEY = DEFAULT_SECRET_KEYS[0]
_order_numbers = itertools.count(1)


def new_order_id(prefix: str = "order") -> str:
    return f"{prefix}-{time.time_ns() % 10**9}-{next(_order_numbers):04d}"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class TossClient:
    """What a merchant server sends to Toss, plus the sandbox's controls."""

    def __init__(self, base_url: str, secret_key: str = SECRET_KEY, security_key: str = DEFAULT_SECURITY_KEY):
        self.base_url = base_url
        self.security_key = security_key
        self.session = requests.Session()
        self.session.headers["Authorization"] = basic_auth_header(secret_key)

    # -- Toss v1
    def post(
        self,
        path: str,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> requests.Response:
        merged = dict(headers or {})
        if idempotency_key is not None:
            merged["Idempotency-Key"] = idempotency_key
        return self.session.post(self.base_url + path, json=body, headers=merged, timeout=timeout)

    def get(self, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10) -> requests.Response:
        return self.session.get(self.base_url + path, headers=headers or {}, timeout=timeout)

    def confirm(self, payment_key: str, order_id: str, amount: Any, **kwargs: Any) -> requests.Response:
        body = {"paymentKey": payment_key, "orderId": order_id, "amount": amount}
        return self.post("/v1/payments/confirm", body, **kwargs)

    def cancel(self, payment_key: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
        return self.post(f"/v1/payments/{payment_key}/cancel", body, **kwargs)

    # -- Toss v2 (encrypted)
    def v2_post(
        self,
        path: str,
        payload: Any,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any], requests.Response]:
        token = jwe_encrypt(json.dumps(payload), key or self.security_key)
        headers = {"Content-Type": "text/plain", "TossPayments-api-security-mode": "ENCRYPTION"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = self.session.post(self.base_url + path, data=token, headers=headers, timeout=10)
        return response.status_code, self.decrypt(response), response

    def v2_get(self, path: str, *, encrypted: bool = False) -> tuple[int, dict[str, Any]]:
        headers = {"TossPayments-api-security-mode": "ENCRYPTION"} if encrypted else {}
        response = self.session.get(self.base_url + path, headers=headers, timeout=10)
        return response.status_code, self.decrypt(response) if encrypted else response.json()

    def v2_cancel_payout(self, payout_id: str) -> tuple[int, dict[str, Any]]:
        response = self.session.post(self.base_url + f"/v2/payouts/{payout_id}/cancel", timeout=10)
        return response.status_code, response.json()

    def decrypt(self, response: requests.Response) -> dict[str, Any]:
        assert response.headers["Content-Type"].startswith("text/plain"), response.text
        result: dict[str, Any] = json.loads(jwe_decrypt(response.text, self.security_key))
        return result

    # -- sandbox controls
    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, self.base_url + path, json=body, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def widget(self, order_id: str | None = None, amount: int = 30000, **extra: Any) -> dict[str, Any]:
        body = {"orderId": order_id or new_order_id(), "amount": amount, **extra}
        result: dict[str, Any] = self.control("POST", "/sandbox/payments", body)
        return result

    def paid(self, amount: int = 30000, **extra: Any) -> dict[str, Any]:
        """A widget payment confirmed to DONE; returns the Payment object."""
        w = self.widget(amount=amount, **extra)
        response = self.confirm(w["paymentKey"], w["orderId"], w["amount"])
        assert response.status_code == 200, response.text
        payment: dict[str, Any] = response.json()
        return payment

    def faults(self, **config: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", "/sandbox/faults", config)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/sandbox/stats")
        return result

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/sandbox/calls")["items"]
        return result

    def webhooks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/sandbox/webhooks")["items"]
        return result


@pytest.fixture()
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def factory(**settings: Any) -> Sandbox:
        sandbox = start_sandbox(host="127.0.0.1", port=0, **settings)
        started.append(sandbox)
        return sandbox

    yield factory
    for sandbox in started:
        sandbox.stop()


@pytest.fixture()
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(seed=7)


@pytest.fixture()
def toss(sandbox: Sandbox) -> TossClient:
    return TossClient(sandbox.url)


# ---------------------------------------------------------------------- webhook receiver
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    # Statuses to answer, in order; when exhausted, ``default_status``.
    script: list[int] = field(default_factory=list)
    default_status: int = 200
    delay_first_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else self.default_status

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        def enough() -> list[Received] | None:
            with self.lock:
                return list(self.received) if len(self.received) >= count else None

        result: list[Received] = wait_until(enough, timeout)
        return result

    def of_type(self, event_type: str) -> list[Received]:
        with self.lock:
            items = list(self.received)
        return [r for r in items if r.json().get("eventType", "DEPOSIT_CALLBACK") == event_type]


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                first = not state.received
                state.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
            if first and state.delay_first_seconds:
                time.sleep(state.delay_first_seconds)
            status = state.next_status()
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sandbox gave up waiting (the slow-receiver test): nothing to answer to

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
