"""`POST /v2/sellers/{sellerId}`: a seller's account is changed (how a store's payout account is corrected)."""

from __future__ import annotations

from .conftest import TossClient
from .test_payouts import individual_seller


def test_a_sellers_account_is_updated_and_its_status_kept(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    seller = envelope["entityBody"]
    account = {"bankCode": "081", "accountNumber": "99988877766", "holderName": "김사장"}
    status, updated, _ = toss.v2_post(f"/v2/sellers/{seller['id']}", {"account": account})
    assert status == 200 and updated["entityType"] == "seller"
    assert updated["entityBody"]["account"] == account
    assert updated["entityBody"]["status"] == seller["status"] and updated["entityBody"]["id"] == seller["id"]
    _, read = toss.v2_get(f"/v2/sellers/{seller['id']}", encrypted=True)
    assert read["entityBody"]["account"] == account


def test_what_cannot_change_is_refused(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    seller_id = envelope["entityBody"]["id"]
    for change in ({"businessType": "CORPORATE"}, {"refSellerId": "another"}, {"account": {"bankCode": "088"}}):
        status, refused, _ = toss.v2_post(f"/v2/sellers/{seller_id}", change)
        assert (status, refused["error"]["code"]) == (400, "INVALID_REQUEST"), change
    status, missing, _ = toss.v2_post("/v2/sellers/seller_missing", {"metadata": {"a": "b"}})
    assert (status, missing["error"]["code"]) == (404, "NOT_FOUND_SELLER")
