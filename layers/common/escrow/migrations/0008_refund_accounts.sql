-- The payer's bank account a deposited virtual-account payment is refunded to (Toss's refundReceiveAccount): one per
-- charge, given by the payer on the cancel route, kept only until the refund that needs it is done (or Toss refuses
-- it, or the share's money is released). The account number and the holder's name are sealed together (escrow.crypto, envelope encryption; the context
-- names this table, the column `account` and the row's paymentKey); the bank's Toss code and the number's last four
-- digits stay in clear for masked answers. Only the refund paths open it.
CREATE TABLE refund_accounts (
    payment_key VARCHAR(200) NOT NULL PRIMARY KEY,
    payment_id BIGINT UNSIGNED NOT NULL,
    bank_code VARCHAR(8) NOT NULL,
    account_ciphertext VARBINARY(512) NOT NULL,
    account_data_key VARBINARY(512) NOT NULL,
    account_number_last4 CHAR(4) NOT NULL,
    given_by VARCHAR(64) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY ix_refund_accounts_payment (payment_id),
    CONSTRAINT fk_refund_accounts_payment FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
