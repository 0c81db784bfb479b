"""Store registration stores the account number sealed (escrow.crypto), against real MariaDB and the Toss sandbox;
only the payout path opens it: the schedule's sellers job (to register the seller with Toss) and
payout_account_number."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from escrow import config, crypto
from escrow.auth import Principal
from escrow.errors import UpstreamUnavailable
from escrow.models import RegisterStoreBody
from escrow.services import stores as store_service
from escrow.toss.client import TossClient

ADMIN = Principal("ops_admin", is_admin=True)
NUMBER = "110123456789"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    from toss_sandbox import start_sandbox

    sb = start_sandbox(host="127.0.0.1", port=0)
    yield sb
    sb.stop()


@pytest.fixture()
def toss(sandbox: Any) -> TossClient:
    from toss_sandbox import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY

    return TossClient(sandbox.url, DEFAULT_SECRET_KEYS[0], security_key=DEFAULT_SECURITY_KEY, read_timeout=5)


def _body(store_id: str) -> RegisterStoreBody:
    return RegisterStoreBody(
        store_id=store_id,
        owner_id=f"owner_of_{store_id}",
        bank_code="88",
        account_number=NUMBER,
        holder_name="홍길동",
        email="owner@example.com",
        phone="01012345678",
    )


def _register(store_id: str, toss: TossClient) -> dict[str, Any]:
    """The admin's registration (answered at once, the seller pending), then the schedule's sellers job."""
    status, answer = store_service.register_store(ADMIN, _body(store_id))
    assert (status, answer["registration_status"]) == (202, "pending")
    store_service.register_due_sellers(toss=toss)
    return store_service.get_store(ADMIN, store_id)


def _row(sql, store_id: str) -> dict[str, Any]:
    with sql.cursor() as cur:
        cur.execute("SELECT * FROM stores WHERE store_id = %s", (store_id,))
        return cur.fetchone()


def test_a_registered_account_number_is_stored_sealed_and_only_its_last_digits_in_clear(
    database_url: str, sql, toss: TossClient, sandbox: Any, caplog
) -> None:
    store_id = f"st_{uuid.uuid4().hex[:10]}"
    answer = _register(store_id, toss)

    assert answer["account_number_masked"] == "********6789" and answer["registration_status"] == "registered"
    row = _row(sql, store_id)
    assert row["account_number"] is None and row["account_number_last4"] == "6789"
    assert NUMBER.encode() not in bytes(row["account_number_ciphertext"]) + bytes(row["account_number_data_key"])
    assert NUMBER not in caplog.text
    # Toss received the number in clear, once, from the sellers job.
    assert toss.get_seller(answer["seller_id"])["account"]["accountNumber"] == NUMBER
    assert store_service.payout_account_number(store_id) == NUMBER


def test_a_sealed_number_copied_to_another_store_does_not_open(database_url: str, sql, toss: TossClient) -> None:
    first, second = f"st_{uuid.uuid4().hex[:10]}", f"st_{uuid.uuid4().hex[:10]}"
    _register(first, toss)
    _register(second, toss)
    with sql.cursor() as cur:  # an attacker with write access moves one store's sealed number onto another
        cur.execute(
            "UPDATE stores s JOIN stores f ON f.store_id = %s SET s.account_number_ciphertext = "
            "f.account_number_ciphertext, s.account_number_data_key = f.account_number_data_key "
            "WHERE s.store_id = %s",
            (first, second),
        )
    with pytest.raises(crypto.AccountCryptoError):
        store_service.payout_account_number(second)


@pytest.fixture()
def deployed_kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    with mock_aws():
        kms = boto3.client("kms", region_name="ap-northeast-2")
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        monkeypatch.setenv("APP_ENV", "dev")
        monkeypatch.setenv("DB_TLS", "disabled")  # the local MariaDB has no TLS; deployed stages require it
        monkeypatch.setenv("JWT_SECRET", "not-used-here-but-required-outside-local-0123456789")
        monkeypatch.setenv("ACCOUNTS_KMS_KEY_ID", key_arn)
        config.reset_settings()
        yield kms, key_arn
    monkeypatch.undo()
    config.reset_settings()


def test_deployed_registration_seals_with_the_kms_key(database_url: str, sql, toss: TossClient, deployed_kms) -> None:
    kms, key_arn = deployed_kms
    store_id = f"st_{uuid.uuid4().hex[:10]}"
    store_service.register_store(ADMIN, _body(store_id))
    row = _row(sql, store_id)
    context = crypto.encryption_context("stores", "account_number", store_id)
    data_key = kms.decrypt(CiphertextBlob=bytes(row["account_number_data_key"]), EncryptionContext=context)
    assert data_key["KeyId"] == key_arn
    assert store_service.payout_account_number(store_id) == NUMBER


def test_registration_stops_before_toss_when_the_key_service_fails(
    database_url: str, sql, toss: TossClient, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        monkeypatch.setenv("APP_ENV", "dev")
        monkeypatch.setenv("DB_TLS", "disabled")
        monkeypatch.setenv("ACCOUNTS_KMS_KEY_ID", "arn:aws:kms:ap-northeast-2:123456789012:key/missing")
        config.reset_settings()
        store_id = f"st_{uuid.uuid4().hex[:10]}"
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                store_service.register_store(ADMIN, _body(store_id))
        finally:
            monkeypatch.undo()
            config.reset_settings()
    assert caught.value.code == "ENCRYPTION_UNAVAILABLE" and NUMBER not in str(caught.value)
    assert _row(sql, store_id) is None  # nothing written, and Toss was not asked
