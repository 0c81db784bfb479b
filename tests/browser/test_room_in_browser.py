"""A room's deposit, as its members live it in the reference chat client (local/demo/), in headless Chromium.

Each test drives the pages as people do (clicks in the room page and in the Toss sandbox's payment window) and then
checks what matters behind them: the API's status, and what Toss was asked (the sandbox records every call).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Person, Stack

DEMO_ROOM = 123


def pay_in_window(person: Person, stack: Stack, *, decline: str | None = None) -> str:
    """The person presses 결제하기 and pays (or declines with `decline`) in the sandbox's payment window; the
    paymentKey (or the decline code) that the window's redirect carried."""
    page = person.page
    expect(page.locator("#pay")).to_be_enabled()
    page.click("#pay")
    page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    if decline:
        page.select_option("#code", decline)
        page.click("#decline")
        page.wait_for_url(re.compile(r".*/demo/fail\.html\?"))
        expect(page.locator("#code")).to_have_text(decline)
        return decline
    page.click("#pay-card")
    page.wait_for_url(re.compile(r".*/demo/success\.html\?"))
    expect(page.locator("main")).to_contain_text("결제 완료")  # on failure, the page's message is in the report
    return re.search(r"paymentKey=([^&]+)", page.url).group(1)  # type: ignore[union-attr]


def test_a_room_is_paid_in_the_payment_window_one_member_declined_first_and_the_owner_releases(
    stack: Stack, people: Callable[..., Person], shot: Callable[..., Any]
) -> None:
    stack.register_store("store_123")

    # The owner opens the request: both members owe their share.
    owner = people("user_1", DEMO_ROOM)
    owner.page.fill("#open-request [name=amount]", "15000")
    owner.page.click("#open")
    owner.expect_request("pending")
    owner.expect_share("user_2", "pending")
    owner.expect_share("user_3", "pending")
    shot(owner.page, "1-owner-opens-the-request")

    # user_2's card is declined in the window: the fail page says so, and nothing was charged.
    user_2 = people("user_2", DEMO_ROOM)
    page = user_2.page
    expect(page.locator("#pay")).to_be_enabled()
    page.click("#pay")
    page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    expect(page.locator("#amount")).to_have_text("15,000원")
    page.select_option("#code", "REJECT_CARD_PAYMENT")
    shot(page, "2-payment-window", "main")
    page.click("#decline")
    page.wait_for_url(re.compile(r".*/demo/fail\.html\?"))
    expect(page.locator("#code")).to_have_text("REJECT_CARD_PAYMENT")
    expect(page.locator("#advice")).to_contain_text("청구되지 않았어요")
    shot(page, "3-card-declined", "main")
    declined_order = re.search(r"orderId=([^&]+)", page.url).group(1)  # type: ignore[union-attr]
    user_2.back_to_room()
    user_2.expect_share("user_2", "pending")

    # user_2 tries again and pays; user_3 pays at the first try.
    key_2 = pay_in_window(user_2, stack)
    shot(user_2.page, "4-payment-confirmed", "main")
    user_2.back_to_room()
    user_2.expect_share("user_2", "completed")
    user_3 = people("user_3", DEMO_ROOM)
    key_3 = pay_in_window(user_3, stack)
    user_3.back_to_room()

    # Everyone paid: the request is funded, the shares are held, and the chat feed says so.
    owner.expect_request("completed")
    owner.expect_share("user_2", "completed")
    owner.expect_share("user_3", "completed")
    expect(owner.row("user_2").locator(".held-amount")).to_have_text("15,000원")
    owner.expect_feed("EscrowFunded", "모두 결제했어요")
    shot(owner.page, "5-everyone-paid")

    # The owner releases: every share is released to the store, and the feed says so.
    expect(owner.page.locator("#release")).to_be_enabled()
    owner.page.click("#release")
    owner.expect_request("released")
    owner.expect_share("user_2", "released")
    owner.expect_share("user_3", "released")
    expect(owner.row("user_3").locator(".held-amount")).to_have_text("0원")
    owner.expect_feed("EscrowReleased", "예약금이 가게로 정산되었어요")
    user_3.expect_request("released")  # every member's page follows
    shot(owner.page, "6-released")

    # Behind the pages: the API agrees, and Toss was asked to confirm twice, both approved: the declined attempt never
    # reached confirm (the window refused it), and the retry paid the same prepared order.
    status = stack.status(DEMO_ROOM)
    assert status["payment_request"]["status"] == "released"
    assert {p["payer_id"]: p["payment_status"] for p in status["payments"]} == {
        "user_2": "released",
        "user_3": "released",
    }
    confirms = [
        c
        for c in stack.toss_calls("/v1/payments/confirm", "POST")
        if c["requestBody"]["paymentKey"] in (key_2, key_3) or c["requestBody"]["orderId"] == declined_order
    ]
    assert sorted((c["requestBody"]["paymentKey"], c["responseStatus"]) for c in confirms) == sorted(
        [(key_2, 200), (key_3, 200)]
    )
    assert [c["requestBody"]["paymentKey"] for c in confirms if c["requestBody"]["orderId"] == declined_order] == [
        key_2
    ]


def test_a_member_cancels_their_share_and_the_room_sees_the_refund(
    stack: Stack, people: Callable[..., Person], shot: Callable[..., Any]
) -> None:
    room, store = stack.new_room()
    owner = people("user_1", room)
    owner.page.fill("#open-request [name=store_id]", store)
    owner.page.fill("#open-request [name=amount]", "12000")
    owner.page.click("#open")
    owner.expect_request("pending")

    # user_2 first closes the payment window: nothing happened, the fail page says so.
    user_2 = people("user_2", room)
    user_2.page.click("#pay")
    user_2.page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    user_2.page.click("#cancel")
    user_2.page.wait_for_url(re.compile(r".*/demo/fail\.html\?"))
    expect(user_2.page.locator("#code")).to_have_text("PAY_PROCESS_CANCELED")
    expect(user_2.page.locator("#advice")).to_contain_text("결제창을 닫았어요")
    user_2.back_to_room()
    key = pay_in_window(user_2, stack)
    user_2.back_to_room()
    user_2.expect_share("user_2", "completed")

    # user_2 changes their mind: the share is refunded in full and the room (owner's page, feed) sees it.
    expect(user_2.page.locator("#cancel-share")).to_be_enabled()
    user_2.page.click("#cancel-share")
    expect(user_2.page.locator("#error")).to_contain_text("12,000원 환불")
    user_2.expect_share("user_2", "refunded")
    expect(user_2.row("user_2").locator(".refunded-amount")).to_have_text("12,000원")
    expect(user_2.row("user_2").locator(".held-amount")).to_have_text("0원")
    owner.expect_share("user_2", "refunded")
    owner.expect_feed("PaymentRefunded", "user_2님에게 12,000원이 환불되었어요")
    shot(owner.page, "7-member-cancelled-their-share")

    # Toss refunded exactly that payment, in full.
    cancels = [c for c in stack.toss_calls(f"/v1/payments/{key}/cancel", "POST") if c["responseStatus"] == 200]
    assert len(cancels) == 1 and cancels[0]["requestBody"].get("cancelAmount") in (None, 12000)

    # The owner then cancels the whole request: the feed tells the room.
    owner.page.click("#cancel-request")
    owner.expect_request("cancelled")
    owner.expect_feed("PaymentRequestCancelled", "방장이 예약금 요청을 취소했어요")


def test_the_pages_show_our_errors_and_an_unknown_outcome_is_settled_without_paying_twice(
    stack: Stack, people: Callable[..., Person], shot: Callable[..., Any]
) -> None:
    room, store = stack.new_room()
    owner = people("user_1", room)
    owner.page.fill("#open-request [name=store_id]", store)
    owner.page.click("#open")
    owner.expect_request("pending")

    # Toss confirms user_3's payment but its answer is lost, and so is every lookup meanwhile: our API says
    # PAYMENT_OUTCOME_UNKNOWN and the page says not to pay again. The room shows the share being checked (no pay
    # button) until the schedule settles it with Toss once Toss answers again.
    user_3 = people("user_3", room)
    stack.control("faults", {"lose_answer_rate": 1, "timeout_seconds": 5})
    user_3.page.click("#pay")
    user_3.page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    user_3.page.click("#pay-card")
    user_3.page.wait_for_url(re.compile(r".*/demo/success\.html\?"))
    expect(user_3.page.locator("body")).to_have_attribute("data-code", "PAYMENT_OUTCOME_UNKNOWN")
    expect(user_3.page.locator("#message")).to_contain_text("다시 결제하지 마세요")
    shot(user_3.page, "8-outcome-unknown-do-not-pay-again", "main")
    order_3 = re.search(r"orderId=([^&]+)", user_3.page.url).group(1)  # type: ignore[union-attr]
    user_3.back_to_room()
    expect(user_3.page.locator("#my-share")).to_contain_text("다시 결제하지 마세요")
    expect(user_3.page.locator("#pay")).to_be_disabled()
    stack.control("faults", method="DELETE")
    user_3.expect_share("user_3", "completed")  # settled by the schedule's lookup at Toss
    expect(user_3.page.locator("#pay")).to_be_disabled()
    confirms = [c for c in stack.toss_calls("/v1/payments/confirm", "POST") if c["requestBody"]["orderId"] == order_3]
    assert len({c["requestBody"]["paymentKey"] for c in confirms}) == 1  # one payment at Toss, never two

    # The window's redirect comes back with another amount (a tampered query): success.html refuses to confirm,
    # and shows AMOUNT_MISMATCH. Toss is never asked to confirm that order.
    user_2 = people("user_2", room)
    page = user_2.page

    def tamper(route: Any) -> None:
        answer = route.fetch(max_redirects=0)
        location = re.sub(r"amount=\d+", "amount=100", answer.headers["location"])
        route.fulfill(status=answer.status, headers={**answer.headers, "location": location}, body=answer.body())

    page.route(f"{stack.sandbox}/sandbox/checkout", tamper)
    page.click("#pay")
    page.wait_for_url(re.compile(re.escape(stack.sandbox) + r"/sandbox/checkout\?"))
    page.click("#pay-card")
    page.wait_for_url(re.compile(r".*/demo/success\.html\?.*amount=100"))
    expect(page.locator("body")).to_have_attribute("data-code", "AMOUNT_MISMATCH")
    expect(page.locator("#message")).to_contain_text("결제를 승인하지 않았어요")
    order = re.search(r"orderId=([^&]+)", page.url).group(1)  # type: ignore[union-attr]
    assert not [c for c in stack.toss_calls("/v1/payments/confirm") if c["requestBody"]["orderId"] == order]
    page.unroute(f"{stack.sandbox}/sandbox/checkout")
    user_2.back_to_room()
    user_2.expect_share("user_2", "pending")  # nothing charged; the owner's page agrees
    owner.expect_share("user_2", "pending")
    owner.expect_request("pending")
