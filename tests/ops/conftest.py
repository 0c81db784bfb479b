"""The operator console against a running local stack, as an operator uses it.

The stack is `python -m local.run` in a subprocess (the Toss sandbox, the local API with the real handlers, and the
local EventBridge bus delivering the chat notifications to a receiver in this process), on its own freshly migrated
database: nothing here shares a sandbox, an API or rows with the other suites. The console runs as a subprocess
(`python -m escrow.ops ...`) with the environment an operator would give it, so each test sees the exit code,
stdout and stderr as a person or a script would.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
import requests

from tests.conftest import MYSQL_URL, ROOT, _server_conn
from tests.support.events import token
from tests.support.receiver import Receiver, start_receiver

TOSS_TEST_SECRET_KEY = "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R"
# Settings of the layer that the test process itself may carry (other suites set them): never inherited.
LAYER_VARIABLES = (
    "DATABASE_URL",
    "DB_SECRET_ARN",
    "DB_HOST",
    "DB_NAME",
    "TOSS_API_BASE",
    "TOSS_SECRET_KEY",
    "TOSS_SECURITY_KEY",
    "TOSS_SECRET_ARN",
    "TOSS_READ_TIMEOUT",
    "TOSS_CONNECT_TIMEOUT",
    "TOSS_WEBHOOK_HMAC_KEY_ENCODING",
    "EVENT_BUS_NAME",
    "OUTBOX_PUBLISHER",
    "RECONCILE_AFTER_SECONDS",
    "PLATFORM_FEE_BPS",
    "JWT_SECRET",
    "APP_ENV",
    "AWS_ENDPOINT_URL_EVENTBRIDGE",
    "CHAT_WEBHOOK_URL",
    "ESCROW_OPERATOR",
)


def eventually(check: Any, *, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def base_environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAYER_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "layers" / "common"), str(ROOT)])
    env.update(values)
    return env


# --- the stack ------------------------------------------------------------------------------------------------

STACK_ID_PREFIX = "local"  # TOSS_ID_PREFIX of the local stack (local/env.json)
SETTLEMENT_SECONDS = 1.0  # the stack's sandbox settlement cycle (Toss's is days; the local runner's default 60 s)


@dataclass
class Stack:
    database_url: str
    api: str
    sandbox: str
    bus: str
    receiver: Receiver
    log: Path

    # the console
    def ops(self, *args: str, input: str | None = None, **env: str) -> Console:
        environment = base_environment(
            DATABASE_URL=self.database_url,
            TOSS_API_BASE=self.sandbox,
            TOSS_SECRET_KEY=TOSS_TEST_SECRET_KEY,
            TOSS_SECURITY_KEY=_security_key(),
            APP_ENV="local",
            OUTBOX_PUBLISHER="eventbridge",
            EVENT_BUS_NAME="escrow-local",
            AWS_ENDPOINT_URL_EVENTBRIDGE=self.bus,
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            AWS_DEFAULT_REGION="ap-northeast-2",
            RECONCILE_AFTER_SECONDS="0",
            TOSS_ID_PREFIX=STACK_ID_PREFIX,  # the local stack's (local/env.json)
            POWERTOOLS_LOG_LEVEL="INFO",
            **{"COLUMNS": "200", **env},
        )
        done = subprocess.run(
            [sys.executable, "-m", "escrow.ops", *args],
            env=environment,
            cwd=ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return Console(done.returncode, done.stdout, done.stderr)

    # the API, as the chat app calls it
    def post(self, path: str, body: Any, user: str | None, **claims: Any) -> requests.Response:
        headers = {"authorization": f"Bearer {token(user, **claims)}"} if user else {}
        return requests.post(self.api + path, json=body, headers=headers, timeout=30)

    def get(self, path: str, user: str) -> requests.Response:
        return requests.get(self.api + path, headers={"authorization": f"Bearer {token(user)}"}, timeout=30)

    # the sandbox's test controls
    def control(self, path: str, body: Any = None, method: str = "POST") -> Any:
        r = requests.request(method, f"{self.sandbox}/sandbox/{path}", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    @contextmanager
    def toss_webhooks_lost(self) -> Iterator[None]:
        """Toss's webhooks do not reach us meanwhile (the sandbox sends none)."""
        self.control("config", {"webhook_url": ""})
        try:
            yield
        finally:
            self.control("config", {"webhook_url": self.api + "/api/v1/payment/webhook"})

    def widget(self, order_id: str, amount: int) -> str:
        return str(
            self.control("payments", {"orderId": order_id, "amount": amount, "orderName": "예약금"})["paymentKey"]
        )

    def run_job(self, name: str) -> dict[str, Any]:
        """One of the scheduled jobs, as the schedule runs it (the console's run-job)."""
        done = self.ops("run-job", name, "--yes", "--operator", "ops.test", "--reason", "the test's schedule", "--json")
        assert done.code == 0, done
        return dict(done.json())

    def settle_sales(self) -> None:
        """Wait for the sandbox's settlement cycle: the sales made so far become the available payout balance."""

        def settled() -> bool:
            sales = requests.get(f"{self.sandbox}/sandbox/sales", timeout=10).json()["items"]
            return all(s["state"] == "available" for s in sales)

        eventually(settled, timeout=10, interval=0.1)

    def toss_calls(self, path_part: str, method: str | None = None) -> list[dict[str, Any]]:
        items = requests.get(f"{self.sandbox}/sandbox/calls", timeout=10).json()["items"]
        return [c for c in items if path_part in c["path"] and (method is None or c["method"] == method)]


@dataclass
class Console:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _security_key() -> str:
    from toss_sandbox import DEFAULT_SECURITY_KEY

    return DEFAULT_SECURITY_KEY


@pytest.fixture(scope="session")
def ops_database() -> Iterator[str]:
    name = f"escrow_ops_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL_URL}/{name}"
    done = subprocess.run(
        [sys.executable, "-m", "escrow.migrate"],
        env=base_environment(DATABASE_URL=url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    yield url
    conn = _server_conn()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def stack(ops_database: str) -> Iterator[Stack]:
    receiver = start_receiver()
    log = Path(tempfile.mkstemp(prefix="escrow-ops-stack-", suffix=".log")[1])
    env = base_environment(
        DATABASE_URL=ops_database,
        TOSS_SECURITY_KEY=_security_key(),
        RECONCILE_AFTER_SECONDS="0",
        TOSS_READ_TIMEOUT="3",
        CHAT_WEBHOOK_URL=receiver.url,
        CHAT_WEBHOOK_API_KEY="chat-test-key",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local.run",
                "--api-port",
                "0",
                "--toss-port",
                "0",
                "--schedule-interval",
                "0",
                "--settlement-seconds",
                str(SETTLEMENT_SECONDS),
                "--skip-migrations",
                "--skip-seed",
                "--workers",
                "4",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        text = eventually(lambda: _started(log, process), timeout=60, interval=0.1)
        urls = {
            name: re.search(pattern, text).group(1)  # type: ignore[union-attr]
            for name, pattern in (
                ("api", r"==> local API on (\S+)"),
                ("sandbox", r"==> Toss sandbox on (\S+)"),
                ("bus", r"==> local event bus on (\S+)"),
            )
        }
        yield Stack(ops_database, urls["api"], urls["sandbox"], urls["bus"], receiver, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        receiver.stop()
        log.unlink(missing_ok=True)


def _started(log: Path, process: subprocess.Popen[str]) -> str | None:
    text = log.read_text()
    if process.poll() is not None:
        raise AssertionError(f"the local stack exited ({process.returncode}):\n{text}")
    return text if "Escrow local stack is up" in text else None


@pytest.fixture()
def sql(ops_database: str) -> Iterator[pymysql.connections.Connection]:
    from escrow.config import parse_database_url

    p = parse_database_url(ops_database)
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


def rows(sql: pymysql.connections.Connection, query: str, *args: Any) -> list[dict[str, Any]]:
    with sql.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


# --- rooms, as the chat service and the app make them ---------------------------------------------------------

_room_ids = itertools.count(int(uuid.uuid4().int % 10**8) * 1000 + 7)


@dataclass
class Room:
    chat_room_id: int
    owner: str
    members: list[str]
    store_id: str
    request_id: int | None = None
    payment_keys: dict[str, str] = field(default_factory=dict)
    seller_id: str | None = None
    settlement: dict[str, Any] | None = None


@dataclass
class Rooms:
    stack: Stack
    sql: pymysql.connections.Connection

    def new(self, n_members: int = 2) -> Room:
        room_id = next(_room_ids)
        tag = uuid.uuid4().hex[:6]
        room = Room(room_id, f"owner_{tag}", [f"user_{tag}_{i}" for i in range(1, n_members + 1)], f"store_{tag}")
        with self.sql.cursor() as cur:
            cur.execute(
                "INSERT INTO stores (store_id, owner_id, name) VALUES (%s, %s, %s)",
                (room.store_id, f"store_owner_{tag}", "테스트 가게"),
            )
            cur.execute(  # what the chat service's membership sync writes (escrow.services.rooms)
                "INSERT INTO chat_rooms (chat_room_id, owner_id, updated_by) VALUES (%s, %s, 'chat-service')",
                (room_id, room.owner),
            )
            cur.executemany(
                "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s)",
                [(room_id, room.owner, 1)] + [(room_id, m, 0) for m in room.members],
            )
        return room

    def register_store(self, room: Room, *, approve: bool = True) -> None:
        r = self.stack.post(
            "/api/v1/admin/stores",
            {
                "store_id": room.store_id,
                "owner_id": f"owner_of_{room.store_id}",
                "bank_code": "88",
                "account_number": "110123456789",
                "holder_name": "홍길동",
                "business_type": "INDIVIDUAL",
                "email": "owner@example.com",
                "phone": "01012345678",
            },
            "ops_admin",
            role="admin",
        )
        assert r.status_code == 202, r.text  # answered at once; the schedule's sellers job registers it with Toss
        self.stack.run_job("sellers")
        room.seller_id = rows(self.sql, "SELECT toss_seller_id FROM stores WHERE store_id = %s", room.store_id)[0][
            "toss_seller_id"
        ]
        assert room.seller_id
        if approve:
            self.stack.control(f"sellers/{room.seller_id}/status", {"status": "APPROVED"})
            eventually(
                lambda: (
                    rows(self.sql, "SELECT seller_status FROM stores WHERE store_id = %s", room.store_id)[0][
                        "seller_status"
                    ]
                    == "APPROVED"
                )
            )

    def open_request(self, room: Room, amount: int = 15000) -> int:
        r = self.stack.post(
            "/api/v1/payment/request",
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": amount, "message": "예약금"},
            room.owner,
        )
        assert r.status_code == 201, r.text
        room.request_id = int(r.json()["payment_request_id"])
        return room.request_id

    def pay(self, room: Room, payer: str) -> str:
        r = self.stack.post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id}, payer)
        assert r.status_code == 200, r.text
        order = r.json()
        key = self.stack.widget(order["orderId"], order["amount"])
        r = self.stack.post(
            "/api/v1/payment/initiate",
            {
                "chat_room_id": room.chat_room_id,
                "amount": order["amount"],
                "paymentKey": key,
                "orderId": order["orderId"],
                "payment_method": "card",
            },
            payer,
        )
        assert r.status_code == 200, r.text
        room.payment_keys[payer] = key
        return key

    def paid(self, n_members: int = 2, *, register: bool = True, approve: bool = True) -> Room:
        room = self.new(n_members)
        if register:
            self.register_store(room, approve=approve)
        self.open_request(room)
        for payer in room.members:
            self.pay(room, payer)
        return room

    def release(self, room: Room) -> dict[str, Any]:
        """Release (the decision: the settlement scheduled), then what the schedule does once the room's sales have
        settled: the payouts job sends the payout. Returns the settlement as the status answer shows it."""
        r = self.stack.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}, room.owner)
        assert r.status_code == 200, r.text
        assert r.json()["settlement"]["payout_status"] == "scheduled"
        self.stack.settle_sales()
        self.stack.run_job("payouts")
        status = self.stack.get(f"/api/v1/payment/status/{room.chat_room_id}", room.owner)
        assert status.status_code == 200, status.text
        room.settlement = status.json()["settlement"]
        return room.settlement

    def settlement_row(self, room: Room) -> dict[str, Any]:
        return rows(
            self.sql,
            "SELECT id, payout_status, payout_id, ref_payout_id, payout_attempts, payout_error_code "
            "FROM payment_settlements WHERE payment_request_id = %s",
            room.request_id,
        )[0]


@pytest.fixture()
def rooms(stack: Stack, sql: pymysql.connections.Connection) -> Rooms:
    return Rooms(stack, sql)
