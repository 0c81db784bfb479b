"""Webhooks as Toss sends them (https://docs.tosspayments.com/reference/using-api/webhook-events), delivered to a
tiny local receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from toss_sandbox import DEFAULT_SECURITY_KEY, Sandbox, rotated_out_key, sign_webhook, signature_header

from .conftest import Received, TossClient, WebhookReceiver, wait_until
from .test_payouts import fund, individual_seller, payout_item

FAST_RETRIES = [0.2, 0.4]


def verify_signature(received: Received, key_bytes: bytes) -> bool:
    """A receiver's check: any ``v1:`` value equal to HMAC-SHA256(key, body:transmission-time)."""
    message = received.body + b":" + received.headers["tosspayments-webhook-transmission-time"].encode()
    expected = hmac.new(key_bytes, message, hashlib.sha256).digest()
    values = [v.strip() for v in received.headers["tosspayments-webhook-signature"].split(",")]
    return any(v.startswith("v1:") and hmac.compare_digest(base64.b64decode(v[3:]), expected) for v in values)


@pytest.fixture()
def hooked(make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver) -> TossClient:
    sandbox = make_sandbox(webhook_url=receiver.url, webhook_retry_delays=FAST_RETRIES)
    return TossClient(sandbox.url)


def approved_seller_id(toss: TossClient) -> str:
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    seller_id: str = envelope["entityBody"]["id"]
    toss.control("POST", f"/sandbox/sellers/{seller_id}/status", {"status": "APPROVED"})
    return seller_id


def test_payment_status_changed_is_sent_on_approval_with_toss_headers(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    payment = hooked.paid()

    [delivery] = receiver.wait_for(1)

    body = delivery.json()
    assert body["eventType"] == "PAYMENT_STATUS_CHANGED"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", body["createdAt"])
    assert body["data"] == payment
    headers = delivery.headers
    assert headers["tosspayments-webhook-transmission-id"].startswith("whtrans_")
    assert headers["tosspayments-webhook-transmission-retried-count"] == "0"
    assert datetime.fromisoformat(headers["tosspayments-webhook-transmission-time"]).utcoffset() is not None
    assert "tosspayments-webhook-signature" not in headers
    assert delivery.path == "/webhook"
    log = wait_until(lambda: [w for w in hooked.webhooks() if w["state"] == "delivered"])
    assert log[0]["attempts"][0]["status"] == 200


def test_payment_events_follow_cancels_and_expiry(hooked: TossClient, receiver: WebhookReceiver) -> None:
    payment = hooked.paid(amount=30000)
    hooked.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 1000})
    hooked.cancel(payment["paymentKey"], {"cancelReason": "x"})
    open_one = hooked.widget()
    hooked.control("POST", "/sandbox/clock", {"advance_seconds": 601})

    received = receiver.wait_for(4)

    statuses = [(r.json()["data"]["paymentKey"], r.json()["data"]["status"]) for r in received]
    assert statuses == [
        (payment["paymentKey"], "DONE"),
        (payment["paymentKey"], "PARTIAL_CANCELED"),
        (payment["paymentKey"], "PARTIAL_CANCELED"),
        (open_one["paymentKey"], "EXPIRED"),
    ]


def test_decline_sends_aborted(hooked: TossClient, receiver: WebhookReceiver) -> None:
    hooked.faults(failure_rate=1)
    widget = hooked.widget()
    hooked.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])
    [delivery] = receiver.wait_for(1)
    assert delivery.json()["data"]["status"] == "ABORTED"


def test_virtual_account_sends_deposit_callbacks_with_the_secret(hooked: TossClient, receiver: WebhookReceiver) -> None:
    widget = hooked.widget(amount=20000, method="가상계좌")
    waiting = hooked.confirm(widget["paymentKey"], widget["orderId"], 20000).json()
    hooked.control("POST", f"/sandbox/payments/{widget['paymentKey']}/deposit")

    received = receiver.wait_for(3)

    callbacks = receiver.of_type("DEPOSIT_CALLBACK")
    assert [c.json()["status"] for c in callbacks] == ["WAITING_FOR_DEPOSIT", "DONE"]
    first = callbacks[0].json()
    assert set(first) == {"createdAt", "secret", "status", "transactionKey", "orderId"}
    assert first["secret"] == waiting["secret"]
    assert first["orderId"] == widget["orderId"]
    assert "tosspayments-webhook-signature" not in callbacks[0].headers
    assert [r.json()["data"]["status"] for r in receiver.of_type("PAYMENT_STATUS_CHANGED")] == ["DONE"]
    assert len(received) == 3


def test_payout_changed_is_signed_with_the_hex_decoded_security_key(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    seller_id = approved_seller_id(hooked)
    fund(hooked, 5000)
    _, envelope, _ = hooked.v2_post("/v2/payouts", [payout_item(seller_id, 5000)])
    payout_id = envelope["entityBody"]["items"][0]["id"]
    hooked.control("POST", f"/sandbox/payouts/{payout_id}/complete", {"status": "COMPLETED"})

    wait_until(lambda: receiver.of_type("payout.changed"))
    [delivery] = receiver.of_type("payout.changed")

    body = delivery.json()
    assert body["entityType"] == "payout"
    assert body["version"] == "2022-11-16"
    assert body["eventId"]
    assert body["entityBody"]["id"] == payout_id
    assert body["entityBody"]["status"] == "COMPLETED"
    values = delivery.headers["tosspayments-webhook-signature"].split(",")
    assert len(values) == 2 and all(v.startswith("v1:") for v in values)
    assert verify_signature(delivery, bytes.fromhex(DEFAULT_SECURITY_KEY))
    assert not verify_signature(delivery, DEFAULT_SECURITY_KEY.encode())
    time_header = delivery.headers["tosspayments-webhook-transmission-time"]
    assert sign_webhook(delivery.body, time_header, DEFAULT_SECURITY_KEY) in values
    assert delivery.headers["tosspayments-webhook-signature"] == signature_header(
        delivery.body, time_header, DEFAULT_SECURITY_KEY
    )
    assert sign_webhook(delivery.body, time_header, rotated_out_key(DEFAULT_SECURITY_KEY)) == values[0]


def test_seller_changed_is_sent_on_approval_states(hooked: TossClient, receiver: WebhookReceiver) -> None:
    _, envelope, _ = hooked.v2_post("/v2/sellers", individual_seller())
    seller_id = envelope["entityBody"]["id"]
    for status in ("PARTIALLY_APPROVED", "KYC_REQUIRED", "APPROVED"):
        hooked.control("POST", f"/sandbox/sellers/{seller_id}/status", {"status": status})

    wait_until(lambda: len(receiver.of_type("seller.changed")) == 3)

    events = receiver.of_type("seller.changed")
    assert [e.json()["entityBody"]["status"] for e in events] == ["PARTIALLY_APPROVED", "KYC_REQUIRED", "APPROVED"]
    assert all(e.json()["entityType"] == "seller" for e in events)
    assert all(verify_signature(e, bytes.fromhex(DEFAULT_SECURITY_KEY)) for e in events)


def test_ascii_hmac_encoding_signs_with_the_64_characters(
    make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver
) -> None:
    toss = TossClient(make_sandbox(webhook_url=receiver.url, webhook_hmac_encoding="ascii").url)
    approved_seller_id(toss)
    wait_until(lambda: receiver.of_type("seller.changed"))
    [delivery] = receiver.of_type("seller.changed")
    assert verify_signature(delivery, DEFAULT_SECURITY_KEY.encode())
    assert not verify_signature(delivery, bytes.fromhex(DEFAULT_SECURITY_KEY))


def test_non_200_answers_are_retried_with_the_same_transmission_id(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    receiver.script = [500, 503]
    hooked.paid()

    received = receiver.wait_for(3)

    assert [r.headers["tosspayments-webhook-transmission-retried-count"] for r in received] == ["0", "1", "2"]
    assert len({r.headers["tosspayments-webhook-transmission-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1
    assert received[1].at - received[0].at >= FAST_RETRIES[0] - 0.05
    assert received[2].at - received[1].at >= FAST_RETRIES[1] - 0.05
    [log] = wait_until(lambda: [w for w in hooked.webhooks() if w["state"] == "delivered"])
    assert [a["status"] for a in log["attempts"]] == [500, 503, 200]


def test_delivery_fails_after_the_last_retry(hooked: TossClient, receiver: WebhookReceiver) -> None:
    receiver.default_status = 500
    hooked.paid()
    [log] = wait_until(lambda: [w for w in hooked.webhooks() if w["state"] == "failed"])
    assert len(log["attempts"]) == 1 + len(FAST_RETRIES)
    assert hooked.stats()["webhooks"]["failed"] == 1


def test_a_slow_receiver_times_out_and_is_retried(
    make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver
) -> None:
    receiver.delay_first_seconds = 0.6
    toss = TossClient(
        make_sandbox(webhook_url=receiver.url, webhook_retry_delays=[0.1], webhook_timeout_seconds=0.3).url
    )
    toss.paid()
    [log] = wait_until(lambda: [w for w in toss.webhooks() if w["state"] == "delivered"])
    assert log["attempts"][0]["error"] == "timeout"
    assert log["attempts"][1]["status"] == 200


def test_forged_payout_webhook_has_a_bad_signature(hooked: TossClient, receiver: WebhookReceiver) -> None:
    seller_id = approved_seller_id(hooked)
    fund(hooked, 5000)
    _, envelope, _ = hooked.v2_post("/v2/payouts", [payout_item(seller_id, 5000)])
    payout_id = envelope["entityBody"]["items"][0]["id"]
    wait_until(lambda: receiver.of_type("seller.changed"))

    sent = hooked.control(
        "POST", "/sandbox/webhooks/send", {"eventType": "payout.changed", "payoutId": payout_id, "forge": True}
    )

    wait_until(lambda: receiver.of_type("payout.changed"))
    [forged] = receiver.of_type("payout.changed")
    assert sent["forged"] is True
    assert forged.headers["tosspayments-webhook-transmission-id"] == sent["transmissionId"]
    assert not verify_signature(forged, bytes.fromhex(DEFAULT_SECURITY_KEY))
    assert not verify_signature(forged, DEFAULT_SECURITY_KEY.encode())


def test_forged_deposit_callback_carries_a_wrong_secret(hooked: TossClient, receiver: WebhookReceiver) -> None:
    widget = hooked.widget(method="가상계좌")
    waiting = hooked.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).json()
    hooked.control(
        "POST",
        "/sandbox/webhooks/send",
        {"eventType": "DEPOSIT_CALLBACK", "paymentKey": widget["paymentKey"], "forge": True},
    )
    wait_until(lambda: len(receiver.of_type("DEPOSIT_CALLBACK")) == 2)
    genuine, forged = receiver.of_type("DEPOSIT_CALLBACK")
    assert genuine.json()["secret"] == waiting["secret"]
    assert forged.json()["secret"] != waiting["secret"]


def test_forged_payment_status_changed_claims_done_for_an_open_payment(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    widget = hooked.widget()
    hooked.control(
        "POST",
        "/sandbox/webhooks/send",
        {"eventType": "PAYMENT_STATUS_CHANGED", "paymentKey": widget["paymentKey"], "forge": True},
    )
    [delivery] = receiver.wait_for(1)
    assert delivery.json()["data"]["status"] == "DONE"
    assert hooked.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"


def test_replay_resends_a_delivery_verbatim(hooked: TossClient, receiver: WebhookReceiver) -> None:
    seller_id = approved_seller_id(hooked)
    [original] = receiver.wait_for(1)
    transmission_id = original.headers["tosspayments-webhook-transmission-id"]

    replay = hooked.control("POST", "/sandbox/webhooks/send", {"replay_transmission_id": transmission_id})

    first, second = receiver.wait_for(2)
    assert replay["replayOf"] == transmission_id
    assert second.body == first.body
    for name in (
        "tosspayments-webhook-transmission-id",
        "tosspayments-webhook-transmission-time",
        "tosspayments-webhook-signature",
    ):
        assert second.headers[name] == first.headers[name]
    assert seller_id in second.body.decode()


def test_config_can_switch_webhooks_on_at_run_time(toss: TossClient, receiver: WebhookReceiver) -> None:
    toss.paid()
    config: dict[str, Any] = toss.control(
        "POST", "/sandbox/config", {"webhook_url": receiver.url, "webhook_retry_delays": [0.1]}
    )
    assert config["webhook_url"] == receiver.url
    toss.paid()
    assert len(receiver.wait_for(1)) == 1
    assert len(toss.webhooks()) == 1


def test_without_webhook_url_nothing_is_sent(toss: TossClient) -> None:
    toss.paid()
    assert toss.webhooks() == []


# ---------------------------------------------------------------------- retries: same or fresh headers
def _retried_seller_changed(toss: TossClient, receiver: WebhookReceiver) -> tuple[Received, Received]:
    """A seller.changed answered 500 once, the sandbox clock moved an hour on before Toss retries."""
    receiver.script = [500]
    approved_seller_id(toss)
    receiver.wait_for(1)
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 3600})
    first, retry = receiver.wait_for(2)
    return first, retry


@pytest.mark.parametrize("same", [True, False])
def test_retries_repeat_or_renew_the_transmission_time_per_setting(
    make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver, same: bool
) -> None:
    sandbox = make_sandbox(webhook_url=receiver.url, webhook_retry_delays=[0.5], webhook_retry_same_headers=same)
    first, retry = _retried_seller_changed(TossClient(sandbox.url), receiver)

    time_header = "tosspayments-webhook-transmission-time"
    assert retry.body == first.body
    assert (
        retry.headers["tosspayments-webhook-transmission-id"] == first.headers["tosspayments-webhook-transmission-id"]
    )
    assert retry.headers["tosspayments-webhook-transmission-retried-count"] == "1"
    key = bytes.fromhex(DEFAULT_SECURITY_KEY)
    assert verify_signature(first, key) and verify_signature(retry, key)  # each signed over its own time
    if same:
        assert retry.headers[time_header] == first.headers[time_header]
        assert retry.headers["tosspayments-webhook-signature"] == first.headers["tosspayments-webhook-signature"]
    else:
        late = datetime.fromisoformat(retry.headers[time_header]) - datetime.fromisoformat(first.headers[time_header])
        assert late.total_seconds() >= 3600
        assert retry.headers["tosspayments-webhook-signature"] != first.headers["tosspayments-webhook-signature"]


def test_retries_repeat_the_first_headers_by_default(toss: TossClient) -> None:
    assert toss.control("GET", "/sandbox/config")["webhook_retry_same_headers"] is True


def test_a_manual_resend_days_later_carries_the_original_headers(hooked: TossClient, receiver: WebhookReceiver) -> None:
    """Toss's developer center can resend a webhook ("다시 시도"); the sandbox plays it with the original headers."""
    hooked.paid()
    [original] = receiver.wait_for(1)
    hooked.control("POST", "/sandbox/clock", {"advance_seconds": 4 * 24 * 3600})

    hooked.control(
        "POST",
        "/sandbox/webhooks/send",
        {"replay_transmission_id": original.headers["tosspayments-webhook-transmission-id"]},
    )

    _, resent = receiver.wait_for(2)
    assert resent.body == original.body
    for name in (
        "tosspayments-webhook-transmission-id",
        "tosspayments-webhook-transmission-time",
        "tosspayments-webhook-transmission-retried-count",
    ):
        assert resent.headers[name] == original.headers[name]


def test_only_registered_event_types_are_sent(make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver) -> None:
    toss = TossClient(make_sandbox(webhook_url=receiver.url, webhook_event_types=["seller.changed"]).url)
    toss.paid()
    approved_seller_id(toss)
    [delivery] = receiver.wait_for(1)
    assert delivery.json()["eventType"] == "seller.changed"
    assert len(toss.webhooks()) == 1
    # The send control is not bound by the registration (it plays a delivery on purpose).
    payment = toss.paid()
    toss.control(
        "POST", "/sandbox/webhooks/send", {"eventType": "PAYMENT_STATUS_CHANGED", "paymentKey": payment["paymentKey"]}
    )
    assert receiver.wait_for(2)[1].json()["eventType"] == "PAYMENT_STATUS_CHANGED"
