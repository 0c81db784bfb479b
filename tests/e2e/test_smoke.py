"""`make smoke` (scripts/smoke.py) against the local stack: the same walkthrough it runs against a deployed one,
with the Toss sandbox playing Toss's payment window."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Any

from tests.support.functions import ROOT

TOKEN_CMD = f"{sys.executable} -m local.jwt"


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_smoke_registers_a_store_opens_a_request_pays_and_prints_the_money_trace(api: str, sandbox: Any, sql) -> None:
    tag = uuid.uuid4().hex[:6]
    room = int(uuid.uuid4().int % 10**9)
    result = _smoke(
        "--api", api, "--token-cmd", TOKEN_CMD, "--admin-token-cmd", f"{TOKEN_CMD} {{user}} --admin",
        "--admin", "ops_admin", "--store", f"smoke_{tag}", "--room", str(room), "--amount", "1000",
        "--owner", f"owner_{tag}", "--payer", f"payer_{tag}", "--sandbox", sandbox.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = (r"1\. register store \(admin\) +202", r"2\. open request \(owner\) +201", r"6\. confirm \(payer\) +200")
    for step in steps:
        assert re.search(step, out), out
    assert '"payment_status": "completed"' in out
    assert f"payer_{tag}" in out and "charged 1000 KRW - refunded 0 KRW = 1000 KRW with us" in out
    assert "110123456789" not in out  # the store's account number is never printed back
    with sql.cursor() as cur:
        cur.execute(
            "SELECT p.status, p.amount FROM payments p JOIN payment_requests r ON r.id = p.payment_request_id "
            "WHERE r.chat_room_id = %s",
            (room,),
        )
        assert cur.fetchall() == [{"status": "completed", "amount": 1000}]


def test_without_a_payment_key_it_stops_after_prepare_and_resumes_with_the_order(
    api: str, sandbox: Any, make_room
) -> None:
    room = make_room(1)
    common = [
        "--api", api, "--token-cmd", TOKEN_CMD, "--room", str(room.chat_room_id), "--store", room.store_id,
        "--owner", room.owner, "--payer", room.members[0], "--room-has-members", "--amount", "2000",
    ]  # fmt: skip
    first = _smoke(*common)
    assert first.returncode == 1
    assert "pay in Toss's test window, then run again with --order-id" in first.stdout
    order_id = first.stdout.split("--order-id ", 1)[1].split()[0]

    resumed = _smoke(*common, "--order-id", order_id, "--payment-key", _pay(sandbox.url, order_id, 2000))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2. open request" not in resumed.stdout  # resuming does not open another request
    assert "charged 2000 KRW - refunded 0 KRW = 2000 KRW with us" in resumed.stdout


def _pay(sandbox_url: str, order_id: str, amount: int) -> str:
    import requests

    answer = requests.post(f"{sandbox_url}/sandbox/payments", json={"orderId": order_id, "amount": amount}, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["paymentKey"])
