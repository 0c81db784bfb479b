"""Banks by bank, never by padding: what our API accepts and the code each Toss endpoint gets (escrow.banks)."""

from __future__ import annotations

import pytest

from escrow import banks

BRIEF = {  # the brief's bank list (name, code), exactly as the chat app sends it
    "KB국민은행": "04",
    "하나은행": "05",
    "신한은행": "88",
    "우리은행": "20",
    "NH농협은행": "11",
    "IBK기업은행": "03",
    "SC제일은행": "23",
    "씨티은행": "27",
    "부산은행": "32",
    "대구은행": "31",
    "광주은행": "34",
    "제주은행": "35",
    "경남은행": "39",
    "토스뱅크": "92",
    "케이뱅크": "89",
    "카카오뱅크": "90",
    "새마을금고": "45",
    "수협은행": "07",
    "저축은행중앙회": "50",
    "우체국예금보험": "71",
    "산림조합": "64",
}


@pytest.mark.parametrize(("name", "code"), BRIEF.items())
def test_every_bank_of_the_brief_is_known_by_its_code_and_by_its_name(name, code):
    assert banks.find(code) is banks.find(name) is not None


@pytest.mark.parametrize(
    ("given", "payout", "refund"),
    [
        ("04", "004", "06"),  # the brief's KB
        ("06", "004", "06"),  # Toss's KB
        ("004", "004", "06"),  # the standard code
        ("KB국민은행", "004", "06"),
        ("국민은행", "004", "06"),
        ("KOOKMIN", "004", "06"),
        ("05", "081", "81"),  # the brief's 하나: 외환은행's old code, never "005"
        ("81", "081", "81"),
        ("하나은행", "081", "81"),
        ("88", "088", "88"),
        ("신한", "088", "88"),
        ("shinhan", "088", "88"),
        ("03", "003", "03"),
        ("02", "002", "02"),  # KDB산업은행: Toss lists it, the brief does not
        ("카카오 뱅크", "090", "90"),  # spaces do not matter
    ],
)
def test_payouts_get_the_standard_code_and_refund_accounts_get_tosss_code(given, payout, refund):
    assert banks.payout_code(given) == payout
    assert banks.refund_code(given) == refund


@pytest.mark.parametrize("given", ["005", "99", "", "   ", "00", "4", "은행", "x" * 41, "S8"])
def test_an_unknown_bank_is_a_422_with_its_own_code(given):
    with pytest.raises(banks.UnknownBank) as raised:
        banks.resolve(given)
    assert (raised.value.status, raised.value.code) == (422, "UNKNOWN_BANK")


def test_no_code_or_name_means_two_banks():
    seen: dict[str, str] = {}
    for bank in banks.BANKS:
        for code in (bank.standard, bank.toss):
            assert seen.setdefault(code, bank.name) == bank.name
    assert len({b.standard for b in banks.BANKS}) == len(banks.BANKS)
