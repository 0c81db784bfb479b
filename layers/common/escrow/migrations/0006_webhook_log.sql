-- The webhook endpoint is not a free write (issue 7, finding 11): a delivery is logged as metadata first (who sent
-- what, its size and digest); its body is kept, with personal data masked, only once it verified. Lookups of a
-- payment that webhooks trigger are counted per payment, so forged deliveries cannot make us call Toss endlessly.

-- `subject` is what a delivery is about, as a well-formed id (payment:<paymentKey>, order:<orderId>, payout:<id>,
-- seller:<id>): an operator's replay asks Toss about the subject again; it never trusts a body.
ALTER TABLE payment_webhooks
    MODIFY raw_body LONGTEXT NULL,
    ADD COLUMN body_bytes INT UNSIGNED NULL AFTER raw_body,
    ADD COLUMN body_sha256 CHAR(64) NULL AFTER body_bytes,
    ADD COLUMN subject VARCHAR(220) NULL AFTER event_type;

CREATE TABLE webhook_lookups (
    lookup_key VARCHAR(200) NOT NULL PRIMARY KEY,
    window_started_at DATETIME(3) NOT NULL,
    lookups INT UNSIGNED NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE webhook_receipts ADD KEY ix_webhook_receipts_created (created_at);
