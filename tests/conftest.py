"""Shared fixtures: a fresh MariaDB database per test session (migrated by the real command), rooms and stores."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

ROOT = Path(__file__).resolve().parents[1]
MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306")

# Settings every test process starts from; nothing here may reach AWS or the internet.
os.environ.setdefault("APP_ENV", "local")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "escrow")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EscrowServiceTest")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.pop("JWT_SECRET", None)


def _server_conn() -> pymysql.connections.Connection:
    from escrow.config import parse_database_url

    p = parse_database_url(MYSQL_URL + "/mysql")
    return pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password, autocommit=True)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"escrow_test_{worker}_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL_URL}/{name}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}", "DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "escrow.migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    os.environ["DATABASE_URL"] = url
    from escrow.config import reset_settings

    reset_settings()
    yield url
    conn = _server_conn()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture()
def sql(database_url: str) -> Iterator[pymysql.connections.Connection]:
    """A separate connection for looking at rows the way an operator would."""
    from escrow.config import parse_database_url

    p = parse_database_url(database_url)
    conn = pymysql.connect(
        host=p.host,
        port=p.port,
        user=p.user,
        password=p.password,
        database=p.database,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
    )
    yield conn
    conn.close()


_room_ids = itertools.count(int(uuid.uuid4().int % 10**9) * 1000 + 1)


@dataclass
class Room:
    chat_room_id: int
    owner: str
    members: list[str]
    store_id: str


@pytest.fixture()
def make_room(sql: pymysql.connections.Connection):
    """A chat room known to the service (chat_room_members rows) and a store: the chat app's data, not ours."""

    def make(n_members: int = 2, *, with_member_rows: bool = True) -> Room:
        room_id = next(_room_ids)
        tag = uuid.uuid4().hex[:6]
        owner = f"owner_{tag}"
        members = [f"user_{tag}_{i}" for i in range(1, n_members + 1)]
        store_id = f"store_{tag}"
        with sql.cursor() as cur:
            cur.execute(
                "INSERT INTO stores (store_id, owner_id, name) VALUES (%s, %s, %s)",
                (store_id, f"store_owner_{tag}", "테스트 가게"),
            )
            if with_member_rows:  # what the chat service's membership sync writes (escrow.services.rooms)
                cur.execute(
                    "INSERT INTO chat_rooms (chat_room_id, owner_id, updated_by) VALUES (%s, %s, 'chat-service')",
                    (room_id, owner),
                )
                cur.executemany(
                    "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s)",
                    [(room_id, owner, 1)] + [(room_id, m, 0) for m in members],
                )
        return Room(room_id, owner, members, store_id)

    return make
