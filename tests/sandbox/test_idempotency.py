"""Idempotency-Key semantics (https://docs.tosspayments.com/reference/using-api/idempotency-key)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
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


# ---------------------------------------------------------------------- answers after errors (idempotency_bind_5xx)
@pytest.mark.parametrize("bind_5xx", [True, False])
def test_a_4xx_answer_is_always_bound_to_the_key(make_sandbox: Callable[..., Sandbox], bind_5xx: bool) -> None:
    toss = TossClient(make_sandbox(idempotency_bind_5xx=bind_5xx).url)
    payment = toss.paid(amount=30000)
    body = {"cancelReason": "x", "cancelAmount": 100}
    toss.faults(failure_code="PROVIDER_ERROR", count=1)  # 400, transient at Toss, still bound

    first = toss.cancel(payment["paymentKey"], body, idempotency_key="cancel-1")
    again = toss.cancel(payment["paymentKey"], body, idempotency_key="cancel-1")

    assert (first.status_code, first.json()["code"]) == (400, "PROVIDER_ERROR")
    assert again.json() == first.json() and again.status_code == 400
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").json()["balanceAmount"] == 30000
    fresh = toss.cancel(payment["paymentKey"], body, idempotency_key="cancel-1-attempt-2")
    assert fresh.json()["balanceAmount"] == 29900


def test_by_default_a_5xx_answer_is_replayed_for_the_key(toss: TossClient) -> None:
    """Toss's English docs: the first answer comes back "even in the case of an error"."""
    widget = toss.widget()
    args = (widget["paymentKey"], widget["orderId"], widget["amount"])
    toss.faults(server_error_rate=1, paths=["/v1/payments/confirm"])
    first = toss.confirm(*args, idempotency_key="confirm-1")
    toss.control("DELETE", "/sandbox/faults")

    retry = toss.confirm(*args, idempotency_key="confirm-1")

    assert (first.status_code, first.json()["code"]) == (500, "FAILED_INTERNAL_SYSTEM_PROCESSING")
    assert retry.status_code == 500 and retry.json() == first.json()
    assert retry.headers["idempotency-key"] == "confirm-1"
    assert toss.calls()[-1]["replayed"] is True
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"
    assert toss.confirm(*args, idempotency_key="confirm-2").json()["status"] == "DONE"


def test_a_timed_out_5xx_is_replayed_too_by_default(toss: TossClient) -> None:
    widget = toss.widget()
    args = (widget["paymentKey"], widget["orderId"], widget["amount"])
    toss.faults(timeout_rate=1, timeout_seconds=0.2, paths=["/v1/payments/confirm"])
    assert toss.confirm(*args, idempotency_key="slow-1").status_code == 500
    toss.control("DELETE", "/sandbox/faults")
    assert toss.confirm(*args, idempotency_key="slow-1").status_code == 500


def test_with_bind_5xx_off_a_5xx_releases_the_key(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(idempotency_bind_5xx=False).url)
    widget = toss.widget()
    args = (widget["paymentKey"], widget["orderId"], widget["amount"])
    toss.faults(timeout_rate=1, timeout_seconds=0.2, paths=["/v1/payments/confirm"])
    assert toss.confirm(*args, idempotency_key="t-1").status_code == 500
    toss.control("DELETE", "/sandbox/faults")

    retry = toss.confirm(*args, idempotency_key="t-1")

    assert retry.status_code == 200 and retry.json()["status"] == "DONE"
    assert toss.calls()[-1]["replayed"] is False


@pytest.mark.parametrize("bind_5xx", [True, False])
def test_payout_after_a_5xx_under_both_settings(make_sandbox: Callable[..., Sandbox], bind_5xx: bool) -> None:
    from .test_payouts import approved_seller, payout_item

    toss = TossClient(make_sandbox(idempotency_bind_5xx=bind_5xx, available_balance=100_000).url)
    seller_id = approved_seller(toss)
    item = payout_item(seller_id, 10000)
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v2/payouts"])
    status, error, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="payout-1")
    assert (status, error["error"]["code"]) == (500, "FAILED_INTERNAL_SYSTEM_PROCESSING")

    status, again, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="payout-1")

    if bind_5xx:
        assert (status, again["error"]["code"]) == (500, "FAILED_INTERNAL_SYSTEM_PROCESSING")
        assert toss.stats()["payouts"] == 0
    else:
        assert status == 200 and again["entityBody"]["items"][0]["refPayoutId"] == item["refPayoutId"]
        assert toss.stats()["payouts"] == 1


def test_the_setting_can_be_switched_at_run_time(toss: TossClient) -> None:
    config = toss.control("POST", "/sandbox/config", {"idempotency_bind_5xx": False})
    assert config["idempotency_bind_5xx"] is False


def test_a_request_whose_body_never_arrived_is_not_processed_nor_bound_to_its_key(
    sandbox: Sandbox, toss: TossClient
) -> None:
    """A caller killed between its headers and its body (urllib3 sends them apart): an HTTP server in front of Toss
    drops the cut-off request; its retry with the same key is processed as the first."""
    import socket
    from urllib.parse import urlsplit

    widget = toss.widget()
    toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="confirm-cut")
    body = b'{"cancelReason": "dropped"}'
    parts = urlsplit(sandbox.url)
    head = (
        f"POST /v1/payments/{widget['paymentKey']}/cancel HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {toss.session.headers['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: cancel-cut\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(head + body[:5])  # the caller dies here
    cancelled = toss.cancel(widget["paymentKey"], {"cancelReason": "dropped"}, idempotency_key="cancel-cut")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELED"
    assert toss.stats()["cancels"] == 1
