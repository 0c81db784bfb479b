"""The payer's refund account for a deposited virtual-account (가상계좌) payment.

Toss refunds a card to the card, but a virtual account's deposit only to a bank account the merchant names:
`refundReceiveAccount {bank, accountNumber, holderName}` is mandatory on the cancel of a deposited virtual-account
payment (docs/toss-behaviours.md, "Virtual accounts"). Only the payer can give it, on the cancel route:

* their own cancel of such a payment carries it (422 REFUND_ACCOUNT_REQUIRED without one; 422
  REFUND_ACCOUNT_NOT_NEEDED for a payment that is not a deposited virtual account);
* a refund the service owes them (the owner cancelled the request, it expired, they were removed, they deposited
  after it closed) waits in `needs_account` until they give it, and then goes to Toss as a new attempt.

The account is sealed at rest (escrow.crypto; context `refund_accounts` / `account` / paymentKey), kept only until
the refund that needs it is done or Toss refuses it, shown masked (bank and last four digits), and never logged:
the number and the holder's name exist in clear only in the request body and in the call to Toss. Only the refund
paths (`for_refund`) open it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from escrow import banks, crypto, db
from escrow.errors import UpstreamUnavailable
from escrow.repositories import refund_accounts as accounts_repo
from escrow.states import ChargeStatus

if TYPE_CHECKING:
    from escrow.models import RefundReceiveAccountBody

# Toss's `method` of a virtual-account payment (Korean in answers since API 2022-06-08; the English constant kept for
# older answers).
VIRTUAL_ACCOUNT_METHODS = frozenset({"가상계좌", "VIRTUAL_ACCOUNT"})
# Toss refused the refund account we sent (or wanted one we did not send): another account is needed, from the payer.
# INVALID_REFUND_ACCOUNT_INFO is also the sandbox's (UNCONFIRMED) answer to a missing account.
ACCOUNT_CODES = frozenset(
    {
        "INVALID_REFUND_ACCOUNT_INFO",
        "INVALID_REFUND_ACCOUNT_NUMBER",
        "INVALID_BANK",
        "FORBIDDEN_BANK_REFUND_REQUEST",
    }
)


@dataclass(frozen=True)
class RefundAccount:
    """A validated account, sealed for one charge's row. The clear values are not part of its repr."""

    bank: banks.Bank
    last4: str
    sealed: crypto.Sealed = field(repr=False)


def is_virtual_account(charge: dict[str, Any]) -> bool:
    return str(charge.get("toss_method") or "") in VIRTUAL_ACCOUNT_METHODS


def needs_account(charge: dict[str, Any]) -> bool:
    """A refund of this charge needs the payer's account: a virtual account whose deposit we hold."""
    return is_virtual_account(charge) and charge["status"] == ChargeStatus.HELD


def _context(payment_key: str) -> crypto.EncryptionContext:
    return crypto.encryption_context("refund_accounts", "account", payment_key)


def seal(body: RefundReceiveAccountBody, payment_key: str) -> RefundAccount:
    """Resolve the bank (422 UNKNOWN_BANK) and seal the number and holder for this charge, before anything is
    written: a key service that cannot answer fails the cancel with nothing done."""
    bank = banks.resolve(body.bank, field="refundReceiveAccount.bank")
    secret = json.dumps({"n": body.accountNumber, "h": body.holderName}, ensure_ascii=False, separators=(",", ":"))
    try:
        sealed = crypto.seal(secret, _context(payment_key))
    except crypto.AccountCryptoError as exc:
        raise UpstreamUnavailable(
            "the refund account could not be encrypted now; nothing was refunded, try again",
            code="ENCRYPTION_UNAVAILABLE",
        ) from exc
    return RefundAccount(bank=bank, last4=crypto.last4(body.accountNumber), sealed=sealed)


def remember(tx: db.Tx, charge: dict[str, Any], account: RefundAccount, *, given_by: str) -> None:
    """Keep the charge's refund account (replacing an earlier one), in the caller's transaction."""
    accounts_repo.save(
        tx,
        payment_key=charge["payment_key"],
        payment_id=int(charge["payment_id"]),
        bank_code=account.bank.toss,
        account=account.sealed,
        last4=account.last4,
        given_by=given_by,
    )


def on_file(tx: db.Tx, payment_key: str) -> bool:
    return accounts_repo.get(tx, payment_key) is not None


def forget(tx: db.Tx, payment_key: str) -> None:
    accounts_repo.forget(tx, payment_key)


def for_refund(payment_key: str) -> dict[str, str] | None:
    """Toss's `refundReceiveAccount` for this charge, opened (None: no account on file). Refund paths only."""
    with db.reader() as tx:
        row = accounts_repo.get(tx, payment_key)
    if row is None:
        return None
    sealed = crypto.Sealed(bytes(row["account_ciphertext"]), bytes(row["account_data_key"]))
    try:
        opened = json.loads(crypto.open_sealed(sealed, _context(payment_key)))
    except crypto.AccountCryptoError as exc:
        raise UpstreamUnavailable(
            "the refund account could not be decrypted now; nothing was refunded, the refund is tried again",
            code="ENCRYPTION_UNAVAILABLE",
        ) from exc
    return {"bank": str(row["bank_code"]), "accountNumber": str(opened["n"]), "holderName": str(opened["h"])}


def masked(account: RefundAccount) -> dict[str, Any]:
    """How an answer shows the account: the bank and the number's last four digits, never the holder."""
    return {"bank": account.bank.public(), "account_number_masked": "********" + account.last4}
