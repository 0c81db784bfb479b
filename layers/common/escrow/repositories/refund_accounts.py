"""Refund accounts (`refund_accounts`): the payer's bank account a deposited virtual-account charge is refunded to,
sealed (escrow.crypto). One row per charge (paymentKey); written by the payer's cancel, read by the refund paths
only, and deleted once the refund that needed it is done or Toss refuses it."""

from __future__ import annotations

from collections.abc import Sequence

from escrow.crypto import Sealed
from escrow.db import Row, Tx
from escrow.repositories._sql import marks

_COLUMNS = (
    "payment_key, payment_id, bank_code, account_ciphertext, account_data_key, account_number_last4, given_by, "
    "updated_at"
)


def save(
    tx: Tx, *, payment_key: str, payment_id: int, bank_code: str, account: Sealed, last4: str, given_by: str
) -> None:
    """The charge's refund account, replacing one given before (the caller holds the share's lock)."""
    tx.execute(
        "INSERT INTO refund_accounts (payment_key, payment_id, bank_code, account_ciphertext, account_data_key, "
        "account_number_last4, given_by) VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
        "bank_code = VALUES(bank_code), account_ciphertext = VALUES(account_ciphertext), "
        "account_data_key = VALUES(account_data_key), account_number_last4 = VALUES(account_number_last4), "
        "given_by = VALUES(given_by)",
        (payment_key, payment_id, bank_code, account.ciphertext, account.data_key, last4, given_by),
    )


def get(tx: Tx, payment_key: str) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM refund_accounts WHERE payment_key = %s", (payment_key,))


def forget(tx: Tx, payment_key: str) -> int:
    return tx.execute("DELETE FROM refund_accounts WHERE payment_key = %s", (payment_key,))


def forget_for_payments(tx: Tx, payment_ids: Sequence[int]) -> int:
    """The refund accounts of these shares (released: nothing of theirs is refunded any more), one statement."""
    if not payment_ids:
        return 0
    return tx.execute(f"DELETE FROM refund_accounts WHERE payment_id IN ({marks(payment_ids)})", list(payment_ids))
