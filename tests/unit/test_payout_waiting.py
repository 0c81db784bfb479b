"""Money out without the database: what a refusal means for a payout, the back-off, the balance a run may spend,
what an answer shows a payout waiting for, and whose payout Toss holds under our refPayoutId. Sending, claiming and
recording are the e2e tests (tests/e2e/test_payouts_and_sellers.py)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from escrow.clock import FixedClock
from escrow.services.payouts import RETRY_FIRST, RETRY_LONGEST, Budget, _ours, _refusal, _waiting_for, retry_after
from escrow.services.stores import seller_idempotency_key
from escrow.states import PayoutStatus, PayoutWaitingFor
from tests.support.fake_toss import FakeToss, toss_error


def test_the_back_off_grows_from_five_minutes_to_six_hours():
    waits = [retry_after(n) for n in range(1, 12)]

    assert waits[0] == RETRY_FIRST == timedelta(minutes=5)
    assert all(a < b for a, b in itertools.pairwise(waits[:7]))
    assert waits[-1] == RETRY_LONGEST == timedelta(hours=6)
    assert retry_after(10_000) == RETRY_LONGEST


@pytest.mark.parametrize(
    ("code", "status", "waiting", "alarmed"),
    [
        ("NOT_ENOUGH_AMOUNT", PayoutStatus.SCHEDULED, PayoutWaitingFor.BALANCE, True),
        ("FORBIDDEN_SELLER_PAYOUT", PayoutStatus.SCHEDULED, PayoutWaitingFor.SELLER, False),
        ("NOT_ALLOWED_HOLIDAY", PayoutStatus.SCHEDULED, PayoutWaitingFor.RETRY, False),
        ("A_CODE_NOBODY_KNOWS", PayoutStatus.SCHEDULED, PayoutWaitingFor.RETRY, True),  # never failed silently
        ("INSUFFICIENT_BALANCE", PayoutStatus.SCHEDULED, PayoutWaitingFor.RETRY, True),  # not Toss's: unknown
        ("INVALID_ACCOUNT_INFO_RE_REGISTER", PayoutStatus.FAILED, None, True),  # a person fixes the account
        ("NOT_FOUND_SELLER", PayoutStatus.FAILED, None, True),
    ],
)
def test_a_refusal_waits_retries_or_stops_saying_why(code, status, waiting, alarmed):
    refusal, counted = _refusal(toss_error(code))

    assert (refusal.new, refusal.waiting_for, counted) == (status, waiting, alarmed)
    assert refusal.code == code
    if status == PayoutStatus.FAILED:
        assert "retry-payout" in refusal.message and "/api/v1/admin/stores" in refusal.message


def test_a_run_spends_the_balance_it_read_once_oldest_first():
    toss = FakeToss(FixedClock())
    toss.set_balance(25_000)
    budget = Budget()
    budget.available, budget.pending = toss.get_balances()["available"], 0

    assert budget.take(10_000) and budget.take(10_000)
    assert not budget.take(10_000)  # the third waits for the balance
    budget.exhausted_at = 3  # and so does every newer one in this run, even a smaller one
    assert not budget.usable and not budget.take(1_000)


def _settlement(**fields: Any) -> dict[str, Any]:
    return {
        "payout_status": PayoutStatus.SCHEDULED,
        "payout_waiting_for": None,
        "toss_seller_id": "seller_1",
        "seller_status": "APPROVED",
        "payment_request_id": 9,
        "store_id": "store_1",
        "net_amount": 29_100,
        **fields,
    }


def test_an_answer_says_what_a_scheduled_payout_waits_for():
    assert _waiting_for(_settlement()) == PayoutWaitingFor.SCHEDULE
    assert _waiting_for(_settlement(payout_waiting_for="balance")) == PayoutWaitingFor.BALANCE
    assert _waiting_for(_settlement(toss_seller_id=None, seller_status=None)) == PayoutWaitingFor.SELLER
    assert _waiting_for(_settlement(seller_status="KYC_REQUIRED")) == PayoutWaitingFor.SELLER
    assert _waiting_for(_settlement(payout_status=PayoutStatus.IN_PROGRESS)) is None


def test_a_payout_toss_holds_under_our_ref_is_ours_only_to_our_seller_for_our_net():
    mine = {
        "destination": "seller_1",
        "amount": {"currency": "KRW", "value": 29_100},
        "metadata": {"storeId": "store_1"},
    }

    assert _ours(_settlement(), mine)
    assert not _ours(_settlement(), {**mine, "destination": "seller_2"})
    assert not _ours(_settlement(), {**mine, "amount": {"currency": "KRW", "value": 100}})
    assert not _ours(_settlement(), {**mine, "metadata": {"storeId": "another_stack_store"}})


def test_a_seller_registration_key_covers_the_content_and_the_attempt():
    store = {"toss_seller_id": None, "seller_seq": 12, "seller_request_hash": "a" * 64}

    first = seller_idempotency_key(store, 1)
    assert seller_idempotency_key(store, 1) == first  # no answer arrived: the same key again
    assert seller_idempotency_key(store, 2) != first  # a new attempt after an answer
    assert seller_idempotency_key({**store, "seller_request_hash": "b" * 64}, 1) != first  # corrected content
    assert "update" in seller_idempotency_key({**store, "toss_seller_id": "seller_1"}, 3)
