"""The owner changes who takes part in the open request from the room page: removing a participant refunds what
they held, adding a member makes them owe their share, the chat feed follows the funding (EscrowUnfunded corrects an
earlier "모두 결제했어요"), and the API's refusals are shown with their codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Person, Stack
from tests.browser.test_room_in_browser import pay_in_window


def test_the_owner_removes_a_paid_participant_who_is_refunded_and_adds_them_back_owing_their_share(
    stack: Stack, people: Callable[..., Person], shot: Callable[..., Any]
) -> None:
    room, store = stack.new_room()
    owner = people("user_1", room)
    owner.page.fill("#open-request [name=store_id]", store)
    owner.page.fill("#open-request [name=amount]", "10000")
    owner.page.click("#open")
    owner.expect_request("pending")
    user_2, user_3 = people("user_2", room), people("user_3", room)
    payment_key = pay_in_window(user_2, stack)
    user_2.back_to_room()
    pay_in_window(user_3, stack)
    user_3.back_to_room()
    owner.expect_request("completed")
    owner.expect_feed("EscrowFunded", "예약금 20,000원")

    # The owner removes user_2: what they held is refunded at once, they are listed as removed, and the room is
    # told the total changed (still funded: user_3, the one left, holds their share).
    owner.page.click('#shares button.remove[data-user="user_2"]')
    expect(owner.row("user_2")).to_have_count(0)
    expect(owner.page.locator('#removed-list li[data-payer="user_2"]')).to_contain_text("환불 10,000원")
    expect(user_2.page.locator("#payer-actions")).to_be_hidden()  # no longer a participant
    owner.expect_feed("PaymentRefunded", "user_2님에게 10,000원이 환불되었어요")
    owner.expect_feed("EscrowUnfunded", "참여자가 제외되어")
    expect(owner.page.locator('#feed li[data-type="EscrowFunded"]').last).to_contain_text("예약금 10,000원")
    owner.expect_request("completed")

    # The last participant cannot be removed: the page shows the API's code.
    owner.page.click('#shares button.remove[data-user="user_3"]')
    expect(owner.page.locator("#error")).to_contain_text("LAST_PARTICIPANT")
    owner.expect_share("user_3", "completed")

    # Someone who is not a member of the room cannot be added; user_2, a member, can: they owe their share again,
    # and the request waits for them.
    owner.page.fill("#add-participant [name=user_id]", "user_9")
    owner.page.click("#add")
    expect(owner.page.locator("#error")).to_contain_text("NOT_ROOM_MEMBERS")
    owner.page.fill("#add-participant [name=user_id]", "user_2")
    owner.page.click("#add")
    owner.expect_share("user_2", "pending")
    owner.expect_request("pending")
    expect(owner.row("user_2").locator(".owed-amount")).to_have_text("10,000원")
    owner.expect_feed("EscrowUnfunded", "참여자가 추가되어")
    expect(user_2.page.locator("#pay")).to_be_enabled()
    shot(owner.page, "10-owner-removes-and-adds-participants")

    # Toss refunded user_2's first payment exactly once, in full.
    cancels = stack.toss_calls(f"/v1/payments/{payment_key}/cancel", "POST")
    assert [(c["responseStatus"], c["requestBody"].get("cancelAmount")) for c in cancels] in (
        [(200, None)],
        [(200, 10000)],
    )
