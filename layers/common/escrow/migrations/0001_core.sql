-- Core escrow schema: rooms, stores, payment requests, payments, orders, the money ledger and the outbox.
-- Money is integer KRW. Times are UTC, DATETIME(3).

CREATE TABLE chat_room_members (
    chat_room_id BIGINT NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    is_owner TINYINT(1) NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_room_id, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE stores (
    store_id VARCHAR(64) NOT NULL PRIMARY KEY,
    owner_id VARCHAR(64) NOT NULL,
    name VARCHAR(100) NULL,
    bank_code VARCHAR(3) NULL,
    account_number VARCHAR(20) NULL,
    holder_name VARCHAR(60) NULL,
    toss_seller_id VARCHAR(64) NULL,
    seller_status VARCHAR(32) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_stores_seller (toss_seller_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE payment_requests (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chat_room_id BIGINT NOT NULL,
    store_id VARCHAR(64) NOT NULL,
    requester_id VARCHAR(64) NOT NULL,
    amount INT UNSIGNED NOT NULL,
    message VARCHAR(500) NULL,
    status VARCHAR(16) NOT NULL,
    participant_count INT UNSIGNED NOT NULL,
    release_at DATETIME(3) NULL,
    expires_at DATETIME(3) NULL,
    completed_at DATETIME(3) NULL,
    closed_at DATETIME(3) NULL,
    closed_by VARCHAR(64) NULL,
    close_reason VARCHAR(200) NULL,
    -- At most one open (pending or completed) request per room, enforced by the database.
    open_room_id BIGINT AS (IF(status IN ('pending', 'completed'), chat_room_id, NULL)) STORED,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payment_requests_open_room (open_room_id),
    KEY ix_payment_requests_room (chat_room_id, id),
    KEY ix_payment_requests_release (status, release_at),
    KEY ix_payment_requests_expiry (status, expires_at),
    CONSTRAINT fk_payment_requests_store FOREIGN KEY (store_id) REFERENCES stores (store_id),
    CONSTRAINT ck_payment_requests_amount CHECK (amount > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per (request, payer): the share. order_id / payment_key are those of the live attempt.
CREATE TABLE payments (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_request_id BIGINT UNSIGNED NOT NULL,
    payer_id VARCHAR(64) NOT NULL,
    amount INT UNSIGNED NOT NULL,
    status VARCHAR(24) NOT NULL,
    order_id VARCHAR(64) NULL,
    payment_key VARCHAR(200) NULL,
    method VARCHAR(32) NULL,
    toss_method VARCHAR(32) NULL,
    toss_status VARCHAR(32) NULL,
    approved_at DATETIME(3) NULL,
    paid_amount INT UNSIGNED NOT NULL DEFAULT 0,
    refunded_amount INT UNSIGNED NOT NULL DEFAULT 0,
    secret VARCHAR(64) NULL,
    failure_code VARCHAR(64) NULL,
    failure_message VARCHAR(512) NULL,
    confirm_started_at DATETIME(3) NULL,
    last_toss_response LONGTEXT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payments_request_payer (payment_request_id, payer_id),
    UNIQUE KEY uq_payments_order (order_id),
    UNIQUE KEY uq_payments_payment_key (payment_key),
    KEY ix_payments_status (status, confirm_started_at),
    CONSTRAINT fk_payments_request FOREIGN KEY (payment_request_id) REFERENCES payment_requests (id),
    CONSTRAINT ck_payments_refund CHECK (refunded_amount <= paid_amount)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every orderId ever issued or used, so an orderId is never reused and every attempt can be reconciled.
CREATE TABLE payment_orders (
    order_id VARCHAR(64) NOT NULL PRIMARY KEY,
    payment_id BIGINT UNSIGNED NOT NULL,
    payer_id VARCHAR(64) NOT NULL,
    amount INT UNSIGNED NOT NULL,
    status VARCHAR(16) NOT NULL,
    payment_key VARCHAR(200) NULL,
    failure_code VARCHAR(64) NULL,
    failure_message VARCHAR(512) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payment_orders_payment_key (payment_key),
    KEY ix_payment_orders_status (status, updated_at),
    CONSTRAINT fk_payment_orders_payment FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The money ledger: every won that comes in or goes out, with who, when and why.
-- (entry_type, reference) is unique, so no movement can be recorded twice.
CREATE TABLE ledger_entries (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_request_id BIGINT UNSIGNED NOT NULL,
    payment_id BIGINT UNSIGNED NULL,
    entry_type VARCHAR(16) NOT NULL,
    amount INT UNSIGNED NOT NULL,
    reference VARCHAR(200) NOT NULL,
    actor VARCHAR(64) NOT NULL,
    reason VARCHAR(200) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_ledger_entries_reference (entry_type, reference),
    KEY ix_ledger_entries_request (payment_request_id),
    CONSTRAINT fk_ledger_entries_request FOREIGN KEY (payment_request_id) REFERENCES payment_requests (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Events to publish, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_type VARCHAR(64) NOT NULL,
    aggregate_id VARCHAR(64) NOT NULL,
    dedupe_key VARCHAR(128) NOT NULL,
    payload LONGTEXT NOT NULL,
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    last_error VARCHAR(500) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    published_at DATETIME(3) NULL,
    UNIQUE KEY uq_outbox_dedupe (dedupe_key),
    KEY ix_outbox_unpublished (published_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
