"""The payer's refund account for a deposited virtual account: what the cancel body accepts, what Toss is sent, and
that the number and the holder never show (repr, validation messages, the sealed value)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from escrow import banks, crypto
from escrow.crypto import LocalKeyProvider
from escrow.models import CancelBody, RefundReceiveAccountBody
from escrow.services import refund_accounts
from escrow.states import CANCEL, CANCEL_IN_FLIGHT, CANCEL_OPEN, CancelStatus

GOOD = {"bank": "신한", "accountNumber": "110-123-456789", "holderName": "김환불"}


@pytest.mark.parametrize(
    ("bank", "toss"),
    [("신한", "88"), ("신한은행", "88"), ("88", "88"), ("088", "88"), ("04", "06"), ("KB국민은행", "06"), ("05", "81")],
)
def test_the_bank_is_resolved_to_tosss_refund_code(bank: str, toss: str) -> None:
    body = RefundReceiveAccountBody.model_validate({**GOOD, "bank": bank})
    assert banks.resolve(body.bank).toss == toss


def test_the_number_is_kept_as_digits_and_never_shown() -> None:
    body = RefundReceiveAccountBody.model_validate(GOOD)
    assert body.accountNumber == "110123456789"
    cancel = CancelBody.model_validate({"paymentKey": "pk_1", "cancelReason": "환불", "refundReceiveAccount": GOOD})
    for text in (repr(body), str(body), repr(cancel), str(cancel)):
        assert "110123456789" not in text and "456789" not in text and "김환불" not in text


@pytest.mark.parametrize(
    "number",
    ["110-abc-456789", "12345", "1" * 21, "-110123456789", "110123456789-", "١٢٣٤٥٦٧٨", "110 123 456789", ""],
)
def test_a_bad_number_is_refused_without_repeating_it(number: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RefundReceiveAccountBody.model_validate({**GOOD, "accountNumber": number})
    messages = " ".join(str(e["msg"]) for e in caught.value.errors())
    assert not number or number not in messages


@pytest.mark.parametrize("holder", ["", "   ", "가" * 61, "a\x00b"])
def test_a_bad_holder_is_refused(holder: str) -> None:
    with pytest.raises(ValidationError):
        RefundReceiveAccountBody.model_validate({**GOOD, "holderName": holder})


def test_an_unknown_bank_is_refused_before_anything_is_sealed() -> None:
    body = RefundReceiveAccountBody.model_validate({**GOOD, "bank": "없는은행"})
    with pytest.raises(banks.UnknownBank) as caught:
        refund_accounts.seal(body, "pk_1")
    assert caught.value.status == 422 and caught.value.code == "UNKNOWN_BANK"


def test_the_account_is_sealed_for_its_own_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LocalKeyProvider()
    monkeypatch.setattr(crypto, "key_provider", lambda: provider)
    body = RefundReceiveAccountBody.model_validate(GOOD)
    account = refund_accounts.seal(body, "pk_1")
    assert account.bank.toss == "88" and account.last4 == "6789"
    assert b"110123456789" not in account.sealed.ciphertext and "110123456789" not in repr(account)
    assert refund_accounts.masked(account) == {"bank": account.bank.public(), "account_number_masked": "********6789"}
    opened = crypto.open_sealed(account.sealed, crypto.encryption_context("refund_accounts", "account", "pk_1"))
    assert "110123456789" in opened and "김환불" in opened
    with pytest.raises(crypto.AccountCryptoError):  # another charge's row does not open it
        crypto.open_sealed(account.sealed, crypto.encryption_context("refund_accounts", "account", "pk_2"))


def test_only_a_deposited_virtual_account_needs_one() -> None:
    assert refund_accounts.needs_account({"toss_method": "가상계좌", "status": "held"})
    assert not refund_accounts.needs_account({"toss_method": "가상계좌", "status": "waiting_for_deposit"})
    assert not refund_accounts.needs_account({"toss_method": "카드", "status": "held"})
    assert not refund_accounts.needs_account({"toss_method": None, "status": "held"})


def test_a_refund_waiting_for_an_account_is_open_never_failed() -> None:
    assert CancelStatus.NEEDS_ACCOUNT in CANCEL_OPEN and CancelStatus.NEEDS_ACCOUNT not in CANCEL_IN_FLIGHT
    for current in CANCEL_IN_FLIGHT:
        assert CANCEL.allows(current, CancelStatus.NEEDS_ACCOUNT)
    assert CANCEL.allows(CancelStatus.NEEDS_ACCOUNT, CancelStatus.REQUESTED)  # the payer gave an account
    assert CANCEL.allows(CancelStatus.NEEDS_ACCOUNT, CancelStatus.DONE)  # Toss's record wins
    assert not CANCEL.allows(CancelStatus.NEEDS_ACCOUNT, CancelStatus.FAILED)
