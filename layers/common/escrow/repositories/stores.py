"""Stores (`stores`) and their payout accounts: a seller at Toss payouts v2, registered by the sellers job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from escrow.db import Row, Tx
from escrow.repositories._sql import marks
from escrow.states import SellerRegistration, check_seller_registration

if TYPE_CHECKING:
    from escrow.crypto import Sealed

# Everything the registration answer and the sellers job need. The account number is stored sealed (escrow.crypto)
# with its last four digits in clear; `account_number` (plaintext) is only ever a legacy row's, until the migration
# step seals it.
_SELLER_COLUMNS = (
    "store_id, owner_id, name, bank_code, account_number, account_number_ciphertext, account_number_data_key, "
    "account_number_last4, holder_name, business_type, email, phone, company_name, representative_name, "
    "business_registration_number, seller_seq, ref_seller_id, toss_seller_id, seller_status, seller_registration, "
    "seller_request_hash, seller_attempts, seller_refusals, seller_lease_until, seller_next_attempt_at, "
    "seller_error_code, seller_error_message, registered_by, updated_at"
)


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
    return tx.one(f"SELECT {_SELLER_COLUMNS} FROM stores WHERE store_id = %s FOR UPDATE", (store_id,))


def seller_view(tx: Tx, store_id: str) -> Row | None:
    return tx.one(f"SELECT {_SELLER_COLUMNS} FROM stores WHERE store_id = %s", (store_id,))


@dataclass(frozen=True)
class Registration:
    """What an admin asked to register for a store (the bank as its 3-digit standard code)."""

    owner_id: str
    name: str | None
    bank_code: str
    account: Sealed  # the account number, sealed for this store's row
    account_last4: str
    holder_name: str
    business_type: str
    email: str
    phone: str
    company_name: str | None
    representative_name: str | None
    business_registration_number: str | None
    content_hash: str
    registered_by: str


def record_registration(tx: Tx, store: Row, registration: Registration, *, ref_seller_id: str) -> None:
    """A locked store's registration to send (pending): its content, replacing what was there, and a cleared error.
    `ref_seller_id` is written once (the unique column refuses another store's). The account number is written
    sealed; the plaintext column is emptied."""
    check_seller_registration(store["seller_registration"], SellerRegistration.PENDING)
    tx.execute(
        "UPDATE stores SET owner_id = %s, name = COALESCE(%s, name), bank_code = %s, account_number = NULL, "
        "account_number_ciphertext = %s, account_number_data_key = %s, account_number_last4 = %s, "
        "holder_name = %s, business_type = %s, email = %s, phone = %s, company_name = %s, representative_name = %s, "
        "business_registration_number = %s, ref_seller_id = COALESCE(ref_seller_id, %s), seller_registration = %s, "
        "seller_request_hash = %s, seller_refusals = 0, seller_next_attempt_at = NULL, seller_lease_until = NULL, "
        "seller_error_code = NULL, seller_error_message = NULL, registered_by = %s WHERE store_id = %s",
        (
            registration.owner_id,
            registration.name,
            registration.bank_code,
            registration.account.ciphertext,
            registration.account.data_key,
            registration.account_last4,
            registration.holder_name,
            registration.business_type,
            registration.email,
            registration.phone,
            registration.company_name,
            registration.representative_name,
            registration.business_registration_number,
            ref_seller_id,
            SellerRegistration.PENDING,
            registration.content_hash,
            registration.registered_by,
            store["store_id"],
        ),
    )


# --- the sellers job -------------------------------------------------------------------------------------------


def lock_due_registrations(tx: Tx, now: datetime | None, limit: int) -> list[Row]:
    """Registrations to send: pending ones whose back-off is over, and those sent with no answer whose lease ran out
    (sent again with the same key); SKIP LOCKED, so two runs take different stores."""
    return tx.all(
        f"SELECT {_SELLER_COLUMNS} FROM stores WHERE "
        "(seller_registration = %s AND (seller_next_attempt_at IS NULL OR seller_next_attempt_at <= %s)) "
        "OR (seller_registration = %s AND (seller_lease_until IS NULL OR seller_lease_until < %s)) "
        "ORDER BY seller_seq LIMIT %s FOR UPDATE SKIP LOCKED",
        (SellerRegistration.PENDING, now, SellerRegistration.SENDING, now, limit),
    )


def mark_sending(tx: Tx, stores: Sequence[Row], *, lease_until: datetime | None) -> None:
    """Claim locked registrations for this run: a pending one starts a new attempt (a new key); one sent with no
    answer keeps its attempt (the same key)."""
    for store in stores:
        check_seller_registration(store["seller_registration"], SellerRegistration.SENDING)
    fresh = [s["store_id"] for s in stores if s["seller_registration"] == SellerRegistration.PENDING]
    again = [s["store_id"] for s in stores if s["seller_registration"] == SellerRegistration.SENDING]
    if fresh:
        tx.execute(
            "UPDATE stores SET seller_registration = %s, seller_attempts = seller_attempts + 1, "
            f"seller_lease_until = %s WHERE store_id IN ({marks(fresh)})",
            [SellerRegistration.SENDING, lease_until, *fresh],
        )
    if again:
        tx.execute(
            f"UPDATE stores SET seller_lease_until = %s WHERE store_id IN ({marks(again)})", [lease_until, *again]
        )


def record_registered(tx: Tx, store_id: str, *, content_hash: str, seller_id: str, seller_status: str | None) -> int:
    """Toss holds the seller with the content we sent: written only if the store still waits for that answer."""
    return tx.execute(
        "UPDATE stores SET seller_registration = %s, toss_seller_id = %s, seller_status = COALESCE(%s, seller_status), "
        "seller_refusals = 0, seller_next_attempt_at = NULL, seller_lease_until = NULL, seller_error_code = NULL, "
        "seller_error_message = NULL WHERE store_id = %s AND seller_registration = %s AND seller_request_hash = %s",
        (
            SellerRegistration.REGISTERED,
            seller_id,
            seller_status,
            store_id,
            SellerRegistration.SENDING,
            content_hash,
        ),
    )


def record_refused(
    tx: Tx,
    store_id: str,
    *,
    new: SellerRegistration,
    code: str,
    message: str,
    next_attempt_at: datetime | None,
) -> int:
    """Toss refused the registration (refused: the admin corrects it) or answered with an error it may overcome
    (pending: a new attempt, a new key, after the back-off)."""
    check_seller_registration(SellerRegistration.SENDING, new)
    return tx.execute(
        "UPDATE stores SET seller_registration = %s, seller_error_code = %s, seller_error_message = %s, "
        "seller_refusals = seller_refusals + 1, seller_next_attempt_at = %s, seller_lease_until = NULL "
        "WHERE store_id = %s AND seller_registration = %s",
        (new, code, message[:500], next_attempt_at, store_id, SellerRegistration.SENDING),
    )


def update_owner(tx: Tx, store_id: str, *, owner_id: str, name: str | None) -> None:
    """The store's owner and name (not sent to Toss)."""
    tx.execute(
        "UPDATE stores SET owner_id = %s, name = COALESCE(%s, name) WHERE store_id = %s", (owner_id, name, store_id)
    )


def adopt_by_ref(tx: Tx, ref_seller_id: str, *, seller_id: str, seller_status: str | None) -> int:
    """A seller Toss holds under our refSellerId whose registration answer we never read (seller.changed, or a
    listing after DUPLICATED_REF_SELLER_ID): the store being registered gets it."""
    check_seller_registration(SellerRegistration.SENDING, SellerRegistration.REGISTERED)
    return tx.execute(
        "UPDATE stores SET seller_registration = %s, toss_seller_id = %s, seller_status = %s, seller_refusals = 0, "
        "seller_next_attempt_at = NULL, seller_lease_until = NULL, seller_error_code = NULL, "
        "seller_error_message = NULL WHERE ref_seller_id = %s AND toss_seller_id IS NULL AND seller_registration = %s",
        (SellerRegistration.REGISTERED, seller_id, seller_status, ref_seller_id, SellerRegistration.SENDING),
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
