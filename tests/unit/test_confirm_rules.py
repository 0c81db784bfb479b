"""Confirming a payment, without the database: which charges we keep, what a refusal or an unknown outcome answers,
how a lost confirm is looked up at Toss (the in-memory Toss), and the status a share is left with.

Where a branch writes rows (recording the attempt, the charge, the failure) it is an integration test
(tests/integration, tests/e2e): our database is never mocked."""

from __future__ import annotations

from typing import Any

import pytest

from escrow.errors import Conflict, PaymentDeclined, PaymentOutcomeUnknown, UpstreamUnavailable
from escrow.services.payments import (
    Attempt,
    _answer,
    _look_up,
    _why_not_keep,
    confirm_idempotency_key,
    declined_error,
    held,
    owed,
    refund_idempotency_key,
)
from escrow.states import PaymentStatus, RequestStatus, share_status_for
from escrow.toss.errors import TossTimeout
from escrow.toss.models import Payment
from tests.support.fake_toss import FakeToss, toss_error

AMOUNT = 15_000


def _share(status: str = PaymentStatus.IN_PROGRESS, *, paid: int = 0, refunded: int = 0) -> dict[str, Any]:
    return {"id": 1, "amount": AMOUNT, "status": status, "paid_amount": paid, "refunded_amount": refunded}


def _order(amount: int = AMOUNT) -> dict[str, Any]:
    return {"order_id": "esc1-order", "amount": amount}


def _request(status: str = RequestStatus.PENDING) -> dict[str, Any]:
    return {"id": 1, "status": status}


@pytest.fixture()
def toss() -> FakeToss:
    return FakeToss()


def _approved(toss: FakeToss, amount: int = AMOUNT, order_id: str = "esc1-order") -> Payment:
    key = toss.authenticate(order_id, amount)
    return toss.confirm(key, order_id, amount, idempotency_key=confirm_idempotency_key(order_id))


# --- which charge Toss approved do we keep ----------------------------------------------------------------------


def test_the_live_attempts_charge_of_the_amount_owed_funds_the_share(toss):
    assert _why_not_keep(_request(), _share(), _order(), _approved(toss), live=True) is None


def test_a_charge_of_another_amount_than_the_order_is_refunded(toss):
    payment = _approved(toss, amount=AMOUNT + 1)

    assert _why_not_keep(_request(), _share(), _order(), payment, live=True) == "AMOUNT_MISMATCH"


@pytest.mark.parametrize("closed", [RequestStatus.CANCELLED, RequestStatus.EXPIRED, RequestStatus.RELEASED])
def test_a_charge_confirmed_while_the_request_closed_is_refunded(toss, closed):
    assert _why_not_keep(_request(closed), _share(), _order(), _approved(toss), live=True) == "REQUEST_CLOSED"


@pytest.mark.parametrize("gone", [PaymentStatus.REMOVED, PaymentStatus.RELEASED])
def test_a_charge_for_a_removed_or_released_share_is_refunded(toss, gone):
    assert _why_not_keep(_request(), _share(gone), _order(), _approved(toss), live=False) == "UNEXPECTED_CHARGE"


def test_a_charge_of_an_order_that_is_not_the_shares_live_attempt_is_refunded(toss):
    assert _why_not_keep(_request(), _share(), _order(), _approved(toss), live=False) == "UNEXPECTED_CHARGE"


def test_a_second_charge_of_a_paid_share_is_never_kept(toss):
    paid = _share(PaymentStatus.COMPLETED, paid=AMOUNT)

    assert _why_not_keep(_request(), paid, _order(), _approved(toss), live=True) == "UNEXPECTED_CHARGE"


def test_paying_the_refunded_difference_is_kept_but_not_more(toss):
    partly = _share(PaymentStatus.IN_PROGRESS, paid=AMOUNT, refunded=5_000)

    assert _why_not_keep(_request(), partly, _order(5_000), _approved(toss, 5_000), live=True) is None
    assert (
        _why_not_keep(_request(), partly, _order(5_001), _approved(toss, 5_001, "esc1-other"), live=True)
        == "UNEXPECTED_CHARGE"
    )


def test_tosss_record_of_an_attempt_we_had_marked_failed_is_kept(toss):
    assert _why_not_keep(_request(), _share(PaymentStatus.FAILED), _order(), _approved(toss), live=True) is None


# --- what the payer is told -------------------------------------------------------------------------------------


def _attempt() -> Attempt:
    return Attempt(payment_id=1, request_id=1, order_id="esc1-order", payment_key="tfake", amount=AMOUNT)


@pytest.mark.parametrize("outcome", ["completed", "already_completed"])
def test_a_kept_charge_answers_completed(toss, outcome):
    payment = _approved(toss)

    assert _answer(_attempt(), payment, outcome) == {
        "payment_status": "completed",
        "paymentKey": payment.payment_key,
        "orderId": "esc1-order",
    }


def test_a_virtual_account_answers_in_progress_until_the_deposit(toss):
    key = toss.authenticate("esc1-order", AMOUNT, method="가상계좌")
    payment = toss.confirm(key, "esc1-order", AMOUNT, idempotency_key="confirm-esc1-order")

    assert _answer(_attempt(), payment, "waiting_for_deposit") == {
        "payment_status": "in_progress",
        "toss_status": "WAITING_FOR_DEPOSIT",
        "orderId": "esc1-order",
    }


@pytest.mark.parametrize(
    ("outcome", "error", "code"),
    [
        ("refunded_request_closed", Conflict, "REQUEST_CLOSED_REFUNDED"),
        ("refunded_mismatch", Conflict, "AMOUNT_MISMATCH_REFUNDED"),
        ("failed", PaymentDeclined, "PAYMENT_DECLINED"),
        ("pending", PaymentOutcomeUnknown, "PAYMENT_OUTCOME_UNKNOWN"),
        ("refund_pending", PaymentOutcomeUnknown, "PAYMENT_OUTCOME_UNKNOWN"),
    ],
)
def test_every_other_outcome_is_an_error_that_says_what_happened(toss, outcome, error, code):
    with pytest.raises(error) as caught:
        _answer(_attempt(), _approved(toss), outcome)

    assert caught.value.code == code


def test_a_failed_payment_names_tosss_failure_code(toss):
    key = toss.authenticate("esc1-order", AMOUNT)
    aborted = Payment.from_api({**toss.get_payment(key).raw, "status": "ABORTED", "failure": {"code": "REJECT_X"}})

    with pytest.raises(PaymentDeclined) as caught:
        _answer(_attempt(), aborted, "failed")

    assert caught.value.extra["toss_code"] == "REJECT_X"


@pytest.mark.parametrize(
    ("code", "error", "status"),
    [
        ("REJECT_CARD_PAYMENT", PaymentDeclined, 402),  # the payer's card: pay again with another
        ("INVALID_CARD_EXPIRATION", PaymentDeclined, 402),
        ("PROVIDER_ERROR", UpstreamUnavailable, 503),  # passing: 400 at Toss, but retried by code
        ("NOT_AVAILABLE_BANK", UpstreamUnavailable, 503),
        ("INVALID_API_KEY", UpstreamUnavailable, 503),  # our configuration: never the payer's fault
        ("UNAUTHORIZED_KEY", UpstreamUnavailable, 503),
    ],
)
def test_a_refused_confirm_is_a_decline_or_a_passing_trouble_by_tosss_code(code, error, status):
    answer = declined_error(toss_error(code))

    assert isinstance(answer, error) and answer.status == status
    assert answer.extra["toss_code"] == code


# --- the lookup after a lost answer ---------------------------------------------------------------------------


def test_a_lost_confirm_that_went_through_is_found_by_the_order(toss):
    key = toss.authenticate("esc1-order", AMOUNT)
    toss.lose_next_answer("confirm")
    with pytest.raises(TossTimeout):
        toss.confirm(key, "esc1-order", AMOUNT, idempotency_key=confirm_idempotency_key("esc1-order"))

    found = _look_up(toss, Attempt(1, 1, "esc1-order", key, AMOUNT))

    assert found is not None and (found.status, found.payment_key) == ("DONE", key)
    assert [c.operation for c in toss.calls] == ["confirm", "get_payment_by_order"]


def test_a_confirm_that_never_reached_toss_is_sent_with_the_same_key(toss):
    key = toss.authenticate("esc1-order", AMOUNT)

    found = _look_up(toss, Attempt(1, 1, "esc1-order", key, AMOUNT))

    assert found is not None and found.status == "DONE"
    assert [(c.operation, c.idempotency_key) for c in toss.calls] == [
        ("get_payment_by_order", None),
        ("confirm", "confirm-esc1-order"),
    ]


def test_an_order_toss_does_not_know_is_no_payment(toss):
    assert _look_up(toss, Attempt(1, 1, "esc1-nothing", "tfake-x", AMOUNT)) is None


def test_someone_elses_payment_key_with_our_order_is_no_payment_and_is_not_confirmed(toss):
    toss.authenticate("esc1-order", AMOUNT)  # the order's own payment, waiting for its payer

    assert _look_up(toss, Attempt(1, 1, "esc1-order", "tfake-someone-else", AMOUNT)) is None
    assert [c.operation for c in toss.calls] == ["get_payment_by_order"]


# --- keys and amounts -------------------------------------------------------------------------------------------


def test_each_attempt_to_confirm_or_refund_an_order_has_its_own_key():
    assert [confirm_idempotency_key("o", n) for n in range(3)] == ["confirm-o", "confirm-o-1", "confirm-o-2"]
    assert [refund_idempotency_key("o", n) for n in range(2)] == ["auto-refund-o", "auto-refund-o-1"]


def test_a_share_owes_what_it_does_not_hold():
    assert (held(_share(paid=AMOUNT, refunded=5_000)), owed(_share(paid=AMOUNT, refunded=5_000))) == (10_000, 5_000)
    assert owed(_share(paid=2 * AMOUNT)) == 0  # never negative


@pytest.mark.parametrize(
    ("held_", "ever_paid", "status"),
    [
        (AMOUNT, True, PaymentStatus.COMPLETED),
        (AMOUNT + 1, True, PaymentStatus.COMPLETED),
        (1, True, PaymentStatus.PARTIALLY_REFUNDED),
        (0, True, PaymentStatus.REFUNDED),  # refunded in full: the whole share is owed again
        (0, False, PaymentStatus.FAILED),  # never paid: the attempt failed
    ],
)
def test_a_shares_status_follows_what_it_holds(held_, ever_paid, status):
    assert share_status_for(held_, AMOUNT, ever_paid=ever_paid) == status
