"""Payout balances: sales settle from pendingAmount to availableAmount on the sandbox clock, and a payout takes
only availableAmount ([DOC https://docs.tosspayments.com/reference/additional])."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from toss_sandbox import Sandbox

from .conftest import TossClient, wait_until
from .test_payouts import approved_seller, payout_item

DAY = 24 * 3600


def balances(toss: TossClient) -> tuple[int, int]:
    """(pendingAmount, availableAmount) as GET /v2/balances answers them."""
    status, envelope = toss.v2_get("/v2/balances")
    assert status == 200, envelope
    body = envelope["entityBody"]
    return body["pendingAmount"]["value"], body["availableAmount"]["value"]


def advance(toss: TossClient, seconds: float) -> None:
    toss.control("POST", "/sandbox/clock", {"advance_seconds": seconds})


@pytest.fixture()
def settling(make_sandbox: Callable[..., Sandbox]) -> TossClient:
    """A sandbox whose sales settle one day after approval."""
    return TossClient(make_sandbox(seed=3, settlement_delay_seconds=DAY).url)


def test_a_new_sandbox_has_nothing_to_pay_out(toss: TossClient) -> None:
    assert balances(toss) == (0, 0)
    config = toss.control("GET", "/sandbox/config")
    assert (config["available_balance"], config["settlement_delay_seconds"]) == (0, 2 * DAY)


def test_balances_answer_in_the_v2_envelope_plain_or_encrypted(settling: TossClient) -> None:
    settling.paid(amount=30000)
    plain_status, plain = settling.v2_get("/v2/balances")
    encrypted_status, encrypted = settling.v2_get("/v2/balances", encrypted=True)

    assert plain_status == encrypted_status == 200
    assert plain["version"] == "2022-11-16" and plain["traceId"]
    assert plain["entityType"] == "balance"
    assert (
        plain["entityBody"]
        == encrypted["entityBody"]
        == {
            "pendingAmount": {"currency": "KRW", "value": 30000},
            "availableAmount": {"currency": "KRW", "value": 0},
        }
    )


def test_a_card_sale_is_pending_until_the_settlement_delay_has_passed(settling: TossClient) -> None:
    settling.paid(amount=30000)
    assert balances(settling) == (30000, 0)

    advance(settling, DAY - 60)
    assert balances(settling) == (30000, 0)

    advance(settling, 61)
    assert balances(settling) == (0, 30000)
    [sale] = settling.control("GET", "/sandbox/sales")["items"]
    assert (sale["amount"], sale["state"]) == (30000, "available")


def test_settlement_is_moved_by_the_ticker_without_anyone_asking(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(settlement_delay_seconds=DAY)
    toss = TossClient(sandbox.url)
    toss.paid(amount=10000)
    sandbox.core.clock.advance(DAY + 1)  # the clock alone, without the control's immediate tick

    wait_until(lambda: sandbox.state.balance.available == 10000)

    assert sandbox.state.balance.pending == 0
    assert balances(toss) == (0, 10000)


def test_a_payout_cannot_take_pending_money(settling: TossClient) -> None:
    seller_id = approved_seller(settling)
    settling.paid(amount=50000)

    status, refused, _ = settling.v2_post("/v2/payouts", [payout_item(seller_id, 10000)])

    assert (status, refused["error"]["code"]) == (400, "NOT_ENOUGH_AMOUNT")
    assert balances(settling) == (50000, 0)
    advance(settling, DAY + 1)
    status, accepted, _ = settling.v2_post("/v2/payouts", [payout_item(seller_id, 10000)])
    assert status == 200, accepted
    assert balances(settling) == (0, 40000)


def test_a_cancel_before_settlement_takes_the_money_from_pending(settling: TossClient) -> None:
    payment = settling.paid(amount=30000)
    settling.cancel(payment["paymentKey"], {"cancelReason": "part", "cancelAmount": 10000})
    assert balances(settling) == (20000, 0)
    advance(settling, DAY + 1)
    assert balances(settling) == (0, 20000)


def test_a_cancel_after_settlement_takes_the_money_from_available(settling: TossClient) -> None:
    first = settling.paid(amount=30000)
    advance(settling, DAY + 1)
    settling.paid(amount=5000)  # still pending
    settling.cancel(first["paymentKey"], {"cancelReason": "all"})
    assert balances(settling) == (5000, 0)


def test_a_refund_beyond_what_is_available_shows_as_a_negative_available_amount(settling: TossClient) -> None:
    """UNCONFIRMED how Toss shows it; the sandbox does not hide the debt."""
    seller_id = approved_seller(settling)
    payment = settling.paid(amount=30000)
    advance(settling, DAY + 1)
    assert settling.v2_post("/v2/payouts", [payout_item(seller_id, 25000)])[0] == 200
    settling.cancel(payment["paymentKey"], {"cancelReason": "after the payout"})
    assert balances(settling) == (0, -25000)


def test_sales_can_stay_invisible_before_they_become_pending(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(pending_after_seconds=DAY, settlement_delay_seconds=3 * DAY).url)
    payment = toss.paid(amount=20000)
    assert balances(toss) == (0, 0)
    toss.cancel(payment["paymentKey"], {"cancelReason": "part", "cancelAmount": 5000})
    advance(toss, DAY)
    assert balances(toss) == (15000, 0)
    advance(toss, 2 * DAY)
    assert balances(toss) == (0, 15000)


def test_declined_and_open_payments_are_no_sales(settling: TossClient) -> None:
    settling.widget()
    settling.faults(failure_rate=1)
    declined = settling.widget()
    settling.confirm(declined["paymentKey"], declined["orderId"], declined["amount"])
    assert balances(settling) == (0, 0)


def test_a_deposited_virtual_account_is_a_sale_and_a_deposit_error_takes_it_back(settling: TossClient) -> None:
    widget = settling.widget(amount=40000, method="가상계좌")
    settling.confirm(widget["paymentKey"], widget["orderId"], 40000)
    assert balances(settling) == (0, 0)  # waiting for the deposit: nothing was paid yet

    settling.control("POST", f"/sandbox/payments/{widget['paymentKey']}/deposit")
    assert balances(settling) == (40000, 0)
    advance(settling, DAY + 1)
    assert balances(settling) == (0, 40000)

    settling.control("POST", f"/sandbox/payments/{widget['paymentKey']}/deposit-error")
    assert balances(settling) == (0, 0)


def test_payout_failure_and_cancel_give_the_money_back(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(available_balance=100_000).url)
    seller_id = approved_seller(toss)
    _, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 30000)])
    payout_id = envelope["entityBody"]["items"][0]["id"]
    assert balances(toss) == (0, 70000)
    toss.control("POST", f"/sandbox/payouts/{payout_id}/complete", {"status": "FAILED"})
    assert balances(toss) == (0, 100_000)


def test_the_initial_balances_are_settings_and_survive_a_reset(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(available_balance=1_000_000, pending_balance=5000).url)
    toss.paid(amount=1000)
    toss.control("POST", "/sandbox/reset")
    assert balances(toss) == (5000, 1_000_000)


@pytest.mark.parametrize(
    "settings",
    [
        {"settlement_delay_seconds": -1},
        {"pending_after_seconds": 10, "settlement_delay_seconds": 5},
        {"available_balance": 1.5},
        {"payout_insufficient_balance_code": "lower case"},
    ],
)
def test_impossible_balance_settings_are_refused(toss: TossClient, settings: dict[str, Any]) -> None:
    import requests

    response = requests.post(toss.base_url + "/sandbox/config", json=settings, timeout=5)
    assert response.status_code == 400, response.text
