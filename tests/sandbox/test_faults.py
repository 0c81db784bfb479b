"""Fault injection and the TossPayments-Test-Code header."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from toss_sandbox import Sandbox

from .conftest import TossClient


def test_failure_rate_one_declines_every_confirm_and_aborts_the_payment(toss: TossClient) -> None:
    toss.faults(failure_rate=1)
    widget = toss.widget()

    response = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])

    assert response.status_code == 403
    assert response.json()["code"] == "REJECT_CARD_PAYMENT"
    payment = toss.get(f"/v1/payments/{widget['paymentKey']}").json()
    assert payment["status"] == "ABORTED"
    assert payment["failure"]["code"] == "REJECT_CARD_PAYMENT"
    assert toss.stats()["faults"]["decline"] == 1
    assert toss.calls()[-2]["fault"] == "decline"
    again = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])
    assert again.json()["code"] == "ALREADY_PROCESSED_PAYMENT"


def test_failure_rate_uses_the_configured_decline_codes(toss: TossClient) -> None:
    toss.faults(failure_rate=1, failure_codes=["INVALID_STOPPED_CARD"])
    widget = toss.widget()
    response = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_STOPPED_CARD")


def test_failure_rate_does_not_touch_lookups(toss: TossClient) -> None:
    payment = toss.paid()
    toss.faults(failure_rate=1)
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").status_code == 200


def test_failure_code_with_count_fails_the_next_calls_then_stops(toss: TossClient) -> None:
    toss.faults(failure_code="PROVIDER_ERROR", count=2, paths=["/v1/payments/confirm"])
    widget = toss.widget()
    codes = [
        toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).json().get("code") for _ in range(3)
    ]
    assert codes == ["PROVIDER_ERROR", "PROVIDER_ERROR", None]
    assert toss.stats()["faults"]["failure_code"] == 2
    assert toss.control("GET", "/sandbox/faults")["failure_code"] is None


def test_failure_code_without_count_applies_until_reset(toss: TossClient) -> None:
    toss.faults(failure_code="FAILED_PAYMENT_INTERNAL_SYSTEM_PROCESSING", count=None)
    for _ in range(3):
        response = toss.get("/v1/payments/tgen_any")
        assert (response.status_code, response.json()["code"]) == (500, "FAILED_PAYMENT_INTERNAL_SYSTEM_PROCESSING")
    toss.control("DELETE", "/sandbox/faults")
    assert toss.get("/v1/payments/tgen_any").json()["code"] == "NOT_FOUND_PAYMENT"


def test_lose_answer_approves_but_the_client_never_gets_the_answer(toss: TossClient) -> None:
    widget = toss.widget()
    toss.faults(lose_answer_rate=1, timeout_seconds=1.0)

    with pytest.raises((requests.Timeout, requests.ConnectionError)):
        toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="lost-1", timeout=0.4)

    toss.control("DELETE", "/sandbox/faults")
    payment = toss.get(f"/v1/payments/orders/{widget['orderId']}").json()
    assert payment["status"] == "DONE"
    retry = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="lost-1")
    assert retry.status_code == 200
    assert retry.json()["status"] == "DONE"
    assert toss.stats()["approvals"] == 1
    assert toss.stats()["faults"]["lose_answer"] == 1
    new_key = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="lost-2")
    assert new_key.json()["code"] == "ALREADY_PROCESSED_PAYMENT"


def test_lose_answer_closes_the_connection_when_the_client_waits_longer(toss: TossClient) -> None:
    widget = toss.widget()
    toss.faults(lose_answer_rate=1, timeout_seconds=0.2)
    with pytest.raises(requests.ConnectionError):
        toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], timeout=5)
    assert toss.calls()[-1]["responseStatus"] is None
    assert toss.calls()[-1]["fault"] == "lose_answer"


def test_timeout_rate_waits_then_answers_500_without_processing(toss: TossClient) -> None:
    widget = toss.widget()
    toss.faults(timeout_rate=1, timeout_seconds=0.3)

    started = time.monotonic()
    response = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="t-1")

    assert time.monotonic() - started >= 0.3
    assert (response.status_code, response.json()["code"]) == (500, "FAILED_INTERNAL_SYSTEM_PROCESSING")
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").status_code == 500  # GETs time out too
    toss.control("DELETE", "/sandbox/faults")
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"
    assert toss.stats()["faults"]["timeout"] == 2
    # What a retry with the same key gets is the idempotency_bind_5xx setting (test_idempotency.py).


def test_server_error_rate_answers_500_without_processing(toss: TossClient) -> None:
    payment = toss.paid()
    toss.faults(server_error_rate=1)
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "x"})
    assert (response.status_code, response.json()["code"]) == (500, "FAILED_INTERNAL_SYSTEM_PROCESSING")
    toss.control("DELETE", "/sandbox/faults")
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").json()["status"] == "DONE"
    assert toss.stats()["faults"]["server_error"] == 1


def test_latency_is_added_to_toss_calls_only(toss: TossClient) -> None:
    toss.faults(latency_ms=300, jitter_ms=50)
    started = time.monotonic()
    toss.get("/v1/payments/tgen_any")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    toss.control("GET", "/sandbox/stats")
    assert time.monotonic() - started < 0.3


def test_paths_limit_where_faults_apply(toss: TossClient) -> None:
    toss.faults(server_error_rate=1, paths=["/v1/payments/confirm"])
    assert toss.get("/v1/payments/tgen_any").json()["code"] == "NOT_FOUND_PAYMENT"
    widget = toss.widget()
    assert toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).status_code == 500


def test_fault_settings_merge_and_validate(toss: TossClient) -> None:
    toss.faults(latency_ms=10)
    merged = toss.faults(failure_rate=0.5)
    assert merged["latency_ms"] == 10 and merged["failure_rate"] == 0.5
    bad = requests.post(toss.base_url + "/sandbox/faults", json={"failure_rate": 2}, timeout=5)
    unknown = requests.post(toss.base_url + "/sandbox/faults", json={"nope": 1}, timeout=5)
    assert bad.status_code == unknown.status_code == 400
    assert toss.control("DELETE", "/sandbox/faults")["latency_ms"] == 0


def test_random_faults_follow_the_rate(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(seed=1).url)
    toss.faults(server_error_rate=0.5)
    statuses = [toss.get("/v1/payments/tgen_any").status_code for _ in range(200)]
    assert 60 < statuses.count(500) < 140
    assert toss.stats()["faults"]["server_error"] == statuses.count(500)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("REJECT_CARD_COMPANY", 403),
        ("PROVIDER_ERROR", 400),
        ("FAILED_INTERNAL_SYSTEM_PROCESSING", 500),
        ("NOT_FOUND_PAYMENT_SESSION", 404),
        ("IDEMPOTENT_REQUEST_PROCESSING", 409),
        ("SOME_FUTURE_CODE", 400),
    ],
)
def test_test_code_header_forces_that_error(toss: TossClient, code: str, status: int) -> None:
    widget = toss.widget()
    response = toss.confirm(
        widget["paymentKey"], widget["orderId"], widget["amount"], headers={"TossPayments-Test-Code": code}
    )
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"
    assert toss.calls()[-2]["testCode"] == code


def test_forced_409_does_not_bind_the_idempotency_key(toss: TossClient) -> None:
    widget = toss.widget()
    args = (widget["paymentKey"], widget["orderId"], widget["amount"])
    forced = toss.confirm(
        *args, idempotency_key="k", headers={"TossPayments-Test-Code": "IDEMPOTENT_REQUEST_PROCESSING"}
    )
    assert forced.status_code == 409
    assert toss.confirm(*args, idempotency_key="k").status_code == 200


def test_test_code_header_is_ignored_for_live_keys(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(secret_keys=["live_sk_sandboxLiveKey000000000"])
    toss = TossClient(sandbox.url, secret_key="live_sk_sandboxLiveKey000000000")
    response = toss.get("/v1/payments/tgen_any", headers={"TossPayments-Test-Code": "REJECT_CARD_COMPANY"})
    assert response.json()["code"] == "NOT_FOUND_PAYMENT"
