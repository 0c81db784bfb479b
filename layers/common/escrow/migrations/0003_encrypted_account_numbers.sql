-- Account numbers at rest are sealed with envelope encryption (escrow.crypto): the AES-GCM ciphertext, the data key
-- encrypted by KMS (or the local development key), and the last four digits for masked answers. The plaintext
-- column stays for now and is emptied row by row by the step that runs after the schema migrations
-- (escrow.migrate.encrypt_plaintext_accounts); a later migration drops it once every stage has run that step.

ALTER TABLE stores
    ADD COLUMN account_number_ciphertext VARBINARY(128) NULL AFTER account_number,
    ADD COLUMN account_number_data_key VARBINARY(512) NULL AFTER account_number_ciphertext,
    ADD COLUMN account_number_last4 CHAR(4) NULL AFTER account_number_data_key;
