"""MySQL access: one connection per container (per thread), a transaction helper, errors mapped to 503.

On Lambda a container runs one invocation at a time, so "per thread" is "per container"; the local API runs a
fixed pool of worker threads to behave the same way. There are no per-request SET statements, user variables or
GET_LOCK calls, so RDS Proxy can multiplex these connections.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.err import IntegrityError, OperationalError

from escrow.config import database_params, get_settings, settings_generation
from escrow.errors import DatabaseUnavailable

Row = dict[str, Any]

# Errors that mean "the server or the connection is gone": the request gets a 503 and nothing was committed.
_CONNECTION_ERRORS = {2002, 2003, 2006, 2013, 2014, 2055, 1040, 1053, 1927}
DEADLOCK, LOCK_WAIT_TIMEOUT, DUPLICATE_KEY = 1213, 1205, 1062

_local = threading.local()


class Stats:
    """SQL statements issued, counted per thread (the benchmark reads it; it costs an integer add)."""

    @property
    def statements(self) -> int:
        return int(getattr(_local, "statements", 0))

    def reset(self) -> None:
        _local.statements = 0


stats = Stats()


class _Connection(pymysql.connections.Connection):
    """pymysql's connection, without the CA load its default TLS mode does for nothing.

    Given no TLS options, pymysql 1.2 uses "preferred" TLS: encrypt when the server offers it, verify nothing. It
    builds that context with ssl.create_default_context(), which loads the whole system trust store (about 40 ms of
    every container's first request, measured with `python -m bench cold`) and then turns verification off. A
    client context with verification off gives the same protection without the load. Explicit TLS options (none
    are set today) still go to pymysql's own code."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if isinstance(sslp, dict) and not sslp:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        context: ssl.SSLContext = super()._create_ssl_ctx(sslp)  # type: ignore[misc]
        return context


def _connect() -> pymysql.connections.Connection:
    params = database_params()
    settings = get_settings()
    try:
        return _Connection(
            host=params.host,
            port=params.port,
            user=params.user,
            password=params.password,
            database=params.database,
            charset="utf8mb4",
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
            connect_timeout=settings.db_connect_timeout,
            read_timeout=settings.db_read_timeout,
            write_timeout=settings.db_write_timeout,
        )
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
        return DatabaseUnavailable("the database connection was lost; nothing was changed, try again")
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
        conn.commit()
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
