"""With config.json choosing Toss's widget (payment_window "toss" and a widget client key), the room page makes the
SDK v2 calls Toss documents, and the rest of the flow (successUrl, confirm through our API) is unchanged.

This machine has no internet, so Toss's SDK is played by tests/browser/fake_toss_sdk.js, served at the SDK's own URL
through Playwright's routing; it records the calls and sends the browser to the sandbox's window with the same
fields, which redirects as Toss's window does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Person, Stack

SDK_URL = "https://js.tosspayments.com/v2/standard"
WIDGET_CLIENT_KEY = "test_gck_docs_Ovk5rk1EwkEbP0W43n07xlzm"  # Toss's public widget test key (docs samples)
FAKE_SDK = Path(__file__).with_name("fake_toss_sdk.js")


def toss_mode(stack: Stack, client_key: str) -> Callable[[Any], None]:
    def setup(context: Any) -> None:
        def config(route: Any) -> None:
            answer = route.fetch()
            body = {**answer.json(), "payment_window": "toss", "toss_client_key": client_key}
            route.fulfill(response=answer, body=json.dumps(body))

        context.route(f"{stack.api}/demo/config.json", config)
        sdk = FAKE_SDK.read_text().replace("__SANDBOX__", stack.sandbox)
        context.route(SDK_URL, lambda route: route.fulfill(content_type="application/javascript", body=sdk))

    return setup


def test_the_toss_widget_is_called_as_toss_documents_and_the_payment_is_confirmed(
    stack: Stack, people: Callable[..., Person], shot: Callable[..., Any]
) -> None:
    room, store = stack.new_room()
    owner = people("user_1", room)
    owner.page.fill("#open-request [name=store_id]", store)
    owner.page.fill("#open-request [name=amount]", "20000")
    owner.page.click("#open")
    owner.expect_request("pending")

    user_2 = people("user_2", room, before_open=toss_mode(stack, WIDGET_CLIENT_KEY), outside=(SDK_URL,))
    page = user_2.page
    # The payer opens the widget and closes it: nothing was asked of Toss, the page says so and 결제하기 works again.
    page.click("#pay")
    expect(page.locator("#checkout")).to_be_visible()
    page.click("#checkout-close")
    expect(page.locator("#checkout")).to_be_hidden()
    expect(page.locator("#error")).to_contain_text("결제를 취소했어요")
    page.click("#pay")
    expect(page.locator("#checkout")).to_be_visible()  # the widget's UI drawn into the page
    expect(page.locator("#payment-method")).to_contain_text("결제수단")
    shot(page, "9-toss-widget-mode")
    page.click("#checkout-pay")
    page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    page.click("#pay-card")
    page.wait_for_url(re.compile(r".*/demo/success\.html\?"))
    expect(page.locator("#title")).to_have_text("결제 완료")

    calls = json.loads(page.evaluate("() => sessionStorage.getItem('fake-toss-calls')"))
    order_id = re.search(r"orderId=([^&]+)", page.url).group(1)  # type: ignore[union-attr]
    confirms = [c for c in stack.toss_calls("/v1/payments/confirm", "POST") if c["requestBody"]["orderId"] == order_id]
    assert [(c["requestBody"]["amount"], c["responseStatus"]) for c in confirms] == [(20000, 200)]
    assert [name for name, _ in calls][-6:] == [
        "TossPayments",
        "widgets",
        "setAmount",
        "renderPaymentMethods",
        "renderAgreement",
        "requestPayment",
    ]
    args = dict(calls[-6:])  # the second opening (the first was closed before requestPayment)
    assert args["TossPayments"] == WIDGET_CLIENT_KEY
    assert args["widgets"] == {"customerKey": "user_2"}  # the customerKey our API's prepare gave
    assert args["setAmount"] == {"currency": "KRW", "value": 20000}
    assert args["renderPaymentMethods"] == {"selector": "#payment-method", "variantKey": "DEFAULT"}
    assert args["renderAgreement"] == {"selector": "#agreement", "variantKey": "AGREEMENT"}
    assert args["requestPayment"] == {
        "orderId": order_id,
        "orderName": args["requestPayment"]["orderName"],
        "customerName": "user_2",
        "successUrl": f"{stack.api}/demo/success.html",
        "failUrl": f"{stack.api}/demo/fail.html",
    }
    user_2.back_to_room()
    user_2.expect_share("user_2", "completed")


def test_an_api_individual_key_is_refused_for_the_widget_before_anything_opens(
    stack: Stack, people: Callable[..., Person]
) -> None:
    room, store = stack.new_room()
    owner = people("user_1", room)
    owner.page.fill("#open-request [name=store_id]", store)
    owner.page.click("#open")
    owner.expect_request("pending")
    user_2 = people("user_2", room, before_open=toss_mode(stack, "test_ck_D5GePWvyJnrK0W0k6q8gLzN97Eoq"))
    user_2.page.click("#pay")
    expect(user_2.page.locator("#error")).to_contain_text("widget client key")
    expect(user_2.page.locator("#checkout")).to_be_hidden()
    user_2.expect_share("user_2", "pending")
