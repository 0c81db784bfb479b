"""A virtual-account deposit Toss takes back (a deposit error: DONE -> WAITING_FOR_DEPOSIT, with a
DEPOSIT_CALLBACK) reverses our completion: before release the share no longer holds the money and the request
unfunds (the store's notice is corrected); a new deposit funds it again. After release the money is the store's
already: the payout is held back and an alarm's metric counts it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import eventually
from tests.e2e.test_room_gets_paid import open_request, pay, prepare, rows

pytestmark = pytest.mark.e2e

SHARE_OF_CHARGE = (
    "SELECT p.status, p.paid_amount, p.refunded_amount FROM payments p "
    "JOIN payment_charges c ON c.payment_id = p.id WHERE c.payment_key = %s"
)


def pay_by_virtual_account(as_user, toss, room, payer) -> str:
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"], method="가상계좌")
    r = as_user(payer).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room.chat_room_id, "amount": order["amount"], "paymentKey": key, "orderId": order["orderId"]},
    )
    assert r.status_code == 200 and r.json()["payment_status"] == "in_progress", r.text
    return key


def deposit(toss, sql, key: str) -> None:
    toss.control(f"payments/{key}/deposit", {})
    eventually(lambda: rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "completed")


def request_status(sql, request_id: int) -> str:
    return str(rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)[0]["status"])


def events_of(sql, request_id: int) -> list[str]:
    found = rows(sql, "SELECT event_type FROM outbox WHERE aggregate_id = %s ORDER BY id", str(request_id))
    return [e["event_type"] for e in found]


def test_a_reversed_deposit_unfunds_the_request_and_a_new_deposit_funds_it_again(as_user, toss, make_room, sql):
    room = make_room(2)
    a, b = room.members
    request_id = open_request(as_user, room)
    key = pay_by_virtual_account(as_user, toss, room, a)
    deposit(toss, sql, key)
    r, _ = pay(as_user, toss, room, b)
    assert r.status_code == 200
    assert request_status(sql, request_id) == "completed"

    toss.control(f"payments/{key}/deposit-error", {})
    eventually(lambda: rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "in_progress")
    assert request_status(sql, request_id) == "pending"
    assert events_of(sql, request_id).count("EscrowUnfunded") == 1
    reversal = rows(
        sql, "SELECT amount FROM ledger_entries WHERE payment_request_id = %s AND entry_type = 'reversal'", request_id
    )
    assert [e["amount"] for e in reversal] == [15000]
    view = as_user(room.owner).get(f"/api/v1/payment/status/{room.chat_room_id}").json()
    share = next(p for p in view["payments"] if p["payer_id"] == a)
    assert share["held_amount"] == 0 and view["payment_request"]["paid_count"] == 1, view
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_NOT_FUNDED", r.text

    # The payer deposits into the same account again: the share is held again and the store told again.
    deposit(toss, sql, key)
    assert request_status(sql, request_id) == "completed"
    assert events_of(sql, request_id).count("EscrowFunded") == 2
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert r.json()["settlement"]["gross_amount"] == 30000

    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    assert not [f for f in report.findings if f.check != "stale_payout"], [f.to_dict() for f in report.findings]


def test_a_deposit_reversed_after_release_holds_the_payout(as_user, toss, make_room, sql, schedule):
    room = make_room(1)
    request_id = open_request(as_user, room)
    key = pay_by_virtual_account(as_user, toss, room, room.members[0])
    deposit(toss, sql, key)
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text

    toss.control(f"payments/{key}/deposit-error", {})
    eventually(
        lambda: (
            rows(
                sql,
                "SELECT COUNT(*) AS n FROM ledger_entries WHERE payment_request_id = %s AND entry_type = 'reversal'",
                request_id,
            )[0]["n"]
            == 1
        )
    )
    held = "SELECT payout_status, payout_error_code, payout_id FROM payment_settlements WHERE payment_request_id = %s"
    settlement = rows(sql, held, request_id)[0]
    assert (settlement["payout_status"], settlement["payout_error_code"]) == ("failed", "DEPOSIT_REVERSED"), settlement
    schedule()
    settlement = rows(sql, held, request_id)[0]
    assert (settlement["payout_status"], settlement["payout_id"]) == ("failed", None)  # held: nothing sent


def test_a_virtual_account_past_its_due_date_frees_the_share_to_pay_again(as_user, toss, make_room, sql, schedule):
    # Toss keeps an account whose dueDate passed WAITING_FOR_DEPOSIT, sends no webhook, and refuses a deposit into
    # it: the share must not wait for it for good (the payer could not pay another way until the request closed).
    room = make_room(1)
    request_id = open_request(as_user, room)
    payer = room.members[0]
    # An account valid for a second (Toss's default is 7 days): the sandbox's clock is never moved here, since the
    # payout and seller webhooks it signs carry its time, which our verification would find in the future.
    toss.control("config", {"virtual_account_valid_seconds": 1.0})
    try:
        key = pay_by_virtual_account(as_user, toss, room, payer)
    finally:
        toss.control("config", {"virtual_account_valid_seconds": 7 * 86400.0})
    r = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "PAYMENT_IN_PROGRESS", r.text

    assert eventually(lambda: toss.payment(key)["virtualAccount"]["expired"] is True, timeout=5)
    rows(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_payments"])
    assert rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "failed"
    charge = rows(sql, "SELECT status FROM payment_charges WHERE payment_key = %s", key)[0]
    assert charge["status"] == "cancelled"

    r, _ = pay(as_user, toss, room, payer)  # by card this time
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    assert request_status(sql, request_id) == "completed"
    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    assert not report.findings, [f.to_dict() for f in report.findings]
