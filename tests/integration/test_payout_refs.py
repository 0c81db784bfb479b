"""The ids we name at Toss, against real MariaDB and the Toss sandbox (issue 8 items 6 and 8): two stacks on one
merchant id (each its own database, so its own request 1, settlement 1 and store sequence 1) never send Toss the same
orderId, refPayoutId or refSellerId when each has its stack prefix; without one, the second stack's registration is
answered with the first stack's seller, which is recognised and refused. A payout Toss holds under our refPayoutId
whose id we never learnt is polled by its refPayoutId and settled.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import requests

from escrow import db
from escrow.clock import utcnow
from escrow.config import reset_settings
from escrow.models import RegisterStoreBody
from escrow.repositories import stores as stores_repo
from escrow.services import payouts as payout_service
from escrow.services import stores as store_service
from escrow.toss.client import TossClient
from tests.integration.test_batch_payouts import (  # noqa: F401 - sandbox, toss and own_database are fixtures
    ADMIN,
    fresh_database,
    funded_rooms,
    own_database,
    register_store,
    release_all,
    sandbox,
    settlements,
    toss,
)


def _body(store_id: str) -> RegisterStoreBody:
    return RegisterStoreBody(
        store_id=store_id,
        owner_id=f"owner_of_{store_id}",
        bank_code="88",
        account_number="110123456789",
        holder_name="홍길동",
        email="owner@example.com",
        phone="01012345678",
    )


@contextmanager
def stack_prefix(prefix: str) -> Iterator[None]:
    before = os.environ.get("TOSS_ID_PREFIX")
    os.environ["TOSS_ID_PREFIX"] = prefix
    reset_settings()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOSS_ID_PREFIX", None)
        else:
            os.environ["TOSS_ID_PREFIX"] = before
        reset_settings()


def one_paid_out_room(sql: Any, sandbox: Any, toss: TossClient) -> dict[str, Any]:  # noqa: F811
    """A store registered, one room funded and released, the payout job run: what this stack sent Toss."""
    store_id = f"store_{uuid.uuid4().hex[:8]}"
    register_store(toss, sandbox, store_id)
    funded_rooms(sql, sandbox, toss, [store_id], 1)
    release_all(1)
    payout_service.payouts_due(10, toss=toss)
    with sql.cursor() as cur:
        cur.execute("SELECT order_id FROM payments")
        order_id = cur.fetchone()["order_id"]
    with db.reader() as tx:
        ref_seller = stores_repo.seller_view(tx, store_id)["ref_seller_id"]
    (settlement,) = settlements(sql)
    return {"order_id": order_id, "ref_seller_id": ref_seller, **settlement}


def test_two_stacks_with_their_prefixes_never_send_toss_the_same_id(sandbox, toss):  # noqa: F811
    seen = []
    for prefix in ("stacka", "stackb"):
        # Each stack is a database of its own: its request 1, settlement 1, store 1; one merchant id at Toss.
        with stack_prefix(prefix), fresh_database() as sql:
            seen.append(one_paid_out_room(sql, sandbox, toss))
    a, b = seen
    assert a["ref_payout_id"] == "stacka-escrow-req-1" and b["ref_payout_id"] == "stackb-escrow-req-1"
    assert a["ref_seller_id"] == "stacka-st1" and b["ref_seller_id"] == "stackb-st1"
    assert a["order_id"].startswith("stacka-esc1-") and b["order_id"].startswith("stackb-esc1-")
    assert a["payout_status"] == b["payout_status"] == "in_progress" and a["payout_id"] != b["payout_id"]


def test_without_prefixes_the_second_stack_is_not_answered_as_the_first_one(sandbox, toss):  # noqa: F811
    """Without a prefix of its own, a second stack's first store has the first stack's refSellerId and the same
    Idempotency-Key: Toss replays the first stack's seller. It is recognised (the storeId sent with it) and refused,
    so the second stack never pays its rooms' money to the first stack's store."""
    with stack_prefix(""), fresh_database() as sql:
        first = one_paid_out_room(sql, sandbox, toss)
    assert first["ref_seller_id"] == "st1" and first["payout_status"] == "in_progress"
    with stack_prefix(""), fresh_database():
        store_id = f"store_{uuid.uuid4().hex[:8]}"
        store_service.register_store(ADMIN, _body(store_id))
        store_service.register_due_sellers(toss=toss)
        second = store_service.get_store(ADMIN, store_id)
    assert (second["ref_seller_id"], second["registration_status"]) == ("st1", "refused")
    assert second["seller_error_code"] == "REF_SELLER_ID_TAKEN" and second["seller_id"] is None


def test_a_payout_toss_holds_under_our_ref_is_polled_by_it_and_settled(own_database, sandbox, toss):  # noqa: F811
    sql = own_database
    store_id = f"store_{uuid.uuid4().hex[:8]}"
    register_store(toss, sandbox, store_id)
    funded_rooms(sql, sandbox, toss, [store_id], 1)
    release_all(1)
    payout_service.payouts_due(10, toss=toss)
    (made,) = settlements(sql)
    # As after DUPLICATED_REF_PAYOUT_ID when Toss's listing did not show it yet: at Toss, its id unknown to us.
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payment_settlements SET payout_id = NULL, payout_lease_until = NULL WHERE id = %s", (made["id"],)
        )
    requests.post(
        f"{sandbox.url}/sandbox/payouts/{made['payout_id']}/complete", json={"status": "COMPLETED"}, timeout=5
    ).raise_for_status()
    report = payout_service.payouts_due(10, toss=toss, now=lambda: utcnow() + timedelta(seconds=1))
    assert report["payouts_polled"] == 1
    (after,) = settlements(sql)
    assert (after["payout_status"], after["payout_id"]) == ("completed", made["payout_id"])
