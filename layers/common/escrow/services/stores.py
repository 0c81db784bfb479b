"""Store payout accounts (admin only): a seller at Toss payouts v2, registered by the schedule.

`POST /api/v1/admin/stores` checks the registration and records it in one transaction, and answers at once with the
seller `pending` (a Toss seller call may take up to 60 s: it never runs inside the 30 s API). The `sellers` job
(`register_due_sellers`, in every scheduled run and alone as `jobs: ["sellers"]`) sends it to Toss:

* refSellerId is `{TOSS_ID_PREFIX}-st{seller_seq}`: a database sequence, written once in a unique column, so no two
  stores (and no two stacks with their own prefixes) can ever name the same seller, whatever their store ids.
* The Idempotency-Key covers the content (a hash of what is sent) and the attempt: a corrected registration, or a new
  attempt after Toss answered with an error, has a new key; only a call with no answer is sent again with its key.
* Toss's refusal is a visible state (`registration_status: refused` with Toss's code and message); the admin
  corrects it by registering again. An error Toss may overcome (5xx, a busy Toss) is tried again after a back-off.
* A registered store registered again with another account sends Toss an update of its seller
  (`POST /v2/sellers/{sellerId}`): that is how a store's account is fixed before an operator retries a failed payout.

Account numbers are never logged and never answered whole. At rest they are sealed (escrow.crypto: a KMS data key
per value, AES-GCM, bound to the store's row) with their last four digits in clear for masked answers; the sellers
job (ReleaseFunction, the only function allowed to decrypt) opens one to send it to Toss. E-mail addresses and phone
numbers (the seller's contact for Toss's KYC) are stored for Toss and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escrow import banks, crypto, db
from escrow.clock import db_time, iso, utcnow
from escrow.config import toss_keys
from escrow.errors import Conflict, Forbidden, NotFound, UpstreamUnavailable, ValidationFailed
from escrow.observability import count, logger
from escrow.repositories import settlements as settlements_repo
from escrow.repositories import stores as stores_repo
from escrow.services import isolation
from escrow.services.payouts import retry_after
from escrow.states import PAYABLE_SELLER_STATUSES, SellerRegistration
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.ids import toss_name
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.models import RegisterStoreBody

SELLER_LEASE = timedelta(minutes=3)  # longer than one seller call may take (TOSS_PAYOUT_READ_TIMEOUT, 60 s)
SELLERS_PER_RUN = 50
MAX_REF_SELLER_ID = 20  # [3P] refSellerId is 1-20 characters (UNCONFIRMED; the sandbox's setting)


def mask_account(last4: str | None) -> str | None:
    """A stored account number as answers show it: its last four digits only (the length is not kept either)."""
    if not last4:
        return None
    return "********" + last4[-4:]


def _account_context(store_id: str) -> crypto.EncryptionContext:
    return crypto.encryption_context("stores", "account_number", store_id)


def _open_account(store: Mapping[str, Any]) -> str:
    """The store's account number in clear, to send it to Toss (the sellers job only)."""
    if store["account_number_ciphertext"] is None:
        return str(store["account_number"])  # a legacy row the migration step has not sealed yet
    sealed = crypto.Sealed(bytes(store["account_number_ciphertext"]), bytes(store["account_number_data_key"]))
    return crypto.open_sealed(sealed, _account_context(store["store_id"]))


def payout_account_number(store_id: str) -> str | None:
    """The store's payout account number in clear, for the payout path only (sending a seller's account to Toss).
    Answers show ``account_number_masked``; the template grants kms:Decrypt on the stores context to
    ReleaseFunction alone."""
    with db.reader() as tx:
        stored = stores_repo.sealed_account(tx, store_id)
    if stored is None:
        return None
    sealed, _last4 = stored
    return crypto.open_sealed(sealed, _account_context(store_id))


def ref_seller_id(seller_seq: int) -> str:
    """The store's refSellerId at Toss: unique by construction (a sequence), with the stack prefix."""
    ref = toss_name(f"st{seller_seq}")
    if len(ref) > MAX_REF_SELLER_ID:
        raise Conflict("this store's seller id would be too long for Toss", code="REF_SELLER_ID_TOO_LONG")
    return ref


# --- what is sent to Toss ----------------------------------------------------------------------------------------


def _content(store: Mapping[str, Any], account_number: str) -> dict[str, Any]:
    """The seller's content as Toss takes it (everything but refSellerId), from a store row or a registration."""
    bank = banks.resolve(store["bank_code"])
    content: dict[str, Any] = {
        "businessType": store["business_type"],
        "account": {
            "bankCode": bank.standard,  # payouts v2 take the 3-digit standard code (escrow.banks)
            "accountNumber": account_number,
            "holderName": store["holder_name"],
        },
    }
    if store["business_type"] == "INDIVIDUAL":
        content["individual"] = {"name": store["holder_name"], "email": store["email"], "phone": store["phone"]}
    else:
        content["company"] = {
            "name": store["company_name"],
            "representativeName": store["representative_name"],
            "businessRegistrationNumber": store["business_registration_number"],
            "email": store["email"],
            "phone": store["phone"],
        }
    return content


def content_hash(content: Mapping[str, Any]) -> str:
    """What tells one registration's content from another (stored, and part of the Idempotency-Key). Keyed with the
    Toss security key: a plain hash of a short account number and known fields would undo its sealing."""
    try:
        key = toss_keys().security_key.encode()
    except RuntimeError:  # no Toss keys configured: nothing can be sent to Toss either; the hash stays a hash
        key = b""
    message = json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def seller_idempotency_key(store: Mapping[str, Any], attempt: int) -> str:
    """One key per (store, attempt, content): a retry after no answer repeats it; anything else has another."""
    verb = "update" if store["toss_seller_id"] else "register"
    return toss_name(f"seller-{verb}-{store['seller_seq']}-{attempt}-{str(store['seller_request_hash'])[:16]}")


# --- the admin's registration ----------------------------------------------------------------------------------


def register_store(principal: Principal, body: RegisterStoreBody) -> tuple[int, dict[str, Any]]:
    """Record what to register with Toss for the store and answer at once: 202 with the registration `pending`
    (the sellers job sends it), or 200 when it asks for nothing new. All or nothing: one transaction."""
    if not principal.is_admin:
        raise Forbidden("only an administrator can register a store's payout account", code="ADMIN_ONLY")
    bank = banks.resolve(body.bank_code)
    if body.business_type != "INDIVIDUAL" and not (
        body.company_name and body.representative_name and body.business_registration_number
    ):
        raise ValidationFailed(
            "a business needs company_name, representative_name and business_registration_number",
            code="COMPANY_DETAILS_REQUIRED",
        )
    # Sealed before anything is written: a key service that cannot answer fails the registration with nothing done.
    try:
        account = crypto.seal(body.account_number, _account_context(body.store_id))
    except crypto.AccountCryptoError as exc:
        raise UpstreamUnavailable(
            "the account number could not be encrypted now; nothing was registered, try again",
            code="ENCRYPTION_UNAVAILABLE",
        ) from exc
    business = body.business_type != "INDIVIDUAL"
    fields: dict[str, Any] = {
        "bank_code": bank.standard,
        "holder_name": body.holder_name,
        "business_type": body.business_type,
        "email": body.email,
        "phone": body.phone,
        "company_name": body.company_name if business else None,
        "representative_name": body.representative_name if business else None,
        "business_registration_number": body.business_registration_number if business else None,
    }
    registration = stores_repo.Registration(
        owner_id=body.owner_id,
        name=body.name,
        account=account,
        account_last4=crypto.last4(body.account_number),
        content_hash=content_hash(_content(fields, body.account_number)),
        registered_by=principal.user_id,
        **fields,
    )
    with db.transaction() as tx:
        # Insert first (a no-op for a known store), then lock the row: locking a row that does not exist yet takes
        # a gap lock, and two registrations of different new stores then deadlock on each other's INSERT.
        stores_repo.insert_if_absent(tx, store_id=body.store_id, owner_id=body.owner_id, name=body.name)
        store = stores_repo.lock(tx, body.store_id)
        assert store is not None
        state = store["seller_registration"]
        if state == SellerRegistration.SENDING:
            raise Conflict(
                "the store's registration is being sent to Toss now; register again once it has an answer",
                code="SELLER_REGISTRATION_IN_PROGRESS",
            )
        if store["toss_seller_id"] and store["business_type"] not in (None, body.business_type):
            raise Conflict(
                "a registered seller's business type cannot change; register the business as another store",
                code="SELLER_BUSINESS_TYPE_FIXED",
            )
        unchanged = (
            state in (SellerRegistration.PENDING, SellerRegistration.REGISTERED)
            and store["seller_request_hash"] == registration.content_hash
        )
        if unchanged:
            stores_repo.update_owner(tx, body.store_id, owner_id=body.owner_id, name=body.name)
        else:
            ref = store["ref_seller_id"] or ref_seller_id(int(store["seller_seq"]))
            stores_repo.record_registration(tx, store, registration, ref_seller_id=ref)
        row = stores_repo.seller_view(tx, body.store_id)
    assert row is not None
    logger.info(
        "store registration recorded",
        extra={"store_id": body.store_id, "registration_status": row["seller_registration"], "unchanged": unchanged},
    )
    return (200 if unchanged and state == SellerRegistration.REGISTERED else 202), store_view(row)


def get_store(principal: Principal, store_id: str) -> dict[str, Any]:
    if not principal.is_admin:
        raise Forbidden("only an administrator can see a store's payout account", code="ADMIN_ONLY")
    with db.reader() as tx:
        row = stores_repo.seller_view(tx, store_id)
    if row is None:
        raise NotFound("no such store", code="STORE_NOT_FOUND")
    return store_view(row)


def store_view(row: Mapping[str, Any]) -> dict[str, Any]:
    bank = banks.find(row["bank_code"])
    return {
        "store_id": row["store_id"],
        "owner_id": row["owner_id"],
        "name": row["name"],
        "registration_status": row["seller_registration"],
        "ref_seller_id": row["ref_seller_id"],
        "seller_id": row["toss_seller_id"],
        "seller_status": row["seller_status"],
        "business_type": row["business_type"],
        "bank_code": bank.standard if bank else row["bank_code"],
        "bank_name": bank.name if bank else None,
        "account_number_masked": mask_account(row["account_number_last4"] or (row["account_number"] or "")[-4:]),
        "holder_name": row["holder_name"],
        "seller_attempts": row["seller_attempts"],
        "seller_error_code": row["seller_error_code"],
        "seller_error_message": row["seller_error_message"],
        "seller_next_attempt_at": iso(row["seller_next_attempt_at"]),
    }


# --- the sellers job -----------------------------------------------------------------------------------------------


def register_due_sellers(
    limit: int = SELLERS_PER_RUN,
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Send due registrations to Toss: pending ones (a new attempt) and those whose answer was lost (the same key)."""
    tally: Counter[str] = Counter()
    with db.transaction() as tx:
        locked = stores_repo.lock_due_registrations(tx, db_time(now()), limit)
        # A store a failure set aside waits for its time (services/isolation): it must not stop the others.
        waiting = isolation.waiting("sellers", "store", [s["store_id"] for s in locked], now()) if locked else set()
        due = [s for s in locked if s["store_id"] not in waiting]
        stores_repo.mark_sending(tx, due, lease_until=db_time(now() + SELLER_LEASE))
    if not due:
        return {"seller_calls": 0, "sellers_registered": 0, "sellers_refused": 0, "sellers_unanswered": 0}
    retried = isolation.set_aside_before("sellers", "store", [s["store_id"] for s in due])
    toss = toss or get_toss_client()
    for store in due:
        if deadline():
            break  # claimed, not sent: its lease runs out and the next run sends it (no answer yet, the same key)
        fresh = store["seller_registration"] == SellerRegistration.PENDING
        attempt = int(store["seller_attempts"]) + (1 if fresh else 0)
        try:
            _send(dict(store), attempt, toss, now, tally)
        except Exception as exc:
            if isolation.infrastructure(exc):
                raise
            # Set aside (counted, alarmed, tried again later); it stays `sending`, so it goes again with its key.
            isolation.set_aside("sellers", "store", store["store_id"], exc)
            continue
        isolation.cleared("sellers", "store", [store["store_id"]], retried)
    return {
        "seller_calls": tally["calls"],
        "sellers_registered": tally["registered"],
        "sellers_refused": tally["refused"],
        "sellers_unanswered": tally["unanswered"],
    }


def _send(
    store: dict[str, Any], attempt: int, toss: TossPort, now: Callable[[], datetime], tally: Counter[str]
) -> None:
    try:
        content = _content(store, _open_account(store))
    except banks.UnknownBank:  # a stored code no bank has (a row from before escrow.banks): the admin corrects it
        _refused(store, TossApiError(0, "UNKNOWN_BANK", "the store's bank code names no bank we know"), tally)
        return
    except crypto.AccountCryptoError as exc:
        # Nothing was sent: the key service could not open the number now (or the row was tampered with).
        _not_now(
            store, TossApiError(0, "ENCRYPTION_UNAVAILABLE", f"the account number did not open: {exc}"), now, tally
        )
        return
    key = seller_idempotency_key(store, attempt)
    tally["calls"] += 1
    try:
        if store["toss_seller_id"]:
            seller = toss.update_seller(store["toss_seller_id"], content, idempotency_key=key)
        else:
            seller = toss.register_seller(
                # metadata: which store it is for, so that a seller found by its refSellerId can be told ours.
                {"refSellerId": store["ref_seller_id"], **content, "metadata": {"storeId": store["store_id"]}},
                idempotency_key=key,
            )
    except TossApiError as exc:
        if exc.configuration:
            _not_now(store, exc, now, tally)
        elif not exc.answered or exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            _no_answer(store, exc, tally)
        elif exc.code == "DUPLICATED_REF_SELLER_ID" and not store["toss_seller_id"]:
            _adopt(store, content, exc, toss, now, tally)
        elif exc.retryable or exc.outcome_unknown:
            _not_now(store, exc, now, tally)
        else:
            _refused(store, exc, tally)
    except TossError as exc:
        _no_answer(store, exc, tally)
    else:
        if not _for_this_store(store, seller):
            _refused(store, TossApiError(400, "REF_SELLER_ID_TAKEN", _TAKEN_MESSAGE), tally)
        elif seller.get("id") or store["toss_seller_id"]:
            _registered(store, seller, tally, now)
        else:
            _not_now(store, TossApiError(200, "UNREADABLE_RESPONSE", "Toss answered without a seller id"), now, tally)


def _registered(
    store: Mapping[str, Any], seller: Mapping[str, Any], tally: Counter[str], now: Callable[[], datetime]
) -> None:
    seller_id = str(seller.get("id") or store["toss_seller_id"] or "")
    status = seller.get("status")
    try:
        with db.transaction() as tx:
            written = stores_repo.record_registered(
                tx,
                store["store_id"],
                content_hash=store["seller_request_hash"],
                seller_id=seller_id,
                seller_status=str(status) if status else None,
            )
            if written and status in PAYABLE_SELLER_STATUSES:
                settlements_repo.seller_became_payable(tx, seller_id)
    except Exception as exc:
        if not db.is_duplicate_key(exc, "uq_stores_seller"):
            raise
        # Toss answered with a seller another store holds: never give one seller two stores' money.
        logger.error("Toss answered with a seller id another store holds", extra={"store_id": store["store_id"]})
        _refused(
            store,
            TossApiError(200, "SELLER_ID_IN_USE", "Toss answered with a seller that another store already holds"),
            tally,
        )
        return
    tally["registered"] += 1
    logger.info("store registered for payouts", extra={"store_id": store["store_id"], "seller_status": status})


def _no_answer(store: Mapping[str, Any], exc: Exception, tally: Counter[str]) -> None:
    tally["unanswered"] += 1
    logger.warning(
        "seller registration answer lost; the lease runs out and the schedule asks again with the same key",
        extra={"store_id": store["store_id"], "error": str(exc)[:200]},
    )


def _not_now(store: Mapping[str, Any], exc: TossApiError, now: Callable[[], datetime], tally: Counter[str]) -> None:
    """An answer with an error Toss may overcome: a new attempt (a new key) after the back-off. After a 5xx the
    seller may exist: the next attempt's DUPLICATED_REF_SELLER_ID then finds it."""
    with db.transaction() as tx:
        stores_repo.record_refused(
            tx,
            store["store_id"],
            new=SellerRegistration.PENDING,
            code=exc.code,
            message=exc.message,
            next_attempt_at=db_time(now() + retry_after(int(store["seller_refusals"]) + 1)),
        )
    tally["refused"] += 1
    logger.warning("seller registration not accepted now", extra={"store_id": store["store_id"], "toss_code": exc.code})
    count("SellersRefused")


def _refused(store: Mapping[str, Any], exc: TossApiError, tally: Counter[str]) -> None:
    with db.transaction() as tx:
        stores_repo.record_refused(
            tx,
            store["store_id"],
            new=SellerRegistration.REFUSED,
            code=exc.code,
            message=exc.message,
            next_attempt_at=None,
        )
    tally["refused"] += 1
    logger.warning("seller registration refused", extra={"store_id": store["store_id"], "toss_code": exc.code})
    count("SellersRefused")


def _adopt(
    store: Mapping[str, Any],
    content: Mapping[str, Any],
    exc: TossApiError,
    toss: TossPort,
    now: Callable[[], datetime],
    tally: Counter[str],
) -> None:
    """Toss holds a seller under our refSellerId: made by an attempt whose answer we did not read. Find it, and take
    it only if it holds our account (else another stack shares the merchant id and the stack prefix)."""
    try:
        listed = toss.list_sellers()
    except TossError:
        _not_now(store, exc, now, tally)
        return
    match = next((s for s in listed if s.get("refSellerId") == store["ref_seller_id"] and s.get("id")), None)
    if match is None:
        _not_now(store, exc, now, tally)
        return
    account = match.get("account")
    if (
        not isinstance(account, dict)
        or account.get("accountNumber") != content["account"]["accountNumber"]
        or not _for_this_store(store, match)
    ):
        _refused(store, TossApiError(400, "REF_SELLER_ID_TAKEN", _TAKEN_MESSAGE), tally)
        return
    _registered(store, match, tally, now)


_TAKEN_MESSAGE = (
    "Toss holds another store's seller under this refSellerId or Idempotency-Key: another stack or a rebuilt "
    "database shares this merchant id and TOSS_ID_PREFIX. Set a prefix of its own, then register the store again."
)


def _for_this_store(store: Mapping[str, Any], seller: Mapping[str, Any]) -> bool:
    """Whether a seller Toss answered with is this store's (the storeId we sent as its metadata, when shown)."""
    metadata = seller.get("metadata")
    return not isinstance(metadata, dict) or metadata.get("storeId", store["store_id"]) == store["store_id"]


def apply_seller_status(seller: dict[str, Any]) -> str:
    """Toss's word on a seller (seller.changed): its status, and the payouts that waited for it (their back-off after
    FORBIDDEN_SELLER_PAYOUT ends when Toss pays the seller)."""
    seller_id, status = seller.get("id"), seller.get("status")
    with db.transaction() as tx:
        changed = stores_repo.set_seller_status(tx, seller_id, status)
        ref = seller.get("refSellerId")
        if not changed and isinstance(ref, str) and isinstance(seller_id, str) and seller_id:
            changed = stores_repo.adopt_by_ref(tx, ref, seller_id=seller_id, seller_status=status)
        waited = settlements_repo.seller_became_payable(tx, seller_id) if status in PAYABLE_SELLER_STATUSES else 0
    return "updated" if changed or waited else "unknown_seller"
