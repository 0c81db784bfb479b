"""Bank codes: 3-digit standard codes for payout sellers, Toss's 2-digit codes for refund accounts (banks.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from toss_sandbox import Sandbox
from toss_sandbox.banks import BANKS, BY_STANDARD_CODE, BY_TOSS_CODE, refund_bank, seller_bank

from .conftest import TossClient
from .test_payouts import individual_seller


def seller_with_bank(code: str) -> dict[str, object]:
    body = individual_seller()
    body["account"] = {"bankCode": code, "accountNumber": "110123456789", "holderName": "김사장"}
    return body


@pytest.mark.parametrize("code", ["004", "081", "088", "020", "011", "003", "090", "089", "092", "261"])
def test_sellers_are_registered_with_standard_three_digit_codes(toss: TossClient, code: str) -> None:
    status, envelope, _ = toss.v2_post("/v2/sellers", seller_with_bank(code))
    assert status == 200, envelope
    assert envelope["entityBody"]["account"]["bankCode"] == code


@pytest.mark.parametrize(
    "code",
    [
        "005",  # the brief's 하나 "05" zero-padded: the old 외환은행, not a bank of the table
        "006",  # Toss's KB code zero-padded: the standard KB code is 004
        "88",  # Toss's 2-digit code for 신한
        "04",  # the brief's KB code
        "999",
        "신한은행",
    ],
)
def test_a_seller_bank_code_outside_the_standard_table_is_refused(toss: TossClient, code: str) -> None:
    status, envelope, _ = toss.v2_post("/v2/sellers", seller_with_bank(code))
    assert (status, envelope["error"]["code"]) == (400, "INVALID_BANK")
    assert envelope["entityBody"] is None
    assert toss.stats()["sellers"] == 0


def test_the_seller_code_table_and_refusal_are_settings(make_sandbox: Callable[..., Sandbox]) -> None:
    toss = TossClient(make_sandbox(seller_bank_code_table="toss", seller_invalid_bank_code="SOME_BANK_CODE").url)
    assert toss.v2_post("/v2/sellers", seller_with_bank("81"))[0] == 200
    status, envelope, _ = toss.v2_post("/v2/sellers", seller_with_bank("081"))
    assert (status, envelope["error"]["code"]) == (400, "SOME_BANK_CODE")


def test_the_tables_map_each_bank_to_one_code_of_each_kind() -> None:
    assert len(BY_TOSS_CODE) == len(BY_STANDARD_CODE) == len(BANKS)
    assert all(len(b.standard) == 3 and b.standard.isdigit() for b in BANKS)
    # The pairs our Toss notes state; the rest of the standard codes are marked inferred.
    stated = {
        "KB국민은행": ("06", "004"),
        "하나은행": ("81", "081"),
        "신한은행": ("88", "088"),
        "토스뱅크": ("92", "092"),
    }
    for bank in BANKS:
        if bank.name in stated:
            assert (bank.toss, bank.standard) == stated[bank.name]
            assert not bank.inferred
    assert {b.source for b in BANKS} == {"toss", "listed", "inferred"}


def test_lookups() -> None:
    kb = BY_TOSS_CODE["06"]
    assert refund_bank("06") is refund_bank("국민") is refund_bank("KB국민은행") is kb
    assert refund_bank("004") is None and refund_bank(6) is None
    assert seller_bank("004") is kb and seller_bank("06") is None
    assert seller_bank("06", table="toss") is kb and seller_bank("004", table="toss") is None
