"""Stores (`stores`) and their payout accounts (a seller at Toss payouts v2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from escrow.db import Row, Tx

if TYPE_CHECKING:
    from escrow.crypto import Sealed


def find(tx: Tx, store_id: str) -> Row | None:
    return tx.one("SELECT store_id, owner_id FROM stores WHERE store_id = %s", (store_id,))


def insert_if_absent(tx: Tx, *, store_id: str, owner_id: str, name: str | None) -> None:
    tx.execute(
        "INSERT INTO stores (store_id, owner_id, name) VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE store_id = store_id",
        (store_id, owner_id, name),
    )


def lock(tx: Tx, store_id: str) -> Row | None:
    """Lock an existing store's row. Insert first (insert_if_absent): locking a row that does not exist yet takes
    a gap lock, and two registrations of different new stores then deadlock on each other's INSERT."""
    return tx.one("SELECT store_id, owner_id, toss_seller_id FROM stores WHERE store_id = %s FOR UPDATE", (store_id,))


def record_seller(
    tx: Tx,
    store_id: str,
    *,
    owner_id: str,
    name: str | None,
    bank_code: str,
    account: Sealed,
    account_last4: str,
    holder_name: str,
    business_type: str,
    seller_id: str | None,
    seller_status: str | None,
    registered_by: str,
) -> None:
    """The payout account Toss registered for the store (a name of None keeps the store's name). The account number
    is stored sealed (escrow.crypto, context stores/account_number/<store_id>) with its last four digits; the
    plaintext column is emptied."""
    tx.execute(
        "UPDATE stores SET owner_id = %s, name = COALESCE(%s, name), bank_code = %s, account_number = NULL, "
        "account_number_ciphertext = %s, account_number_data_key = %s, account_number_last4 = %s, "
        "holder_name = %s, business_type = %s, toss_seller_id = %s, seller_status = %s, registered_by = %s "
        "WHERE store_id = %s",
        (
            owner_id,
            name,
            bank_code,
            account.ciphertext,
            account.data_key,
            account_last4,
            holder_name,
            business_type,
            seller_id,
            seller_status,
            registered_by,
            store_id,
        ),
    )


def set_seller_status(tx: Tx, seller_id: str | None, seller_status: str | None) -> int:
    """Toss's word on a seller (its own vocabulary, stored as Toss spells it). Returns the rows changed."""
    return tx.execute("UPDATE stores SET seller_status = %s WHERE toss_seller_id = %s", (seller_status, seller_id))


def sealed_account(tx: Tx, store_id: str) -> tuple[Sealed, str] | None:
    """The store's sealed account number and its last four digits (None when no account is stored sealed)."""
    from escrow.crypto import Sealed

    row = tx.one(
        "SELECT account_number_ciphertext, account_number_data_key, account_number_last4 FROM stores "
        "WHERE store_id = %s",
        (store_id,),
    )
    if not row or row["account_number_ciphertext"] is None:
        return None
    sealed = Sealed(bytes(row["account_number_ciphertext"]), bytes(row["account_number_data_key"]))
    return sealed, str(row["account_number_last4"])
