"""Paying out, without the database: one key per request to Toss, how a refused batch is split so that one unpayable
seller does not hold back the others, and what Toss's answer says of each payout. Toss's refusals come from the
in-memory Toss (all or nothing, as the sandbox). Claiming, leases and recording are integration tests."""

from __future__ import annotations

from typing import Any

import pytest

from escrow.clock import FixedClock
from escrow.services.payouts import _answered_status, _payout_item, _split, payout_idempotency_key
from escrow.states import InvalidTransition, PayoutStatus
from escrow.toss.errors import TossApiError
from tests.support.fake_toss import FakeToss, toss_error


def _settlement(settlement_id: int, seller: str, net: int = 10_000, attempts: int = 1) -> dict[str, Any]:
    return {
        "id": settlement_id,
        "ref_payout_id": f"escrow-req-{settlement_id}",
        "toss_seller_id": seller,
        "net_amount": net,
        "payment_request_id": settlement_id,
        "store_id": f"store_{seller}",
        "payout_attempts": attempts,
    }


def test_a_batch_has_one_key_for_who_is_in_it_at_which_attempt():
    one = [_settlement(7, "s")]
    batch = [_settlement(3, "s"), _settlement(1, "s")]

    assert payout_idempotency_key(one) == "payout-7-1"
    assert payout_idempotency_key(batch) == payout_idempotency_key(list(reversed(batch)))  # the same batch again
    assert payout_idempotency_key(batch) != payout_idempotency_key(
        [_settlement(3, "s"), _settlement(1, "s", attempts=2)]
    )
    assert payout_idempotency_key(batch) != payout_idempotency_key([_settlement(3, "s")])
    assert len(payout_idempotency_key([_settlement(i, "s") for i in range(100)])) <= 300


def test_a_batch_refused_for_one_seller_is_split_until_the_others_are_paid():
    toss = FakeToss(FixedClock())
    toss.set_balance(1_000_000)
    approved = toss.register_seller({"refSellerId": "a", "businessType": "CORPORATE"}, idempotency_key="a")["id"]
    waiting = toss.register_seller({"refSellerId": "b", "businessType": "INDIVIDUAL"}, idempotency_key="b")["id"]
    batch = [_settlement(1, approved), _settlement(2, waiting), _settlement(3, approved)]

    with pytest.raises(TossApiError) as refused:
        toss.request_payouts([_payout_item(s) for s in batch], idempotency_key=payout_idempotency_key(batch))
    first, second = _split(batch, refused.value)  # by seller first
    paid = toss.request_payouts([_payout_item(s) for s in first], idempotency_key=payout_idempotency_key(first))
    with pytest.raises(TossApiError) as again:
        toss.request_payouts([_payout_item(s) for s in second], idempotency_key=payout_idempotency_key(second))

    assert refused.value.code == again.value.code == "FORBIDDEN_SELLER_PAYOUT"
    assert [p["refPayoutId"] for p in paid] == ["escrow-req-1", "escrow-req-3"]
    assert [s["id"] for s in second] == [2]
    assert _split(second, again.value) == []  # alone, it refuses nobody else: it waits for its seller


def test_one_sellers_batch_refused_for_an_item_is_halved():
    batch = [_settlement(i, "s") for i in range(1, 6)]

    assert [[s["id"] for s in part] for part in _split(batch, toss_error("INVALID_REQUEST"))] == [[1, 2], [3, 4, 5]]
    assert _split(batch, toss_error("FORBIDDEN_SELLER_PAYOUT")) == []  # about the seller: halves would be refused too


@pytest.mark.parametrize("code", ["NOT_ALLOWED_HOLIDAY", "PROVIDER_ERROR", "INVALID_API_KEY", "COMMON_ERROR"])
def test_a_refusal_about_the_whole_request_is_not_split(code):
    batch = [_settlement(1, "a"), _settlement(2, "b")]

    assert _split(batch, toss_error(code)) == []


def test_a_payout_item_is_what_toss_takes():
    assert _payout_item(_settlement(9, "seller_1", net=29_100)) == {
        "refPayoutId": "escrow-req-9",
        "destination": "seller_1",
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": 29_100},
        "transactionDescription": "모임예약금",
        "metadata": {"paymentRequestId": "9", "storeId": "store_seller_1"},
    }


def test_tosss_answer_is_read_in_our_vocabulary():
    assert _answered_status({"status": "IN_PROGRESS"}) == PayoutStatus.IN_PROGRESS
    assert _answered_status({}) == PayoutStatus.REQUESTED
    with pytest.raises(InvalidTransition):
        _answered_status({"status": "TELEPORTED"})
