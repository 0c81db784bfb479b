"""Cancel / refund rules (docs/toss-behaviours.md, "Cancels")."""

from __future__ import annotations

from collections.abc import Callable

from toss_sandbox import Sandbox

from .conftest import TossClient


def test_full_cancel_makes_the_payment_canceled_with_a_complete_cancel_entry(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)

    response = toss.cancel(payment["paymentKey"], {"cancelReason": "모임 취소"})

    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "CANCELED"
    assert canceled["balanceAmount"] == 0
    assert canceled["totalAmount"] == 30000
    assert canceled["suppliedAmount"] == 0 and canceled["vat"] == 0
    [entry] = canceled["cancels"]
    assert entry["cancelAmount"] == 30000
    assert entry["cancelReason"] == "모임 취소"
    assert entry["refundableAmount"] == 0
    assert entry["cancelStatus"] == "DONE"
    assert entry["transactionKey"] == canceled["lastTransactionKey"]
    for name in (
        "taxFreeAmount",
        "taxExemptionAmount",
        "easyPayDiscountAmount",
        "cardDiscountAmount",
        "transferDiscountAmount",
        "canceledAt",
        "receiptKey",
        "cancelRequestId",
    ):
        assert name in entry
    assert toss.stats()["cancels"] == 1


def test_second_cancel_of_a_canceled_payment_is_already_canceled_payment(toss: TossClient) -> None:
    payment = toss.paid()
    toss.cancel(payment["paymentKey"], {"cancelReason": "first"})
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "again"})
    assert response.status_code == 400
    assert response.json()["code"] == "ALREADY_CANCELED_PAYMENT"


def test_partial_cancels_reduce_the_balance_and_the_rest_stays_partial_canceled(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    key = payment["paymentKey"]

    first = toss.cancel(key, {"cancelReason": "한 명 취소", "cancelAmount": 10000}).json()
    second = toss.cancel(key, {"cancelReason": "나머지", "cancelAmount": 20000}).json()

    assert first["status"] == "PARTIAL_CANCELED"
    assert first["balanceAmount"] == 20000
    assert first["cancels"][0]["refundableAmount"] == 20000
    assert second["status"] == "PARTIAL_CANCELED"  # [3P-live]: not CANCELED after partials
    assert second["balanceAmount"] == 0
    assert [c["cancelAmount"] for c in second["cancels"]] == [10000, 20000]
    keys = {c["transactionKey"] for c in second["cancels"]}
    assert len(keys) == 2 and payment["lastTransactionKey"] not in keys
    again = toss.cancel(key, {"cancelReason": "more"})
    assert again.status_code == 403
    assert again.json()["code"] == "NOT_CANCELABLE_AMOUNT"


def test_cancel_without_amount_after_a_partial_cancels_the_rest(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    toss.cancel(payment["paymentKey"], {"cancelReason": "part", "cancelAmount": 5000})
    rest = toss.cancel(payment["paymentKey"], {"cancelReason": "rest"}).json()
    assert rest["status"] == "PARTIAL_CANCELED"
    assert rest["balanceAmount"] == 0
    assert rest["cancels"][-1]["cancelAmount"] == 25000


def test_over_cancel_is_not_cancelable_amount(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "too much", "cancelAmount": 30001})
    assert response.status_code == 403
    assert response.json()["code"] == "NOT_CANCELABLE_AMOUNT"
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").json()["balanceAmount"] == 30000


def test_refundable_amount_mismatch_is_not_matches_refundable_amount(toss: TossClient) -> None:
    payment = toss.paid(amount=30000)
    toss.cancel(payment["paymentKey"], {"cancelReason": "part", "cancelAmount": 10000})

    stale = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100, "refundableAmount": 30000})
    fresh = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100, "refundableAmount": 20000})

    assert stale.status_code == 400
    assert stale.json()["code"] == "NOT_MATCHES_REFUNDABLE_AMOUNT"
    assert fresh.status_code == 200
    assert fresh.json()["balanceAmount"] == 19900


def test_cancel_of_a_payment_that_was_never_approved_is_not_cancelable_payment(toss: TossClient) -> None:
    widget = toss.widget()
    response = toss.cancel(widget["paymentKey"], {"cancelReason": "x"})
    assert response.status_code == 403
    assert response.json()["code"] == "NOT_CANCELABLE_PAYMENT"


def test_cancel_requires_a_reason_and_a_known_payment(toss: TossClient) -> None:
    payment = toss.paid()
    no_reason = toss.cancel(payment["paymentKey"], {"cancelAmount": 100})
    long_reason = toss.cancel(payment["paymentKey"], {"cancelReason": "x" * 201})
    unknown = toss.cancel("tgen_missing", {"cancelReason": "x"})
    assert (no_reason.status_code, no_reason.json()["code"]) == (400, "INVALID_REQUEST")
    assert (long_reason.status_code, long_reason.json()["code"]) == (400, "INVALID_REQUEST")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "NOT_FOUND_PAYMENT")


def test_escrow_payment_cannot_be_partially_refunded(toss: TossClient) -> None:
    payment = toss.paid(useEscrow=True)
    assert payment["isPartialCancelable"] is False
    response = toss.cancel(payment["paymentKey"], {"cancelReason": "x", "cancelAmount": 100})
    assert response.status_code == 403
    assert response.json()["code"] == "NOT_ALLOWED_PARTIAL_REFUND"


def test_virtual_account_cancel_rules(toss: TossClient) -> None:
    waiting = toss.widget(amount=20000, method="가상계좌")
    toss.confirm(waiting["paymentKey"], waiting["orderId"], 20000)
    partial = toss.cancel(waiting["paymentKey"], {"cancelReason": "x", "cancelAmount": 100})
    assert partial.json()["code"] == "NOT_ALLOWED_PARTIAL_REFUND_WAITING_DEPOSIT"
    assert toss.cancel(waiting["paymentKey"], {"cancelReason": "x"}).json()["status"] == "CANCELED"

    deposited = toss.widget(amount=20000, method="가상계좌")
    toss.confirm(deposited["paymentKey"], deposited["orderId"], 20000)
    toss.control("POST", f"/sandbox/payments/{deposited['paymentKey']}/deposit")
    without_account = toss.cancel(deposited["paymentKey"], {"cancelReason": "x"})
    assert without_account.json()["code"] == "INVALID_REFUND_ACCOUNT_INFO"
    account = {"bank": "88", "accountNumber": "110123456789", "holderName": "홍길동"}
    refunded = toss.cancel(deposited["paymentKey"], {"cancelReason": "x", "refundReceiveAccount": account})
    assert refunded.status_code == 200
    assert refunded.json()["status"] == "CANCELED"


def test_consecutive_cancel_window_can_be_switched_on(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(consecutive_cancel_window_seconds=1)
    toss = TossClient(sandbox.url)
    payment = toss.paid(amount=30000)
    assert toss.cancel(payment["paymentKey"], {"cancelReason": "a", "cancelAmount": 100}).status_code == 200
    second = toss.cancel(payment["paymentKey"], {"cancelReason": "b", "cancelAmount": 100})
    assert (second.status_code, second.json()["code"]) == (403, "FORBIDDEN_CONSECUTIVE_REQUEST")
