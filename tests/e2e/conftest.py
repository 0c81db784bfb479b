"""The local stack for end-to-end tests: the Toss sandbox and the local API (API Gateway events into the real
handlers), both on loopback, against this session's MariaDB database."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support.events import token
from tests.support.functions import ROOT

TOSS_READ_TIMEOUT = 2.0  # short, so "Toss did not answer" tests run quickly
SETTLEMENT_SECONDS = 1.0  # the sandbox's settlement cycle (Toss's is days)


@pytest.fixture(scope="session")
def sandbox(database_url: str) -> Iterator[Any]:
    from toss_sandbox import start_sandbox

    # Toss's balances as they are (a confirmed sale enters pendingAmount and becomes available, all a payout may take,
    # after the settlement cycle), with the cycle compressed to SETTLEMENT_SECONDS: tests that pay out wait for it
    # (`Toss.settle_sales`). The sandbox clock is not moved on instead: signed webhooks carry the sandbox's time.
    sb = start_sandbox(host="127.0.0.1", port=0, settlement_delay_seconds=SETTLEMENT_SECONDS)
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def aws() -> Iterator[Any]:
    """EventBridge faked by moto: the outbox is published to a bus whose rule copies every event to a queue."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        events = boto3.client("events", region_name="ap-northeast-2")
        sqs = boto3.client("sqs", region_name="ap-northeast-2")
        events.create_event_bus(Name="escrow-test")
        queue_url = sqs.create_queue(QueueName="escrow-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(
            Name="all", EventBusName="escrow-test", EventPattern=json.dumps({"source": ["escrow.payments"]})
        )
        events.put_targets(Rule="all", EventBusName="escrow-test", Targets=[{"Id": "q", "Arn": arn}])
        yield sqs, queue_url


@pytest.fixture(scope="session")
def api(sandbox: Any, database_url: str, aws: Any) -> Iterator[str]:
    from escrow.config import reset_settings
    from local.api import start_local_api
    from toss_sandbox import DEFAULT_SECURITY_KEY

    os.environ.update(
        {
            "TOSS_API_BASE": sandbox.url,
            "TOSS_READ_TIMEOUT": str(TOSS_READ_TIMEOUT),
            "TOSS_CONNECT_TIMEOUT": "1",
            "TOSS_SECURITY_KEY": DEFAULT_SECURITY_KEY,
            "EVENT_BUS_NAME": "escrow-test",
            "OUTBOX_PUBLISHER": "eventbridge",
            "RECONCILE_AFTER_SECONDS": "0",
            "PLATFORM_FEE_BPS": "300",
        }
    )
    reset_settings()
    handle = start_local_api(host="127.0.0.1", port=0, workers=8)
    r = requests.post(
        f"{sandbox.url}/sandbox/config",
        timeout=5,
        json={"webhook_url": f"{handle.url}/api/v1/payment/webhook", "webhook_retry_delays": [0.3, 0.6, 1.2, 2.4]},
    )
    assert r.status_code == 200, r.text
    yield handle.url
    handle.stop()


@pytest.fixture()
def published(aws: Any) -> Callable[[], list[dict[str, Any]]]:
    """Every event published to the bus so far (drained from the test queue, accumulated)."""
    sqs, queue_url = aws
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        while True:
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return seen
            for m in batch:
                seen.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])

    return read


@pytest.fixture()
def schedule(api: str) -> Callable[..., dict[str, Any]]:
    """Run the scheduled jobs once, as EventBridge Scheduler does: the release function with the schedule event."""
    from tests.support.events import Context
    from tests.support.functions import load_function

    class ScheduledContext(Context):
        def get_remaining_time_in_millis(self) -> int:
            return 900_000  # the release function's timeout: a scheduled run has 15 minutes

    event = json.loads((ROOT / "events" / "schedule.json").read_text())
    fn = load_function("release")
    return lambda **overrides: fn.lambda_handler({**event, **overrides}, ScheduledContext())


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

    def post(
        self, path: str, body: Any = None, *, headers: dict[str, str] | None = None, data: str | bytes | None = None
    ) -> requests.Response:
        return requests.post(
            self.base + path, json=body if data is None else None, data=data, headers=self._headers(headers), timeout=30
        )

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
        r = requests.post(
            f"{self.url}/sandbox/payments",
            json={"orderId": order_id, "amount": amount, "orderName": "예약금", "method": method},
            timeout=5,
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["paymentKey"])

    def faults(self, **settings: Any) -> None:
        r = requests.post(f"{self.url}/sandbox/faults", json=settings, timeout=5)
        assert r.status_code == 200, r.text

    def clear_faults(self) -> None:
        requests.delete(f"{self.url}/sandbox/faults", timeout=5)

    def calls(self, path_part: str = "", method: str | None = None) -> list[dict[str, Any]]:
        items = requests.get(f"{self.url}/sandbox/calls", timeout=5).json()["items"]
        calls = [
            {
                "path": c["path"],
                "method": c["method"],
                # A v2 body is what Toss decrypted (None when it refused the call before reading it, not the JWE).
                "body": c.get("decryptedBody") if c["path"].startswith("/v2/") else c.get("requestBody"),
                "status": c.get("responseStatus"),
                "code": c.get("responseCode"),
                "fault": c.get("fault"),
                "idempotency_key": c.get("idempotencyKey"),
                "replayed": c.get("replayed"),
            }
            for c in items
        ]
        return [c for c in calls if path_part in c["path"] and (method is None or c["method"] == method)]

    def control(self, path: str, body: Any = None) -> dict[str, Any]:
        r = requests.post(f"{self.url}/sandbox/{path}", json=body or {}, timeout=5)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def settle_sales(self, timeout: float = 10.0) -> None:
        """Wait for Toss's settlement cycle: every sale due to settle by now (SETTLEMENT_SECONDS after its approval)
        is in the available payout balance. Sales a test made with a longer cycle are not waited for."""
        from datetime import datetime, timedelta

        def settled() -> bool:
            now = datetime.fromisoformat(requests.get(f"{self.url}/sandbox/clock", timeout=5).json()["now"])
            sales = requests.get(f"{self.url}/sandbox/sales", timeout=5).json()["items"]
            soon = now + timedelta(seconds=60)
            return all(s["state"] == "available" or datetime.fromisoformat(s["settlesAt"]) > soon for s in sales)

        eventually(settled, timeout=timeout, interval=0.1)

    def webhooks(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.url}/sandbox/webhooks", timeout=5).json()["items"])

    def payment(self, payment_key: str) -> dict[str, Any]:
        r = requests.get(
            f"{self.url}/v1/payments/{payment_key}", auth=("test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R", ""), timeout=5
        )
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
