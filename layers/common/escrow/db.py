"""MySQL access: one connection per container (per thread), a transaction helper, errors mapped to 503.

On Lambda a container runs one invocation at a time, so "per thread" is "per container"; the local API runs a
fixed pool of worker threads to behave the same way. There are no per-request SET statements, user variables or
GET_LOCK calls, so RDS Proxy can multiplex these connections (the one GET_LOCK, in escrow.migrate, is on the
migration's own short-lived connection).

TLS: deployed, every connection verifies the server (CA bundle + host name) and refuses plain text
(``DB_TLS=required``, the default unless APP_ENV=local); locally MariaDB is reached in plain text.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.err import IntegrityError, OperationalError

from escrow.config import DatabaseParams, Settings, database_params, get_settings, settings_generation
from escrow.errors import DatabaseUnavailable

Row = dict[str, Any]

# Errors that mean "the server or the connection is gone": the request gets a 503 and nothing was committed.
_CONNECTION_ERRORS = {2002, 2003, 2006, 2013, 2014, 2055, 1040, 1053, 1927}
DEADLOCK, LOCK_WAIT_TIMEOUT, DUPLICATE_KEY = 1213, 1205, 1062
ACCESS_DENIED = 1045

# Amazon RDS's CAs (Aurora/RDS instances) and Amazon Trust Services' roots (RDS Proxy): see certs/PROVENANCE.md.
DEFAULT_CA_BUNDLE = Path(__file__).with_name("certs") / "rds-ca-bundle.pem"

_local = threading.local()


class Stats:
    """SQL statements issued, counted per thread (the benchmark reads it; it costs an integer add)."""

    @property
    def statements(self) -> int:
        return int(getattr(_local, "statements", 0))

    def reset(self) -> None:
        _local.statements = 0


stats = Stats()


@lru_cache(maxsize=4)
def tls_context(ca_bundle: str) -> ssl.SSLContext:
    """Verify the server's chain against ``ca_bundle`` and its name against the host we dial; TLS 1.2 or later.

    Cached per bundle path: loading ~90 certificates costs a few milliseconds, once per container."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_bundle)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect_kwargs(params: DatabaseParams, settings: Settings) -> dict[str, Any]:
    """pymysql.connect arguments for ``params``: TLS verified and required, or explicitly off (local only)."""
    kwargs: dict[str, Any] = {
        "host": params.host,
        "port": params.port,
        "user": params.user,
        "password": params.password,
        "database": params.database,
        "charset": "utf8mb4",
        "connect_timeout": settings.db_connect_timeout,
        "read_timeout": settings.db_read_timeout,
        "write_timeout": settings.db_write_timeout,
    }
    if settings.db_tls_required:
        # An SSLContext makes pymysql require TLS: a server that does not offer it is refused (CR 2026).
        kwargs["ssl"] = tls_context(settings.db_ca_bundle or str(DEFAULT_CA_BUNDLE))
    elif settings.app_env == "prod":
        raise ValueError("DB_TLS=disabled is refused in prod: the database is only reached over verified TLS")
    else:
        kwargs["ssl_disabled"] = True  # pymysql would otherwise try TLS without verifying anything
    return kwargs


def open_connection(params: DatabaseParams, **overrides: Any) -> pymysql.connections.Connection:
    """A new connection with the configured TLS policy (migrations use it with their own cursor class)."""
    kwargs = connect_kwargs(params, get_settings())
    kwargs.update(overrides)
    return pymysql.connect(**kwargs)


def _connect() -> pymysql.connections.Connection:
    settings = get_settings()
    options = {"autocommit": True, "cursorclass": pymysql.cursors.DictCursor}
    try:
        try:
            return open_connection(database_params(), **options)
        except OperationalError as exc:
            # A rotated DB secret: the cached password is refused until the cache expires. Read it again, once.
            if not (settings.db_secret_arn and exc.args and exc.args[0] == ACCESS_DENIED):
                raise
            return open_connection(database_params(refresh=True), **options)
    except OperationalError as exc:
        raise DatabaseUnavailable("the database is not reachable; try again shortly") from exc


def connection() -> pymysql.connections.Connection:
    conn = getattr(_local, "conn", None)
    if conn is not None and getattr(_local, "generation", None) != settings_generation():
        close()
        conn = None
    if conn is not None and getattr(_local, "needs_ping", False):
        # First use in this invocation: a frozen container's connection may have been dropped (2006/2013).
        _local.needs_ping = False
        try:
            conn.ping(reconnect=False)
        except OperationalError:
            close()
            conn = None
    if conn is None or not conn.open:
        conn = _connect()
        _local.conn = conn
        _local.generation = settings_generation()
        _local.needs_ping = False
    return conn


def new_invocation() -> None:
    """Mark the start of an invocation; the connection is checked on its first use, not before."""
    _local.needs_ping = True
    _local.saved = False  # a transaction of this invocation committed (or may have: its COMMIT got no answer)


def unavailable(code: str = "DATABASE_UNAVAILABLE") -> DatabaseUnavailable:
    """The 503 for a lost database, saying what is true: nothing was changed, unless this invocation committed a
    transaction (or sent a COMMIT whose answer never came). Then the change may be saved, and the same request
    repeated answers its outcome (every operation is idempotent on its natural keys)."""
    if getattr(_local, "saved", False):
        return DatabaseUnavailable(
            "the database connection was lost after this request may have saved its change; repeat the same request "
            "to learn its outcome (it is safe to repeat)",
            code=code,
            outcome="unknown",
        )
    return DatabaseUnavailable("the database connection was lost; nothing was changed, try again", code=code)


def close() -> None:
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        with suppress(Exception):  # a dead connection may fail to close; it is dropped either way
            conn.close()


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and bool(exc.args) and exc.args[0] in _CONNECTION_ERRORS


def is_duplicate_key(exc: BaseException, index: str | None = None) -> bool:
    if not isinstance(exc, IntegrityError) or not exc.args or exc.args[0] != DUPLICATE_KEY:
        return False
    return index is None or index in str(exc.args[1])


class Tx:
    """The statements of one unit of work. Every value goes in as a parameter, never formatted into SQL."""

    def __init__(self, cursor: Any):
        self._cur = cursor

    def _run(self, sql: str, args: Sequence[Any] | dict[str, Any] | None) -> int:
        _local.statements = getattr(_local, "statements", 0) + 1
        return int(self._cur.execute(sql, args))

    def one(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> Row | None:
        self._run(sql, args)
        row = self._cur.fetchone()
        return dict(row) if row is not None else None

    def all(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> list[Row]:
        self._run(sql, args)
        return [dict(r) for r in self._cur.fetchall()]

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> int:
        return self._run(sql, args)

    def insert(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> int:
        self._run(sql, args)
        return int(self._cur.lastrowid or 0)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        _local.statements = getattr(_local, "statements", 0) + 1
        return int(self._cur.executemany(sql, rows))


def _translate(exc: BaseException) -> BaseException:
    if is_connection_error(exc):
        close()
        return unavailable()
    if isinstance(exc, OperationalError) and exc.args and exc.args[0] in (DEADLOCK, LOCK_WAIT_TIMEOUT):
        return DatabaseUnavailable("the database is busy; nothing was changed, try again", code="DATABASE_BUSY")
    return exc


@contextmanager
def transaction() -> Iterator[Tx]:
    """BEGIN ... COMMIT; any exception rolls back. Lock the rows a decision depends on with SELECT ... FOR UPDATE."""
    conn = connection()
    try:
        conn.begin()
    except OperationalError as exc:
        raise _translate(exc) from exc
    try:
        with conn.cursor() as cur:
            yield Tx(cur)
        try:
            conn.commit()
        except OperationalError:
            _local.saved = True  # the COMMIT was sent: MariaDB may have applied it before the answer was lost
            raise
        _local.saved = True
    except BaseException as exc:
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone; the server rolls back on disconnect
            close()
        translated = _translate(exc)
        if translated is not exc:
            raise translated from exc
        raise


@contextmanager
def reader() -> Iterator[Tx]:
    """Autocommit reads (no transaction held open)."""
    conn = connection()
    try:
        with conn.cursor() as cur:
            yield Tx(cur)
    except OperationalError as exc:
        translated = _translate(exc)
        if translated is not exc:
            raise translated from exc
        raise
