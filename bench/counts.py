"""SQL statements and Toss calls per request, on the happy path of each endpoint.

Runs the real handlers in-process with API Gateway events against a fresh MariaDB database and the Toss sandbox,
and reads the layer's own counters (escrow.db.stats, TossClient.calls). `python -m bench.counts`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MYSQL = os.environ.get("BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore", message="No application metrics to publish")
    sys.path[:0] = [str(ROOT / "layers/common"), str(ROOT)]
    name = f"escrow_bench_counts_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL}/{name}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}:{ROOT}"}
    subprocess.run(
        [sys.executable, "-m", "escrow.migrate", "--database-url", url], env=env, check=True, capture_output=True
    )
    from toss_sandbox import DEFAULT_SECURITY_KEY, start_sandbox

    # The settlement cycle compressed to nothing: a payout counted here is sent as soon as its sales are made.
    sandbox = start_sandbox(port=0, settlement_delay_seconds=0)
    os.environ.update(
        {
            "DATABASE_URL": url,
            "TOSS_API_BASE": sandbox.url,
            "TOSS_SECURITY_KEY": DEFAULT_SECURITY_KEY,
            "APP_ENV": "local",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "OUTBOX_PUBLISHER": "log",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
        }
    )
    import requests

    from escrow import db
    from escrow.config import reset_settings
    from escrow.toss.client import get_toss_client
    from tests.support.events import Context, http_event
    from tests.support.functions import load_function

    reset_settings()
    rows: list[tuple[str, int, int, int]] = []

    def measure(
        label: str, fn: str, method: str, path: str, body: Any = None, user: str = "user_1", **claims: Any
    ) -> dict[str, Any]:
        handler = load_function(fn).lambda_handler
        toss = get_toss_client()
        db.stats.reset()
        calls_before = toss.calls
        event = http_event(method, path, body=body, user=None)
        from tests.support.events import token

        event["headers"]["authorization"] = f"Bearer {token(user, **claims)}"
        result = handler(event, Context())
        rows.append((label, result["statusCode"], db.stats.statements, toss.calls - calls_before))
        return dict(json.loads(result["body"]))

    def scheduled(label: str, jobs: list[str]) -> None:
        """A scheduled run of some jobs (the release function with the schedule's event): where the payouts v2 calls
        the HTTP routes no longer make are made."""
        handler = load_function("release").lambda_handler
        toss = get_toss_client()
        db.stats.reset()
        calls_before = toss.calls

        class Scheduled(Context):
            def get_remaining_time_in_millis(self) -> int:
                return 900_000  # the release function's timeout: a scheduled run has 15 minutes

        handler({"source": "escrow.schedule", "jobs": jobs}, Scheduled())
        rows.append((label, 0, db.stats.statements, toss.calls - calls_before))

    try:
        with db.transaction() as tx:
            tx.execute("INSERT INTO stores (store_id, owner_id) VALUES ('store_b', 'store_owner')")
        from escrow.services import rooms

        rooms.sync_membership(77, "user_1", ["user_2", "user_3"], updated_by="chat-service")
        measure(
            "POST /admin/stores",
            "release",
            "POST",
            "/api/v1/admin/stores",
            {
                "store_id": "store_b",
                "owner_id": "store_owner",
                "bank_code": "88",
                "account_number": "1234567890",
                "holder_name": "홍길동",
                "email": "o@example.com",
                "phone": "01012345678",
            },
            user="ops",
            role="admin",
        )
        scheduled("scheduled run: sellers (1 registration)", ["sellers"])
        measure(
            "POST /payment/request",
            "request",
            "POST",
            "/api/v1/payment/request",
            {"chat_room_id": 77, "store_id": "store_b", "amount": 15000},
        )
        measure("GET /payment/status/{id}", "request", "GET", "/api/v1/payment/status/77", user="user_2")
        keys = {}
        for payer in ("user_2", "user_3"):
            order = measure(
                f"POST /payment/prepare ({payer})",
                "confirm",
                "POST",
                "/api/v1/payment/prepare",
                {"chat_room_id": 77},
                user=payer,
            )
            key = requests.post(
                f"{sandbox.url}/sandbox/payments", timeout=5, json={"orderId": order["orderId"], "amount": 15000}
            ).json()["paymentKey"]
            keys[payer] = key
            label = "POST /payment/initiate" + (" (last payer: funds the request)" if payer == "user_3" else "")
            measure(
                label,
                "confirm",
                "POST",
                "/api/v1/payment/initiate",
                {
                    "chat_room_id": 77,
                    "amount": 15000,
                    "paymentKey": key,
                    "orderId": order["orderId"],
                    "payment_method": "card",
                },
                user=payer,
            )
        measure(
            "POST /payment/initiate (repeat)",
            "confirm",
            "POST",
            "/api/v1/payment/initiate",
            {
                "chat_room_id": 77,
                "amount": 15000,
                "paymentKey": keys["user_3"],
                "orderId": _order(url, keys["user_3"]),
                "payment_method": "card",
            },
            user="user_3",
        )
        measure(
            "POST /payment/cancel (partial)",
            "cancel",
            "POST",
            "/api/v1/payment/cancel",
            {"paymentKey": keys["user_2"], "cancelReason": "일부 환불", "cancelAmount": 1000},
            user="user_2",
        )
        seller_id = _seller(url)
        requests.post(f"{sandbox.url}/sandbox/sellers/{seller_id}/status", json={"status": "APPROVED"}, timeout=5)
        measure("POST /payment/release", "release", "POST", "/api/v1/payment/release", {"chat_room_id": 77})
        scheduled("scheduled run: payouts (1 payout)", ["payouts"])
    finally:
        sandbox.stop()
        db.close()
        import pymysql

        from escrow.config import parse_database_url

        p = parse_database_url(url)
        conn = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    print("SQL statements and Toss calls per request (happy path, in-process handlers, MariaDB + Toss sandbox)")
    print(f"{'endpoint':48} {'status':>6} {'SQL':>5} {'Toss':>5}")
    for label, status, statements, calls in rows:
        print(f"{label:48} {status or '-':>6} {statements:>5} {calls:>5}")
    return 0


def _one(url: str, sql: str, *args: Any) -> Any:
    import pymysql

    from escrow.config import parse_database_url

    p = parse_database_url(url)
    conn = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password, database=p.database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def _order(url: str, payment_key: str) -> str:
    return str(_one(url, "SELECT order_id FROM payments WHERE payment_key = %s", payment_key))


def _seller(url: str) -> str:
    return str(_one(url, "SELECT toss_seller_id FROM stores WHERE store_id = 'store_b'"))


if __name__ == "__main__":
    sys.exit(main())
