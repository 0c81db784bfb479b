-- Money out and back: refunds (one row per cancel we ask Toss for), settlements and payouts, the webhook log.

CREATE TABLE payment_cancels (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_id BIGINT UNSIGNED NOT NULL,
    payment_request_id BIGINT UNSIGNED NOT NULL,
    request_key VARCHAR(128) NOT NULL,
    requested_by VARCHAR(64) NOT NULL,
    reason VARCHAR(200) NOT NULL,
    requested_amount INT UNSIGNED NULL,
    status VARCHAR(16) NOT NULL,
    transaction_key VARCHAR(64) NULL,
    cancel_amount INT UNSIGNED NULL,
    refund_status VARCHAR(24) NULL,
    toss_code VARCHAR(64) NULL,
    toss_message VARCHAR(512) NULL,
    canceled_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payment_cancels_request_key (request_key),
    UNIQUE KEY uq_payment_cancels_transaction (transaction_key),
    KEY ix_payment_cancels_payment (payment_id, status),
    KEY ix_payment_cancels_status (status, updated_at),
    CONSTRAINT fk_payment_cancels_payment FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE payment_settlements (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_request_id BIGINT UNSIGNED NOT NULL,
    store_id VARCHAR(64) NOT NULL,
    gross_amount INT UNSIGNED NOT NULL,
    fee_bps INT UNSIGNED NOT NULL,
    platform_fee INT UNSIGNED NOT NULL,
    net_amount INT UNSIGNED NOT NULL,
    released_by VARCHAR(64) NOT NULL,
    ref_payout_id VARCHAR(64) NOT NULL,
    payout_id VARCHAR(64) NULL,
    payout_status VARCHAR(24) NOT NULL,
    payout_attempts INT UNSIGNED NOT NULL DEFAULT 0,
    payout_error_code VARCHAR(64) NULL,
    payout_error_message VARCHAR(512) NULL,
    payout_lease_until DATETIME(3) NULL,
    payout_requested_at DATETIME(3) NULL,
    payout_completed_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payment_settlements_request (payment_request_id),
    UNIQUE KEY uq_payment_settlements_ref (ref_payout_id),
    UNIQUE KEY uq_payment_settlements_payout (payout_id),
    KEY ix_payment_settlements_status (payout_status, updated_at),
    CONSTRAINT fk_payment_settlements_request FOREIGN KEY (payment_request_id) REFERENCES payment_requests (id),
    CONSTRAINT ck_payment_settlements_net CHECK (net_amount + platform_fee = gross_amount)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE payment_webhooks (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    transmission_id VARCHAR(100) NULL,
    event_id VARCHAR(100) NULL,
    event_type VARCHAR(64) NULL,
    retried_count INT NULL,
    transmission_time VARCHAR(64) NULL,
    headers LONGTEXT NOT NULL,
    raw_body LONGTEXT NOT NULL,
    verification VARCHAR(24) NOT NULL,
    outcome VARCHAR(24) NOT NULL,
    detail VARCHAR(500) NULL,
    received_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    processed_at DATETIME(3) NULL,
    KEY ix_payment_webhooks_transmission (transmission_id),
    KEY ix_payment_webhooks_event (event_id),
    KEY ix_payment_webhooks_received (received_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A delivery is processed once: the first successful processing claims its key here.
CREATE TABLE webhook_receipts (
    dedupe_key VARCHAR(128) NOT NULL PRIMARY KEY,
    webhook_id BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE stores ADD COLUMN business_type VARCHAR(24) NULL AFTER holder_name,
    ADD COLUMN registered_by VARCHAR(64) NULL AFTER seller_status;
