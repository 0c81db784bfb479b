-- Money follows what the room asked for (issue 7).
--
-- * A share may be paid by several Toss payments: a payer pays again after a refund (the whole amount, or the
--   refunded difference). `payment_charges` holds every Toss payment that funds a share, bound to its share only
--   once Toss has confirmed the (paymentKey, orderId) pair; before that, an order only remembers the paymentKey
--   it was tried with (not unique: someone else's paymentKey sent with your orderId must not take it).
-- * Membership comes from the chat service (`chat_rooms` + `chat_room_members`), never from a caller's word.
-- * A share can be removed from an open request (its money refunded); participants can be added.
-- * A request is funded exactly while every current participant's share is fully held; each funding is a round,
--   announced once (EscrowFunded) and corrected once when it ends (EscrowUnfunded).
-- * Refunds are asked of Toss with a new Idempotency-Key after a definite error (`attempt`), never after no answer.
-- * The scheduled jobs set aside an item that fails, with its error, and carry on (`job_failures`).

CREATE TABLE chat_rooms (
    chat_room_id BIGINT NOT NULL PRIMARY KEY,
    owner_id VARCHAR(64) NOT NULL,
    -- The chat service's version of the membership; an older event than the one applied is ignored.
    membership_version BIGINT NOT NULL DEFAULT 0,
    updated_by VARCHAR(64) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Rooms whose member rows name exactly one owner become known rooms; any other room stays unknown (refused).
INSERT INTO chat_rooms (chat_room_id, owner_id, updated_by)
SELECT chat_room_id, MIN(user_id), 'migration' FROM chat_room_members WHERE is_owner = 1
GROUP BY chat_room_id HAVING COUNT(*) = 1;

CREATE TABLE payment_charges (
    payment_key VARCHAR(200) NOT NULL PRIMARY KEY,
    order_id VARCHAR(64) NOT NULL,
    payment_id BIGINT UNSIGNED NOT NULL,
    payment_request_id BIGINT UNSIGNED NOT NULL,
    amount INT UNSIGNED NOT NULL,
    refunded_amount INT UNSIGNED NOT NULL DEFAULT 0,
    status VARCHAR(24) NOT NULL,
    toss_status VARCHAR(32) NULL,
    toss_method VARCHAR(32) NULL,
    secret VARCHAR(64) NULL,
    approved_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_payment_charges_order (order_id),
    KEY ix_payment_charges_payment (payment_id, status),
    KEY ix_payment_charges_request (payment_request_id),
    CONSTRAINT fk_payment_charges_payment FOREIGN KEY (payment_id) REFERENCES payments (id),
    CONSTRAINT ck_payment_charges_refund CHECK (refunded_amount <= amount)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every share paid so far had one charge: its live order and paymentKey.
INSERT INTO payment_charges (payment_key, order_id, payment_id, payment_request_id, amount, refunded_amount, status,
                             toss_status, toss_method, secret, approved_at)
SELECT payment_key, order_id, id, payment_request_id, paid_amount, refunded_amount,
       CASE status WHEN 'released' THEN 'released' WHEN 'refunded' THEN 'refunded' ELSE 'held' END,
       toss_status, toss_method, secret, approved_at
FROM payments WHERE paid_amount > 0 AND payment_key IS NOT NULL AND order_id IS NOT NULL
  AND status IN ('completed', 'partially_refunded', 'released', 'refunded');

-- An order remembers the paymentKey it was tried with; only a charge binds a paymentKey for good.
-- An order's confirm is asked again with a new Idempotency-Key only after a Toss answer with an error code (Toss
-- replays the first answer for a key, errors included): `confirm_attempt` counts those keys, `refund_attempt` the
-- keys of the cancel of a charge we must not keep.
ALTER TABLE payment_orders DROP INDEX uq_payment_orders_payment_key, ADD KEY ix_payment_orders_payment_key (payment_key),
    ADD COLUMN confirm_attempt INT UNSIGNED NOT NULL DEFAULT 0 AFTER failure_message,
    ADD COLUMN refund_attempt INT UNSIGNED NOT NULL DEFAULT 0 AFTER confirm_attempt;

-- The share's payment_key is its latest charge's; an attempt's key lives on its order.
UPDATE payments SET payment_key = NULL WHERE status IN ('pending', 'in_progress', 'unknown', 'failed');

ALTER TABLE payments
    ADD COLUMN removed_at DATETIME(3) NULL AFTER confirm_started_at,
    ADD COLUMN removed_by VARCHAR(64) NULL AFTER removed_at;

ALTER TABLE payment_requests
    ADD COLUMN funding_round INT UNSIGNED NOT NULL DEFAULT 0 AFTER participant_count;
UPDATE payment_requests SET funding_round = 1 WHERE status IN ('completed', 'released');

-- A refund is of one charge; after a definite error it is asked again with a new key (attempt + 1), after a
-- back-off.
ALTER TABLE payment_cancels
    ADD COLUMN payment_key VARCHAR(200) NULL AFTER payment_request_id,
    ADD COLUMN attempt INT UNSIGNED NOT NULL DEFAULT 1 AFTER status,
    ADD COLUMN next_attempt_at DATETIME(3) NULL AFTER attempt,
    ADD KEY ix_payment_cancels_charge (payment_key, status);
UPDATE payment_cancels c JOIN payments p ON p.id = c.payment_id SET c.payment_key = p.payment_key
WHERE c.payment_key IS NULL;

CREATE TABLE job_failures (
    job VARCHAR(32) NOT NULL,
    item_kind VARCHAR(32) NOT NULL,
    item_id VARCHAR(200) NOT NULL,
    error VARCHAR(500) NOT NULL,
    attempts INT UNSIGNED NOT NULL DEFAULT 1,
    first_failed_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_failed_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    next_attempt_at DATETIME(3) NOT NULL,
    PRIMARY KEY (job, item_kind, item_id),
    KEY ix_job_failures_next (job, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
