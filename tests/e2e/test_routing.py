"""What the Powertools routes carry besides the body: the cancel route's Idempotency-Key header reaches the refund
rules (a repeated cancel with the same key refunds once, even with another reason), over HTTP as a client sends it."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.test_money_out_and_back import funded_room, money_trace

pytestmark = pytest.mark.e2e


def test_a_cancel_repeated_with_the_same_idempotency_key_refunds_once(as_user, toss, make_room, sql):
    room, request_id, keys = funded_room(as_user, toss, make_room, n=1)
    payer = room.members[0]
    key = f"app-retry-{uuid.uuid4().hex}"
    first = as_user(payer).post(
        "/api/v1/payment/cancel",
        {"paymentKey": keys[payer], "cancelReason": "첫 요청", "cancelAmount": 1000},
        headers={"Idempotency-Key": key},
    )
    assert first.status_code == 200, first.text
    again = as_user(payer).post(
        "/api/v1/payment/cancel",
        {"paymentKey": keys[payer], "cancelReason": "재시도", "cancelAmount": 1000},
        headers={"idempotency-key": key},  # header names are case-insensitive
    )
    assert (again.status_code, again.json()) == (200, first.json())
    assert money_trace(sql, request_id).get("refund") == 1000
    assert toss.payment(keys[payer])["balanceAmount"] == 14000
