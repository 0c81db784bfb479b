"""Apply the versioned SQL migrations in escrow/migrations with yoyo, then seal plaintext account numbers.

`python -m escrow.migrate` locally (`make migrate`); deployed, the MigrateFunction runs the same
:func:`run_migrations` as a CloudFormation custom resource on every deploy that changes the layer, and by hand.
Creates the database first when it does not exist. Uses DATABASE_URL (or the DB secret when deployed) and the
same TLS policy as every other connection (escrow.db.connect_kwargs).

Two runs never interleave: the whole run holds the MySQL named lock ``escrow.migrations:<database>``
(GET_LOCK; names are server-wide, so the database is part of it) on a connection of its own. A named lock
belongs to the session, so the server releases it when a killed run's connection drops (yoyo's own lock is a
table row, which a killed Lambda would leave behind for ever; under the named lock such a row is known to be
stale and is removed). Through RDS Proxy, GET_LOCK pins that one client connection to one database connection
until it closes; it is the migration's own short-lived connection, so the API functions' connections stay
multiplexed and the proxy loses one backend connection for the seconds a migration takes. (MySQL DDL is not
transactional: a migration that fails half way must be written so that running it again finishes it, or be
repaired by hand; the run reports the failing statement.)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from escrow.config import DatabaseParams, database_params, get_settings, parse_database_url

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_PREFIX = "escrow.migrations:"
BACKFILL_BATCH = 100


class MigrationLocked(Exception):
    """Another migration run holds the lock (a concurrent deploy, or someone running it by hand)."""


@dataclass
class MigrationResult:
    database: str
    applied: list[str] = field(default_factory=list)  # applied by this run, in order
    current: list[str] = field(default_factory=list)  # every migration applied to the database, in order
    accounts_encrypted: int = 0  # plaintext account numbers sealed by this run
    seconds: float = 0.0

    def summary(self) -> str:
        applied = f": {', '.join(self.applied)}" if self.applied else ""
        return (
            f"database {self.database}: {len(self.applied)} migration(s) applied{applied}; "
            f"now at {self.current[-1] if self.current else '(none)'}; "
            f"{self.accounts_encrypted} plaintext account number(s) encrypted; {self.seconds:.1f}s"
        )


def _connect(params: DatabaseParams, *, database: str | None, **options: Any) -> pymysql.connections.Connection:
    from escrow.db import open_connection  # TLS policy, timeouts

    return open_connection(params, database=database, **options)


def create_database(params: DatabaseParams) -> None:
    conn = _connect(params, database=None, autocommit=True)
    try:
        with conn.cursor() as cur:
            # The name cannot be a parameter; it comes from our own configuration and is quoted as an identifier.
            name = params.database.replace("`", "``")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        conn.close()


def lock_name(database: str) -> str:
    """The named lock of one database's migrations (MySQL allows 64 characters; a long name is hashed)."""
    name = LOCK_PREFIX + database
    return name if len(name) <= 64 else LOCK_PREFIX + hashlib.sha256(database.encode()).hexdigest()[:40]


@contextmanager
def migration_lock(params: DatabaseParams, timeout_seconds: int) -> Iterator[None]:
    """Hold the named lock for the run; MigrationLocked if another run keeps it past ``timeout_seconds``."""
    name = lock_name(params.database)
    conn = _connect(params, database=None, autocommit=True, read_timeout=timeout_seconds + 30)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s)", (name, timeout_seconds))
            row = cur.fetchone()
            got = row[0] if row else None  # 1 = ours, 0 = timed out, NULL = error
        if got != 1:
            raise MigrationLocked(f"another migration run holds {name!r} (waited {timeout_seconds}s)")
        try:
            yield
        finally:
            with conn.cursor() as release:
                release.execute("SELECT RELEASE_LOCK(%s)", (name,))
    finally:
        conn.close()


def _backend(params: DatabaseParams) -> Any:
    from yoyo.backends.core.mysql import MySQLBackend
    from yoyo.connections import parse_uri
    from yoyo.migrations import default_migration_table

    class EscrowMySQLBackend(MySQLBackend):  # type: ignore[misc]  # yoyo is untyped: its class is Any to mypy
        """yoyo's MySQL backend on a connection opened with our TLS policy (yoyo's own ignores it)."""

        def connect(self, dburi: Any) -> Any:
            return _connect(params, database=params.database)

    # The URI only names the database for yoyo; the password never goes into it.
    backend = EscrowMySQLBackend(
        parse_uri(f"mysql://{params.host}:{params.port}/{params.database}"), default_migration_table
    )
    backend.init_database()
    return backend


def apply_migrations(params: DatabaseParams, *, lock_timeout_seconds: int = 120) -> MigrationResult:
    """Create the database if needed and apply what is pending, under the named lock. Idempotent."""
    from yoyo import read_migrations

    started = time.monotonic()
    result = MigrationResult(database=params.database)
    create_database(params)
    with migration_lock(params, lock_timeout_seconds):
        backend = _backend(params)
        try:
            backend.break_lock()  # a row left by a killed run: nobody else can hold it while we hold the named lock
            migrations = read_migrations(str(MIGRATIONS))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
            result.applied = [m.id for m in pending]
            applied_hashes = set(backend.get_applied_migration_hashes())
            result.current = [m.id for m in migrations if m.hash in applied_hashes]
        finally:
            backend.connection.close()
    result.seconds = time.monotonic() - started
    return result


def encrypt_plaintext_accounts(params: DatabaseParams, *, batch: int = BACKFILL_BATCH) -> int:
    """Seal every store account number still in plain text (escrow.crypto), in batches. Idempotent.

    Each batch locks its rows (FOR UPDATE ... SKIP LOCKED would skip a registration in flight; plain FOR UPDATE
    waits for it), writes ciphertext, data key and last four digits, and empties the plaintext column in the same
    transaction, so a row is never both or neither. A run that stops half way leaves sealed and plain rows; the next
    run seals the rest."""
    from escrow import crypto

    provider = crypto.key_provider()
    sealed_count = 0
    conn = _connect(params, database=params.database, autocommit=False)
    try:
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT store_id, account_number FROM stores "
                    "WHERE account_number IS NOT NULL AND account_number_ciphertext IS NULL "
                    "ORDER BY store_id LIMIT %s FOR UPDATE",
                    (batch,),
                )
                rows = cur.fetchall()
                for store_id, number in rows:
                    context = crypto.encryption_context("stores", "account_number", store_id)
                    sealed = crypto.seal(number, context, provider)
                    cur.execute(
                        "UPDATE stores SET account_number_ciphertext = %s, account_number_data_key = %s, "
                        "account_number_last4 = %s, account_number = NULL "
                        "WHERE store_id = %s AND account_number_ciphertext IS NULL",
                        (sealed.ciphertext, sealed.data_key, crypto.last4(number), store_id),
                    )
            conn.commit()
            sealed_count += len(rows)
            if len(rows) < batch:
                return sealed_count
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def status(params: DatabaseParams) -> dict[str, Any]:
    """What is applied and what is pending, read only (no lock, no table created)."""
    from yoyo import read_migrations
    from yoyo.migrations import default_migration_table

    migrations = read_migrations(str(MIGRATIONS))
    applied_hashes: set[str] = set()
    try:
        conn = _connect(params, database=params.database, autocommit=True)
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == 1049:  # unknown database: nothing applied yet
            conn = None
        else:
            raise
    if conn is not None:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT migration_hash FROM `{default_migration_table}`")
                applied_hashes = {row[0] for row in cur.fetchall()}
        except pymysql.err.ProgrammingError as exc:
            if not (exc.args and exc.args[0] == 1146):  # no migration table yet
                raise
        finally:
            conn.close()
    return {
        "database": params.database,
        "applied": [m.id for m in migrations if m.hash in applied_hashes],
        "pending": [m.id for m in migrations if m.hash not in applied_hashes],
    }


def run_migrations(params: DatabaseParams | None = None, *, lock_timeout_seconds: int = 120) -> MigrationResult:
    """Schema migrations, then the step that seals plaintext account numbers: what deploys and `make migrate` run."""
    params = params or database_params()
    started = time.monotonic()
    result = apply_migrations(params, lock_timeout_seconds=lock_timeout_seconds)
    result.accounts_encrypted = encrypt_plaintext_accounts(params)
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    parser.add_argument("--lock-timeout", type=int, default=120, help="seconds to wait for another run's lock")
    args = parser.parse_args(argv)
    params = parse_database_url(args.database_url) if args.database_url else database_params()
    get_settings()  # refuse bad settings before touching the database
    try:
        result = run_migrations(params, lock_timeout_seconds=args.lock_timeout)
    except MigrationLocked as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again when the other run has finished
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
