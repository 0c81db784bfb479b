"""The local stack for end-to-end tests: the Toss sandbox and the local API (API Gateway events into the real
handlers), both on loopback, against this session's MariaDB database."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support.events import token

TOSS_READ_TIMEOUT = 2.0  # short, so "Toss did not answer" tests run quickly


@pytest.fixture(scope="session")
def sandbox(database_url: str) -> Iterator[Any]:
    from toss_sandbox import start_sandbox

    sb = start_sandbox(host="127.0.0.1", port=0)
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def api(sandbox: Any, database_url: str) -> Iterator[str]:
    from escrow.config import reset_settings
    from local.api import start_local_api

    os.environ["TOSS_API_BASE"] = sandbox.url
    os.environ["TOSS_READ_TIMEOUT"] = str(TOSS_READ_TIMEOUT)
    os.environ["TOSS_CONNECT_TIMEOUT"] = "1"
    reset_settings()
    handle = start_local_api(host="127.0.0.1", port=0, workers=8)
    yield handle.url
    handle.stop()


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        sb = request.getfixturevalue("sandbox")
        requests.delete(f"{sb.url}/sandbox/faults", timeout=5)


@dataclass
class Client:
    base: str
    user: str | None

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.user:
            headers["authorization"] = f"Bearer {token(self.user)}"
        headers.update(extra or {})
        return headers

    def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             data: str | bytes | None = None) -> requests.Response:
        return requests.post(self.base + path, json=body if data is None else None, data=data,
                             headers=self._headers(headers), timeout=30)

    def get(self, path: str, *, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.get(self.base + path, headers=self._headers(headers), timeout=30)


@pytest.fixture()
def as_user(api: str) -> Callable[[str | None], Client]:
    return lambda user: Client(api, user)


@dataclass
class Toss:
    """Test controls of the sandbox: the widget, faults and the record of calls."""

    url: str

    def widget(self, order_id: str, amount: int, method: str = "카드") -> str:
        r = requests.post(f"{self.url}/sandbox/payments",
                          json={"orderId": order_id, "amount": amount, "orderName": "예약금", "method": method},
                          timeout=5)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["paymentKey"])

    def faults(self, **settings: Any) -> None:
        r = requests.post(f"{self.url}/sandbox/faults", json=settings, timeout=5)
        assert r.status_code == 200, r.text

    def clear_faults(self) -> None:
        requests.delete(f"{self.url}/sandbox/faults", timeout=5)

    def calls(self, path_part: str = "", method: str | None = None) -> list[dict[str, Any]]:
        items = requests.get(f"{self.url}/sandbox/calls", timeout=5).json()["items"]
        calls = [{"path": c["path"], "method": c["method"], "body": c.get("decryptedBody") or c.get("requestBody"),
                  "status": c.get("responseStatus"), "code": c.get("responseCode"), "fault": c.get("fault"),
                  "idempotency_key": c.get("idempotencyKey"), "replayed": c.get("replayed")} for c in items]
        return [c for c in calls if path_part in c["path"] and (method is None or c["method"] == method)]

    def payment(self, payment_key: str) -> dict[str, Any]:
        r = requests.get(f"{self.url}/v1/payments/{payment_key}", auth=("test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R", ""),
                         timeout=5)
        return dict(r.json())


@pytest.fixture()
def toss(sandbox: Any) -> Toss:
    return Toss(sandbox.url)


def eventually(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until check() returns something truthy (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
