"""Webhook deliveries (`payment_webhooks`: every delivery, logged first) and receipts (`webhook_receipts`: one per
event processed, the dedupe key)."""

from __future__ import annotations

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
    raw_body: str,
) -> int:
    """A delivery as it arrived, before anything else is done with it."""
    WEBHOOK_VERIFICATION.check_initial(WebhookVerification.PENDING)
    WEBHOOK_OUTCOME.check_initial(WebhookOutcome.RECEIVED)
    return tx.insert(
        "INSERT INTO payment_webhooks (transmission_id, event_id, event_type, retried_count, transmission_time, "
        "headers, raw_body, verification, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            transmission_id,
            event_id,
            event_type,
            retried_count,
            transmission_time,
            headers,
            raw_body,
            WebhookVerification.PENDING,
            WebhookOutcome.RECEIVED,
        ),
    )


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
