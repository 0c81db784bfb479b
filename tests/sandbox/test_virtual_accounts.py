"""Virtual accounts (가상계좌): issue at confirm, deposit and deposit error, cancels before and after the deposit,
and the refund account a deposited payment needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from toss_sandbox import Sandbox

from .conftest import TossClient, WebhookReceiver, wait_until

SHINHAN = {"bank": "88", "accountNumber": "110123456789", "holderName": "홍길동"}


def issued(toss: TossClient, amount: int = 20000) -> dict[str, Any]:
    """A virtual account issued by confirm (WAITING_FOR_DEPOSIT); returns the confirm answer."""
    widget = toss.widget(amount=amount, method="가상계좌")
    response = toss.confirm(widget["paymentKey"], widget["orderId"], amount)
    assert response.status_code == 200, response.text
    payment: dict[str, Any] = response.json()
    return payment


def deposited(toss: TossClient, amount: int = 20000) -> dict[str, Any]:
    payment = issued(toss, amount)
    done: dict[str, Any] = toss.control("POST", f"/sandbox/payments/{payment['paymentKey']}/deposit")
    return done


@pytest.fixture()
def hooked(make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver) -> TossClient:
    return TossClient(make_sandbox(webhook_url=receiver.url, webhook_retry_delays=[0.2]).url)


def test_confirm_issues_an_account_waiting_for_deposit_with_a_secret(toss: TossClient) -> None:
    payment = issued(toss, 35000)

    assert payment["status"] == "WAITING_FOR_DEPOSIT"
    assert payment["method"] == "가상계좌"
    assert payment["approvedAt"] is None
    assert payment["secret"].startswith("ps_")
    account = payment["virtualAccount"]
    assert account["accountNumber"].startswith("X")  # test accounts start with X (Toss FAQ)
    assert account["bankCode"] == "20"  # a numeric Toss code: responses carry codes only
    assert account["refundStatus"] == "NONE" and account["expired"] is False
    assert account["dueDate"] > payment["requestedAt"]


def test_a_deposit_completes_it_and_sends_a_flat_deposit_callback_with_the_secret(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    payment = issued(hooked)

    done = hooked.control("POST", f"/sandbox/payments/{payment['paymentKey']}/deposit")

    assert done["status"] == "DONE" and done["approvedAt"]
    wait_until(lambda: len(receiver.of_type("DEPOSIT_CALLBACK")) == 2)
    callback = receiver.of_type("DEPOSIT_CALLBACK")[-1].json()
    assert callback == {
        "createdAt": callback["createdAt"],
        "secret": payment["secret"],
        "status": "DONE",
        "transactionKey": done["lastTransactionKey"],
        "orderId": payment["orderId"],
    }
    assert "paymentKey" not in callback and "eventType" not in callback
    wait_until(lambda: receiver.of_type("PAYMENT_STATUS_CHANGED"))
    assert receiver.of_type("PAYMENT_STATUS_CHANGED")[0].json()["data"]["status"] == "DONE"


def test_without_payment_status_changed_registered_only_deposit_callbacks_arrive(
    make_sandbox: Callable[..., Sandbox], receiver: WebhookReceiver
) -> None:
    toss = TossClient(make_sandbox(webhook_url=receiver.url, webhook_event_types=["DEPOSIT_CALLBACK"]).url)
    deposited(toss)
    toss.paid()  # a card payment sends nothing either
    received = receiver.wait_for(2)
    assert [r.json()["status"] for r in received] == ["WAITING_FOR_DEPOSIT", "DONE"]
    assert all("eventType" not in r.json() for r in received)
    assert len(toss.webhooks()) == 2


def test_a_deposit_error_moves_it_back_to_waiting_and_sends_a_callback(
    hooked: TossClient, receiver: WebhookReceiver
) -> None:
    payment = deposited(hooked)
    wait_until(lambda: len(receiver.of_type("DEPOSIT_CALLBACK")) == 2)

    bounced = hooked.control("POST", f"/sandbox/payments/{payment['paymentKey']}/deposit-error")

    assert bounced["status"] == "WAITING_FOR_DEPOSIT" and bounced["approvedAt"] is None
    assert hooked.get(f"/v1/payments/{payment['paymentKey']}").json()["status"] == "WAITING_FOR_DEPOSIT"
    wait_until(lambda: len(receiver.of_type("DEPOSIT_CALLBACK")) == 3)
    last = receiver.of_type("DEPOSIT_CALLBACK")[-1].json()
    assert (last["status"], last["secret"]) == ("WAITING_FOR_DEPOSIT", payment["secret"])
    assert [r.json()["data"]["status"] for r in receiver.of_type("PAYMENT_STATUS_CHANGED")] == ["DONE"]
    # The buyer deposits again; the deposit control with {"revert": true} plays the same deposit error.
    deposit_path = f"/sandbox/payments/{payment['paymentKey']}/deposit"
    assert hooked.control("POST", deposit_path)["status"] == "DONE"
    assert hooked.control("POST", deposit_path, {"revert": True})["status"] == "WAITING_FOR_DEPOSIT"


def test_deposit_controls_refuse_what_cannot_happen(toss: TossClient) -> None:
    import requests

    card = toss.paid()
    waiting = issued(toss)
    for path in (
        f"/sandbox/payments/{card['paymentKey']}/deposit",  # not a virtual account
        f"/sandbox/payments/{waiting['paymentKey']}/deposit-error",  # nothing deposited
    ):
        response = requests.post(toss.base_url + path, json={}, timeout=5)
        assert (response.status_code, response.json()["code"]) == (400, "INVALID_REQUEST"), path


def test_an_account_past_its_due_date_is_expired_and_takes_no_deposit(toss: TossClient) -> None:
    import requests

    payment = issued(toss)
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 8 * 24 * 3600})

    looked_up = toss.get(f"/v1/payments/{payment['paymentKey']}").json()
    response = requests.post(toss.base_url + f"/sandbox/payments/{payment['paymentKey']}/deposit", timeout=5)

    assert looked_up["status"] == "WAITING_FOR_DEPOSIT"  # stays waiting, no webhook
    assert looked_up["virtualAccount"]["expired"] is True
    assert response.status_code == 400


def test_before_the_deposit_only_a_full_cancel_without_account(hooked: TossClient, receiver: WebhookReceiver) -> None:
    payment = issued(hooked)

    partial = hooked.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100})
    full = hooked.cancel(payment["paymentKey"], {"cancelReason": "x"})

    assert (partial.status_code, partial.json()["code"]) == (403, "NOT_ALLOWED_PARTIAL_REFUND_WAITING_DEPOSIT")
    assert full.status_code == 200 and full.json()["status"] == "CANCELED"
    assert full.json()["virtualAccount"]["refundStatus"] == "NONE"  # nothing was paid, nothing is sent back
    wait_until(lambda: [r.json()["status"] for r in receiver.of_type("DEPOSIT_CALLBACK")][-1:] == ["CANCELED"])


def test_after_the_deposit_a_refund_needs_the_refund_account(toss: TossClient) -> None:
    payment = deposited(toss)

    missing = toss.cancel(payment["paymentKey"], {"cancelReason": "x"})
    refunded = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": SHINHAN})

    assert (missing.status_code, missing.json()["code"]) == (400, "INVALID_REFUND_ACCOUNT_INFO")
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["status"] == "CANCELED"
    assert refunded.json()["virtualAccount"]["refundStatus"] == "COMPLETED"


def test_a_partial_refund_after_the_deposit_is_allowed_with_an_account(toss: TossClient) -> None:
    payment = deposited(toss, 30000)
    body = {"cancelReason": "one share", "cancelAmount": 10000, "refundReceiveAccount": SHINHAN}
    partial = toss.cancel(payment["paymentKey"], body)
    assert partial.status_code == 200, partial.text
    assert (partial.json()["status"], partial.json()["balanceAmount"]) == ("PARTIAL_CANCELED", 20000)


@pytest.mark.parametrize(
    ("account", "code"),
    [
        ({**SHINHAN, "bank": "088"}, "INVALID_BANK"),  # the standard code: payouts only
        ({**SHINHAN, "bank": "04"}, "INVALID_BANK"),  # the brief's KB code: Toss's KB is 06
        ({**SHINHAN, "bank": "05"}, "INVALID_BANK"),  # the brief's 하나 code (old 외환): Toss's 하나 is 81
        ({**SHINHAN, "bank": "XX"}, "INVALID_BANK"),
        ({"accountNumber": "110123456789", "holderName": "홍길동"}, "INVALID_BANK"),
        ({**SHINHAN, "accountNumber": "110-123-456789"}, "INVALID_REFUND_ACCOUNT_NUMBER"),
        ({**SHINHAN, "accountNumber": "1" * 21}, "INVALID_REFUND_ACCOUNT_NUMBER"),
        ({**SHINHAN, "accountNumber": ""}, "INVALID_REFUND_ACCOUNT_NUMBER"),
        ({**SHINHAN, "holderName": ""}, "INVALID_REFUND_ACCOUNT_INFO"),
        ("88/110123456789", "INVALID_REQUEST"),
    ],
)
def test_a_refund_account_is_validated(toss: TossClient, account: Any, code: str) -> None:
    payment = deposited(toss)
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": account})
    assert (response.status_code, response.json()["code"]) == (400, code)
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").json()["status"] == "DONE"


@pytest.mark.parametrize("bank", ["06", "국민", "KB국민은행", "81", "하나", "하나은행", "92", "토스뱅크", "S8"])
def test_refund_banks_are_tosss_codes_or_korean_names(toss: TossClient, bank: str) -> None:
    payment = deposited(toss)
    account = {**SHINHAN, "bank": bank}
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": account})
    assert response.status_code == 200, response.text


def test_a_holder_name_that_does_not_match_the_account_is_refused(toss: TossClient) -> None:
    toss.control(
        "POST", "/sandbox/bank-accounts", {"bank": "신한", "accountNumber": "110123456789", "holderName": "김철수"}
    )
    payment = deposited(toss)

    wrong = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": SHINHAN})
    right = toss.cancel(
        payment["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": {**SHINHAN, "holderName": "김철수"}}
    )

    assert (wrong.status_code, wrong.json()["code"]) == (400, "INVALID_REFUND_ACCOUNT_INFO")
    assert right.status_code == 200


def test_the_code_for_a_missing_refund_account_is_a_setting(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(refund_account_missing_code="INVALID_REQUEST").url)
    payment = deposited(toss)
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "x"})
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_REQUEST")


def test_card_payments_need_no_refund_account(toss: TossClient) -> None:
    payment = toss.paid()
    assert toss.cancel(payment["paymentKey"], {"cancelReason": "x"}).status_code == 200
