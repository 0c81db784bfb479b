"""Toss webhooks: log every delivery first, verify it the way Toss allows for its type, process it once.

REFERENCE.md §7: payment events are unsigned (a trigger to fetch the payment from Toss), DEPOSIT_CALLBACK carries
the payment's `secret`, payout.changed / seller.changed carry an HMAC-SHA256 signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.config import get_settings, toss_keys
from escrow.errors import DatabaseUnavailable, NotFound
from escrow.observability import count, logger
from escrow.repositories import payments as payments_repo
from escrow.repositories import webhooks as webhooks_repo
from escrow.services import payments as payment_service
from escrow.services import payouts as payout_service
from escrow.services import refunds as refund_service
from escrow.services import stores as store_service
from escrow.states import WebhookOutcome, WebhookVerification
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

if TYPE_CHECKING:
    from escrow.toss.models import Payment

SIGNED_EVENTS = ("payout.changed", "seller.changed")
# Toss wants a 200 within 10 s. A lookup that takes longer is abandoned: the delivery answers 503, stays logged,
# and Toss delivers it again (or the schedule's reconciliation settles the payment first).
LOOKUP_READ_TIMEOUT = 5.0
MAX_TRANSMISSION_AGE = timedelta(minutes=30)  # a signed delivery older than this is a replay, not a retry
_LOGGED_HEADERS = (
    "tosspayments-webhook-transmission-time",
    "tosspayments-webhook-transmission-retried-count",
    "tosspayments-webhook-transmission-id",
    "tosspayments-webhook-signature",
    "content-type",
    "user-agent",
    "x-forwarded-for",
)


class Result(StrEnum):
    """What became of a delivery, as the caller (the webhook function) needs it to answer Toss."""

    PROCESSED = "processed"  # acted on
    DUPLICATE = "duplicate"  # another delivery of the same event was processed
    IGNORED = "ignored"  # an event type we do not act on
    REJECTED = "rejected"  # not verified (see `reason`): Toss must not deliver it again as it is
    RETRY_LATER = "retry_later"  # not processed now (Toss or the database unreachable): deliver it again
    INVALID_JSON = "invalid_json"  # the body is not a JSON object


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str = ""  # why a delivery was rejected (safe to show the sender)


def hmac_key(security_key: str, encoding: str) -> bytes:
    """UNCONFIRMED by Toss whether the HMAC key is the 64-char string or its hex-decoded 32 bytes (REFERENCE §7);
    TOSS_WEBHOOK_HMAC_KEY_ENCODING chooses, default hex like the payout JWE."""
    return bytes.fromhex(security_key) if encoding == "hex" else security_key.encode("utf-8")


def signature_valid(raw_body: bytes, transmission_time: str, header: str, security_key: str, encoding: str) -> bool:
    if not header or not transmission_time or not security_key:
        return False
    expected = hmac.new(
        hmac_key(security_key, encoding), raw_body + b":" + transmission_time.encode("utf-8"), hashlib.sha256
    ).digest()
    valid = False
    for part in header.split(","):
        version, _, value = part.strip().partition(":")
        if version != "v1" or not value:
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        valid = hmac.compare_digest(candidate, expected) or valid  # look at every value, constant time each
    return valid


def _fresh(transmission_time: str, now: datetime) -> bool:
    try:
        sent = datetime.fromisoformat(transmission_time)
    except ValueError:
        return False
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=timezone(timedelta(hours=9)))
    return abs(now - sent) <= MAX_TRANSMISSION_AGE


def _event_type(payload: dict[str, Any]) -> str | None:
    if isinstance(payload.get("eventType"), str):
        return str(payload["eventType"])
    if "secret" in payload and "orderId" in payload:
        return "DEPOSIT_CALLBACK"  # Toss sends it flat, without an eventType
    return None


def _log(headers: dict[str, str], raw: bytes, event_type: str | None, payload: dict[str, Any] | None) -> int:
    kept = {k: v for k, v in headers.items() if k in _LOGGED_HEADERS}
    retried = headers.get("tosspayments-webhook-transmission-retried-count")
    with db.transaction() as tx:
        return webhooks_repo.log(
            tx,
            transmission_id=headers.get("tosspayments-webhook-transmission-id", "")[:100] or None,
            event_id=str((payload or {}).get("eventId") or "")[:100] or None,
            event_type=(event_type or "")[:64] or None,
            retried_count=int(retried) if retried and retried.isdigit() else None,
            transmission_time=headers.get("tosspayments-webhook-transmission-time", "")[:64] or None,
            headers=json.dumps(kept),
            raw_body=raw.decode("utf-8", errors="replace"),
        )


def _finish(
    webhook_id: int,
    *,
    verification: WebhookVerification,
    outcome: WebhookOutcome,
    detail: str = "",
    dedupe_key: str | None = None,
) -> bool:
    """Record the result; with a dedupe key, claim it. False when another delivery of the same event won."""
    with db.transaction() as tx:
        if dedupe_key is not None and not webhooks_repo.claim_receipt(tx, dedupe_key, webhook_id):
            outcome, detail = WebhookOutcome.DUPLICATE, "already processed"
        webhooks_repo.finish(tx, webhook_id, verification=verification, outcome=outcome, detail=detail)
    return outcome != WebhookOutcome.DUPLICATE


def _already_processed(dedupe_key: str) -> bool:
    with db.reader() as tx:
        return webhooks_repo.receipt_exists(tx, dedupe_key)


def _processed(claimed: bool) -> Outcome:
    return Outcome(Result.PROCESSED if claimed else Result.DUPLICATE)


def receive(
    headers: dict[str, str], raw: bytes, *, toss: TossClient | None = None, now: datetime | None = None
) -> Outcome:
    headers = {k.lower(): v for k, v in headers.items()}
    now = now or datetime.now(UTC)
    try:
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
        # A lone surrogate cannot be stored (UnicodeEncodeError, a ValueError): unreadable, like bad JSON.
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes; was a 500
        webhook_id = _log(headers, raw, None, None)
        _finish(
            webhook_id,
            verification=WebhookVerification.UNREADABLE,
            outcome=WebhookOutcome.REJECTED,
            detail="body is not a JSON object",
        )
        return Outcome(Result.INVALID_JSON, "the body is not a JSON object")

    event_type = _event_type(payload)
    webhook_id = _log(headers, raw, event_type, payload)
    transmission = headers.get("tosspayments-webhook-transmission-id", "")
    dedupe_key = (
        f"event:{payload['eventId']}"
        if payload.get("eventId")
        else (f"transmission:{transmission}" if transmission else None)
    )
    if dedupe_key and _already_processed(dedupe_key):
        _finish(
            webhook_id,
            verification=WebhookVerification.SKIPPED,
            outcome=WebhookOutcome.DUPLICATE,
            detail="already processed",
        )
        count("WebhooksDuplicate")
        return Outcome(Result.DUPLICATE)

    try:
        if event_type == "PAYMENT_STATUS_CHANGED":
            return _payment_status_changed(webhook_id, payload, dedupe_key, toss)
        if event_type == "DEPOSIT_CALLBACK":
            return _deposit_callback(webhook_id, payload, dedupe_key, toss)
        if event_type in SIGNED_EVENTS:
            return _signed_event(webhook_id, event_type, payload, raw, headers, dedupe_key, now)
    except (TossError, DatabaseUnavailable) as exc:
        # Not processed: answer non-200 so Toss delivers it again (its retries are the safety net here).
        _finish(webhook_id, verification=WebhookVerification.PENDING, outcome=WebhookOutcome.ERROR, detail=str(exc))
        logger.warning("webhook not processed; Toss will retry", extra={"webhook_id": webhook_id})
        return Outcome(Result.RETRY_LATER, "could not process the webhook now")
    _finish(
        webhook_id,
        verification=WebhookVerification.NOT_APPLICABLE,
        outcome=WebhookOutcome.IGNORED,
        detail=f"event type {event_type!r}",
        dedupe_key=dedupe_key,
    )
    return Outcome(Result.IGNORED)


def _rejected(webhook_id: int, verification: WebhookVerification, detail: str) -> Outcome:
    _finish(webhook_id, verification=verification, outcome=WebhookOutcome.REJECTED, detail=detail)
    count("WebhooksRejected")
    logger.warning("webhook rejected", extra={"webhook_id": webhook_id, "verification": verification})
    return Outcome(Result.REJECTED, detail)


def _apply_fetched(payment: Payment, toss: TossClient | None) -> str:
    outcome = payment_service.apply_toss_payment(
        payment, actor="webhook", reason="webhook", toss=toss, refund_now=False
    )
    if payment.cancels:
        try:
            refund_service.apply_cancels(payment, cancel_id=None, actor="webhook")
        except NotFound:
            logger.info("cancellations for a payment we do not hold")
    return outcome


def _payment_status_changed(
    webhook_id: int, payload: dict[str, Any], dedupe_key: str | None, toss: TossClient | None
) -> Outcome:
    raw_data = payload.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    payment_key, order_id = data.get("paymentKey"), data.get("orderId")
    if not isinstance(payment_key, str) and not isinstance(order_id, str):
        return _rejected(webhook_id, WebhookVerification.MALFORMED, "no paymentKey or orderId in data")
    toss = toss or get_toss_client()
    # The body is only a trigger: what we act on is what Toss itself says now.
    try:
        fetched = (
            toss.get_payment(payment_key, read_timeout=LOOKUP_READ_TIMEOUT)
            if isinstance(payment_key, str)
            else toss.get_payment_by_order(str(order_id), read_timeout=LOOKUP_READ_TIMEOUT)
        )
    except TossApiError as exc:
        if exc.code == "NOT_FOUND_PAYMENT":
            return _rejected(webhook_id, WebhookVerification.UNKNOWN_PAYMENT, "Toss does not know this payment")
        raise
    outcome = _apply_fetched(fetched, toss)
    claimed = _finish(
        webhook_id,
        verification=WebhookVerification.FETCHED,
        outcome=WebhookOutcome.PROCESSED,
        detail=f"toss status {fetched.status}: {outcome}",
        dedupe_key=dedupe_key,
    )
    count("WebhooksProcessed")
    return _processed(claimed)


def _deposit_callback(
    webhook_id: int, payload: dict[str, Any], dedupe_key: str | None, toss: TossClient | None
) -> Outcome:
    order_id, secret = payload.get("orderId"), payload.get("secret")
    if not isinstance(order_id, str) or not isinstance(secret, str):
        return _rejected(webhook_id, WebhookVerification.MALFORMED, "orderId and secret are required")
    with db.reader() as tx:
        stored = payments_repo.secret_for_order(tx, order_id) or ""
    if not stored or not hmac.compare_digest(stored.encode(), secret.encode()):
        return _rejected(webhook_id, WebhookVerification.SECRET_MISMATCH, "the secret does not match the payment's")
    fetched = (toss or get_toss_client()).get_payment_by_order(order_id, read_timeout=LOOKUP_READ_TIMEOUT)
    outcome = _apply_fetched(fetched, toss)
    dedupe = dedupe_key or f"deposit:{order_id}:{payload.get('transactionKey')}:{payload.get('status')}"
    claimed = _finish(
        webhook_id,
        verification=WebhookVerification.SECRET,
        outcome=WebhookOutcome.PROCESSED,
        detail=outcome,
        dedupe_key=dedupe,
    )
    return _processed(claimed)


def _signed_event(
    webhook_id: int,
    event_type: str,
    payload: dict[str, Any],
    raw: bytes,
    headers: dict[str, str],
    dedupe_key: str | None,
    now: datetime,
) -> Outcome:
    transmission_time = headers.get("tosspayments-webhook-transmission-time", "")
    valid = signature_valid(
        raw,
        transmission_time,
        headers.get("tosspayments-webhook-signature", ""),
        toss_keys().security_key,
        get_settings().toss_webhook_hmac_key_encoding,
    )
    if not valid:
        return _rejected(webhook_id, WebhookVerification.BAD_SIGNATURE, "the signature does not verify")
    if not _fresh(transmission_time, now):
        return _rejected(webhook_id, WebhookVerification.STALE, "the transmission time is too old or in the future")
    entity = payload.get("entityBody")
    body: dict[str, Any] = entity if isinstance(entity, dict) else {}
    if event_type == "payout.changed":
        outcome = payout_service.apply_payout_status(body, actor="webhook")
    else:
        outcome = store_service.apply_seller_status(body)
    claimed = _finish(
        webhook_id,
        verification=WebhookVerification.SIGNATURE,
        outcome=WebhookOutcome.PROCESSED,
        detail=outcome,
        dedupe_key=dedupe_key,
    )
    count("WebhooksVerified")
    return _processed(claimed)
