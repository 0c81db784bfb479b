-- Payouts wait for Toss's payout balance and back off after refusals; store registrations go to Toss from the
-- schedule (the `sellers` job) under a refSellerId unique by construction, one Idempotency-Key per attempt.

-- Why a scheduled payout waits (escrow.states.PayoutWaitingFor), how often Toss refused it in a row, and when it is
-- tried again (a growing back-off after a refusal).
ALTER TABLE payment_settlements
    ADD COLUMN payout_waiting_for VARCHAR(16) NULL AFTER payout_status,
    ADD COLUMN payout_refusals INT UNSIGNED NOT NULL DEFAULT 0 AFTER payout_attempts,
    ADD COLUMN payout_next_attempt_at DATETIME(3) NULL AFTER payout_lease_until,
    ADD KEY ix_payment_settlements_queue (payout_status, id),
    ADD KEY ix_payment_settlements_waiting (payout_waiting_for, payout_status);

-- The payout balance Toss showed (GET /v2/balances) when the payout job last read it: one row, id 1. The status
-- answer shows it beside a payout that waits for it. Amounts are signed: a refund after a payout can take the
-- balance below zero.
CREATE TABLE payout_balance (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    available_amount BIGINT NOT NULL,
    pending_amount BIGINT NOT NULL,
    checked_at DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A store's seller at Toss payouts v2. The registration's content is kept until the sellers job has sent it
-- (email and phone are the seller's contact for Toss's KYC; never logged, never answered whole).
-- seller_seq numbers every store once; refSellerId is `{TOSS_ID_PREFIX}-st{seller_seq}`, written once and unique.
ALTER TABLE stores
    ADD COLUMN seller_seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    ADD UNIQUE KEY uq_stores_seller_seq (seller_seq),
    ADD COLUMN ref_seller_id VARCHAR(20) NULL AFTER holder_name,
    ADD UNIQUE KEY uq_stores_ref_seller (ref_seller_id),
    ADD COLUMN email VARCHAR(100) NULL AFTER business_type,
    ADD COLUMN phone VARCHAR(11) NULL AFTER email,
    ADD COLUMN company_name VARCHAR(100) NULL AFTER phone,
    ADD COLUMN representative_name VARCHAR(60) NULL AFTER company_name,
    ADD COLUMN business_registration_number CHAR(10) NULL AFTER representative_name,
    ADD COLUMN seller_registration VARCHAR(16) NULL AFTER seller_status,
    ADD COLUMN seller_request_hash CHAR(64) NULL AFTER seller_registration,
    ADD COLUMN seller_attempts INT UNSIGNED NOT NULL DEFAULT 0 AFTER seller_request_hash,
    ADD COLUMN seller_refusals INT UNSIGNED NOT NULL DEFAULT 0 AFTER seller_attempts,
    ADD COLUMN seller_lease_until DATETIME(3) NULL AFTER seller_refusals,
    ADD COLUMN seller_next_attempt_at DATETIME(3) NULL AFTER seller_lease_until,
    ADD COLUMN seller_error_code VARCHAR(64) NULL AFTER seller_next_attempt_at,
    ADD COLUMN seller_error_message VARCHAR(512) NULL AFTER seller_error_code,
    ADD KEY ix_stores_seller_registration (seller_registration, seller_next_attempt_at);

-- Stores registered before this migration: their seller exists at Toss; their bank_code was the brief's code.
-- Bank codes are now kept as the 3-digit standard code of the bank (escrow.banks), mapped bank by bank: the brief's
-- 04 is KB (004) and 05 is 하나 (081); the brief's other codes name the bank whose standard code they end.
UPDATE stores SET seller_registration = 'registered' WHERE toss_seller_id IS NOT NULL;
UPDATE stores SET bank_code = CASE bank_code
    WHEN '04' THEN '004' WHEN '05' THEN '081' WHEN '88' THEN '088' WHEN '20' THEN '020' WHEN '11' THEN '011'
    WHEN '03' THEN '003' WHEN '23' THEN '023' WHEN '27' THEN '027' WHEN '32' THEN '032' WHEN '31' THEN '031'
    WHEN '34' THEN '034' WHEN '35' THEN '035' WHEN '39' THEN '039' WHEN '92' THEN '092' WHEN '89' THEN '089'
    WHEN '90' THEN '090' WHEN '45' THEN '045' WHEN '07' THEN '007' WHEN '50' THEN '050' WHEN '71' THEN '071'
    WHEN '64' THEN '064' ELSE bank_code END
WHERE bank_code IS NOT NULL AND CHAR_LENGTH(bank_code) = 2;
