"""Refunding, without the database: which of our refund rows a refund Toss lists belongs to, what a refusal means
(ask again later? by ourselves?), when, which key, and what may be refunded at all. Toss's answers come from the
in-memory Toss, so they carry the sandbox's codes, statuses and cancel lists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from escrow.clock import FixedClock
from escrow.errors import Conflict, ValidationFailed
from escrow.services.refunds import (
    _charge_answer,
    _check_refundable,
    _request_key,
    _summary,
    attribute_refunds,
    cancel_idempotency_key,
    refusal_retry,
    retry_at,
)
from escrow.states import CancelStatus, ChargeStatus, PaymentStatus
from escrow.toss.errors import TossApiError
from escrow.toss.models import Payment
from tests.support.fake_toss import FakeToss

AMOUNT = 30_000


@pytest.fixture()
def toss() -> FakeToss:
    return FakeToss()


@pytest.fixture()
def paid(toss: FakeToss) -> str:
    key = toss.authenticate("esc1-order", AMOUNT)
    toss.confirm(key, "esc1-order", AMOUNT, idempotency_key="confirm-esc1-order")
    return key


def _row(row_id: int, payment_key: str, status: str = CancelStatus.REQUESTED, **extra: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "payment_key": payment_key,
        "status": status,
        "requested_amount": None,
        "transaction_key": None,
        **extra,
    }


def _attributed(payment: Payment, rows: list[dict[str, Any]], cancel_id: int | None) -> list[tuple[int, int | None]]:
    return [
        (entry.cancel_amount, None if row is None else row["id"])
        for entry, row in attribute_refunds(payment, rows, cancel_id)
    ]


# --- attribution: a refund Toss made goes to the row that asked for it ------------------------------------------


def test_a_refund_toss_made_goes_to_the_row_that_asked_for_it(toss, paid):
    payment = toss.cancel(paid, "r", idempotency_key="cancel-7", amount=10_000, refundable_amount=AMOUNT)

    assert _attributed(payment, [_row(7, paid, requested_amount=10_000)], cancel_id=7) == [(10_000, 7)]


def test_an_already_recorded_transaction_is_not_recorded_again(toss, paid):
    payment = toss.cancel(paid, "r", idempotency_key="cancel-7", amount=10_000)
    (cancel,) = payment.cancels or []
    recorded = _row(7, paid, CancelStatus.DONE, requested_amount=10_000, transaction_key=cancel.transaction_key)

    assert attribute_refunds(payment, [recorded], cancel_id=7) == []


def test_the_callers_own_row_comes_first_then_the_oldest_in_flight(toss, paid):
    payment = toss.cancel(paid, "r", idempotency_key="x", amount=10_000)
    rows = [_row(3, paid, CancelStatus.UNKNOWN), _row(9, paid), _row(12, paid)]

    assert _attributed(payment, rows, cancel_id=9) == [(10_000, 9)]
    assert _attributed(payment, rows, cancel_id=None) == [(10_000, 3)]


def test_a_transaction_goes_to_the_row_that_asked_for_its_amount(toss, paid):
    toss.cancel(paid, "r", idempotency_key="a", amount=5_000)
    payment = toss.cancel(paid, "r", idempotency_key="b", amount=10_000)
    rows = [_row(1, paid, requested_amount=10_000), _row(2, paid, requested_amount=5_000)]

    assert _attributed(payment, rows, cancel_id=None) == [(5_000, 2), (10_000, 1)]


def test_a_refund_made_outside_our_api_gets_a_row_of_its_own(toss, paid):
    payment = toss.cancel(paid, "dashboard", idempotency_key="toss-dashboard", amount=1_000)

    assert _attributed(payment, [], cancel_id=None) == [(1_000, None)]
    # A row of another charge, or one already settled, is not waiting for this refund either.
    assert _attributed(payment, [_row(4, "tother"), _row(5, paid, CancelStatus.DONE)], None) == [(1_000, None)]


def test_the_callers_refused_row_takes_a_refund_toss_made_late(toss, paid):
    """Toss refused the second attempt (a new key) because the first one, whose answer was lost, had refunded:
    the refund is the caller's, not a stranger's."""
    payment = toss.cancel(paid, "r", idempotency_key="cancel-5", amount=AMOUNT)

    assert _attributed(payment, [_row(5, paid, CancelStatus.FAILED)], cancel_id=5) == [(AMOUNT, 5)]
    assert _attributed(payment, [_row(5, paid, CancelStatus.FAILED)], cancel_id=None) == [(AMOUNT, None)]


# --- refusals ---------------------------------------------------------------------------------------------------


def _refusal(toss: FakeToss, payment_key: str, code: str) -> TossApiError:
    toss.fail_next("cancel", code)
    with pytest.raises(TossApiError) as caught:
        toss.cancel(payment_key, "r", idempotency_key=f"refused-{code}")
    return caught.value


@pytest.mark.parametrize(
    "code",
    [
        "PROVIDER_ERROR",
        "FORBIDDEN_CONSECUTIVE_REQUEST",
        "NOT_AVAILABLE_BANK",
        "FAILED_REFUND_PROCESS",
        "UNAUTHORIZED_KEY",  # our configuration: passes once an operator fixes the key, never final
    ],
)
def test_a_passing_refusal_of_a_refund_we_owe_is_asked_again_by_the_schedule(toss, paid, code):
    exc = _refusal(toss, paid, code)

    assert refusal_retry(exc, "room-cancel:1:" + paid) == (True, True)
    assert refusal_retry(exc, "expiry:1:" + paid) == (True, True)


@pytest.mark.parametrize("key", ["auto:abc", "client:abc"])
def test_a_payers_own_cancel_refused_for_now_is_theirs_to_ask_again(toss, paid, key):
    assert refusal_retry(_refusal(toss, paid, "PROVIDER_ERROR"), key) == (True, False)


def test_the_refundable_amount_refusal_from_toss_is_asked_again_after_a_look(toss, paid):
    toss.cancel(paid, "r", idempotency_key="first", amount=10_000)  # made by an attempt whose answer was lost
    with pytest.raises(TossApiError) as caught:
        toss.cancel(paid, "r", idempotency_key="second", refundable_amount=AMOUNT)

    assert caught.value.code == "NOT_MATCHES_REFUNDABLE_AMOUNT"
    assert refusal_retry(caught.value, "room-cancel:1:x") == (True, True)


@pytest.mark.parametrize("code", ["NOT_CANCELABLE_PAYMENT", "REFUND_REJECTED", "EXCEED_MAX_REFUND_DUE"])
def test_a_final_refusal_is_not_asked_again(toss, paid, code):
    assert refusal_retry(_refusal(toss, paid, code), "room-cancel:1:x") == (False, False)


def test_refusals_that_pass_are_asked_again_later_and_later():
    clock = FixedClock(datetime(2026, 1, 5, 3, 0, tzinfo=UTC))

    waits = [(retry_at(n, clock) - datetime(2026, 1, 5, 3, 0)).total_seconds() / 60 for n in (1, 2, 3, 7, 20)]

    assert waits == [5, 10, 20, 320, 360]  # doubling from 5 minutes, at most 6 hours


def test_a_refund_key_carries_the_stack_prefix(monkeypatch):
    # The row id comes from a database sequence: a second stack, or a rebuilt database, would repeat it.
    from escrow.config import reset_settings

    monkeypatch.setenv("TOSS_ID_PREFIX", "prod")
    reset_settings()
    try:
        assert cancel_idempotency_key(42, 2) == "prod-cancel-42-2"
    finally:
        monkeypatch.delenv("TOSS_ID_PREFIX")
        reset_settings()


def test_each_attempt_of_a_refund_has_its_own_key_and_identical_cancels_are_one():
    assert [cancel_idempotency_key(42, n) for n in (1, 2, 3)] == ["cancel-42", "cancel-42-2", "cancel-42-3"]
    same = _request_key("pk", "user_2", 1_000, "예약 취소", None)
    assert same == _request_key("pk", "user_2", 1_000, "예약 취소", None) and same.startswith("auto:")
    assert same != _request_key("pk", "user_2", None, "예약 취소", None)  # all that is left is another cancel
    assert _request_key("pk", "user_2", 1_000, "a", "k1") == _request_key("pk", "owner", None, "b", "k1")


# --- what may be refunded ------------------------------------------------------------------------------------------


def _share(status: str = PaymentStatus.COMPLETED, refunded: int = 0) -> dict[str, Any]:
    return {"status": status, "amount": AMOUNT, "paid_amount": AMOUNT, "refunded_amount": refunded}


def _charge(status: str = ChargeStatus.HELD, refunded: int = 0) -> dict[str, Any]:
    return {"payment_key": "pk", "status": status, "amount": AMOUNT, "refunded_amount": refunded}


@pytest.mark.parametrize(
    ("share", "charge", "code"),
    [
        (_share(PaymentStatus.RELEASED), _charge(ChargeStatus.RELEASED), "ALREADY_RELEASED"),
        (_share(PaymentStatus.REFUNDED), _charge(ChargeStatus.REFUNDED, AMOUNT), "ALREADY_REFUNDED"),
        (_share(PaymentStatus.IN_PROGRESS), _charge(ChargeStatus.WAITING_FOR_DEPOSIT), "NOT_REFUNDABLE"),
        (_share(PaymentStatus.IN_PROGRESS), _charge(), "PAYMENT_IN_PROGRESS"),
    ],
)
def test_released_refunded_unpaid_or_confirming_money_is_not_refunded(share, charge, code):
    with pytest.raises(Conflict) as caught:
        _check_refundable(share, charge, None)

    assert caught.value.code == code


def test_no_more_than_what_the_charge_still_holds_is_refunded():
    _check_refundable(_share(PaymentStatus.PARTIALLY_REFUNDED, 10_000), _charge(refunded=10_000), 20_000)

    with pytest.raises(ValidationFailed) as caught:
        _check_refundable(_share(PaymentStatus.PARTIALLY_REFUNDED, 10_000), _charge(refunded=10_000), 20_001)

    assert caught.value.code == "CANCEL_AMOUNT_TOO_LARGE"


@pytest.mark.parametrize(
    ("amount", "allowed"), [(1, False), (99, False), (100, True), (AMOUNT - 99, True), (None, True)]
)
def test_a_refund_never_leaves_an_amount_owed_that_toss_would_not_take(amount, allowed):
    # Toss takes no payment under 100 KRW (BELOW_MINIMUM_AMOUNT): 1-99 KRW owed could never be paid again.
    if allowed:
        _check_refundable(_share(), _charge(), amount)
        return
    with pytest.raises(ValidationFailed) as caught:
        _check_refundable(_share(), _charge(), amount)

    assert caught.value.code == "CANCEL_AMOUNT_BELOW_MINIMUM"
    assert caught.value.status == 422


def test_the_answer_says_what_was_refunded_and_what_is_left():
    assert _charge_answer(_charge(refunded=10_000)) == {
        "success": True,
        "refund_status": "partially_refunded",
        "paymentKey": "pk",
        "refunded_amount": 10_000,
        "remaining_amount": 20_000,
    }
    assert _charge_answer(_charge(ChargeStatus.REFUNDED, AMOUNT))["refund_status"] == "refunded"
    pending = _summary([{"refund_status": "refunded"}, {"refund_status": "refund_pending"}])
    assert (pending["refund_status"], pending["payment_request_status"]) == ("refund_pending", "cancelled")
