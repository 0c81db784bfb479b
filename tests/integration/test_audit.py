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


SETTLEMENT_SECONDS = 0.5  # the sandbox's settlement cycle (Toss's is days)


@pytest.fixture(scope="module")
def sandbox(database_url: str) -> Iterator[Any]:
    from escrow.config import reset_settings
    from escrow.toss.client import reset_toss_client
    from toss_sandbox import DEFAULT_SECURITY_KEY, start_sandbox

    # Toss's balances as they are, the settlement cycle compressed to SETTLEMENT_SECONDS: release() waits for it
    # before the payout job runs.
    sb = start_sandbox(
        host="127.0.0.1",
        port=0,
        settlement_delay_seconds=SETTLEMENT_SECONDS,
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


def pay(sandbox: Any, room: Any, payer: str, *, order_id: str | None = None, amount: int = AMOUNT) -> dict[str, Any]:
    """Prepare (for what the share owes now) or bring an order id of the client's own, pay in the widget, confirm:
    the payment's trace."""
    from escrow.models import ConfirmBody, PrepareBody
    from escrow.services.payments import confirm_payment, prepare_payment

    if order_id is None:
        prepared = prepare_payment(who(payer), PrepareBody(chat_room_id=room.chat_room_id))
        order_id, amount = prepared["orderId"], int(prepared["amount"])
    key = widget(sandbox, order_id, amount)
    body = ConfirmBody(
        chat_room_id=room.chat_room_id, amount=amount, paymentKey=key, orderId=order_id, payment_method="card"
    )
    answer = confirm_payment(who(payer), body)
    return {"orderId": order_id, "paymentKey": key, "answer": answer}


def funded_room(sandbox: Any, make_room: Any, n: int = 2) -> tuple[Any, int, dict[str, dict[str, Any]]]:
    room = make_room(n)
    request_id = open_request(room)
    paid = {payer: pay(sandbox, room, payer) for payer in room.members}
    assert all(p["answer"]["payment_status"] == "completed" for p in paid.values())
    return room, request_id, paid


def register_store(sandbox: Any, room: Any) -> None:
    """Register the store (the schedule's sellers job sends it to Toss) and approve its seller."""
    from escrow.models import RegisterStoreBody
    from escrow.services.stores import get_store, register_due_sellers, register_store

    register_store(
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
    register_due_sellers()
    store = get_store(who("ops", admin=True), room.store_id)
    r = requests.post(
        f"{sandbox.url}/sandbox/sellers/{store['seller_id']}/status", json={"status": "APPROVED"}, timeout=5
    )
    assert r.status_code == 200, r.text


def release(sandbox: Any, room: Any) -> dict[str, Any]:
    """Release the room (the decision) and pay it out (the schedule's payouts job, once its sales have settled)."""
    from escrow.services.payouts import payouts_due, settlement_view
    from escrow.services.release import release_room

    register_store(sandbox, room)
    result = release_room(who(room.owner), room.chat_room_id)
    assert result["settlement"]["payout_status"] == "scheduled", result

    def settled() -> bool:  # Toss's settlement cycle: the room's sales become the available payout balance
        sales = requests.get(f"{sandbox.url}/sandbox/sales", timeout=5).json()["items"]
        return all(s["state"] == "available" for s in sales)

    deadline = time.monotonic() + 10
    while not settled():
        assert time.monotonic() < deadline, "the sandbox's sales did not settle"
        time.sleep(0.05)
    payouts_due(1000)
    result["settlement"] = settlement_view(result["settlement"]["settlement_id"])
    assert result["settlement"]["payout_status"] == "in_progress", result
    return result


def remove(room: Any, user: str) -> dict[str, Any]:
    from escrow.models import ParticipantBody
    from escrow.services.requests import remove_participant

    return remove_participant(who(room.owner), ParticipantBody(chat_room_id=room.chat_room_id, user_id=user))


def add(room: Any, user: str) -> dict[str, Any]:
    from escrow.models import ParticipantBody
    from escrow.services.requests import add_participant

    return add_participant(who(room.owner), ParticipantBody(chat_room_id=room.chat_room_id, user_id=user))


def request_status(sql: Any, request_id: int) -> str:
    return str(one(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)["status"])


def notices(sql: Any, request_id: int) -> list[str]:
    with sql.cursor() as cur:
        cur.execute(
            "SELECT event_type FROM outbox WHERE aggregate_id = %s AND event_type IN ('EscrowFunded', "
            "'EscrowUnfunded') ORDER BY id",
            (str(request_id),),
        )
        return [r["event_type"].removeprefix("Escrow") for r in cur.fetchall()]


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
    from escrow.models import CreatePaymentRequestBody, PrepareBody
    from escrow.services import jobs
    from escrow.services.payments import apply_toss_payment, prepare_payment
    from escrow.services.refunds import apply_cancels, cancel_request
    from escrow.services.requests import create_payment_request

    def one_row(query: str) -> Any:
        return next(iter(one(sql, query).values()))

    # A partial refund unfunds the request; the payer pays the difference, it is funded again and released.
    released, released_id, paid = funded_room(sandbox, make_room, n=3)
    first = released.members[0]
    assert refund(first, paid[first]["paymentKey"], 5000)["refund_status"] == "partially_refunded"
    assert request_status(sql, released_id) == "pending"
    difference = pay(sandbox, released, first)
    assert difference["answer"]["payment_status"] == "completed"
    assert one(sql, "SELECT amount FROM payment_charges WHERE payment_key = %s", difference["paymentKey"]) == {
        "amount": 5000
    }
    settlement = release(sandbox, released)["settlement"]
    assert (settlement["gross_amount"], settlement["net_amount"]) == (45000, 45000 - 1350)
    assert notices(sql, released_id) == ["Funded", "Unfunded", "Funded"]

    # Cancelled by the owner: every share refunded.
    cancelled, _, _ = funded_room(sandbox, make_room, n=2)
    assert cancel_request(who(cancelled.owner), cancelled.chat_room_id, "모임 취소")["refund_status"] == "refunded"

    # A participant removed (refunded in the same flow), the rest funded again, the participant added back, paying
    # again, and the request released.
    regrouped, regrouped_id, _ = funded_room(sandbox, make_room, n=3)
    third = regrouped.members[2]
    assert remove(regrouped, third)["refund_status"] == "refunded"
    assert request_status(sql, regrouped_id) == "completed"
    assert add(regrouped, third)["payment_request_status"] == "pending"
    assert pay(sandbox, regrouped, third)["answer"]["payment_status"] == "completed"
    assert release(sandbox, regrouped)["settlement"]["gross_amount"] == 3 * AMOUNT
    assert notices(sql, regrouped_id) == ["Funded", "Unfunded", "Funded", "Unfunded", "Funded"]

    # A member added to a funded request: it waits for them, they pay, it is released with them.
    grown = make_room(3)
    grown_id = int(
        create_payment_request(
            who(grown.owner),
            CreatePaymentRequestBody(
                chat_room_id=grown.chat_room_id,
                store_id=grown.store_id,
                amount=AMOUNT,
                participant_ids=grown.members[:2],
            ),
        )["payment_request_id"]
    )
    for payer in grown.members[:2]:
        pay(sandbox, grown, payer)
    assert add(grown, grown.members[2])["participant_count"] == 3
    pay(sandbox, grown, grown.members[2])
    assert release(sandbox, grown)["settlement"]["gross_amount"] == 3 * AMOUNT
    assert notices(sql, grown_id) == ["Funded", "Unfunded", "Funded"]

    # Refunded in full, then paid again in full, then released.
    again, again_id, again_paid = funded_room(sandbox, make_room, n=2)
    payer = again.members[0]
    assert refund(payer, again_paid[payer]["paymentKey"])["refund_status"] == "refunded"
    assert pay(sandbox, again, payer)["answer"]["payment_status"] == "completed"
    release(sandbox, again)
    assert one_row(f"SELECT COUNT(*) FROM payment_charges WHERE payment_request_id = {again_id}") == 3

    # Expired with one share paid: the schedule refunds it.
    expired = make_room(2)
    expired_id = open_request(expired)
    pay(sandbox, expired, expired.members[0])
    execute(
        sql, "UPDATE payment_requests SET expires_at = UTC_TIMESTAMP(3) - INTERVAL 1 MINUTE WHERE id = %s", expired_id
    )
    assert jobs.expire_overdue()["expired"] >= 1
    assert request_status(sql, expired_id) == "expired"

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
    late_key = one_row(f"SELECT payment_key FROM payment_orders WHERE payer_id = '{late.members[0]}'")
    assert behind_our_back.get_payment(late_key).status == "CANCELED"
    assert one_row(f"SELECT status FROM payment_orders WHERE payment_key = '{late_key}'") == "refunded"
    assert apply_cancels(behind_our_back.get_payment(late_key), cancel_id=None, actor="webhook") is None

    for room in (released, cancelled, regrouped, grown, again, expired, doubled, late):
        report = run_audit(room)
        assert report.findings == [], report.table()
        assert report.checked["requests"] == 1
    assert run_audit(released).checked["payments"] == 3
    assert run_audit(released).checked["charges"] == 4


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
    assert checks(report) == {"toss_payment", "toss_refund", "funding_at_toss"}, report.table()
    found = [f for f in report.findings if f.check == "toss_payment"]
    assert {(f.expected, f.actual) for f in found} == {("DONE", "CANCELED"), (f"balance {AMOUNT}", "balance 0")}
    assert {f.payment_key for f in report.findings} == {key}
    unrecorded = next(f for f in report.findings if f.check == "toss_refund")
    assert (unrecorded.expected, unrecorded.actual) == (f"refunds {AMOUNT} in 1 at Toss", "0 on 0 done rows")
    funding = next(f for f in report.findings if f.check == "funding_at_toss")
    assert (funding.expected, funding.actual) == (f"{AMOUNT} held at Toss", "0 held at Toss")


def test_a_deleted_ledger_row_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=2)
    key = paid[room.members[1]]["paymentKey"]
    assert execute(sql, "DELETE FROM ledger_entries WHERE entry_type = 'charge' AND reference = %s", key) == 1
    report = run_audit(room)
    assert checks(report) == {"ledger_identity", "ledger_charge"}
    identity = next(f for f in report.findings if f.check == "ledger_identity")
    assert identity.payment_request_id == request_id
    assert identity.expected == f"charge {AMOUNT} = refund+release+reversal+held+awaiting"
    assert f"charge 0 != refund 0 + release 0 + reversal 0 + held {AMOUNT}" in identity.detail


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
    room, _, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "count": 2},
        timeout=5,
    )
    assert refund(payer, paid[payer]["paymentKey"])["refund_status"] == "refund_pending"  # Toss did not answer
    assert run_audit(room).findings == []  # in flight, within the period: not a finding yet
    execute(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE requested_by = %s", payer)
    assert checks(run_audit(room)) == {"stale_cancel"}


def test_a_refund_toss_made_whose_answer_was_lost_is_settling_until_the_period_ends(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    key = paid[payer]["paymentKey"]
    # Toss refunds, but the answer is lost, and so is the lookup after it: our rows do not know yet.
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"lose_answer_rate": 1.0, "timeout_seconds": 3, "paths": [f"/v1/payments/{key}"]},
        timeout=5,
    )
    assert refund(payer, key)["refund_status"] == "refund_pending"
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)
    assert request_status(sql, request_id) == "completed"  # until the refund is recorded
    assert run_audit(room).findings == []  # Toss is ahead of a refund in flight: settling, not a finding

    execute(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE payment_key = %s", key)
    report = run_audit(room)
    assert checks(report) == {"stale_cancel", "toss_payment", "toss_refund", "funding_at_toss"}, report.table()


def test_two_overlapping_scheduled_runs_do_not_retry_one_refund_together(sandbox, make_room, sql):
    from escrow import db
    from escrow.repositories import cancels as cancels_repo
    from escrow.services import jobs

    room, _, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "count": 2},
        timeout=5,
    )
    assert refund(payer, paid[payer]["paymentKey"])["refund_status"] == "refund_pending"  # Toss did not answer
    requests.delete(f"{sandbox.url}/sandbox/faults", timeout=5)
    with db.reader() as tx:
        seen = [c for c in cancels_repo.stale(tx, 0, 1000) if c["requested_by"] == payer]
    assert len(seen) == 1
    # Both runs read the refund as stale; only the first to claim it asks Toss again.
    assert jobs._claim_cancel(seen[0]) is True
    assert jobs._claim_cancel(seen[0]) is False
    # The claim touched the row (updated_at = NOW(3)); a second later it is stale again for the next run. Without
    # that second, a run in the same millisecond as the claim does not see it (this test failed that way).
    execute(sql, "UPDATE payment_cancels SET updated_at = updated_at - INTERVAL 1 SECOND WHERE id = %s", seen[0]["id"])
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
    assert double.payment_key == paid["paymentKey"] and double.actual == f"{2 * AMOUNT} in 2 orders"


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
    execute(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 1 HOUR WHERE order_id = %s", stale)
    assert [(f.check, f.order_id) for f in run_audit(room).findings] == [("stale_refund_pending", stale)]

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
    # Every current participant holds their share in full, yet the request says it waits for payers.
    execute(sql, "UPDATE payment_requests SET status = 'pending' WHERE id = %s", request_id)
    report = run_audit(room)
    assert checks(report) == {"request_state", "funding_notice"}, report.table()
    state = next(f for f in report.findings if f.check == "request_state")
    assert (state.expected, state.actual) == ("completed", "pending")
    notice = next(f for f in report.findings if f.check == "funding_notice")
    assert notice.actual == "Funded" and "the last notice says funded, the request is pending" in notice.detail

    execute(sql, "UPDATE payment_requests SET status = 'completed', participant_count = 3 WHERE id = %s", request_id)
    found = run_audit(room).findings
    assert [(f.check, f.expected, f.actual) for f in found] == [
        ("request_state", "participant_count 2", "participant_count 3")
    ]


def test_a_partly_refunded_share_in_a_completed_request_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=2)
    first = room.members[0]
    refund(first, paid[first]["paymentKey"], 5000)
    # A partial refund unfunds the request and corrects the store's notice (issue 7, finding 1).
    assert request_status(sql, request_id) == "pending"
    assert notices(sql, request_id) == ["Funded", "Unfunded"]
    assert run_audit(room).findings == []

    # As the request behaved before: still completed after the partial refund, the notice never corrected.
    execute(sql, "UPDATE payment_requests SET status = 'completed' WHERE id = %s", request_id)
    execute(sql, "DELETE FROM outbox WHERE dedupe_key = %s", f"EscrowUnfunded:{request_id}:1")
    report = run_audit(room)
    assert checks(report) == {"request_state", "funding_at_toss"}, report.table()
    state = next(f for f in report.findings if f.check == "request_state")
    assert (state.expected, state.actual) == (
        "every current share held in full",
        "partially_refunded, holds 10000 of 15000",
    )
    at_toss = next(f for f in report.findings if f.check == "funding_at_toss")
    assert at_toss.payment_key == paid[first]["paymentKey"] and at_toss.actual == "10000 held at Toss"


def test_an_escrow_funded_notice_without_its_correction_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=2)
    first = room.members[0]
    refund(first, paid[first]["paymentKey"])
    assert notices(sql, request_id) == ["Funded", "Unfunded"]
    execute(sql, "DELETE FROM outbox WHERE dedupe_key = %s", f"EscrowUnfunded:{request_id}:1")
    report = run_audit(room)
    assert [(f.check, f.actual) for f in report.findings] == [("funding_notice", "Funded")]
    assert "the last notice says funded, the request is pending" in report.findings[0].detail

    # A second announcement of one funding (the store would be told twice that everyone paid).
    for event, round_ in (("EscrowUnfunded", 1), ("EscrowFunded", 2)):
        execute(
            sql,
            "INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload) VALUES (%s, %s, %s, '{}')",
            event,
            str(request_id),
            f"{event}:{request_id}:{round_}",
        )
    report = run_audit(room)
    assert [(f.check, f.actual) for f in report.findings] == [("funding_notice", "Funded Unfunded Funded")]
    assert "2 EscrowFunded for funding_round 1" in report.findings[0].detail


def test_a_removed_participant_still_holding_money_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=3)
    third = room.members[2]
    key = paid[third]["paymentKey"]
    # Toss refuses the removal's refund for good: nothing retries it, and the removed participant's money stays.
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "NOT_CANCELABLE_PAYMENT", "count": 1, "paths": [f"/v1/payments/{key}/cancel"]},
        timeout=5,
    )
    answer = remove(room, third)
    assert answer["refund_status"] == "refund_pending" and answer["refunds"][0]["refund_status"] == "refund_refused"
    report = run_audit(room)
    assert checks(report) == {"closed_holding", "refund_abandoned"}, report.table()
    assert {f.payment_key for f in report.findings} == {key}
    holding = next(f for f in report.findings if f.check == "closed_holding")
    assert (holding.actual, holding.detail) == (
        f"charge held, holds {AMOUNT}",
        "a removed participant; no refund in flight or owed",
    )
    assert request_status(sql, request_id) == "completed"  # the two left hold their shares in full


def test_a_refund_the_schedule_owes_is_found_once_its_retry_is_overdue(sandbox, make_room, sql):
    from escrow.services.refunds import cancel_request

    room, request_id, paid = funded_room(sandbox, make_room, n=1)
    key = paid[room.members[0]]["paymentKey"]
    # Toss refuses the cancelled request's refund for a reason that passes: the schedule asks again later.
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "PROVIDER_ERROR", "count": 1, "paths": [f"/v1/payments/{key}/cancel"]},
        timeout=5,
    )
    assert cancel_request(who(room.owner), room.chat_room_id, "모임 취소")["refund_status"] == "refund_pending"
    row = one(sql, "SELECT id, status, next_attempt_at FROM payment_cancels WHERE payment_key = %s", key)
    assert row["status"] == "failed" and row["next_attempt_at"] is not None
    assert run_audit(room).findings == []  # owed, and not due yet

    execute(sql, "UPDATE payment_cancels SET next_attempt_at = NOW(3) - INTERVAL 1 HOUR WHERE id = %s", row["id"])
    report = run_audit(room)
    assert [(f.check, f.actual) for f in report.findings] == [("stale_refund_retry", "failed PROVIDER_ERROR")]
    assert request_status(sql, request_id) == "cancelled"


def test_a_refund_recorded_twice_or_larger_than_asked_is_found(sandbox, make_room, sql):
    room, request_id, paid = funded_room(sandbox, make_room, n=1)
    payer = room.members[0]
    key = paid[payer]["paymentKey"]
    refund(payer, key, 3000)
    assert run_audit(room).findings == []
    done = one(sql, "SELECT * FROM payment_cancels WHERE payment_key = %s AND status = 'done'", key)

    # The same 3000 recorded again on a second row (what issue 7's finding 4 did with a lost answer).
    execute(
        sql,
        "INSERT INTO payment_cancels (payment_id, payment_request_id, payment_key, request_key, requested_by, reason, "
        "requested_amount, status, transaction_key, cancel_amount) VALUES (%s, %s, %s, 'auto:again', %s, 'again', "
        "3000, 'done', %s, 3000)",
        done["payment_id"],
        request_id,
        key,
        payer,
        f"again-{uuid.uuid4().hex[:8]}",
    )
    report = run_audit(room)
    assert checks(report) == {"toss_refund", "ledger_refund"}, report.table()
    twice = next(f for f in report.findings if f.check == "toss_refund")
    assert (twice.expected, twice.actual) == ("refunds 3000 in 1 at Toss", "6000 on 2 done rows")
    assert "rows for no refund at Toss" in twice.detail
    execute(sql, "DELETE FROM payment_cancels WHERE request_key = 'auto:again' AND payment_key = %s", key)

    # A refund of 3000 recorded on a row that asked for 2000: more than was asked.
    execute(sql, "UPDATE payment_cancels SET requested_amount = 2000 WHERE id = %s", done["id"])
    report = run_audit(room)
    assert [(f.check, f.expected, f.actual) for f in report.findings] == [
        ("over_refunded", "at most 2000", "refunded 3000")
    ]


# Damage done with SQL to a funded room of two (`released`: after its release), and the checks that find it.
# %(request)s is the request's id, %(first)s the first share's id, %(key)s its paymentKey, %(order)s its orderId.
DAMAGE = {
    "a share owing another amount": (
        False,
        ["UPDATE payments SET amount = amount + 1 WHERE id = %(first)s"],
        {"amount", "share_status", "request_state", "funding_at_toss"},
    ),
    "a share's refunded_amount without a refund": (
        False,
        ["UPDATE payments SET refunded_amount = 100 WHERE id = %(first)s"],
        {"share_amounts"},
    ),
    "a share's status that is not what it holds": (
        False,
        ["UPDATE payments SET status = 'partially_refunded' WHERE id = %(first)s"],
        {"share_status", "request_state"},
    ),
    "a charge holding more than the share owes": (
        False,
        ["UPDATE payment_charges SET amount = amount + 5000 WHERE payment_key = %(key)s"],
        {"over_held", "share_amounts", "toss_payment", "ledger_charge", "ledger_identity", "request_state"},
    ),
    "a release entry short of the share": (
        True,
        ["UPDATE ledger_entries SET amount = amount - 1 WHERE entry_type = 'release' AND payment_id = %(first)s"],
        {"ledger_release", "released_in_full", "ledger_identity", "settlement"},
    ),
    "a payout marked failed": (
        True,
        [
            "UPDATE payment_settlements SET payout_status = 'failed', payout_error_code = 'X' WHERE payment_request_id "
            "= %(request)s"
        ],
        {"payout_failed", "payout"},
    ),
    "a payout never sent": (
        True,
        [
            "UPDATE payment_settlements SET payout_status = 'scheduled', payout_id = NULL, updated_at = NOW(3) - "
            "INTERVAL 1 HOUR WHERE payment_request_id = %(request)s"
        ],
        {"stale_payout"},
    ),
    "a request a scheduled job set aside": (
        False,
        [
            "INSERT INTO job_failures (job, item_kind, item_id, error, next_attempt_at) VALUES ('release', 'request', "
            "%(request)s, 'DataError: (1264, out of range)', NOW(3) + INTERVAL 5 MINUTE)"
        ],
        {"job_failure"},
    ),
    "an order a scheduled job set aside": (
        False,
        [
            "INSERT INTO job_failures (job, item_kind, item_id, error, next_attempt_at) VALUES ('reconcile_payments', "
            "'order', %(order)s, 'KeyError: status', NOW(3) + INTERVAL 5 MINUTE)"
        ],
        {"job_failure"},
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_found_by_its_check(sandbox, make_room, sql, damage):
    released, statements, expected = DAMAGE[damage]
    room, request_id, _ = funded_room(sandbox, make_room, n=2)
    if released:
        release(sandbox, room)
    assert run_audit(room).findings == []
    first = one(sql, "SELECT id, payment_key, order_id FROM payments WHERE payer_id = %s", room.members[0])
    values = {"request": request_id, "first": first["id"], "key": first["payment_key"], "order": first["order_id"]}
    try:
        for statement in statements:
            with sql.cursor() as cur:
                cur.execute(statement, values)
        report = run_audit(room)
        assert checks(report) == expected, report.table()
    finally:
        execute(sql, "DELETE FROM job_failures WHERE item_id IN (%s, %s)", str(request_id), first["order_id"])


def test_a_payment_toss_does_not_answer_for_is_reported_as_not_checked(sandbox, make_room):
    room, _, paid = funded_room(sandbox, make_room, n=1)
    requests.post(
        f"{sandbox.url}/sandbox/faults",
        json={"failure_code": "FAILED_INTERNAL_SYSTEM_PROCESSING", "failure_status": 500, "paths": ["/v1/payments/"]},
        timeout=5,
    )
    report = run_audit(room)
    assert checks(report) == {"toss_lookup"}, report.table()
    assert {f.payment_key for f in report.findings} == {paid[room.members[0]]["paymentKey"]}


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


def test_a_cancelled_request_closes_its_waiting_virtual_accounts(sandbox, make_room, sql, behind_our_back):
    from escrow.models import ConfirmBody, PrepareBody
    from escrow.services import jobs
    from escrow.services.payments import confirm_payment, prepare_payment
    from escrow.services.refunds import cancel_request

    room = make_room(2)
    open_request(room)
    payer = room.members[0]
    order_id = prepare_payment(who(payer), PrepareBody(chat_room_id=room.chat_room_id))["orderId"]
    r = requests.post(
        f"{sandbox.url}/sandbox/payments",
        json={"orderId": order_id, "amount": AMOUNT, "orderName": "예약금", "method": "가상계좌"},
        timeout=5,
    )
    key = r.json()["paymentKey"]
    body = ConfirmBody(chat_room_id=room.chat_room_id, amount=AMOUNT, paymentKey=key, orderId=order_id)
    assert confirm_payment(who(payer), body)["toss_status"] == "WAITING_FOR_DEPOSIT"
    # The owner cancels while the payer's virtual account waits: the account is closed at Toss (cancelled in full
    # before any deposit), so no money can reach a request that no longer takes it.
    cancelled = cancel_request(who(room.owner), room.chat_room_id, "모임 취소")
    assert cancelled["payment_request_status"] == "cancelled"
    assert [r["paymentKey"] for r in cancelled["refunds"]] == [key], cancelled
    assert behind_our_back.get_payment(key).status == "CANCELED"
    r = requests.post(f"{sandbox.url}/sandbox/payments/{key}/deposit", json={}, timeout=5)
    assert r.status_code >= 400, r.text  # Toss takes no deposit into a cancelled account
    run = jobs.run_scheduled(jobs=["reconcile_payments", "reconcile_cancels"])
    assert run["passes"] < 10, run
    with sql.cursor() as cur:  # no money moved: nothing in the ledger for this payment
        cur.execute("SELECT COUNT(*) AS n FROM ledger_entries WHERE reference = %s", (key,))
        assert cur.fetchone()["n"] == 0
    assert run_audit(room, reconciliation_period_seconds=0).findings == []
