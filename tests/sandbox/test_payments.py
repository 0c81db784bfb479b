"""Widget simulation, confirm, lookups, the confirm window and virtual accounts."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from toss_sandbox import Sandbox

from .conftest import TossClient, new_order_id


def test_widget_then_confirm_approves_with_a_full_payment_object(toss: TossClient) -> None:
    widget = toss.widget(amount=30000, orderName="모임 예약금", method="간편결제")
    assert set(widget) >= {"paymentKey", "orderId", "amount"}
    assert widget["paymentKey"].startswith("tgen_")

    response = toss.confirm(widget["paymentKey"], widget["orderId"], 30000)

    assert response.status_code == 200
    payment = response.json()
    assert payment["status"] == "DONE"
    assert payment["paymentKey"] == widget["paymentKey"]
    assert payment["orderId"] == widget["orderId"]
    assert payment["orderName"] == "모임 예약금"
    assert payment["method"] == "간편결제"
    assert payment["version"] == "2022-11-16"
    assert payment["currency"] == "KRW"
    assert payment["country"] == "KR"
    assert payment["mId"] == "tvivarepublica"
    assert payment["type"] == "NORMAL"
    assert payment["totalAmount"] == payment["balanceAmount"] == 30000
    assert isinstance(payment["totalAmount"], int)
    assert payment["suppliedAmount"] + payment["vat"] == 30000
    assert payment["vat"] == 2727
    assert payment["secret"].startswith("ps_")
    assert payment["lastTransactionKey"]
    assert payment["easyPay"] == {"provider": "토스페이", "amount": 0, "discountAmount": 0}
    assert payment["card"]["amount"] == 30000
    assert payment["cancels"] is None and payment["failure"] is None
    assert payment["receipt"]["url"].startswith("https://")
    assert payment["checkout"]["url"].startswith("https://")
    approved = datetime.fromisoformat(payment["approvedAt"])
    assert approved.utcoffset() == timedelta(hours=9)


def test_card_payment_has_a_card_and_no_easy_pay(toss: TossClient) -> None:
    payment = toss.paid(amount=15000, method="카드")
    assert payment["method"] == "카드"
    assert payment["card"]["acquireStatus"] == "READY"
    assert payment["easyPay"] is None


def test_authenticated_payment_waits_in_progress_before_confirm(toss: TossClient) -> None:
    widget = toss.widget()
    payment = toss.get(f"/v1/payments/{widget['paymentKey']}").json()
    assert payment["status"] == "IN_PROGRESS"
    assert payment["approvedAt"] is None
    assert payment["secret"] is None


def test_confirm_with_a_different_amount_is_refused_and_the_payment_stays_open(toss: TossClient) -> None:
    widget = toss.widget(amount=30000)

    response = toss.confirm(widget["paymentKey"], widget["orderId"], 29999)

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REQUEST"
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "IN_PROGRESS"
    assert toss.confirm(widget["paymentKey"], widget["orderId"], 30000).status_code == 200


def test_confirm_with_another_order_id_is_not_found_payment_session(toss: TossClient) -> None:
    widget = toss.widget()
    response = toss.confirm(widget["paymentKey"], new_order_id("other"), widget["amount"])
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND_PAYMENT_SESSION"


def test_confirm_of_an_unknown_payment_key_is_not_found_payment(toss: TossClient) -> None:
    response = toss.confirm("tgen_doesnotexist", new_order_id(), 1000)
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND_PAYMENT"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"orderId": "order-000001", "amount": 1000}, "INVALID_REQUEST"),
        ({"paymentKey": "x" * 201, "orderId": "order-000001", "amount": 1000}, "INVALID_REQUEST"),
        ({"paymentKey": "tgen_x", "orderId": "short", "amount": 1000}, "INVALID_ORDER_ID"),
        ({"paymentKey": "tgen_x", "orderId": "order.with.dots", "amount": 1000}, "INVALID_ORDER_ID"),
        ({"paymentKey": "tgen_x", "orderId": "o" * 65, "amount": 1000}, "INVALID_ORDER_ID"),
        ({"paymentKey": "tgen_x", "orderId": "order-000001", "amount": "1000"}, "INVALID_REQUEST"),
        ({"paymentKey": "tgen_x", "orderId": "order-000001", "amount": 0}, "INVALID_REQUEST"),
        ({"paymentKey": "tgen_x", "orderId": "order-000001"}, "INVALID_REQUEST"),
    ],
    ids=["no-key", "long-key", "short-order", "dot-order", "long-order", "string-amount", "zero", "no-amount"],
)
def test_confirm_validates_its_body(toss: TossClient, body: dict[str, object], code: str) -> None:
    response = toss.post("/v1/payments/confirm", body)
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_second_confirm_is_already_processed_payment(toss: TossClient) -> None:
    widget = toss.widget()
    assert toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).status_code == 200

    again = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])

    assert again.status_code == 400
    assert again.json()["code"] == "ALREADY_PROCESSED_PAYMENT"
    assert toss.stats()["approvals"] == 1


def test_lookups_by_payment_key_and_by_order_id_return_the_same_payment(toss: TossClient) -> None:
    payment = toss.paid()
    by_key = toss.get(f"/v1/payments/{payment['paymentKey']}")
    by_order = toss.get(f"/v1/payments/orders/{payment['orderId']}")
    assert by_key.status_code == by_order.status_code == 200
    assert by_key.json() == by_order.json() == payment


def test_lookup_of_unknown_payment_or_order_is_not_found_payment(toss: TossClient) -> None:
    for path in ("/v1/payments/tgen_missing", "/v1/payments/orders/no-such-order"):
        response = toss.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND_PAYMENT"


def test_confirm_after_the_ten_minute_window_expires_the_payment(toss: TossClient) -> None:
    widget = toss.widget()
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 601})

    response = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])

    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND_PAYMENT_SESSION"
    payment = toss.get(f"/v1/payments/orders/{widget['orderId']}").json()
    assert payment["status"] == "EXPIRED"
    assert payment["failure"]["code"] == "EXPIRED_PAYMENT"


def test_confirm_just_inside_the_window_succeeds(toss: TossClient) -> None:
    widget = toss.widget()
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 590})
    assert toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).status_code == 200


def test_confirm_window_is_configurable(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox: Sandbox = make_sandbox(confirm_window_seconds=30)
    toss = TossClient(sandbox.url)
    widget = toss.widget()
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 31})
    assert toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"]).status_code == 404


def test_same_order_id_in_the_widget_replaces_the_open_payment(toss: TossClient) -> None:
    order_id = new_order_id()
    first = toss.widget(order_id=order_id)
    second = toss.widget(order_id=order_id)

    assert first["paymentKey"] != second["paymentKey"]
    assert toss.get(f"/v1/payments/{first['paymentKey']}").json()["status"] == "EXPIRED"
    assert toss.get(f"/v1/payments/orders/{order_id}").json()["paymentKey"] == second["paymentKey"]


def test_widget_refuses_an_order_id_that_was_already_approved(toss: TossClient) -> None:
    payment = toss.paid()
    response = toss.session.post(
        toss.base_url + "/sandbox/payments", json={"orderId": payment["orderId"], "amount": 1000}, timeout=5
    )
    assert response.status_code == 400
    assert response.json()["code"] == "DUPLICATED_ORDER_ID"


def test_virtual_account_waits_for_deposit_until_the_deposit_control(toss: TossClient) -> None:
    widget = toss.widget(amount=50000, method="가상계좌")

    waiting = toss.confirm(widget["paymentKey"], widget["orderId"], 50000).json()

    assert waiting["status"] == "WAITING_FOR_DEPOSIT"
    assert waiting["method"] == "가상계좌"
    assert waiting["secret"].startswith("ps_")
    assert waiting["virtualAccount"]["accountNumber"].startswith("X")
    assert waiting["approvedAt"] is None
    assert toss.stats()["approvals"] == 0

    done = toss.control("POST", f"/sandbox/payments/{widget['paymentKey']}/deposit", {})

    assert done["status"] == "DONE"
    assert done["approvedAt"] is not None
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "DONE"
    assert toss.stats()["approvals"] == 1


def test_other_methods_are_supported(toss: TossClient) -> None:
    transfer = toss.paid(method="계좌이체")
    phone = toss.paid(method="휴대폰")
    assert transfer["transfer"]["bankCode"] == "88"
    assert phone["mobilePhone"]["settlementStatus"] == "INCOMPLETED"


def test_the_call_log_records_what_toss_was_told(toss: TossClient) -> None:
    widget = toss.widget()
    toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="confirm-1")

    call = toss.calls()[-1]

    assert call["method"] == "POST"
    assert call["path"] == "/v1/payments/confirm"
    assert call["idempotencyKey"] == "confirm-1"
    assert call["requestBody"] == {
        "paymentKey": widget["paymentKey"],
        "orderId": widget["orderId"],
        "amount": widget["amount"],
    }
    assert call["responseStatus"] == 200
    assert call["responseCode"] is None
    assert call["fault"] is None
    assert call["time"]
    toss.control("DELETE", "/sandbox/calls")
    assert toss.calls() == []


def test_reset_forgets_everything(toss: TossClient) -> None:
    payment = toss.paid()
    toss.control("POST", "/sandbox/reset")
    assert toss.get(f"/v1/payments/{payment['paymentKey']}").status_code == 404
    stats = toss.stats()
    assert stats["approvals"] == 0
    assert stats["calls"] == 1


def test_parallel_confirms_of_one_payment_approve_it_once(toss: TossClient) -> None:
    widget = toss.widget()

    def confirm(_: int) -> tuple[int, str | None]:
        client = TossClient(toss.base_url)
        response = client.confirm(widget["paymentKey"], widget["orderId"], widget["amount"])
        return response.status_code, response.json().get("code")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(confirm, range(8)))

    assert results.count((200, None)) == 1
    assert results.count((400, "ALREADY_PROCESSED_PAYMENT")) == 7
    assert toss.stats()["approvals"] == 1


def test_config_changes_apply_at_run_time(toss: TossClient) -> None:
    config = toss.control("POST", "/sandbox/config", {"available_balance": 5000, "confirm_window_seconds": 5})
    assert config["confirm_window_seconds"] == 5
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == 5000
    widget = toss.widget()
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 6})
    assert toss.get(f"/v1/payments/{widget['paymentKey']}").json()["status"] == "EXPIRED"
    bad = toss.session.post(toss.base_url + "/sandbox/config", json={"webhook_hmac_encoding": "rot13"}, timeout=5)
    unknown = toss.session.post(toss.base_url + "/sandbox/config", json={"seed": 1}, timeout=5)
    assert bad.status_code == unknown.status_code == 400
