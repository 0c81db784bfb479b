"""Store payout accounts (admin only): registered with Toss payouts v2 as a seller.

Account numbers are never logged and never returned whole. At rest they are sealed (escrow.crypto: a KMS data key
per value, AES-GCM, bound to the store's row); registration sends the number to Toss from the request body, so only
the payout path opens a stored one (payout_account_number), when a seller's account must be sent to Toss again.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from escrow import crypto, db
from escrow.errors import Conflict, Forbidden, UpstreamUnavailable, ValidationFailed
from escrow.observability import logger
from escrow.repositories import stores as stores_repo
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.models import RegisterStoreBody


def mask_account(number: str | None) -> str | None:
    if not number:
        return None
    return "*" * max(len(number) - 4, 0) + number[-4:]


def payout_bank_code(code: str) -> str:
    """The brief's two-digit codes as the three-digit codes the payouts v2 API shows (docs/toss-behaviours.md,
    "Bank codes": `"092"`, `"004"` in Toss's own examples). UNCONFIRMED by Toss; verify in the test environment."""
    return code.zfill(3)


def ref_seller_id(store_id: str) -> str:
    """Toss's refSellerId is short (reportedly up to 20 characters) and can never be reused."""
    if len(store_id) <= 20:
        return store_id
    return "st" + hashlib.sha256(store_id.encode()).hexdigest()[:18]


def _seller_request(body: RegisterStoreBody) -> dict[str, Any]:
    seller: dict[str, Any] = {
        "refSellerId": ref_seller_id(body.store_id),
        "businessType": body.business_type,
        "account": {
            "bankCode": payout_bank_code(body.bank_code),
            "accountNumber": body.account_number,
            "holderName": body.holder_name,
        },
    }
    if body.business_type == "INDIVIDUAL":
        seller["individual"] = {"name": body.holder_name, "email": body.email, "phone": body.phone}
    else:
        if not (body.company_name and body.representative_name and body.business_registration_number):
            raise ValidationFailed(
                "a business needs company_name, representative_name and business_registration_number",
                code="COMPANY_DETAILS_REQUIRED",
            )
        seller["company"] = {
            "name": body.company_name,
            "representativeName": body.representative_name,
            "businessRegistrationNumber": body.business_registration_number,
            "email": body.email,
            "phone": body.phone,
        }
    return seller


def register_store(principal: Principal, body: RegisterStoreBody, *, toss: TossPort | None = None) -> dict[str, Any]:
    if not principal.is_admin:
        raise Forbidden("only an administrator can register a store's payout account", code="ADMIN_ONLY")
    seller_request = _seller_request(body)
    # Sealed before anything else: a key service that cannot answer fails the registration before Toss is asked.
    try:
        account = crypto.seal(body.account_number, _account_context(body.store_id))
    except crypto.AccountCryptoError as exc:
        raise UpstreamUnavailable(
            "the account number could not be encrypted now; nothing was registered, try again",
            code="ENCRYPTION_UNAVAILABLE",
        ) from exc
    with db.transaction() as tx:
        # Insert first (a no-op for a known store), then lock the row: locking a row that does not exist yet takes
        # a gap lock, and two registrations of different new stores then deadlock on each other's INSERT.
        stores_repo.insert_if_absent(tx, store_id=body.store_id, owner_id=body.owner_id, name=body.name)
        existing = stores_repo.lock(tx, body.store_id)
        if existing and existing["toss_seller_id"]:
            raise Conflict("the store already has a registered payout account", code="STORE_ALREADY_REGISTERED")
    toss = toss or get_toss_client()
    try:
        seller = toss.register_seller(seller_request, idempotency_key=f"seller-{ref_seller_id(body.store_id)}")
    except TossApiError as exc:
        if exc.retryable:
            raise UpstreamUnavailable("Toss could not register the seller now; try again", toss_code=exc.code) from exc
        raise Conflict(f"Toss refused the seller: {exc.message}", code="SELLER_REFUSED", toss_code=exc.code) from exc
    except TossError as exc:
        raise UpstreamUnavailable("Toss did not answer; try again (the same request is safe to repeat)") from exc
    with db.transaction() as tx:
        stores_repo.record_seller(
            tx,
            body.store_id,
            owner_id=body.owner_id,
            name=body.name,
            bank_code=body.bank_code,
            account=account,
            account_last4=crypto.last4(body.account_number),
            holder_name=body.holder_name,
            business_type=body.business_type,
            seller_id=seller.get("id"),
            seller_status=seller.get("status"),
            registered_by=principal.user_id,
        )
    logger.info(
        "store registered for payouts", extra={"store_id": body.store_id, "seller_status": seller.get("status")}
    )
    return {
        "store_id": body.store_id,
        "owner_id": body.owner_id,
        "seller_id": seller.get("id"),
        "seller_status": seller.get("status"),
        "bank_code": body.bank_code,
        "account_number_masked": mask_account(body.account_number),
        "holder_name": body.holder_name,
    }


def _account_context(store_id: str) -> crypto.EncryptionContext:
    return crypto.encryption_context("stores", "account_number", store_id)


def payout_account_number(store_id: str) -> str | None:
    """The store's payout account number in clear, for the payout path only (re-sending a seller's account to
    Toss). No other caller: answers show ``account_number_masked``; the template grants kms:Decrypt on the
    stores context to ReleaseFunction alone."""
    with db.reader() as tx:
        stored = stores_repo.sealed_account(tx, store_id)
    if stored is None:
        return None
    sealed, _last4 = stored
    return crypto.open_sealed(sealed, _account_context(store_id))


def apply_seller_status(seller: dict[str, Any]) -> str:
    with db.transaction() as tx:
        changed = stores_repo.set_seller_status(tx, seller.get("id"), seller.get("status"))
    return "updated" if changed else "unknown_seller"
