"""Databases of a test's own on the shared MariaDB (created unmigrated, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql

MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306")


def server_connection(database: str | None = None, **options) -> pymysql.connections.Connection:
    from escrow.config import parse_database_url

    p = parse_database_url(MYSQL_URL + "/mysql")
    return pymysql.connect(
        host=p.host, port=p.port, user=p.user, password=p.password, database=database, autocommit=True, **options
    )


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """The URL of a database that does not exist yet (the code under test creates it); dropped at the end."""
    name = f"escrow_test_{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{MYSQL_URL}/{name}"
    finally:
        conn = server_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
