"""Payouts v2: JWE security mode, sellers, payouts, balances (https://docs.tosspayments.com/guides/v2/payouts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
import requests

from toss_sandbox import DEFAULT_SECURITY_KEY, Sandbox, jwe_decrypt, jwe_encrypt, jwe_protected_header
from toss_sandbox.jwe import JweError

from .conftest import TossClient, new_order_id, wait_until

OTHER_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def individual_seller(ref: str | None = None) -> dict[str, Any]:
    return {
        "refSellerId": ref or new_order_id("s")[-20:],
        "businessType": "INDIVIDUAL",
        "individual": {"name": "김사장", "email": "owner@example.com", "phone": "01012345678"},
        "account": {"bankCode": "088", "accountNumber": "110123456789", "holderName": "김사장"},
        "metadata": {"storeId": "store-1"},
    }


def corporate_seller() -> dict[str, Any]:
    return {
        "refSellerId": new_order_id("c")[-20:],
        "businessType": "CORPORATE",
        "company": {
            "name": "모임식당",
            "representativeName": "이대표",
            "businessRegistrationNumber": "1234567890",
            "email": "corp@example.com",
            "phone": "0212345678",
        },
        "account": {"bankCode": "004", "accountNumber": "123456789012", "holderName": "모임식당"},
    }


def payout_item(seller_id: str, value: int = 10000, **extra: Any) -> dict[str, Any]:
    return {
        "refPayoutId": new_order_id("p"),
        "destination": seller_id,
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": value},
        "transactionDescription": "모임정산",
        "metadata": {"groupId": "7f3a9c"},
        **extra,
    }


def fund(toss: TossClient, available: int, pending: int = 0) -> None:
    """Set the payout balances directly (the sandbox starts with nothing available, as a new merchant)."""
    toss.control("POST", "/sandbox/balance", {"available": available, "pending": pending})


def approved_seller(toss: TossClient) -> str:
    status, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    assert status == 200, envelope
    seller_id: str = envelope["entityBody"]["id"]
    toss.control("POST", f"/sandbox/sellers/{seller_id}/status", {"status": "APPROVED"})
    return seller_id


# ---------------------------------------------------------------------- JWE helpers
def test_jwe_round_trip_with_toss_protected_header() -> None:
    token = jwe_encrypt('{"hello":"세계"}', DEFAULT_SECURITY_KEY)
    header = jwe_protected_header(token)
    assert header["alg"] == "dir" and header["enc"] == "A256GCM"
    assert header["iat"] and header["nonce"]
    assert len(token.split(".")) == 5 and token.split(".")[1] == ""  # dir: empty encrypted key
    assert json.loads(jwe_decrypt(token, DEFAULT_SECURITY_KEY)) == {"hello": "세계"}


def test_jwe_decrypt_with_the_wrong_key_fails() -> None:
    token = jwe_encrypt(b"secret", DEFAULT_SECURITY_KEY)
    with pytest.raises(JweError):
        jwe_decrypt(token, OTHER_KEY)


def test_jwe_key_is_the_hex_decoded_security_key() -> None:
    from jwcrypto import jwe, jwk
    from jwcrypto.common import base64url_encode

    key = jwk.JWK(kty="oct", k=base64url_encode(bytes.fromhex(DEFAULT_SECURITY_KEY)))
    token = jwe.JWE(b"x", protected=json.dumps({"alg": "dir", "enc": "A256GCM", "iat": "t", "nonce": "n"}))
    token.add_recipient(key)
    assert jwe_decrypt(token.serialize(compact=True), DEFAULT_SECURITY_KEY) == b"x"


# ---------------------------------------------------------------------- sellers
def test_register_individual_seller_needs_approval(toss: TossClient) -> None:
    body = individual_seller()
    status, envelope, response = toss.v2_post("/v2/sellers", body)

    assert status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert envelope["version"] == "2022-11-16"
    assert envelope["traceId"]
    assert envelope["entityType"] == "seller"
    seller = envelope["entityBody"]
    assert seller["id"].startswith("seller_") and len(seller["id"]) <= 35
    assert seller["status"] == "APPROVAL_REQUIRED"
    assert seller["refSellerId"] == body["refSellerId"]
    assert seller["account"] == body["account"]
    call = toss.calls()[-1]
    assert call["decryptedBody"] == body
    assert isinstance(call["requestBody"], str)


def test_register_corporate_seller_is_partially_approved(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", corporate_seller())
    assert envelope["entityBody"]["status"] == "PARTIALLY_APPROVED"


def test_get_seller_plain_or_encrypted(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    seller_id = envelope["entityBody"]["id"]
    plain_status, plain = toss.v2_get(f"/v2/sellers/{seller_id}")
    enc_status, encrypted = toss.v2_get(f"/v2/sellers/{seller_id}", encrypted=True)
    assert plain_status == enc_status == 200
    assert plain["entityBody"] == encrypted["entityBody"] == envelope["entityBody"]
    missing_status, missing = toss.v2_get("/v2/sellers/seller_missing", encrypted=True)
    assert missing_status == 404
    assert missing["error"]["code"] == "NOT_FOUND_SELLER"


def test_duplicate_ref_seller_id_is_an_encrypted_error(toss: TossClient) -> None:
    body = individual_seller()
    toss.v2_post("/v2/sellers", body)
    status, envelope, _ = toss.v2_post("/v2/sellers", body)
    assert status == 400
    assert envelope["error"]["code"] == "DUPLICATED_REF_SELLER_ID"
    assert envelope["entityType"] is None and envelope["entityBody"] is None
    assert envelope["version"] == "2022-11-16" and envelope["traceId"]


def test_invalid_seller_bodies_are_invalid_request(toss: TossClient) -> None:
    no_individual = individual_seller()
    del no_individual["individual"]
    bad_brn = corporate_seller()
    bad_brn["company"]["businessRegistrationNumber"] = "123"
    long_ref = individual_seller("x" * 21)
    for body in (no_individual, bad_brn, long_ref, {"businessType": "INDIVIDUAL"}):
        status, envelope, _ = toss.v2_post("/v2/sellers", body)
        assert (status, envelope["error"]["code"]) == (400, "INVALID_REQUEST"), body


def test_unencrypted_post_is_refused_in_plain_json(toss: TossClient) -> None:
    response = toss.session.post(toss.base_url + "/v2/sellers", json=individual_seller(), timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"


def test_body_encrypted_with_another_key_is_an_error_encrypted_with_ours(toss: TossClient) -> None:
    token = jwe_encrypt(json.dumps(individual_seller()), OTHER_KEY)
    response = toss.session.post(
        toss.base_url + "/v2/sellers",
        data=token,
        headers={"Content-Type": "text/plain", "TossPayments-api-security-mode": "ENCRYPTION"},
        timeout=5,
    )
    assert response.status_code == 400
    with pytest.raises(JweError):  # the client with the wrong key cannot read it either
        jwe_decrypt(response.text, OTHER_KEY)
    assert toss.decrypt(response)["error"]["code"] == "INVALID_ENCRYPTION"


def test_v2_auth_errors_use_the_v2_envelope(toss: TossClient) -> None:
    response = requests.get(toss.base_url + "/v2/balances", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED_KEY"
    assert response.json()["entityBody"] is None


# ---------------------------------------------------------------------- payouts
def test_payout_to_a_seller_awaiting_approval_is_forbidden_seller_payout(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())
    seller_id = envelope["entityBody"]["id"]

    status, error, response = toss.v2_post("/v2/payouts", [payout_item(seller_id)])

    assert status == 403
    assert response.headers["Content-Type"].startswith("text/plain")
    assert error["error"]["code"] == "FORBIDDEN_SELLER_PAYOUT"
    assert error["entityBody"] is None
    assert toss.stats()["payouts"] == 0


def test_express_payout_is_in_progress_and_takes_money_from_the_balance(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    toss.control("POST", "/sandbox/balance", {"available": 500000, "pending": 70000})
    item = payout_item(seller_id, 210000)

    status, envelope, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="payout-1")

    assert status == 200
    assert envelope["entityType"] == "payout"
    [payout] = envelope["entityBody"]["items"]
    assert payout["id"].startswith("FPA_")
    assert payout["status"] == "IN_PROGRESS"
    assert payout["refPayoutId"] == item["refPayoutId"]
    assert payout["destination"] == seller_id
    assert payout["amount"] == {"currency": "KRW", "value": 210000}
    assert payout["payoutDate"] == toss.control("GET", "/sandbox/clock")["now"][:10]  # EXPRESS: today (KST)
    assert payout["error"] is None and payout["requestedAt"]
    _, balances = toss.v2_get("/v2/balances")
    assert balances["entityBody"] == {
        "pendingAmount": {"currency": "KRW", "value": 70000},
        "availableAmount": {"currency": "KRW", "value": 290000},
    }
    _, fetched = toss.v2_get(f"/v2/payouts/{payout['id']}")
    assert fetched["entityBody"] == payout
    replay_status, replay, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="payout-1")
    assert replay_status == 200 and replay["entityBody"] == envelope["entityBody"]
    assert toss.stats()["payouts"] == 1


def test_items_wrapper_is_accepted(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    fund(toss, 100_000)
    status, envelope, _ = toss.v2_post("/v2/payouts", {"items": [payout_item(seller_id), payout_item(seller_id)]})
    assert status == 200
    assert len(envelope["entityBody"]["items"]) == 2


def test_payout_above_the_available_balance_is_refused_with_not_enough_amount(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    fund(toss, 10000, pending=500_000)  # pending money cannot be paid out

    status, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 10001)])

    assert (status, envelope["error"]["code"]) == (400, "NOT_ENOUGH_AMOUNT")
    assert envelope["entityBody"] is None
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == 10000
    assert toss.stats()["payouts"] == 0
    assert toss.v2_post("/v2/payouts", [payout_item(seller_id, 10000)])[0] == 200


def test_the_invented_insufficient_balance_code_is_gone(toss: TossClient) -> None:
    from toss_sandbox.errors import ERROR_TABLE

    assert "INSUFFICIENT_BALANCE" not in ERROR_TABLE
    assert toss.control("GET", "/sandbox/config")["available_balance"] == 0


def test_the_balance_refusal_code_is_a_setting(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(
        payout_insufficient_balance_code="SOME_FUTURE_BALANCE_CODE", payout_insufficient_balance_status=422
    )
    toss = TossClient(sandbox.url)
    seller_id = approved_seller(toss)
    status, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 1)])
    assert (status, envelope["error"]["code"]) == (422, "SOME_FUTURE_BALANCE_CODE")


def test_duplicate_ref_payout_id_is_refused_and_the_first_payout_can_still_be_read(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    fund(toss, 100_000)
    item = payout_item(seller_id)
    _, first, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="first-try")
    [payout] = first["entityBody"]["items"]

    status, envelope, _ = toss.v2_post("/v2/payouts", [item], idempotency_key="second-try")

    assert (status, envelope["error"]["code"]) == (400, "DUPLICATED_REF_PAYOUT_ID")
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == 90_000  # taken once
    assert toss.v2_get(f"/v2/payouts/{payout['id']}", encrypted=True)[1]["entityBody"] == payout
    listed = toss.v2_get("/v2/payouts")[1]["entityBody"]["items"]
    assert [p["id"] for p in listed if p["refPayoutId"] == item["refPayoutId"]] == [payout["id"]]
    twice = [payout_item(seller_id, refPayoutId="same-ref"), payout_item(seller_id, refPayoutId="same-ref")]
    status, envelope, _ = toss.v2_post("/v2/payouts", twice)
    assert envelope["error"]["code"] == "DUPLICATED_REF_PAYOUT_ID"


def test_unknown_destination_is_not_found_seller(toss: TossClient) -> None:
    status, envelope, _ = toss.v2_post("/v2/payouts", [payout_item("seller_nobody")])
    assert (status, envelope["error"]["code"]) == (404, "NOT_FOUND_SELLER")


def test_scheduled_payout_is_requested_and_can_be_canceled(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    fund(toss, 100_000)
    before = toss.control("GET", "/sandbox/balance")["availableAmount"]["value"]
    tomorrow = (date.today() + timedelta(days=2)).isoformat()
    _, envelope, _ = toss.v2_post(
        "/v2/payouts", [payout_item(seller_id, 5000, scheduleType="SCHEDULED", payoutDate=tomorrow)]
    )
    payout = envelope["entityBody"]["items"][0]
    assert payout["status"] == "REQUESTED"
    assert payout["payoutDate"] == tomorrow

    status, canceled = toss.v2_cancel_payout(payout["id"])

    assert status == 200
    assert canceled["entityBody"]["status"] == "CANCELED"
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == before
    status, again = toss.v2_cancel_payout(payout["id"])
    assert (status, again["error"]["code"]) == (403, "NOT_CANCELABLE_PAYOUT")
    status, missing = toss.v2_cancel_payout("FPA_MISSING")
    assert (status, missing["error"]["code"]) == (404, "NOT_FOUND_PAYOUT")


def test_scheduled_payout_without_a_date_is_invalid(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    status, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, scheduleType="SCHEDULED")])
    assert (status, envelope["error"]["code"]) == (400, "INVALID_REQUEST")


def test_complete_and_fail_controls(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    toss.control("POST", "/sandbox/balance", {"available": 100000})
    _, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 1000), payout_item(seller_id, 2000)])
    first, second = envelope["entityBody"]["items"]

    done = toss.control("POST", f"/sandbox/payouts/{first['id']}/complete", {"status": "COMPLETED"})
    failed = toss.control(
        "POST",
        f"/sandbox/payouts/{second['id']}/complete",
        {"status": "FAILED", "error": {"code": "INVALID_ACCOUNT", "message": "계좌 오류"}},
    )

    assert done["status"] == "COMPLETED"
    assert failed["status"] == "FAILED"
    assert failed["error"] == {"code": "INVALID_ACCOUNT", "message": "계좌 오류"}
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == 99000  # failed money returns
    assert toss.stats()["payoutsCompleted"] == 1 and toss.stats()["payoutsFailed"] == 1


def test_payouts_complete_automatically_when_configured(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(payout_auto_complete_seconds=0.2, available_balance=100_000).url)
    seller_id = approved_seller(toss)
    _, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id)])
    payout_id = envelope["entityBody"]["items"][0]["id"]
    wait_until(lambda: toss.v2_get(f"/v2/payouts/{payout_id}")[1]["entityBody"]["status"] == "COMPLETED")


def test_partially_approved_seller_over_the_weekly_limit_needs_kyc(toss: TossClient) -> None:
    _, envelope, _ = toss.v2_post("/v2/sellers", corporate_seller())
    seller_id = envelope["entityBody"]["id"]
    fund(toss, 20_000_000)
    assert toss.v2_post("/v2/payouts", [payout_item(seller_id, 6_000_000)])[0] == 200

    status, error, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 4_000_001)])

    assert (status, error["error"]["code"]) == (403, "FORBIDDEN_SELLER_PAYOUT")
    assert toss.v2_get(f"/v2/sellers/{seller_id}")[1]["entityBody"]["status"] == "KYC_REQUIRED"


# ---------------------------------------------------------------------- shapes a client must survive
def test_v2_errors_can_be_answered_in_v1_shape(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(v2_error_shape="v1").url)
    _, envelope, _ = toss.v2_post("/v2/sellers", individual_seller())

    status, error, response = toss.v2_post("/v2/payouts", [payout_item(envelope["entityBody"]["id"])])

    assert status == 403
    assert response.headers["Content-Type"].startswith("text/plain")  # still encrypted
    assert error == {"code": "FORBIDDEN_SELLER_PAYOUT", "message": error["message"]}
    plain = requests.get(toss.base_url + "/v2/payouts/FPA_NONE", headers=toss.session.headers, timeout=5)
    assert plain.json() == {"code": "NOT_FOUND_PAYOUT", "message": plain.json()["message"]}
    toss.control("POST", "/sandbox/config", {"v2_error_shape": "v2"})
    assert toss.v2_get("/v2/payouts/FPA_NONE")[1]["error"]["code"] == "NOT_FOUND_PAYOUT"


def test_the_payout_answer_can_carry_a_bare_list(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(payout_entity_body="list", available_balance=50_000).url)
    seller_id = approved_seller(toss)

    status, envelope, _ = toss.v2_post("/v2/payouts", [payout_item(seller_id, 1000), payout_item(seller_id, 2000)])

    assert status == 200 and envelope["entityType"] == "payout"
    assert isinstance(envelope["entityBody"], list)
    assert [p["amount"]["value"] for p in envelope["entityBody"]] == [1000, 2000]


def test_the_next_payout_requests_can_be_refused_with_any_code(toss: TossClient) -> None:
    seller_id = approved_seller(toss)
    fund(toss, 100_000)
    toss.control("POST", "/sandbox/payouts/refuse", {"code": "SOME_FUTURE_PAYOUT_CODE", "status": 422, "count": 2})

    refused = [toss.v2_post("/v2/payouts", [payout_item(seller_id)]) for _ in range(2)]
    accepted = toss.v2_post("/v2/payouts", [payout_item(seller_id)])

    for status, envelope, _response in refused:
        assert (status, envelope["error"]["code"]) == (422, "SOME_FUTURE_PAYOUT_CODE")
        assert envelope["entityBody"] is None
    assert accepted[0] == 200
    assert toss.stats()["payouts"] == 1
    assert toss.control("GET", "/sandbox/balance")["availableAmount"]["value"] == 90_000


@pytest.mark.parametrize("body", [{}, {"code": "X", "status": 200}, {"code": "X", "count": 0}])
def test_the_refuse_control_checks_its_body(toss: TossClient, body: dict[str, Any]) -> None:
    response = requests.post(toss.base_url + "/sandbox/payouts/refuse", json=body, timeout=5)
    assert response.status_code == 400
