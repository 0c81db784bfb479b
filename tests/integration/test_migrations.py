"""The migration run against real MariaDB: idempotent, one run at a time, and the account-number sealing step."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pymysql
import pytest
from moto import mock_aws

from escrow import config, crypto, migrate
from escrow.config import parse_database_url
from tests.support.databases import fresh_database, server_connection

ROOT = Path(__file__).resolve().parents[2]
ALL = sorted(p.stem for p in (ROOT / "layers/common/escrow/migrations").glob("*.sql"))


@pytest.fixture()
def url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with fresh_database("migrate") as database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("APP_ENV", "local")
        config.reset_settings()
        yield database_url
    monkeypatch.undo()
    config.reset_settings()


def _rows(url: str, sql: str, args: tuple = ()) -> list[dict]:
    conn = server_connection(parse_database_url(url).database, cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_a_fresh_database_gets_every_migration_once_and_a_second_run_applies_nothing(url: str) -> None:
    params = parse_database_url(url)
    assert migrate.status(params) == {"database": params.database, "applied": [], "pending": ALL}
    first = migrate.run_migrations(params)
    assert first.applied == ALL and first.current == ALL
    second = migrate.run_migrations(params)
    assert second.applied == [] and second.current == ALL
    assert migrate.status(params)["pending"] == []


def test_a_run_waits_for_the_named_lock_and_gives_up_clearly(url: str) -> None:
    params = parse_database_url(url)
    holder = server_connection()
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (migrate.lock_name(params.database),))
            assert cur.fetchone() == (1,)
        with pytest.raises(migrate.MigrationLocked, match="another migration run holds"):
            migrate.run_migrations(params, lock_timeout_seconds=1)
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
        cli = subprocess.run(
            [sys.executable, "-m", "escrow.migrate", "--database-url", url, "--lock-timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert cli.returncode == 75 and "another migration run holds" in cli.stderr
    finally:
        holder.close()  # the session ends: the server releases the lock
    assert migrate.run_migrations(params, lock_timeout_seconds=5).applied == ALL


def test_two_runs_at_once_apply_each_migration_exactly_once(url: str) -> None:
    params = parse_database_url(url)
    results: list[migrate.MigrationResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate.run_migrations(params, lock_timeout_seconds=30))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(len(r.applied) for r in results) == [0, len(ALL)]
    logged = _rows(url, "SELECT migration_id FROM _yoyo_migration")
    assert sorted(r["migration_id"] for r in logged) == ALL  # each once (applied_at_utc ties within a second)


def test_a_lock_row_left_by_a_killed_run_does_not_block_the_next_one(url: str) -> None:
    params = parse_database_url(url)
    migrate.run_migrations(params)
    conn = server_connection(params.database)
    try:
        with conn.cursor() as cur:  # yoyo's table lock, as a Lambda killed mid-run leaves it
            cur.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, NOW(), 4242)")
    finally:
        conn.close()
    assert migrate.run_migrations(params, lock_timeout_seconds=5).current == ALL
    assert _rows(url, "SELECT * FROM yoyo_lock") == []


def _insert_plain_stores(url: str, numbers: dict[str, str]) -> None:
    conn = server_connection(parse_database_url(url).database)
    try:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO stores (store_id, owner_id, bank_code, account_number, holder_name) "
                "VALUES (%s, 'owner', '088', %s, '홍길동')",
                list(numbers.items()),
            )
    finally:
        conn.close()


def _apply_schema_before_the_encryption_columns(url: str) -> None:
    """Bring a database to the state before 0003 (plain account numbers), as stages deployed before it are."""
    params = parse_database_url(url)
    migrate.run_migrations(params)
    conn = server_connection(params.database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "ALTER TABLE stores DROP COLUMN account_number_ciphertext, DROP COLUMN account_number_data_key, "
                "DROP COLUMN account_number_last4"
            )
            cur.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0003_encrypted_account_numbers'")
    finally:
        conn.close()


def test_plaintext_account_numbers_are_sealed_after_the_schema_migration_and_only_once(url: str) -> None:
    _apply_schema_before_the_encryption_columns(url)
    numbers = {f"store_{i:03d}": f"1101234{i:05d}" for i in range(1, 251)}  # more than two batches
    _insert_plain_stores(url, numbers)

    result = migrate.run_migrations(parse_database_url(url))
    assert result.applied == ["0003_encrypted_account_numbers"] and result.accounts_encrypted == 250

    rows = _rows(url, "SELECT * FROM stores ORDER BY store_id")
    assert all(r["account_number"] is None for r in rows)
    provider = crypto.key_provider()
    for row in rows[:5] + rows[-5:]:
        context = crypto.encryption_context("stores", "account_number", row["store_id"])
        sealed = crypto.Sealed(row["account_number_ciphertext"], row["account_number_data_key"])
        assert crypto.open_sealed(sealed, context, provider) == numbers[row["store_id"]]
        assert row["account_number_last4"] == numbers[row["store_id"]][-4:]
    other = crypto.encryption_context("stores", "account_number", rows[1]["store_id"])
    with pytest.raises(crypto.AccountCryptoError):
        crypto.open_sealed(
            crypto.Sealed(rows[0]["account_number_ciphertext"], rows[0]["account_number_data_key"]), other
        )

    again = migrate.run_migrations(parse_database_url(url))
    assert again.applied == [] and again.accounts_encrypted == 0
    assert _rows(url, "SELECT account_number_ciphertext FROM stores ORDER BY store_id") == [
        {"account_number_ciphertext": r["account_number_ciphertext"]} for r in rows
    ]


def test_sealing_uses_the_kms_key_when_deployed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _apply_schema_before_the_encryption_columns(url)
    _insert_plain_stores(url, {"store_kms": "110123456789"})
    with mock_aws():
        kms = boto3.client("kms", region_name="ap-northeast-2")
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        monkeypatch.setenv("APP_ENV", "dev")
        monkeypatch.setenv("DB_TLS", "disabled")  # the local MariaDB has no TLS; deployed stages require it
        monkeypatch.setenv("ACCOUNTS_KMS_KEY_ID", key_arn)
        config.reset_settings()
        assert migrate.run_migrations(parse_database_url(url)).accounts_encrypted == 1
        (row,) = _rows(url, "SELECT * FROM stores")
        sealed = crypto.Sealed(row["account_number_ciphertext"], row["account_number_data_key"])
        context = crypto.encryption_context("stores", "account_number", "store_kms")
        assert kms.decrypt(CiphertextBlob=sealed.data_key, EncryptionContext=context)["KeyId"] == key_arn
        assert crypto.open_sealed(sealed, context) == "110123456789"
