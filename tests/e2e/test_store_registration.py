"""Store registration (issue 7 finding 10): the outside review's two attacks on the seller registration.

The admin's registration is answered at once (the seller pending) and the schedule's sellers job registers the
seller with Toss; the Idempotency-Key covers the content and every attempt after an answer, and refSellerId is
unique by construction (a database sequence with the stack prefix).
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.test_money_out_and_back import admin
from tests.e2e.test_room_gets_paid import rows

pytestmark = pytest.mark.e2e


def test_a_corrected_store_registration_is_not_answered_with_the_first_one(as_user, toss, make_room, sql, schedule):
    room = make_room(1)
    post = admin(as_user)
    schedule(jobs=["sellers"])  # registrations other tests left pending go now, not into this test's fault
    earlier = len(toss.calls("/v2/sellers", "POST"))  # registrations other tests sent to this sandbox
    body = {
        "store_id": room.store_id,
        "owner_id": "store_owner",
        "bank_code": "88",
        "account_number": "110123456789",
        "holder_name": "홍길동",
        "business_type": "CORPORATE",  # refused: a corporation needs company details
        "email": "owner@example.com",
        "phone": "01012345678",
    }
    r = post("/api/v1/admin/stores", body)
    assert r.status_code == 422, r.text  # caught before Toss
    body["business_type"] = "INDIVIDUAL"
    toss.faults(failure_code="INVALID_REQUEST", count=1, paths=["/v2/sellers"])
    r = post("/api/v1/admin/stores", body)
    assert r.status_code in (201, 202), r.text
    schedule(jobs=["sellers"])
    body["holder_name"] = "김철수"  # the admin corrects the holder and registers again
    r = post("/api/v1/admin/stores", body)
    assert r.status_code in (201, 202), r.text
    schedule(jobs=["sellers"])
    store = rows(sql, "SELECT toss_seller_id, seller_status FROM stores WHERE store_id = %s", room.store_id)[0]
    assert store["toss_seller_id"], store
    keys = [c["idempotency_key"] for c in toss.calls("/v2/sellers", "POST")[earlier:]]
    assert len(keys) == 2
    assert len(set(keys)) == len(keys)  # every attempt with different content or after an error has its own key


def test_a_crafted_store_id_cannot_take_another_stores_toss_seller(as_user, toss, make_room, sql, schedule):
    import hashlib

    long_id = "store_" + uuid.uuid4().hex + "_long_enough_to_be_hashed"
    crafted = "st" + hashlib.sha256(long_id.encode()).hexdigest()[:18]  # the old scheme's ref for long_id
    post = admin(as_user)
    for store_id in (crafted, long_id):
        r = post(
            "/api/v1/admin/stores",
            {
                "store_id": store_id,
                "owner_id": "o",
                "bank_code": "88",
                "account_number": "110123456789",
                "holder_name": "홍길동",
                "email": "owner@example.com",
                "phone": "01012345678",
            },
        )
        assert r.status_code in (201, 202), r.text
    schedule(jobs=["sellers"])
    stores = rows(sql, "SELECT store_id, toss_seller_id FROM stores WHERE store_id IN (%s, %s)", crafted, long_id)
    assert len(stores) == 2 and all(s["toss_seller_id"] for s in stores), stores
    assert len({s["toss_seller_id"] for s in stores}) == 2
