"""Idempotency-Key semantics of REFERENCE §5."""

from __future__ import annotations

import threading

import requests

from toss_sandbox import DEFAULT_SECRET_KEYS, Sandbox

from .conftest import TossClient, wait_until


def test_repeat_with_the_same_key_replays_the_first_success(toss: TossClient) -> None:
    widget = toss.widget()
    first = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="key-1")

    second = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="key-1")

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotency-key"] == "key-1"
    assert toss.stats()["approvals"] == 1
    assert toss.stats()["idempotentReplays"] == 1
    assert toss.calls()[-1]["replayed"] is True


def test_repeat_with_the_same_key_replays_the_first_error_even_with_a_fixed_body(toss: TossClient) -> None:
    widget = toss.widget(amount=30000)
    wrong = toss.confirm(widget["paymentKey"], widget["orderId"], 1, idempotency_key="key-err")

    fixed = toss.confirm(widget["paymentKey"], widget["orderId"], 30000, idempotency_key="key-err")

    assert wrong.status_code == fixed.status_code == 400
    assert fixed.json() == wrong.json()
    assert fixed.json()["code"] == "INVALID_REQUEST"
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"


def test_same_key_on_another_payment_replays_the_first_payment(toss: TossClient) -> None:
    """The classic mistake from techchat: one constant key for all confirms."""
    a, b = toss.widget(), toss.widget()
    first = toss.confirm(a["paymentKey"], a["orderId"], a["amount"], idempotency_key="constant")
    second = toss.confirm(b["paymentKey"], b["orderId"], b["amount"], idempotency_key="constant")
    assert second.json()["paymentKey"] == first.json()["paymentKey"] == a["paymentKey"]
    assert toss.get(f"/v1/payments/{b['paymentKey']}").json()["status"] == "IN_PROGRESS"


def test_identity_includes_the_path_and_the_api_key(toss: TossClient, sandbox: Sandbox) -> None:
    payment = toss.paid(amount=30000)
    cancel = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100}, idempotency_key="k")
    assert cancel.status_code == 200
    other_key_client = TossClient(sandbox.url, secret_key=DEFAULT_SECRET_KEYS[1])
    again = other_key_client.cancel(
        payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100}, idempotency_key="k"
    )
    assert again.status_code == 200
    assert again.json()["balanceAmount"] == 29800  # processed, not replayed


def test_key_longer_than_300_characters_is_invalid_idempotency_key(toss: TossClient) -> None:
    widget = toss.widget()
    response = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="k" * 301)
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_IDEMPOTENCY_KEY"
    ok = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="k" * 300)
    assert ok.status_code == 200


def test_key_is_ignored_on_get(toss: TossClient) -> None:
    payment = toss.paid()
    headers = {"Idempotency-Key": "k" * 400}
    response = toss.get(f"/v1/payments/{payment['paymentKey']}", headers=headers)
    assert response.status_code == 200
    assert "idempotency-key" not in response.headers


def test_repeat_while_the_first_is_still_processing_is_409(toss: TossClient) -> None:
    widget = toss.widget()
    toss.faults(latency_ms=800)
    results: dict[str, requests.Response] = {}

    def first() -> None:
        client = TossClient(toss.base_url)
        results["first"] = client.confirm(
            widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="slow"
        )

    thread = threading.Thread(target=first)
    thread.start()
    # The latency is slept after the key was claimed, so once it is counted the first request holds the key.
    wait_until(lambda: toss.stats()["faults"].get("latency") == 1)
    second = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="slow")
    thread.join()

    assert second.status_code == 409
    assert second.json()["code"] == "IDEMPOTENT_REQUEST_PROCESSING"
    assert second.headers["idempotency-key"] == "slow"
    assert results["first"].status_code == 200
    toss.control("DELETE", "/sandbox/faults")
    replay = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="slow")
    assert replay.status_code == 200
    assert replay.json() == results["first"].json()


def test_keys_expire_after_15_days_of_sandbox_time(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    body = {"cancelReason": "x", "cancelAmount": 100}
    toss.cancel(payment["paymentKey"], body, idempotency_key="old")
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 15 * 24 * 3600 + 1})
    again = toss.cancel(payment["paymentKey"], body, idempotency_key="old")
    assert again.json()["balanceAmount"] == 29800


def test_requests_without_a_key_are_processed_normally(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    body = {"cancelReason": "x", "cancelAmount": 100}
    toss.cancel(payment["paymentKey"], body)
    second = toss.cancel(payment["paymentKey"], body)
    assert second.json()["balanceAmount"] == 29800
    assert "idempotency-key" not in second.headers
