"""The in-memory Toss (tests/support/fake_toss.py): a `TossPort` that answers as the sandbox does. Its agreement
with the sandbox itself is `tests/sandbox/test_fake_toss_contract.py`; these are its rules, quickly."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

from escrow.clock import FixedClock
from escrow.toss.client import TossClient
from escrow.toss.errors import TossApiError, TossConnectionError, TossTimeout
from escrow.toss.port import TossPort
from tests.support.fake_toss import FakeToss

PORT_METHODS = [name for name, _ in inspect.getmembers(TossPort, inspect.isfunction) if not name.startswith("_")]


@pytest.mark.parametrize("name", PORT_METHODS)
def test_the_fake_and_the_http_client_take_the_ports_calls_exactly(name):
    port = inspect.signature(getattr(TossPort, name))
    for implementation in (FakeToss, TossClient):
        assert inspect.signature(getattr(implementation, name)) == port, (implementation.__name__, name)


def test_the_port_names_every_toss_call_the_services_make():
    assert set(PORT_METHODS) == {
        "confirm",
        "get_payment",
        "get_payment_by_order",
        "cancel",
        "register_seller",
        "update_seller",
        "get_seller",
        "list_sellers",
        "request_payouts",
        "get_payout",
        "list_payouts",
        "get_balances",
    }


def _code(call) -> str:
    with pytest.raises(TossApiError) as caught:
        call()
    return caught.value.code


@pytest.fixture()
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture()
def toss(clock: FixedClock) -> FakeToss:
    return FakeToss(clock)


def test_a_confirmed_card_payment_is_done_and_holds_its_amount(toss: FakeToss):
    key = toss.authenticate("order-0001", 15_000)

    payment = toss.confirm(key, "order-0001", 15_000, idempotency_key="confirm-order-0001")

    assert (payment.status, payment.total_amount, payment.balance_amount) == ("DONE", 15_000, 15_000)
    assert toss.get_payment_by_order("order-0001").payment_key == key


def test_confirm_refuses_what_toss_refuses(toss: FakeToss, clock: FixedClock):
    key = toss.authenticate("order-0002", 15_000)

    assert _code(lambda: toss.confirm("nope", "order-0002", 15_000, idempotency_key="k1")) == "NOT_FOUND_PAYMENT"
    assert _code(lambda: toss.confirm(key, "order-9999", 15_000, idempotency_key="k2")) == "NOT_FOUND_PAYMENT_SESSION"
    assert _code(lambda: toss.confirm(key, "order-0002", 14_000, idempotency_key="k3")) == "INVALID_REQUEST"
    assert toss.get_payment(key).status == "IN_PROGRESS"  # a wrong amount leaves the payment to confirm
    toss.confirm(key, "order-0002", 15_000, idempotency_key="k4")
    assert _code(lambda: toss.confirm(key, "order-0002", 15_000, idempotency_key="k5")) == "ALREADY_PROCESSED_PAYMENT"

    late = toss.authenticate("order-0003", 15_000)
    clock.advance(minutes=11)
    assert _code(lambda: toss.confirm(late, "order-0003", 15_000, idempotency_key="k6")) == "NOT_FOUND_PAYMENT_SESSION"
    assert toss.get_payment(late).status == "EXPIRED"


def test_a_key_gets_its_first_answer_again_errors_included(toss: FakeToss):
    key = toss.authenticate("order-0004", 15_000)
    refused = _code(lambda: toss.confirm(key, "order-0004", 1, idempotency_key="same"))

    again = _code(lambda: toss.confirm(key, "order-0004", 15_000, idempotency_key="same"))  # another body, same key

    assert refused == again == "INVALID_REQUEST"
    assert toss.confirm(key, "order-0004", 15_000, idempotency_key="new").status == "DONE"
    assert [c.replayed for c in toss.calls] == [False, True, False]


def test_a_lost_answer_happened_and_the_same_key_hears_it(toss: FakeToss):
    key = toss.authenticate("order-0005", 15_000)
    toss.lose_next_answer("confirm")

    with pytest.raises(TossTimeout):
        toss.confirm(key, "order-0005", 15_000, idempotency_key="confirm-order-0005")

    assert toss.get_payment(key).status == "DONE"
    replayed = toss.confirm(key, "order-0005", 15_000, idempotency_key="confirm-order-0005")
    assert replayed.status == "DONE" and toss.calls[-1].replayed


def test_an_unreachable_toss_did_nothing_and_a_running_key_is_not_bound(toss: FakeToss):
    key = toss.authenticate("order-0006", 15_000)
    toss.unreachable_next("confirm")
    toss.processing_next("confirm")

    with pytest.raises(TossConnectionError):
        toss.confirm(key, "order-0006", 15_000, idempotency_key="k")
    running = _code(lambda: toss.confirm(key, "order-0006", 15_000, idempotency_key="k"))
    assert running == "IDEMPOTENT_REQUEST_PROCESSING"

    assert toss.confirm(key, "order-0006", 15_000, idempotency_key="k").status == "DONE"


def test_cancels_check_the_refundable_amount_and_end_partial_canceled(toss: FakeToss):
    key = toss.authenticate("order-0007", 30_000)
    toss.confirm(key, "order-0007", 30_000, idempotency_key="c")

    assert (
        _code(lambda: toss.cancel(key, "r", idempotency_key="x1", amount=10_000, refundable_amount=20_000))
        == "NOT_MATCHES_REFUNDABLE_AMOUNT"
    )
    part = toss.cancel(key, "r", idempotency_key="x2", amount=10_000, refundable_amount=30_000)
    assert (part.status, part.balance_amount, part.refunded_amount) == ("PARTIAL_CANCELED", 20_000, 10_000)
    assert _code(lambda: toss.cancel(key, "r", idempotency_key="x3", amount=20_001)) == "NOT_CANCELABLE_AMOUNT"
    rest = toss.cancel(key, "r", idempotency_key="x4", refundable_amount=20_000)
    assert (rest.status, rest.balance_amount) == ("PARTIAL_CANCELED", 0)  # the rest after a partial: not CANCELED
    assert _code(lambda: toss.cancel(key, "r", idempotency_key="x5")) == "NOT_CANCELABLE_AMOUNT"
    assert toss.cancel(key, "r", idempotency_key="x4", refundable_amount=20_000).balance_amount == 0  # replayed
    assert [c.cancel_amount for c in toss.get_payment(key).cancels or []] == [10_000, 20_000]


def test_a_whole_cancel_is_canceled_once(toss: FakeToss):
    key = toss.authenticate("order-0008", 30_000)
    assert _code(lambda: toss.cancel(key, "r", idempotency_key="early")) == "NOT_CANCELABLE_PAYMENT"
    toss.confirm(key, "order-0008", 30_000, idempotency_key="c")

    assert toss.cancel(key, "r", idempotency_key="all").status == "CANCELED"
    assert _code(lambda: toss.cancel(key, "r", idempotency_key="again")) == "ALREADY_CANCELED_PAYMENT"


def test_a_sale_is_paid_out_only_once_it_has_settled(toss: FakeToss, clock: FixedClock):
    key = toss.authenticate("order-0009", 30_000)
    toss.confirm(key, "order-0009", 30_000, idempotency_key="c")
    seller = toss.register_seller({"refSellerId": "store-1", "businessType": "INDIVIDUAL"}, idempotency_key="s")
    item = {"refPayoutId": "escrow-req-1", "destination": seller["id"], "amount": {"currency": "KRW", "value": 29_100}}

    assert seller["status"] == "APPROVAL_REQUIRED"
    assert _code(lambda: toss.request_payouts([item], idempotency_key="p1")) == "FORBIDDEN_SELLER_PAYOUT"
    toss.set_seller_status(seller["id"], "APPROVED")
    assert toss.get_balances() == {"available": 0, "pending": 30_000}
    assert _code(lambda: toss.request_payouts([item], idempotency_key="p2")) == "NOT_ENOUGH_AMOUNT"

    clock.advance(days=2)
    (payout,) = toss.request_payouts([item], idempotency_key="p3")

    assert payout["status"] == "IN_PROGRESS"
    assert toss.get_balances() == {"available": 900, "pending": 0}
    assert _code(lambda: toss.request_payouts([item], idempotency_key="p4")) == "DUPLICATED_REF_PAYOUT_ID"
    toss.complete_payout(payout["id"])
    assert toss.get_payout(payout["id"])["status"] == "COMPLETED"


def test_a_refund_takes_the_sale_back_from_the_balance(toss: FakeToss, clock: FixedClock):
    key = toss.authenticate("order-0010", 30_000)
    toss.confirm(key, "order-0010", 30_000, idempotency_key="c")
    clock.advance(timedelta(days=2))
    toss.cancel(key, "r", idempotency_key="x", amount=10_000)

    assert toss.get_balances()["available"] == 20_000


def test_a_virtual_account_waits_for_its_deposit(toss: FakeToss):
    key = toss.authenticate("order-0011", 30_000, method="가상계좌")

    waiting = toss.confirm(key, "order-0011", 30_000, idempotency_key="c")
    assert (waiting.status, waiting.secret is not None) == ("WAITING_FOR_DEPOSIT", True)
    assert _code(lambda: toss.cancel(key, "r", idempotency_key="x", amount=1)) == (
        "NOT_ALLOWED_PARTIAL_REFUND_WAITING_DEPOSIT"
    )
    toss.deposit(key)
    assert toss.get_payment(key).status == "DONE"
