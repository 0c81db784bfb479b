"""Envelope encryption of account numbers: KMS (moto) and the local development key."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from escrow import config, crypto
from escrow.crypto import AccountCryptoError, KmsKeyProvider, LocalKeyProvider, Sealed

STORE_1 = crypto.encryption_context("stores", "account_number", "store_1")
STORE_2 = crypto.encryption_context("stores", "account_number", "store_2")


@pytest.fixture()
def kms():
    with mock_aws():
        client = boto3.client("kms", region_name="ap-northeast-2")
        key_arn = client.create_key(Description="escrow accounts (test)")["KeyMetadata"]["Arn"]
        yield client, key_arn


def test_a_sealed_number_opens_with_its_own_context_under_kms(kms) -> None:
    client, key_arn = kms
    provider = KmsKeyProvider(key_arn, client=client)
    sealed = crypto.seal("110123456789", STORE_1, provider)
    assert b"110123456789" not in sealed.ciphertext + sealed.data_key
    assert len(sealed.ciphertext) == 12 + len("110123456789") + 16  # nonce + ciphertext + GCM tag
    assert crypto.open_sealed(sealed, STORE_1, provider) == "110123456789"


def test_each_value_gets_its_own_data_key(kms) -> None:
    client, key_arn = kms
    provider = KmsKeyProvider(key_arn, client=client)
    first, second = crypto.seal("110123456789", STORE_1, provider), crypto.seal("110123456789", STORE_1, provider)
    assert first.data_key != second.data_key and first.ciphertext != second.ciphertext


def test_kms_refuses_a_value_moved_to_another_row(kms) -> None:
    client, key_arn = kms
    provider = KmsKeyProvider(key_arn, client=client)
    sealed = crypto.seal("110123456789", STORE_1, provider)
    with pytest.raises(AccountCryptoError, match="KMS refused"):
        crypto.open_sealed(sealed, STORE_2, provider)


def test_a_ciphertext_paired_with_another_rows_data_key_does_not_open(kms) -> None:
    client, key_arn = kms
    provider = KmsKeyProvider(key_arn, client=client)
    one, two = crypto.seal("110123456789", STORE_1, provider), crypto.seal("220123456789", STORE_2, provider)
    with pytest.raises(AccountCryptoError):
        crypto.open_sealed(Sealed(ciphertext=two.ciphertext, data_key=one.data_key), STORE_1, provider)


def test_kms_errors_do_not_leak_the_value(kms) -> None:
    client, _ = kms
    provider = KmsKeyProvider("arn:aws:kms:ap-northeast-2:123456789012:key/does-not-exist", client=client)
    with pytest.raises(AccountCryptoError) as caught:
        crypto.seal("110123456789", STORE_1, provider)
    assert "110123456789" not in str(caught.value)


def test_the_local_provider_binds_the_context_and_detects_tampering() -> None:
    provider = LocalKeyProvider()
    sealed = crypto.seal("110123456789", STORE_1, provider)
    assert crypto.open_sealed(sealed, STORE_1, provider) == "110123456789"
    with pytest.raises(AccountCryptoError):
        crypto.open_sealed(sealed, STORE_2, provider)
    flipped = bytes([sealed.ciphertext[-1] ^ 1])
    with pytest.raises(AccountCryptoError):
        crypto.open_sealed(Sealed(sealed.ciphertext[:-1] + flipped, sealed.data_key), STORE_1, provider)
    with pytest.raises(AccountCryptoError):
        crypto.open_sealed(sealed, STORE_1, LocalKeyProvider(b"\x01" * 32))


def test_local_and_kms_data_keys_are_told_apart(kms) -> None:
    client, key_arn = kms
    local_sealed = crypto.seal("110123456789", STORE_1, LocalKeyProvider())
    with pytest.raises(AccountCryptoError, match="local development key"):
        crypto.open_sealed(local_sealed, STORE_1, KmsKeyProvider(key_arn, client=client))
    kms_sealed = crypto.seal("110123456789", STORE_1, KmsKeyProvider(key_arn, client=client))
    with pytest.raises(AccountCryptoError, match="not sealed with the local key"):
        crypto.open_sealed(kms_sealed, STORE_1, LocalKeyProvider())


def test_sealed_values_never_print_their_bytes() -> None:
    sealed = crypto.seal("110123456789", STORE_1, LocalKeyProvider())
    assert repr(sealed).startswith("Sealed(ciphertext=<40 bytes>")


@pytest.fixture()
def env(monkeypatch):
    yield monkeypatch
    monkeypatch.undo()
    config.reset_settings()


def test_the_provider_is_kms_when_a_key_is_configured_and_local_only_in_local(env, kms) -> None:
    _, key_arn = kms
    env.setenv("APP_ENV", "local")
    env.delenv("ACCOUNTS_KMS_KEY_ID", raising=False)
    env.delenv("ACCOUNTS_LOCAL_KEY", raising=False)
    config.reset_settings()
    assert isinstance(crypto.key_provider(), LocalKeyProvider)
    env.setenv("APP_ENV", "prod")
    config.reset_settings()
    with pytest.raises(AccountCryptoError, match="ACCOUNTS_KMS_KEY_ID"):
        crypto.key_provider()
    env.setenv("ACCOUNTS_KMS_KEY_ID", key_arn)
    config.reset_settings()
    provider = crypto.key_provider()
    assert isinstance(provider, KmsKeyProvider) and provider.key_id == key_arn
    assert crypto.open_sealed(crypto.seal("110123456789", STORE_1), STORE_1) == "110123456789"


def test_a_local_key_can_be_given_and_must_be_32_bytes(env) -> None:
    env.setenv("APP_ENV", "local")
    env.setenv("ACCOUNTS_LOCAL_KEY", "ab" * 32)
    config.reset_settings()
    sealed = crypto.seal("110123456789", STORE_1)
    assert crypto.open_sealed(sealed, STORE_1, LocalKeyProvider(bytes.fromhex("ab" * 32))) == "110123456789"
    env.setenv("ACCOUNTS_LOCAL_KEY", "abcd")
    config.reset_settings()
    with pytest.raises(ValueError, match="64 hex"):
        config.get_settings()
