"""Toss webhooks: log every delivery first, verify it the way Toss allows for its type, process it once.

Toss's webhooks (docs/toss-behaviours.md; docs.tosspayments.com/guides/v2/webhook): payment events are unsigned (a
trigger to fetch the payment from Toss), DEPOSIT_CALLBACK carries the payment's `secret`, payout.changed and
seller.changed carry an HMAC-SHA256 signature.

The endpoint has no JWT, so anyone can write to it. What an unverified delivery costs us is bounded:
* with an allowlist of Toss's sending addresses (`TOSS_WEBHOOK_ALLOWED_IPS`, escrow.webhook_source), a delivery from
  any other address is refused (403) before its body is parsed, and logged as metadata only;
* every delivery is logged as metadata first (its headers, size and SHA-256); its body is kept, with personal data
  masked, only once it verified (WEBHOOK_MAX_BODY bounds what is read at all);
* a payment event is looked up at Toss only for a payment of ours (a charge, or an order we issued or tried) whose
  ids are well formed, and at most LOOKUPS_PER_WINDOW times per payment per LOOKUP_WINDOW (more: 429, Toss delivers
  it again later);
* an unverified delivery never claims a dedupe key (only a processed one does), so a forgery cannot shadow a later
  genuine delivery with the same transmission id;
* a retention job deletes the log after WEBHOOK_RETENTION_DAYS.
Replays of genuine deliveries (Toss retries for about 4 days, and resends by hand, possibly with the original
headers) are recognised by their eventId / transmission id; the freshness window of signed events covers that
whole span instead of rejecting Toss's own retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from escrow import db, webhook_source
from escrow.clock import db_time
from escrow.config import get_settings, toss_keys
from escrow.errors import DatabaseUnavailable, NotFound
from escrow.observability import count, logger
from escrow.repositories import charges as charges_repo
from escrow.repositories import webhooks as webhooks_repo
from escrow.services import payments as payment_service
from escrow.services import payouts as payout_service
from escrow.services import refunds as refund_service
from escrow.services import stores as store_service
from escrow.states import WebhookOutcome, WebhookVerification
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.deadline import Deadline
    from escrow.toss.models import Payment

SIGNED_EVENTS = ("payout.changed", "seller.changed")
# Toss wants a 200 within 10 s. A lookup that takes longer is abandoned: the delivery answers 503, stays logged,
# and Toss delivers it again (or the schedule's reconciliation settles the payment first).
LOOKUP_READ_TIMEOUT = 5.0
# Toss retries a delivery for about 3 days 19 hours (1, 4, 16, 64, 256, 1024, 4096 minutes) and resends by hand from
# its dashboard; a retry may carry the first transmission time. Replays are caught by dedupe (eventId /
# transmission id); this window only refuses what is older than any retry of Toss's could be.
MAX_TRANSMISSION_AGE = timedelta(days=8)
CLOCK_SKEW = timedelta(minutes=10)  # a transmission time ahead of ours by more than this is not Toss's
WEBHOOK_MAX_BODY = 32 * 1024  # a Payment object with its cancels is a few KB; more is not Toss
LOOKUP_WINDOW = 60  # seconds
LOOKUPS_PER_WINDOW = 5  # Toss lookups one payment's webhooks may trigger per window
WEBHOOK_RETENTION_DAYS = 90
RECEIPT_RETENTION_DAYS = 30  # longer than Toss's retry span, so a late retry is still recognised
_PAYMENT_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
# Personal data in Toss's payloads (Payment, Seller): masked before a body is stored.
_PERSONAL = frozenset(
    {
        "accountNumber",
        "holderName",
        "customerName",
        "depositorName",
        "customerMobilePhone",
        "customerEmail",
        "name",
        "representativeName",
        "phone",
        "email",
        "businessRegistrationNumber",
        "bankAccountNumber",
        "secret",  # a virtual account's webhook secret: a credential, never kept
    }
)
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
    THROTTLED = "throttled"  # too many deliveries for one payment just now: deliver it again later
    SOURCE_NOT_ALLOWED = "source_not_allowed"  # sent from an address outside the allowlist
    TOO_LARGE = "too_large"  # larger than any Toss webhook
    INVALID_JSON = "invalid_json"  # the body is not a JSON object


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str = ""  # why a delivery was rejected (safe to show the sender)


def hmac_key(security_key: str, encoding: str) -> bytes:
    """UNCONFIRMED by Toss whether the HMAC key is the 64-char string or its hex-decoded 32 bytes
    (docs/toss-behaviours.md); TOSS_WEBHOOK_HMAC_KEY_ENCODING chooses, default hex like the payout JWE."""
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
    return now - MAX_TRANSMISSION_AGE <= sent <= now + CLOCK_SKEW


def _event_type(payload: dict[str, Any]) -> str | None:
    if isinstance(payload.get("eventType"), str):
        return str(payload["eventType"])
    if "secret" in payload and "orderId" in payload:
        return "DEPOSIT_CALLBACK"  # Toss sends it flat, without an eventType
    return None


def _log(headers: dict[str, str], raw: bytes, event_type: str | None, payload: dict[str, Any] | None) -> int:
    kept = {k: v[:200] for k, v in headers.items() if k in _LOGGED_HEADERS}
    retried = headers.get("tosspayments-webhook-transmission-retried-count")
    with db.transaction() as tx:
        return webhooks_repo.log(
            tx,
            transmission_id=headers.get("tosspayments-webhook-transmission-id", "")[:100] or None,
            event_id=str((payload or {}).get("eventId") or "")[:100] or None,
            event_type=(event_type or "")[:64] or None,
            retried_count=int(retried) if retried and retried.isdigit() and len(retried) < 9 else None,
            transmission_time=headers.get("tosspayments-webhook-transmission-time", "")[:64] or None,
            headers=json.dumps(kept),
            body_bytes=len(raw),
            body_sha256=hashlib.sha256(raw).hexdigest(),
            subject=subject_of(event_type, payload),
        )


def subject_of(event_type: str | None, payload: dict[str, Any] | None) -> str | None:
    """What a delivery is about, as a well-formed id, or None (an id that is not well formed is not kept)."""
    if not payload:
        return None
    if event_type == "PAYMENT_STATUS_CHANGED":
        raw_data = payload.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        key, order = data.get("paymentKey"), data.get("orderId")
        if isinstance(key, str) and _PAYMENT_KEY.match(key):
            return f"payment:{key}"
        if isinstance(order, str) and _ORDER_ID.match(order):
            return f"order:{order}"
        return None
    if event_type == "DEPOSIT_CALLBACK":
        order = payload.get("orderId")
        return f"order:{order}" if isinstance(order, str) and _ORDER_ID.match(order) else None
    if event_type in SIGNED_EVENTS:
        raw_entity = payload.get("entityBody")
        entity: dict[str, Any] = raw_entity if isinstance(raw_entity, dict) else {}
        entity_id = entity.get("id")
        kind = "payout" if event_type == "payout.changed" else "seller"
        return f"{kind}:{entity_id}" if isinstance(entity_id, str) and _PAYMENT_KEY.match(entity_id) else None
    return None


def apply_subject(subject: str, *, toss: TossPort | None = None) -> str:
    """Ask Toss about a delivery's subject now and apply what Toss says (an operator's replay: the body of the
    delivery, forged or not, is never trusted). Returns the outcome."""
    kind, _, ident = subject.partition(":")
    toss = toss or get_toss_client()
    if kind in ("payment", "order"):
        fetched = toss.get_payment(ident) if kind == "payment" else toss.get_payment_by_order(ident)
        return f"toss status {fetched.status}: {_apply_fetched(fetched, toss)}"
    if kind == "payout":
        return str(payout_service.apply_payout_status(toss.get_payout(ident), actor="operator_replay"))
    if kind == "seller":
        return str(store_service.apply_seller_status(toss.get_seller(ident)))
    raise ValueError(f"not a delivery subject: {subject!r}")


def mask(value: Any) -> Any:
    """A payload with its personal data masked (account numbers keep their last 4 digits)."""
    if isinstance(value, dict):
        return {k: (_masked(k, v) if k in _PERSONAL else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def _masked(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if "Number" in key:
        return "*" * max(len(value) - 4, 0) + value[-4:]
    return "***"


def _finish(
    webhook_id: int,
    *,
    verification: WebhookVerification,
    outcome: WebhookOutcome,
    detail: str = "",
    dedupe_key: str | None = None,
    body: dict[str, Any] | None = None,
) -> bool:
    """Record the result; with a dedupe key (a processed delivery only), claim it, and keep the verified body
    masked. False when another delivery of the same event won."""
    with db.transaction() as tx:
        if dedupe_key is not None and not webhooks_repo.claim_receipt(tx, dedupe_key, webhook_id):
            outcome, detail = WebhookOutcome.DUPLICATE, "already processed"
        if body is not None:
            webhooks_repo.keep_body(tx, webhook_id, json.dumps(mask(body), ensure_ascii=False))
        webhooks_repo.finish(tx, webhook_id, verification=verification, outcome=outcome, detail=detail)
    return outcome != WebhookOutcome.DUPLICATE


def _already_processed(dedupe_key: str) -> bool:
    with db.reader() as tx:
        return webhooks_repo.receipt_exists(tx, dedupe_key)


def _processed(claimed: bool) -> Outcome:
    return Outcome(Result.PROCESSED if claimed else Result.DUPLICATE)


def receive(
    headers: dict[str, str],
    raw: bytes,
    *,
    toss: TossPort | None = None,
    now: datetime | None = None,
    source_ip: str | None = None,
    deadline: Deadline | None = None,
) -> Outcome:
    """One delivery: `source_ip` is API Gateway's `requestContext.http.sourceIp` (checked against the allowlist when
    one is configured); `deadline` bounds the Toss lookups (escrow.deadline)."""
    headers = {k.lower(): v for k, v in headers.items()}
    now = now or datetime.now(UTC)
    allowlist = webhook_source.parse_allowlist(get_settings().toss_webhook_allowed_ips)
    if not webhook_source.is_allowed(source_ip, allowlist):
        # Not from an address Toss sends from: refused before the body is parsed, kept as metadata only (size, SHA-256).
        webhook_id = _log(headers, raw, None, None)
        _finish(
            webhook_id,
            verification=WebhookVerification.SOURCE_NOT_ALLOWED,
            outcome=WebhookOutcome.REJECTED,
            detail="sender address not in the allowlist",
        )
        count("WebhooksRejected")
        logger.warning("webhook from an address outside the allowlist refused", extra={"webhook_id": webhook_id})
        return Outcome(Result.SOURCE_NOT_ALLOWED, "this address may not deliver webhooks")
    if len(raw) > WEBHOOK_MAX_BODY:
        webhook_id = _log(headers, b"", None, None)
        _finish(
            webhook_id,
            verification=WebhookVerification.MALFORMED,
            outcome=WebhookOutcome.REJECTED,
            detail=f"body of {len(raw)} bytes",
        )
        count("WebhooksRejected")
        return Outcome(Result.TOO_LARGE, f"a webhook body is at most {WEBHOOK_MAX_BODY} bytes")
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
        count("WebhooksRejected")
        return Outcome(Result.INVALID_JSON, "the body is not a JSON object")

    event_type = _event_type(payload)
    webhook_id = _log(headers, raw, event_type, payload)
    transmission = headers.get("tosspayments-webhook-transmission-id", "")
    event_id = payload.get("eventId")
    dedupe_key = (
        f"event:{event_id}"[:128]
        if isinstance(event_id, str) and event_id
        else (f"transmission:{transmission}"[:128] if transmission else None)
    )
    if dedupe_key and _already_processed(dedupe_key):
        # Only processed (verified) deliveries hold a receipt: a second delivery of one is answered, not redone.
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
            return _payment_status_changed(webhook_id, payload, dedupe_key, toss, deadline)
        if event_type == "DEPOSIT_CALLBACK":
            return _deposit_callback(webhook_id, payload, dedupe_key, toss, deadline)
        if event_type in SIGNED_EVENTS:
            return _signed_event(webhook_id, event_type, payload, raw, headers, dedupe_key, now)
    except (TossError, DatabaseUnavailable) as exc:
        # Not processed: answer non-200 so Toss delivers it again (its retries are the safety net here).
        _finish(
            webhook_id, verification=WebhookVerification.PENDING, outcome=WebhookOutcome.ERROR, detail=str(exc)[:200]
        )
        logger.warning("webhook not processed; Toss will retry", extra={"webhook_id": webhook_id})
        return Outcome(Result.RETRY_LATER, "could not process the webhook now")
    # An event type we do not act on: answered 200 (Toss must not retry it), its body not kept, no receipt claimed.
    _finish(
        webhook_id,
        verification=WebhookVerification.NOT_APPLICABLE,
        outcome=WebhookOutcome.IGNORED,
        detail=f"event type {str(event_type)[:64]!r}",
    )
    return Outcome(Result.IGNORED)


def retention(now: datetime, *, limit: int = 1000) -> int:
    """Delete deliveries older than WEBHOOK_RETENTION_DAYS and receipts older than RECEIPT_RETENTION_DAYS."""
    with db.transaction() as tx:
        return webhooks_repo.delete_older_than(
            tx,
            deliveries_before=db_time(now - timedelta(days=WEBHOOK_RETENTION_DAYS)),
            receipts_before=db_time(now - timedelta(days=RECEIPT_RETENTION_DAYS)),
            limit=limit,
        )


def _rejected(webhook_id: int, verification: WebhookVerification, detail: str) -> Outcome:
    _finish(webhook_id, verification=verification, outcome=WebhookOutcome.REJECTED, detail=detail)
    count("WebhooksRejected")
    logger.warning("webhook rejected", extra={"webhook_id": webhook_id, "verification": verification})
    return Outcome(Result.REJECTED, detail)


def _apply_fetched(payment: Payment, toss: TossPort | None) -> str:
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
    webhook_id: int,
    payload: dict[str, Any],
    dedupe_key: str | None,
    toss: TossPort | None,
    deadline: Deadline | None = None,
) -> Outcome:
    raw_data = payload.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    payment_key, order_id = data.get("paymentKey"), data.get("orderId")
    payment_key = payment_key if isinstance(payment_key, str) and _PAYMENT_KEY.match(payment_key) else None
    order_id = order_id if isinstance(order_id, str) and _ORDER_ID.match(order_id) else None
    if payment_key is None and order_id is None:
        return _rejected(webhook_id, WebhookVerification.MALFORMED, "no well-formed paymentKey or orderId in data")
    with db.transaction() as tx:
        ours = webhooks_repo.known_payment(tx, payment_key=payment_key, order_id=order_id)
        lookups = (
            webhooks_repo.count_lookup(
                tx, f"pk:{payment_key}" if payment_key else f"order:{order_id}", window_seconds=LOOKUP_WINDOW
            )
            if ours
            else 0
        )
    if not ours:
        # Not a payment of ours: nothing to look up, nothing to keep. 200, so a genuine event of another system on
        # the same merchant id is not retried for days.
        _finish(
            webhook_id,
            verification=WebhookVerification.UNKNOWN_PAYMENT,
            outcome=WebhookOutcome.IGNORED,
            detail="not a payment of ours",
        )
        count("WebhooksIgnored")
        return Outcome(Result.IGNORED)
    with db.transaction() as tx:  # a payment of ours: its (masked) body is kept, whatever the lookup gives
        webhooks_repo.keep_body(tx, webhook_id, json.dumps(mask(payload), ensure_ascii=False))
    if lookups > LOOKUPS_PER_WINDOW:
        _finish(
            webhook_id,
            verification=WebhookVerification.PENDING,
            outcome=WebhookOutcome.ERROR,
            detail="too many deliveries for this payment just now",
        )
        count("WebhooksThrottled")
        return Outcome(Result.THROTTLED, "too many deliveries for this payment just now; deliver it again later")
    toss = toss or get_toss_client(deadline)
    # The body is only a trigger: what we act on is what Toss itself says now.
    try:
        fetched = (
            toss.get_payment(payment_key, read_timeout=LOOKUP_READ_TIMEOUT)
            if payment_key is not None
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
        body=payload,
    )
    count("WebhooksProcessed")
    return _processed(claimed)


def _deposit_callback(
    webhook_id: int,
    payload: dict[str, Any],
    dedupe_key: str | None,
    toss: TossPort | None,
    deadline: Deadline | None = None,
) -> Outcome:
    order_id, secret = payload.get("orderId"), payload.get("secret")
    if not isinstance(order_id, str) or not _ORDER_ID.match(order_id) or not isinstance(secret, str):
        return _rejected(webhook_id, WebhookVerification.MALFORMED, "a well-formed orderId and a secret are required")
    with db.reader() as tx:
        stored = charges_repo.secret_for_order(tx, order_id) or ""
    if not stored or not hmac.compare_digest(stored.encode(), secret.encode()):
        return _rejected(webhook_id, WebhookVerification.SECRET_MISMATCH, "the secret does not match the payment's")
    fetched = (toss or get_toss_client(deadline)).get_payment_by_order(order_id, read_timeout=LOOKUP_READ_TIMEOUT)
    outcome = _apply_fetched(fetched, toss)
    dedupe = dedupe_key or f"deposit:{order_id}:{payload.get('transactionKey')}:{payload.get('status')}"
    claimed = _finish(
        webhook_id,
        verification=WebhookVerification.SECRET,
        outcome=WebhookOutcome.PROCESSED,
        detail=outcome,
        dedupe_key=dedupe[:128],
        body=payload,
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
        body=payload,
    )
    count("WebhooksVerified")
    return _processed(claimed)
