"""Webhook deliveries (`payment_webhooks`: every delivery, logged first as metadata), receipts (`webhook_receipts`:
one per event processed, the dedupe key) and the lookups deliveries trigger (`webhook_lookups`)."""

from __future__ import annotations

from datetime import datetime

from escrow.db import Tx
from escrow.states import WEBHOOK_OUTCOME, WEBHOOK_VERIFICATION, WebhookOutcome, WebhookVerification


def log(
    tx: Tx,
    *,
    transmission_id: str | None,
    event_id: str | None,
    event_type: str | None,
    retried_count: int | None,
    transmission_time: str | None,
    headers: str,
    body_bytes: int,
    body_sha256: str,
    subject: str | None,
) -> int:
    """A delivery as it arrived, before anything else is done with it: metadata only (its body is kept once it
    verified, see `keep_body`)."""
    WEBHOOK_VERIFICATION.check_initial(WebhookVerification.PENDING)
    WEBHOOK_OUTCOME.check_initial(WebhookOutcome.RECEIVED)
    return tx.insert(
        "INSERT INTO payment_webhooks (transmission_id, event_id, event_type, subject, retried_count, "
        "transmission_time, headers, raw_body, body_bytes, body_sha256, verification, outcome) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s)",
        (
            transmission_id,
            event_id,
            event_type,
            subject,
            retried_count,
            transmission_time,
            headers,
            body_bytes,
            body_sha256,
            WebhookVerification.PENDING,
            WebhookOutcome.RECEIVED,
        ),
    )


def keep_body(tx: Tx, webhook_id: int, masked_body: str) -> None:
    tx.execute("UPDATE payment_webhooks SET raw_body = %s WHERE id = %s", (masked_body, webhook_id))


def claim_receipt(tx: Tx, dedupe_key: str, webhook_id: int) -> bool:
    """Claim the event for this delivery; False when another delivery of the same event claimed it first."""
    claimed = tx.execute(
        "INSERT INTO webhook_receipts (dedupe_key, webhook_id) VALUES (%s, %s) "
        "ON DUPLICATE KEY UPDATE webhook_id = webhook_id",
        (dedupe_key[:128], webhook_id),
    )
    return claimed != 0


def receipt_exists(tx: Tx, dedupe_key: str) -> bool:
    return tx.one("SELECT 1 AS x FROM webhook_receipts WHERE dedupe_key = %s", (dedupe_key[:128],)) is not None


def finish(tx: Tx, webhook_id: int, *, verification: WebhookVerification, outcome: WebhookOutcome, detail: str) -> None:
    """A delivery's result, written once: the row was logged (pending, received) by this delivery, and only this
    delivery writes it."""
    WEBHOOK_VERIFICATION.check(WebhookVerification.PENDING, verification)
    WEBHOOK_OUTCOME.check(WebhookOutcome.RECEIVED, outcome)
    tx.execute(
        "UPDATE payment_webhooks SET verification = %s, outcome = %s, detail = %s, processed_at = NOW(3) WHERE id = %s",
        (verification, outcome, detail[:500], webhook_id),
    )


def count_lookup(tx: Tx, lookup_key: str, *, window_seconds: int) -> int:
    """Count one lookup of this payment in the current window (a new window when the last one is over); returns the
    lookups in the window so far, this one included."""
    tx.execute(
        "INSERT INTO webhook_lookups (lookup_key, window_started_at, lookups) VALUES (%s, NOW(3), 1) "
        "ON DUPLICATE KEY UPDATE "
        "lookups = IF(window_started_at < NOW(3) - INTERVAL %s SECOND, 1, lookups + 1), "
        "window_started_at = IF(window_started_at < NOW(3) - INTERVAL %s SECOND, NOW(3), window_started_at)",
        (lookup_key[:200], window_seconds, window_seconds),
    )
    row = tx.one("SELECT lookups FROM webhook_lookups WHERE lookup_key = %s", (lookup_key[:200],))
    return int(row["lookups"]) if row else 1


def delete_older_than(
    tx: Tx, *, deliveries_before: datetime | None, receipts_before: datetime | None, limit: int
) -> int:
    """The retention job: deliveries (and receipts, and lookup counters) older than their keep time, in batches."""
    deleted = tx.execute(
        "DELETE FROM payment_webhooks WHERE received_at < %s ORDER BY id LIMIT %s", (deliveries_before, limit)
    )
    deleted += tx.execute("DELETE FROM webhook_receipts WHERE created_at < %s LIMIT %s", (receipts_before, limit))
    deleted += tx.execute(
        "DELETE FROM webhook_lookups WHERE window_started_at < NOW(3) - INTERVAL 1 DAY LIMIT %s", (limit,)
    )
    return deleted


def known_payment(tx: Tx, *, payment_key: str | None, order_id: str | None) -> bool:
    """Whether a payment a webhook names is one of ours: a charge, or an order we issued or tried."""
    if payment_key is not None:
        if tx.one("SELECT 1 AS x FROM payment_charges WHERE payment_key = %s", (payment_key,)) is not None:
            return True
        if tx.one("SELECT 1 AS x FROM payment_orders WHERE payment_key = %s LIMIT 1", (payment_key,)) is not None:
            return True
    if order_id is not None:
        return tx.one("SELECT 1 AS x FROM payment_orders WHERE order_id = %s", (order_id,)) is not None
    return False
