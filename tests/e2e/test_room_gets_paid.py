"""A room gets paid, end to end: HTTP into the local API, the real handlers, MariaDB and the Toss sandbox."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e


def open_request(as_user, room, amount=15000):
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": amount,
            "message": "예약금 요청합니다.",
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["payment_request_id"]


def prepare(as_user, room, payer):
    r = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    return r.json()


def pay(as_user, toss, room, payer, *, amount=None):
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"])
    body = {
        "chat_room_id": room.chat_room_id,
        "amount": amount or order["amount"],
        "paymentKey": key,
        "orderId": order["orderId"],
        "payment_method": "card",
    }
    return as_user(payer).post("/api/v1/payment/initiate", body), body


def rows(sql, query, *args):
    with sql.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall()


def test_every_participant_pays_and_the_store_is_told_once(as_user, toss, make_room, sql):
    room = make_room(3)
    request_id = open_request(as_user, room)

    for payer in room.members:
        r, body = pay(as_user, toss, room, payer)
        assert r.status_code == 200, r.text
        assert r.json()["payment_status"] == "completed"
        assert toss.payment(body["paymentKey"])["status"] == "DONE"

    view = as_user(room.members[0]).get(f"/api/v1/payment/status/{room.chat_room_id}").json()
    assert view["payment_request"]["status"] == "completed"
    assert view["payment_request"]["paid_count"] == 3
    assert [p["payment_status"] for p in view["payments"]] == ["completed"] * 3

    events = rows(sql, "SELECT event_type, payload FROM outbox WHERE aggregate_id = %s", str(request_id))
    assert [e["event_type"] for e in events] == ["EscrowFunded"]
    assert json.loads(events[0]["payload"])["total_amount"] == 45000
    ledger = rows(sql, "SELECT entry_type, amount FROM ledger_entries WHERE payment_request_id = %s", request_id)
    assert sorted((e["entry_type"], e["amount"]) for e in ledger) == [("charge", 15000)] * 3


def test_the_confirm_alias_and_a_new_order_id_bound_on_first_use(as_user, toss, make_room):
    room = make_room(1)
    open_request(as_user, room)
    order_id = f"client-order-{room.chat_room_id}"
    key = toss.widget(order_id, 15000)
    r = as_user(room.members[0]).post(
        "/api/v1/payment/confirm",
        {
            "chat_room_id": room.chat_room_id,
            "amount": 15000,
            "paymentKey": key,
            "orderId": order_id,
            "payment_method": "card",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["payment_status"] == "completed"


def test_a_wrong_amount_is_refused_before_toss_is_called(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    r, body = pay(as_user, toss, room, room.members[0], amount=1000)
    assert r.status_code == 422 and r.json()["error"]["code"] == "AMOUNT_MISMATCH"
    assert [
        c for c in toss.calls("/v1/payments/confirm") if (c.get("body") or {}).get("orderId") == body["orderId"]
    ] == []
    assert toss.payment(body["paymentKey"])["status"] == "IN_PROGRESS"  # nobody was charged
    status = rows(sql, "SELECT status FROM payments WHERE payer_id = %s", room.members[0])[0]["status"]
    assert status == "pending"


def test_someone_outside_the_request_cannot_pay(as_user, toss, make_room):
    room = make_room(1)
    open_request(as_user, room)
    r = as_user("intruder").post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 403 and r.json()["error"]["code"] == "NOT_A_PARTICIPANT"
    r = as_user("intruder").post(
        "/api/v1/payment/initiate",
        {
            "chat_room_id": room.chat_room_id,
            "amount": 15000,
            "paymentKey": "pk_x",
            "orderId": "order_intruder_1",
            "payment_method": "card",
        },
    )
    assert r.status_code == 403


def test_a_double_confirm_charges_once_and_answers_the_same(as_user, toss, make_room):
    room = make_room(1)
    open_request(as_user, room)
    r, body = pay(as_user, toss, room, room.members[0])
    assert r.status_code == 200
    again = as_user(room.members[0]).post("/api/v1/payment/initiate", body)
    assert again.status_code == 200 and again.json()["payment_status"] == "completed"
    confirms = [c for c in toss.calls("/v1/payments/confirm") if c["body"]["orderId"] == body["orderId"]]
    assert len(confirms) == 1


def test_simultaneous_identical_confirms_make_one_charge(as_user, toss, make_room):
    room = make_room(1)
    open_request(as_user, room)
    order = prepare(as_user, room, room.members[0])
    key = toss.widget(order["orderId"], order["amount"])
    body = {
        "chat_room_id": room.chat_room_id,
        "amount": 15000,
        "paymentKey": key,
        "orderId": order["orderId"],
        "payment_method": "card",
    }
    toss.faults(latency_ms=300)
    client = as_user(room.members[0])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/v1/payment/initiate", body), range(8)))
    codes = sorted({a.status_code for a in answers})
    assert set(codes) <= {200, 409}, [a.text for a in answers]
    assert any(a.status_code == 200 for a in answers)
    for a in answers:
        if a.status_code == 409:
            assert a.json()["error"]["code"] == "PAYMENT_IN_PROGRESS"
    approved = [
        c for c in toss.calls("/v1/payments/confirm") if c["body"]["orderId"] == order["orderId"] and c["status"] == 200
    ]
    assert len({c.get("idempotency_key") for c in approved}) == 1
    assert toss.payment(key)["status"] == "DONE"
    assert client.post("/api/v1/payment/initiate", body).json()["payment_status"] == "completed"


def test_a_declined_card_fails_and_the_payer_pays_again(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    toss.faults(failure_code="REJECT_CARD_PAYMENT", count=1, paths=["/v1/payments/confirm"])
    r, _ = pay(as_user, toss, room, payer)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "PAYMENT_DECLINED"
    assert r.json()["error"]["toss_code"] == "REJECT_CARD_PAYMENT"
    assert rows(sql, "SELECT status FROM payments WHERE payer_id = %s", payer)[0]["status"] == "failed"

    r, _ = pay(as_user, toss, room, payer)  # a new order from prepare, a new widget payment
    assert r.status_code == 200, r.text
    assert rows(sql, "SELECT status FROM payments WHERE payer_id = %s", payer)[0]["status"] == "completed"
    orders = rows(sql, "SELECT status FROM payment_orders WHERE payer_id = %s ORDER BY created_at", payer)
    assert [o["status"] for o in orders] == ["failed", "done"]


def test_a_confirm_refused_for_a_passing_reason_is_confirmed_when_sent_again(as_user, toss, make_room, sql):
    # The payer is told 503 "pay again shortly" (Toss's PROVIDER_ERROR: the card company's trouble, not a decline).
    # The same confirm sent again used to answer 402 with the stored code and never reach Toss; Toss replays an
    # error for its key, so the new attempt goes with a new key.
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    toss.faults(failure_code="PROVIDER_ERROR", count=1, paths=["/v1/payments/confirm"])
    r, body = pay(as_user, toss, room, payer)
    assert r.status_code == 503 and r.json()["error"]["toss_code"] == "PROVIDER_ERROR", r.text

    again = as_user(payer).post("/api/v1/payment/initiate", body)
    assert again.status_code == 200 and again.json()["payment_status"] == "completed", again.text
    keys = [
        c["idempotency_key"]
        for c in toss.calls("/v1/payments/confirm", "POST")
        if c["body"]["orderId"] == body["orderId"]
    ]
    assert len(keys) == 2 and keys[0] != keys[1], keys
    assert toss.payment(body["paymentKey"])["status"] == "DONE"
    assert rows(sql, "SELECT status FROM payment_orders WHERE order_id = %s", body["orderId"])[0]["status"] == "done"


def test_a_lost_answer_is_resolved_by_looking_the_order_up(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    toss.faults(lose_answer_rate=1.0, timeout_seconds=4, paths=["/v1/payments/confirm"])
    r, body = pay(as_user, toss, room, room.members[0])
    assert r.status_code == 200, r.text
    assert r.json()["payment_status"] == "completed"
    lookups = toss.calls(f"/v1/payments/orders/{body['orderId']}", method="GET")
    assert len(lookups) >= 1
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "completed"


def test_toss_down_leaves_the_payment_unknown_until_it_is_reconciled(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    toss.faults(lose_answer_rate=1.0, timeout_seconds=4)  # confirm approved, and every lookup goes unanswered too
    r, body = pay(as_user, toss, room, room.members[0])
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "PAYMENT_OUTCOME_UNKNOWN"
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "unknown"
    toss.clear_faults()

    # The payer's app retries the same confirm: the order is looked up, nothing is charged twice.
    again = as_user(room.members[0]).post("/api/v1/payment/initiate", body)
    assert again.status_code == 200, again.text
    assert again.json()["payment_status"] == "completed"
    assert toss.payment(body["paymentKey"])["balanceAmount"] == 15000
    charges = rows(
        sql, "SELECT amount FROM ledger_entries WHERE entry_type = 'charge' AND reference = %s", body["paymentKey"]
    )
    assert [c["amount"] for c in charges] == [15000]
