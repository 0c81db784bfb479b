"""The sandbox payment window (``/sandbox/checkout``), driven over HTTP as a browser would: the page, its form
posts and the redirects to successUrl / failUrl. (A real-browser test of the whole room is another suite's.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from .conftest import TossClient, new_order_id

SUCCESS = "http://merchant.example/pay/success?room=123"
FAIL = "http://merchant.example/pay/fail"


class FormReader(HTMLParser):
    """The window's form: its action, hidden fields, buttons and select options."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}
        self.buttons: dict[str, str] = {}  # value -> id
        self.options: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a["action"]
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        elif tag == "button":
            self.buttons[a["value"]] = a["id"]
        elif tag == "option":
            self.options.append(a["value"])
        elif tag == "script":
            self._in_script = True
            self.scripts.append(a.get("src", ""))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def window(toss: TossClient, **params: Any) -> requests.Response:
    query = {
        "orderId": new_order_id("chk"),
        "amount": "15000",
        "orderName": "모임 예약금",
        "customerName": "김토스",
        "successUrl": SUCCESS,
        "failUrl": FAIL,
        **params,
    }
    return requests.get(toss.base_url + "/sandbox/checkout", params=query, timeout=5)


def read_form(page: requests.Response) -> FormReader:
    reader = FormReader()
    reader.feed(page.text)
    return reader


def choose(toss: TossClient, page: requests.Response, action: str, **extra: str) -> requests.Response:
    """Post the window's form as the browser does when the buyer presses the button ``action``."""
    form = read_form(page)
    data = {**form.hidden, "action": action, **extra}
    return requests.post(toss.base_url + form.action, data=data, allow_redirects=False, timeout=5)


def redirect(response: requests.Response) -> tuple[str, dict[str, str]]:
    assert response.status_code == 303, response.text
    location = response.headers["Location"]
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_the_window_is_a_plain_page_with_the_order_and_the_buyers_choices(toss: TossClient) -> None:
    page = window(toss, orderId="order-window-1")

    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    form = read_form(page)
    assert form.action == "/sandbox/checkout"
    assert form.hidden["orderId"] == "order-window-1" and form.hidden["amount"] == "15000"
    assert set(form.buttons) == {"card", "virtual_account", "decline", "cancel"}
    assert "REJECT_CARD_PAYMENT" in form.options
    assert form.scripts and all(src == "" for src in form.scripts)  # inline only: no CDN, nothing fetched
    assert not re.search(r"""(src|href)=["']https?://""", page.text)
    assert "15,000원" in page.text and "모임 예약금" in page.text


def test_a_card_payment_redirects_to_success_url_and_waits_for_confirm(toss: TossClient) -> None:
    page = window(toss, amount="15000")
    order_id = read_form(page).hidden["orderId"]

    url, query = redirect(choose(toss, page, "card"))

    assert url == "http://merchant.example/pay/success"
    assert query["room"] == "123"  # the merchant's own query survives
    assert set(query) == {"room", "paymentKey", "orderId", "amount", "paymentType"}
    assert (query["orderId"], query["amount"], query["paymentType"]) == (order_id, "15000", "NORMAL")
    payment = toss.get(f"/v1/payments/{query['paymentKey']}").json()
    assert (payment["status"], payment["method"], payment["orderName"]) == ("IN_PROGRESS", "카드", "모임 예약금")
    confirmed = toss.confirm(query["paymentKey"], order_id, int(query["amount"]))
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "DONE"


def test_a_confirm_after_ten_minutes_finds_no_payment_session(toss: TossClient) -> None:
    page = window(toss)
    _, query = redirect(choose(toss, page, "card"))
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 601})
    late = toss.confirm(query["paymentKey"], query["orderId"], 15000)
    assert (late.status_code, late.json()["code"]) == (404, "NOT_FOUND_PAYMENT_SESSION")


def test_a_virtual_account_is_issued_at_confirm(toss: TossClient) -> None:
    page = window(toss, method="VIRTUAL_ACCOUNT", amount="30000")
    assert read_form(page).hidden["method"] == "가상계좌"

    _, query = redirect(choose(toss, page, "virtual_account"))

    confirmed = toss.confirm(query["paymentKey"], query["orderId"], 30000).json()
    assert confirmed["status"] == "WAITING_FOR_DEPOSIT" and confirmed["virtualAccount"]["accountNumber"]


def test_a_decline_redirects_to_fail_url_with_the_chosen_code(toss: TossClient) -> None:
    page = window(toss)
    order_id = read_form(page).hidden["orderId"]

    url, query = redirect(choose(toss, page, "decline", code="REJECT_CARD_COMPANY"))

    assert url == FAIL
    assert query == {"code": "REJECT_CARD_COMPANY", "message": "결제 승인이 거절되었습니다.", "orderId": order_id}
    assert toss.control("GET", "/sandbox/payments")["items"] == []  # nothing the merchant could confirm


def test_a_decline_with_a_code_the_merchant_does_not_know(toss: TossClient) -> None:
    page = window(toss)
    _, query = redirect(choose(toss, page, "decline", code="REJECT_CARD_PAYMENT", customCode="SOME_NEW_DECLINE"))
    assert query["code"] == "SOME_NEW_DECLINE"
    bad = choose(toss, page, "decline", customCode="<script>")
    assert bad.status_code == 400


def test_the_buyer_closing_the_window_is_pay_process_canceled(toss: TossClient) -> None:
    page = window(toss)
    url, query = redirect(choose(toss, page, "cancel"))
    assert url == FAIL
    assert query["code"] == "PAY_PROCESS_CANCELED"
    assert query["message"] == "사용자에 의해 결제가 취소되었습니다."
    assert toss.webhooks() == []


def test_the_window_refuses_an_order_already_paid(toss: TossClient) -> None:
    payment = toss.paid(amount=15000)
    page = window(toss, orderId=payment["orderId"])
    _, query = redirect(choose(toss, page, "card"))
    assert (query["code"], query["orderId"]) == ("DUPLICATED_ORDER_ID", payment["orderId"])


def test_a_second_window_for_an_open_order_replaces_the_first(toss: TossClient) -> None:
    order_id = new_order_id("again")
    _, first = redirect(choose(toss, window(toss, orderId=order_id), "card"))
    _, second = redirect(choose(toss, window(toss, orderId=order_id), "card"))
    assert toss.get(f"/v1/payments/{first['paymentKey']}").json()["status"] == "EXPIRED"
    assert toss.confirm(second["paymentKey"], order_id, 15000).json()["status"] == "DONE"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"successUrl": ""}, "INVALID_SUCCESS_URL"),
        ({"successUrl": "javascript:alert(1)"}, "INCORRECT_SUCCESS_URL_FORMAT"),
        ({"failUrl": "/relative"}, "INCORRECT_FAIL_URL_FORMAT"),
        ({"orderId": "abc"}, "INVALID_ORDER_ID"),
        ({"orderId": "order id with spaces"}, "INVALID_ORDER_ID"),
        ({"orderName": "x" * 101}, "INVALID_ORDER_NAME"),
        ({"orderName": ""}, "INVALID_ORDER_NAME"),
        ({"amount": "0"}, "INVALID_AMOUNT_VALUE"),
        ({"amount": "15000.5"}, "INVALID_AMOUNT_VALUE"),
        ({"amount": "１５０００"}, "INVALID_AMOUNT_VALUE"),
        ({"method": "BITCOIN"}, "NOT_SUPPORTED_METHOD"),
    ],
)
def test_parameters_the_sdk_would_refuse_give_an_error_page(
    toss: TossClient, params: dict[str, str], code: str
) -> None:
    page = window(toss, **params)
    assert page.status_code == 400
    assert page.headers["Content-Type"].startswith("text/html")
    assert f"<code>{code}</code>" in page.text
    assert "<form" not in page.text


def test_a_tampered_form_post_is_validated_again(toss: TossClient) -> None:
    page = window(toss)
    tampered = choose(toss, page, "card", amount="-1")
    assert tampered.status_code == 400 and "INVALID_AMOUNT_VALUE" in tampered.text
    unknown = choose(toss, page, "steal")
    assert unknown.status_code == 400
    assert toss.control("GET", "/sandbox/payments")["items"] == []


def test_a_below_minimum_card_amount_goes_to_fail_url(toss: TossClient) -> None:
    _, query = redirect(choose(toss, window(toss, amount="50"), "card"))
    assert query["code"] == "BELOW_MINIMUM_AMOUNT"


def test_values_from_the_query_are_escaped(toss: TossClient) -> None:
    page = window(toss, orderName='<script>alert("x")</script>', customerName="<img src=x onerror=alert(1)>")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;" in page.text
    assert read_form(page).hidden["orderName"] == '<script>alert("x")</script>'
