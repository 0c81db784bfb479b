"""The ledger audit against real MariaDB and the Toss sandbox: a clean history gives no finding; each kind of damage
(done on purpose with SQL or behind our back at Toss) is found by its check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.support.functions import ROOT

pytestmark = pytest.mark.usefixtures("database_url")

ENV = ("TOSS_API_BASE", "TOSS_SECURITY_KEY", "TOSS_READ_TIMEOUT", "TOSS_CONNECT_TIMEOUT", "RECONCILE_AFTER_SECONDS")
SECRET_KEY = "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R"
AMOUNT = 15000


@pytest.fixture(scope="module")
def sandbox(database_url: str) -> Iterator[Any]:
    from escrow.config import reset_settings
    from escrow.toss.client import reset_toss_client
    from toss_sandbox import DEFAULT_SECURITY_KEY, start_sandbox

    # COMPAT (issue 8): the client does not wait for settlement yet, so this sandbox pays out at once from a large
    # available balance. Remove when the client waits in `scheduled` until GET /v2/balances shows enough.
    # COMPAT (issue 8): the client retries a refund with the same key after a 5xx answer, which Toss (per its
    # English docs) replays; remove idempotency_bind_5xx=False when a retry after an answer uses a new key.
    sb = start_sandbox(
        host="127.0.0.1",
        port=0,
        settlement_delay_seconds=0,
        available_balance=1_000_000_000,
        idempotency_bind_5xx=False,
    )
    previous = {k: os.environ.get(k) for k in ENV}
    os.environ.update(
        {
            "TOSS_API_BASE": sb.url,
            "TOSS_SECURITY_KEY": DEFAULT_SECURITY_KEY,
            "TOSS_READ_TIMEOUT": "2",
            "TOSS_CONNECT_TIMEOUT": "1",
            "RECONCILE_AFTER_SECONDS": "60",
        }
    )
    reset_settings()
    reset_toss_client()
    yield sb
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings()
    reset_toss_client()
    sb.stop()


@pytest.fixture(autouse=True)
def _no_faults(sandbox: Any) -> Iterator[None]:
    yield
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)


@pytest.fixture()
def behind_our_back(sandbox: Any) -> Any:
    """Toss itself, used directly (the merchant dashboard, or someone else's code): not through our services."""
    from escrow.toss.client import TossClient

    return TossClient(sandbox.url, SECRET_KEY, read_timeout=5)


# --- building history through the real services ------------------------------------------------------------


def who(user: str, admin: bool = False) -> Any:
    from escrow.auth import Principal

    return Principal(user_id=user, is_admin=admin)


def widget(sandbox: Any, order_id: str, amount: int = AMOUNT) -> str:
    r = requests.post(
        f"{sandbox.url}/sandbox/payments",
        json={"orderId": order_id, "amount": amount, "orderName": "예약금", "method": "카드"},
        timeout=5,
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["paymentKey"])


def open_request(room: Any) -> int:
    from escrow.models import CreatePaymentRequestBody
    from escrow.services.requests import create_payment_request

    body = CreatePaymentRequestBody(chat_room_id=room.chat_room_id, store_id=room.store_id, amount=AMOUNT)
    return int(create_payment_request(who(room.owner), body)["payment_request_id"])


def pay(sandbox: Any, room: Any, payer: str, *, order_id: str | None = None) -> dict[str, Any]:
    """Prepare (or bring an order id of the client's own), pay in the widget, confirm: the payment's trace."""
    from escrow.models import ConfirmBody, PrepareBody
    from escrow.services.payments import confirm_payment, prepare_payment

    if order_id is None:
        order_id = prepare_payment(who(payer), PrepareBody(chat_room_id=room.chat_room_id))["orderId"]
    key = widget(sandbox, order_id)
    body = ConfirmBody(
        chat_room_id=room.chat_room_id, amount=AMOUNT, paymentKey=key, orderId=order_id, payment_method="card"
    )
    answer = confirm_payment(who(payer), body)
    return {"orderId": order_id, "paymentKey": key, "answer": answer}


def funded_room(sandbox: Any, make_room: Any, n: int = 2) -> tuple[Any, int, dict[str, dict[str, Any]]]:
    room = make_room(n)
    request_id = open_request(room)
    paid = {payer: pay(sandbox, room, payer) for payer in room.members}
    assert all(p["answer"]["payment_status"] == "completed" for p in paid.values())
    return room, request_id, paid


def release(sandbox: Any, room: Any) -> dict[str, Any]:
    from escrow.models import RegisterStoreBody
    from escrow.services.release import release_room
    from escrow.services.stores import register_store

    store = register_store(
        who("ops", admin=True),
        RegisterStoreBody(
            store_id=room.store_id,
            owner_id=f"owner_of_{room.store_id}",
            bank_code="88",
            account_number="110123456789",
            holder_name="홍길동",
            email="owner@example.com",
            phone="01012345678",
        ),
    )
    r = requests.post(
        f"{sandbox.url}/sandbox/sellers/{store['seller_id']}/status", json={"status": "APPROVED"}, timeout=5
    )
    assert r.status_code == 200, r.text
    result = release_room(who(room.owner), room.chat_room_id)
    assert result["settlement"]["payout_status"] == "in_progress", result
    return result


def refund(payer: str, key: str, amount: int | None = None) -> dict[str, Any]:
    from escrow.services.refunds import cancel_share

    return cancel_share(who(payer), key, "환불 요청", amount)


def run_audit(room: Any, **kw: Any) -> Any:
    from escrow.audit import audit

    return audit(chat_room_id=room.chat_room_id, **kw)


def checks(report: Any) -> set[str]:
    return {f.check for f in report.findings}


def execute(sql: Any, query: str, *args: Any) -> int:
    with sql.cursor() as cur:
        return int(cur.execute(query, args))


def one(sql: Any, query: str, *args: Any) -> dict[str, Any]:
    with sql.cursor() as cur:
        cur.execute(query, args)
        return dict(cur.fetchone())


# --- a clean history ----------------------------------------------------------------------------------------


def test_a_clean_history_gives_no_finding(sandbox, make_room, behind_our_back, sql):
    from escrow.errors import Conflict
    from escrow.models import PrepareBody
    from escrow.services.payments import apply_toss_payment, prepare_payment
    from escrow.services.refunds import apply_cancels, cancel_request

    def one_row(query: str) -> Any:
        return next(iter(one(sql, query).values()))

    # Released after a partial refund; the payout made at Toss.
    released, _, paid = funded_room(sandbox, make_room, n=3)
    first = released.members[0]
    assert refund(first, paid[first]["paymentKey"], 5000)["refund_status"] == "partially_refunded"
    settlement = release(sandbox, released)["settlement"]
    assert (settlement["gross_amount"], settlement["net_amount"]) == (40000, 40000 - 1200)

    # Cancelled by the owner: every share refunded.
    cancelled, _, _ = funded_room(sandbox, make_room, n=2)
    assert cancel_request(who(cancelled.owner), cancelled.chat_room_id, "모임 취소")["refund_status"] == "refunded"

    # A second charge for a paid share (an old order approved at Toss) is refunded automatically.
    doubled = make_room(1)
    open_request(doubled)
    payer = doubled.members[0]
    old = prepare_payment(who(payer), PrepareBody(chat_room_id=doubled.chat_room_id))["orderId"]
    pay(sandbox, doubled, payer, order_id=f"client-{uuid.uuid4().hex[:12]}")  # supersedes the prepared order
    old_key = widget(sandbox, old)
    charged = behind_our_back.confirm(old_key, old, AMOUNT, idempotency_key=f"x-{old}")
    assert apply_toss_payment(charged, actor="test", reason="test") == "refunded_mismatch"

    # The owner cancels while a participant's confirm is on its way to Toss: the charge that lands is refunded
    # at once, and the webhook's CANCELED after it changes nothing.
    late = make_room(2)
    open_request(late)
    requests.post(
        f"{sandbox.url}/sandbox/faults", json={"latency_ms": 800, "paths": ["/v1/payments/confirm"]}, timeout=5
    )
    with ThreadPoolExecutor(1) as pool:
        paying = pool.submit(pay, sandbox, late, late.members[0])
        deadline = time.monotonic() + 10
        while (
            one_row(f"SELECT COUNT(*) FROM payments WHERE payer_id = '{late.members[0]}' AND status = 'in_progress'")
            == 0
        ):
            assert time.monotonic() < deadline, "the confirm never started"
            time.sleep(0.02)
        assert cancel_request(who(late.owner), late.chat_room_id, "모임 취소")["payment_request_status"] == "cancelled"
        with pytest.raises(Conflict):
            paying.result()
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)
    late_key = one_row(f"SELECT payment_key FROM payments WHERE payer_id = '{late.members[0]}'")
    assert behind_our_back.get_payment(late_key).status == "CANCELED"
    assert one_row(f"SELECT status FROM payment_orders WHERE payment_key = '{late_key}'") == "refunded"
    apply_cancels(behind_our_back.get_payment(late_key), cancel_id=None, actor="webhook")

    for room in (released, cancelled, doubled, late):
        report = run_audit(room)
        assert report.findings == [], report.table()
        assert report.checked["requests"] == 1
    assert run_audit(released).checked["payments"] == 3


def test_the_command_prints_a_summary_and_exits_0_when_clean_and_1_on_a_finding(sandbox, make_room, database_url, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=1)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}",
        "DATABASE_URL": database_url,
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    command = [sys.executable, "-m", "escrow.audit", "--room", str(room.chat_room_id)]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.strip().splitlines()[-1] == "audit: 1 requests, 1 payments checked, 0 findings"

    execute(sql, "DELETE FROM ledger_entries WHERE payment_request_id = %s AND entry_type = 'charge'", request_id)
    dirty = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert dirty.returncode == 1, dirty.stdout + dirty.stderr
    lines = dirty.stdout.splitlines()
    assert lines[0].split()[:5] == ["check", "request", "payment", "expected", "actual"]
    assert any(line.startswith("ledger_identity") and str(request_id) in line for line in lines)
    assert lines[-1] == "audit: 1 requests, 1 payments checked, 2 findings"

    window = [sys.executable, "-m", "escrow.audit", "--since", "2999-01-01T00:00:00Z", "--until", "2999-02-01"]
    empty = subprocess.run(window, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert empty.returncode == 0 and empty.stdout.strip() == "audit: 0 requests, 0 payments checked, 0 findings"

    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["by_check"] == {"ledger_charge": 1, "ledger_identity": 1}
    assert {f["paymentKey"] for f in data["findings"]} >= {paid[room.members[0]]["paymentKey"]}


# --- damage, and the check that finds it ----------------------------------------------------------------------


def test_a_cancel_made_at_toss_behind_our_back_is_found(sandbox, make_room, behind_our_back):
    room, _, paid = funded_room(sandbox, make_room, n=2)
    key = paid[room.members[0]]["paymentKey"]
    behind_our_back.cancel(key, "대시보드에서 취소", idempotency_key=f"dash-{key}")
    report = run_audit(room)
    found = [f for f in report.findings if f.check == "toss_payment"]
    assert {(f.expected, f.actual) for f in found} == {("DONE", "CANCELED"), (f"balance {AMOUNT}", "balance 0")}
    assert {f.payment_key for f in found} == {key}


def test_a_deleted_ledger_row_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=2)
    key = paid[room.members[1]]["paymentKey"]
    assert execute(sql, "DELETE FROM ledger_entries WHERE entry_type = 'charge' AND reference = %s", key) == 1
    report = run_audit(room)
    assert checks(report) == {"ledger_identity", "ledger_charge"}
    identity = next(f for f in report.findings if f.check == "ledger_identity")
    assert identity.payment_request_id == request_id
    assert identity.expected == f"charge {AMOUNT} = refund+release+held+awaiting"
    assert f"charge 0 != refund 0 + release 0 + held {AMOUNT}" in identity.detail


def test_a_deleted_refund_entry_is_found(sandbox, make_room, sql):
    room, _, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    refund(payer, paid[payer]["paymentKey"])
    assert (
        execute(
            sql,
            "DELETE FROM ledger_entries WHERE entry_type = 'refund' AND payment_id = "
            "(SELECT id FROM payments WHERE payment_key = %s)",
            paid[payer]["paymentKey"],
        )
        == 1
    )
    assert checks(run_audit(room)) == {"ledger_identity", "ledger_refund"}


def test_an_altered_settlement_net_is_found(sandbox, make_room, sql):
    room, request_id, _ = funded_room(sandbox, make_room, n=2)
    release(sandbox, room)
    assert run_audit(room).findings == []
    # The CHECK constraint keeps net + fee = gross, so the fee moves with it: 100 won kept from the store.
    execute(
        sql,
        "UPDATE payment_settlements SET net_amount = net_amount - 100, platform_fee = platform_fee + 100 "
        "WHERE payment_request_id = %s",
        request_id,
    )
    report = run_audit(room)
    by_check = {(f.check, f.expected, f.actual) for f in report.findings}
    assert ("settlement", "fee 900", "fee 1000") in by_check
    assert ("payout", "amount 29000", "amount 29100") in by_check  # Toss paid the store the true net
    assert checks(report) == {"settlement", "payout"}


def test_a_settlement_without_a_released_request_is_found(sandbox, make_room, sql):
    room, request_id, _ = funded_room(sandbox, make_room, n=1)
    execute(
        sql,
        "INSERT INTO payment_settlements (payment_request_id, store_id, gross_amount, fee_bps, platform_fee, "
        "net_amount, released_by, ref_payout_id, payout_status) VALUES (%s, %s, 15000, 300, 450, 14550, 'x', %s, "
        "'scheduled')",
        request_id,
        room.store_id,
        f"forged-{request_id}",
    )
    assert checks(run_audit(room)) == {"settlement_without_release"}


def test_a_payment_stuck_in_flight_is_found_once_older_than_the_period(sandbox, make_room, sql):
    from escrow.errors import PaymentOutcomeUnknown

    room = make_room(1)
    open_request(room)
    payer = room.members[0]
    # Toss fails the confirm and the lookup after it (500, not processed): the outcome is unknown.
    r = requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "count": 2},
        timeout=5,
    )
    assert r.status_code == 200
    with pytest.raises(PaymentOutcomeUnknown):
        pay(sandbox, room, payer)
    share = one(sql, "SELECT id, status, order_id FROM payments WHERE payer_id = %s", payer)
    assert share["status"] == "unknown"
    assert run_audit(room).findings == []  # in flight, within the period: not a finding yet

    execute(sql, "UPDATE payments SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE id = %s", share["id"])
    execute(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE payment_id = %s", share["id"])
    report = run_audit(room)
    assert checks(report) == {"stale_payment", "stale_order"}
    assert {f.order_id for f in report.findings} == {share["order_id"]}
    assert checks(run_audit(room, reconciliation_period_seconds=7200)) == set()

    # The same for a confirm that never came back at all (in_progress).
    execute(sql, "UPDATE payments SET status = 'in_progress', updated_at = updated_at WHERE id = %s", share["id"])
    execute(
        sql,
        "UPDATE payment_orders SET status = 'in_progress', updated_at = updated_at WHERE payment_id = %s",
        share["id"],
    )
    found = run_audit(room).findings
    assert {(f.check, f.actual) for f in found} == {("stale_payment", "in_progress"), ("stale_order", "in_progress")}


def test_a_refund_left_unknown_is_found_once_older_than_the_period(sandbox, make_room, sql):
    from escrow.errors import PaymentOutcomeUnknown

    room, _, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "count": 2},
        timeout=5,
    )
    with pytest.raises(PaymentOutcomeUnknown):
        refund(payer, paid[payer]["paymentKey"])
    execute(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE requested_by = %s", payer)
    assert checks(run_audit(room)) == {"stale_cancel"}


def test_two_overlapping_scheduled_runs_do_not_retry_one_refund_together(sandbox, make_room, sql):
    from escrow import db
    from escrow.errors import PaymentOutcomeUnknown
    from escrow.repositories import cancels as cancels_repo
    from escrow.services import jobs

    room, _, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "count": 2},
        timeout=5,
    )
    with pytest.raises(PaymentOutcomeUnknown):
        refund(payer, paid[payer]["paymentKey"])
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)
    with db.reader() as tx:
        seen = [c for c in cancels_repo.stale(tx, 0, 1000) if c["requested_by"] == payer]
    assert len(seen) == 1
    # Both runs read the refund as stale; only the first to claim it asks Toss again.
    assert jobs._claim_cancel(seen[0]) is True
    assert jobs._claim_cancel(seen[0]) is False
    assert jobs.reconcile_cancels(older_than=0)["refunds_retried"] >= 1
    assert one(sql, "SELECT status FROM payment_cancels WHERE id = %s", seen[0]["id"])["status"] == "done"
    assert run_audit(room).findings == []


def test_a_second_done_order_for_one_payer_is_found(sandbox, make_room, behind_our_back):
    from escrow.models import PrepareBody
    from escrow.services.payments import prepare_payment

    room = make_room(1)
    open_request(room)
    payer = room.members[0]
    prepared = prepare_payment(who(payer), PrepareBody(chat_room_id=room.chat_room_id))["orderId"]
    paid = pay(sandbox, room, payer, order_id=f"client-{uuid.uuid4().hex[:12]}")  # the prepared order: superseded
    assert run_audit(room).findings == []
    # Someone approves the superseded order at Toss and we never hear of it: the payer is charged twice.
    key = widget(sandbox, prepared)
    behind_our_back.confirm(key, prepared, AMOUNT, idempotency_key=f"x-{prepared}")
    report = run_audit(room)
    assert checks(report) == {"charged_not_held", "double_charge"}
    lost = next(f for f in report.findings if f.check == "charged_not_held")
    assert (lost.order_id, lost.payment_key) == (prepared, key)
    double = next(f for f in report.findings if f.check == "double_charge")
    assert double.payment_key == paid["paymentKey"] and double.actual == "2 orders"


def test_an_unexpected_charge_whose_refund_answer_was_lost_is_settled_with_its_refund_in_the_ledger(
    sandbox, make_room, sql, behind_our_back
):
    from escrow.models import PrepareBody
    from escrow.services.jobs import reconcile_payments
    from escrow.services.payments import apply_toss_payment, prepare_payment, refund_unexpected_charge

    room = make_room(1)
    request_id = open_request(room)
    payer = room.members[0]
    stale = prepare_payment(who(payer), PrepareBody(chat_room_id=room.chat_room_id))["orderId"]
    pay(sandbox, room, payer, order_id=f"client-{uuid.uuid4().hex[:12]}")
    key = widget(sandbox, stale)
    charged = behind_our_back.confirm(key, stale, AMOUNT, idempotency_key=f"x-{stale}")
    assert apply_toss_payment(charged, actor="webhook", reason="webhook", refund_now=False) == "refund_pending"
    # Our automatic refund goes through at Toss, but its answer is lost: the order stays refund_pending.
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"lose_answer_rate": 1.0, "timeout_seconds": 3, "paths": [f"/v1/payments/{key}/cancel"]},
        timeout=5,
    )
    assert refund_unexpected_charge(charged, "UNEXPECTED_CHARGE") == "refund_pending"
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)
    assert behind_our_back.get_payment(key).balance_amount == 0
    assert run_audit(room).findings == []  # a charge awaiting its refund, within the period

    reconcile_payments(older_than=0)
    assert one(sql, "SELECT status FROM payment_orders WHERE order_id = %s", stale)["status"] == "refunded"
    with sql.cursor() as cur:
        cur.execute(
            "SELECT entry_type, SUM(amount) AS total FROM ledger_entries WHERE payment_request_id = %s "
            "GROUP BY entry_type",
            (request_id,),
        )
        money = {r["entry_type"]: int(r["total"]) for r in cur.fetchall()}
    assert money == {"charge": 2 * AMOUNT, "refund": AMOUNT}
    assert run_audit(room).findings == []


def test_a_refunded_unexpected_charge_still_held_at_toss_is_found(sandbox, make_room, sql, behind_our_back):
    room = make_room(1)
    open_request(room)
    paid = pay(sandbox, room, room.members[0])
    order = one(sql, "SELECT payment_id FROM payment_orders WHERE order_id = %s", paid["orderId"])
    # An order we claim to have refunded, which Toss still holds.
    other = f"client-{uuid.uuid4().hex[:12]}"
    key = widget(sandbox, other)
    behind_our_back.confirm(key, other, AMOUNT, idempotency_key=f"x-{other}")
    execute(
        sql,
        "INSERT INTO payment_orders (order_id, payment_id, payer_id, amount, status, payment_key) "
        "VALUES (%s, %s, %s, %s, 'refunded', %s)",
        other,
        order["payment_id"],
        room.members[0],
        AMOUNT,
        key,
    )
    report = run_audit(room)
    assert {(f.check, f.order_id) for f in report.findings} == {
        ("toss_order", other),
        ("double_charge", paid["orderId"]),
    }


def test_a_request_state_that_disagrees_with_its_shares_is_found(sandbox, make_room, sql):
    room, request_id, _ = funded_room(sandbox, make_room, n=2)
    execute(sql, "UPDATE payment_requests SET status = 'cancelled' WHERE id = %s", request_id)  # nobody refunded
    report = run_audit(room)
    assert checks(report) == {"request_state"}
    assert len(report.findings) == 2 and {f.actual for f in report.findings} == {"completed"}


def test_a_request_whose_every_participant_paid_is_completed_even_after_a_partial_refund(sandbox, make_room, sql):
    room = make_room(2)
    request_id = open_request(room)
    first, second = room.members
    refund(first, pay(sandbox, room, first)["paymentKey"], 5000)  # partly refunded while the room is still pending
    pay(sandbox, room, second)
    report = run_audit(room)
    assert checks(report) == set(), report.table()  # today: request_state, pending although every share is held
    assert one(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)["status"] == "completed"


def test_the_scheduled_audit_job_logs_and_counts_findings(sandbox, make_room, sql):
    from escrow.services import jobs

    _, request_id, _ = funded_room(sandbox, make_room, n=1)
    report = jobs.run_scheduled(jobs=["audit"])
    assert report["audit"]["audit_complete"] == 1 and report["audit"]["requests_audited"] >= 1
    before = report["audit"]["audit_findings"]
    execute(sql, "DELETE FROM ledger_entries WHERE payment_request_id = %s", request_id)
    after = jobs.run_scheduled(jobs=["audit"])["audit"]["audit_findings"]
    assert after == before + 2
    assert "audit" not in jobs.DEFAULT_JOBS
