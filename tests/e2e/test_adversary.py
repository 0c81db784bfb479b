"""The outside review's findings, each as an attack that worked on the old code (issue 7).

A hostile member, a hostile outsider and a forged Toss each tried the service; every test below states what the
people in the room asked for and checks that the outcome, and every answer on the way, is exactly that.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from tests.e2e.conftest import eventually
from tests.e2e.test_money_out_and_back import register_store
from tests.e2e.test_room_gets_paid import open_request, pay, prepare, rows
from tests.support.events import token

pytestmark = pytest.mark.e2e


def status_of(as_user, room, user=None) -> dict[str, Any]:
    r = as_user(user or room.owner).get(f"/api/v1/payment/status/{room.chat_room_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def share(view: dict[str, Any], payer: str) -> dict[str, Any]:
    return next(p for p in view["payments"] if p["payer_id"] == payer)


def events_of(sql, request_id: int) -> list[str]:
    found = rows(sql, "SELECT event_type FROM outbox WHERE aggregate_id = %s ORDER BY id", str(request_id))
    return [e["event_type"] for e in found]


def cancel(as_user, user: str, payment_key: str, amount: int | None = None, reason: str = "개인 사정") -> Any:
    body: dict[str, Any] = {"paymentKey": payment_key, "cancelReason": reason}
    if amount is not None:
        body["cancelAmount"] = amount
    return as_user(user).post("/api/v1/payment/cancel", body)


def toss_cancels(toss, payment_key: str) -> list[int]:
    return [int(c["cancelAmount"]) for c in toss.payment(payment_key).get("cancels") or []]


# --- 1. a partially refunded share does not count as paid ------------------------------------------------------


def test_a_partly_refunded_share_does_not_fund_the_request(as_user, toss, make_room, sql):
    room = make_room(2)
    a, b = room.members
    request_id = open_request(as_user, room)
    r, body_a = pay(as_user, toss, room, a)
    assert r.status_code == 200
    r = cancel(as_user, a, body_a["paymentKey"], 14999)
    assert r.status_code == 200 and r.json()["refund_status"] == "partially_refunded", r.text
    r, _ = pay(as_user, toss, room, b)
    assert r.status_code == 200

    view = status_of(as_user, room)
    assert view["payment_request"]["status"] == "pending"  # 1 KRW held for a is not a's 15,000 KRW share
    assert view["payment_request"]["paid_count"] == 1
    assert share(view, a)["held_amount"] == 1 and share(view, a)["owed_amount"] == 14999
    assert "EscrowFunded" not in events_of(sql, request_id)
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_NOT_FUNDED", r.text


def test_any_refund_of_a_funded_request_unfunds_it_and_corrects_the_notice(as_user, toss, make_room, sql):
    room = make_room(2)
    a, _ = room.members
    request_id = open_request(as_user, room)
    keys = {}
    for payer in room.members:
        r, body = pay(as_user, toss, room, payer)
        assert r.status_code == 200
        keys[payer] = body["paymentKey"]
    assert status_of(as_user, room)["payment_request"]["status"] == "completed"
    assert events_of(sql, request_id) == ["EscrowFunded"]

    assert cancel(as_user, a, keys[a], 100).status_code == 200
    view = status_of(as_user, room)
    assert view["payment_request"]["status"] == "pending" and view["payment_request"]["paid_count"] == 1
    assert events_of(sql, request_id)[-2:] == ["EscrowUnfunded", "PaymentRefunded"] or events_of(sql, request_id)[
        -2:
    ] == ["PaymentRefunded", "EscrowUnfunded"]
    unfunded = rows(
        sql, "SELECT payload FROM outbox WHERE aggregate_id = %s AND event_type = 'EscrowUnfunded'", str(request_id)
    )
    assert json.loads(unfunded[0]["payload"])["held_amount"] == 29900


# --- 2. dropouts: pay again, remove and add participants ------------------------------------------------------


def test_a_refunded_payer_can_pay_again_the_full_amount_or_the_difference(as_user, toss, make_room, sql):
    room = make_room(2)
    a, b = room.members
    request_id = open_request(as_user, room)
    _, body_a = pay(as_user, toss, room, a)
    _, body_b = pay(as_user, toss, room, b)
    assert cancel(as_user, a, body_a["paymentKey"]).json()["refund_status"] == "refunded"
    assert cancel(as_user, b, body_b["paymentKey"], 5000).json()["refund_status"] == "partially_refunded"

    order = prepare(as_user, room, a)
    assert order["amount"] == 15000  # the whole share again, not "already paid"
    order_b = prepare(as_user, room, b)
    assert order_b["amount"] == 5000  # only what was refunded
    r, _ = pay(as_user, toss, room, a)
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    r, body_b2 = pay(as_user, toss, room, b)
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    assert toss.payment(body_b2["paymentKey"])["totalAmount"] == 5000

    view = status_of(as_user, room)
    assert view["payment_request"]["status"] == "completed"
    assert {p["payer_id"]: p["held_amount"] for p in view["payments"]} == {a: 15000, b: 15000}
    assert events_of(sql, request_id).count("EscrowFunded") == 2  # funded, unfunded, funded again

    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert r.json()["settlement"]["gross_amount"] == 30000


def test_a_refund_never_leaves_an_amount_owed_that_toss_would_not_take(as_user, toss, make_room, sql):
    # Found by the model test: a 10 KRW refund left 10 KRW owed; Toss refuses a payment under 100 KRW
    # (BELOW_MINIMUM_AMOUNT), so the share could never be held in full again and the room could only expire.
    room = make_room(2)
    a, b = room.members
    open_request(as_user, room)
    _, body_a = pay(as_user, toss, room, a)
    pay(as_user, toss, room, b)

    r = cancel(as_user, a, body_a["paymentKey"], 10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "CANCEL_AMOUNT_BELOW_MINIMUM", r.text
    assert toss_cancels(toss, body_a["paymentKey"]) == []  # nothing was asked of Toss
    assert status_of(as_user, room)["payment_request"]["status"] == "completed"

    r = cancel(as_user, a, body_a["paymentKey"], 100)  # 100 KRW owed can be paid again
    assert r.status_code == 200, r.text
    assert prepare(as_user, room, a)["amount"] == 100
    r, _ = pay(as_user, toss, room, a)
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    assert status_of(as_user, room)["payment_request"]["status"] == "completed"


def test_nobody_pays_or_joins_after_the_deadline_and_a_request_funded_in_time_stays_funded(
    as_user, toss, make_room, sql, schedule
):
    # Found by the model test: between the deadline and the scheduled run that expires the request, members
    # could still pay (money taken for a request about to be refunded) and the owner could still add people.
    room = make_room(3)
    a, b, c = room.members
    request_id = open_request(as_user, room)
    _, body_a = pay(as_user, toss, room, a)
    order_b = prepare(as_user, room, b)
    rows(sql, "UPDATE payment_requests SET expires_at = NOW(3) - INTERVAL 1 SECOND WHERE id = %s", request_id)

    r = as_user(b).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_DEADLINE_PASSED", r.text
    key = toss.widget(order_b["orderId"], order_b["amount"])
    r = as_user(b).post(
        "/api/v1/payment/initiate",
        {
            "chat_room_id": room.chat_room_id,
            "amount": order_b["amount"],
            "paymentKey": key,
            "orderId": order_b["orderId"],
        },
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_DEADLINE_PASSED", r.text
    assert toss.payment(key)["status"] != "DONE"  # never confirmed: no money taken
    r = as_user(room.owner).post(
        "/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": c}
    )
    assert r.status_code == 200, r.text
    r = as_user(room.owner).post("/api/v1/payment/participants/add", {"chat_room_id": room.chat_room_id, "user_id": c})
    assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_DEADLINE_PASSED", r.text

    schedule(jobs=["expire"])
    view = status_of(as_user, room)
    assert view["payment_request"]["status"] == "expired"
    assert eventually(lambda: toss.payment(body_a["paymentKey"])["status"] == "CANCELED")


def test_a_request_funded_before_its_deadline_is_released_after_it(as_user, toss, make_room, sql, schedule):
    room = make_room(2)
    request_id = open_request(as_user, room)
    for payer in room.members:
        pay(as_user, toss, room, payer)
    rows(sql, "UPDATE payment_requests SET expires_at = NOW(3) - INTERVAL 1 SECOND WHERE id = %s", request_id)
    schedule(jobs=["expire"])
    assert status_of(as_user, room)["payment_request"]["status"] == "completed"
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text


def test_the_owner_removes_a_participant_and_their_money_is_refunded(as_user, toss, make_room, sql):
    room = make_room(3)
    a, b, c = room.members
    request_id = open_request(as_user, room)
    _, body_a = pay(as_user, toss, room, a)
    _, body_b = pay(as_user, toss, room, b)

    r = as_user(a).post("/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": b})
    assert r.status_code == 403 and r.json()["error"]["code"] == "NOT_ROOM_OWNER"
    r = as_user(room.owner).post(
        "/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": b, "reason": "불참"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["refund_status"] == "refunded" and r.json()["refunded_amount"] == 15000
    assert toss.payment(body_b["paymentKey"])["balanceAmount"] == 0
    r = as_user(room.owner).post(
        "/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": c}
    )
    assert r.status_code == 200 and r.json()["refund_status"] == "not_needed", r.text

    view = status_of(as_user, room)
    assert [p["payer_id"] for p in view["payments"]] == [a]
    assert view["payment_request"]["participant_count"] == 1
    assert view["payment_request"]["status"] == "completed"  # every current participant's share is held
    assert events_of(sql, request_id).count("EscrowFunded") == 1
    r = as_user(b).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 403 and r.json()["error"]["code"] == "NOT_A_PARTICIPANT"

    # ... and adds one back: the request waits for them again.
    r = as_user(room.owner).post("/api/v1/payment/participants/add", {"chat_room_id": room.chat_room_id, "user_id": c})
    assert r.status_code == 201, r.text
    view = status_of(as_user, room)
    assert view["payment_request"]["status"] == "pending" and view["payment_request"]["participant_count"] == 2
    assert "EscrowUnfunded" in events_of(sql, request_id)
    r, _ = pay(as_user, toss, room, c)
    assert r.status_code == 200
    assert status_of(as_user, room)["payment_request"]["status"] == "completed"
    assert toss.payment(body_a["paymentKey"])["balanceAmount"] == 15000

    r = as_user(room.owner).post(
        "/api/v1/payment/participants/add", {"chat_room_id": room.chat_room_id, "user_id": "not_a_member"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "NOT_ROOM_MEMBERS", r.text


# --- 3. membership comes only from a trusted source -----------------------------------------------------------


def put_members(as_user, room_id: int, owner: str, members: list[str], *, role: str = "service") -> Any:
    base = as_user(None).base
    return requests.put(
        f"{base}/api/v1/admin/rooms/{room_id}/members",
        json={"owner_id": owner, "member_ids": members},
        headers={"authorization": f"Bearer {token('chat-service', role=role)}"},
        timeout=30,
    )


def test_a_room_without_members_is_refused_and_membership_comes_from_the_chat_service(as_user, toss, make_room):
    room = make_room(2, with_member_rows=False)
    body = {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "participant_ids": ["x"]}
    r = as_user("intruder").post("/api/v1/payment/request", body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "ROOM_NOT_FOUND", r.text
    r = as_user("intruder").get(f"/api/v1/payment/status/{room.chat_room_id}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "ROOM_NOT_FOUND", r.text

    r = as_user(None).post("/api/v1/payment/request", body)
    assert r.status_code == 401
    base = as_user(None).base
    r = requests.put(
        f"{base}/api/v1/admin/rooms/{room.chat_room_id}/members",
        json={"owner_id": "intruder", "member_ids": ["intruder"]},
        headers={"authorization": f"Bearer {token('intruder')}"},
        timeout=30,
    )
    assert r.status_code == 403, r.text
    r = put_members(as_user, room.chat_room_id, room.owner, room.members)
    assert r.status_code == 200, r.text
    assert open_request(as_user, room) > 0


def test_release_and_room_cancel_follow_the_current_owner(as_user, toss, make_room, sql):
    room = make_room(2)
    a, b = room.members
    open_request(as_user, room)
    for payer in room.members:
        assert pay(as_user, toss, room, payer)[0].status_code == 200
    # The chat service hands the room over to member a.
    r = put_members(as_user, room.chat_room_id, a, [room.owner, b])
    assert r.status_code == 200, r.text
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 403 and r.json()["error"]["code"] == "NOT_ROOM_OWNER", r.text
    r = as_user(room.owner).post("/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "NOT_ROOM_OWNER", r.text
    r = as_user(a).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text


# --- 4. a lost refund answer never refunds twice and never says "nothing refunded" -----------------------------


def test_a_refund_whose_answer_was_lost_is_attributed_to_its_own_request(as_user, toss, make_room, sql):
    room = make_room(1)
    (a,) = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, a)
    key = body["paymentKey"]
    toss.faults(lose_answer_rate=1.0, timeout_seconds=3, paths=[f"/v1/payments/{key}/cancel"])
    first = cancel(as_user, a, key, 3000)
    assert first.status_code in (200, 202), first.text  # 3000 were refunded: never a "nothing was refunded"
    toss.clear_faults()
    eventually(lambda: toss_cancels(toss, key) == [3000])
    again = cancel(as_user, a, key, 3000)  # the identical retry: the first outcome
    assert again.status_code == 200 and again.json()["refunded_amount"] == 3000, again.text
    assert toss_cancels(toss, key) == [3000]
    mine = rows(
        sql,
        "SELECT request_key, status, cancel_amount FROM payment_cancels WHERE payment_id = "
        "(SELECT payment_id FROM payment_charges WHERE payment_key = %s)",
        key,
    )
    assert [(m["status"], m["cancel_amount"]) for m in mine] == [("done", 3000)]
    assert not any(m["request_key"].startswith("toss:") for m in mine)

    other = cancel(as_user, a, key, 3000, reason="다른 이유")  # a second, different refund is a new request
    assert other.status_code == 200 and other.json()["refunded_amount"] == 6000, other.text
    assert toss_cancels(toss, key) == [3000, 3000]


def test_a_refund_whose_lookup_also_fails_stays_unknown_and_is_never_sent_again_with_a_new_key(
    as_user, toss, make_room, sql, schedule
):
    room = make_room(1)
    (a,) = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, a)
    key = body["paymentKey"]
    toss.faults(lose_answer_rate=1.0, timeout_seconds=3, paths=[f"/v1/payments/{key}"])
    first = cancel(as_user, a, key, 3000)
    assert first.status_code in (202, 502), first.text
    assert "nothing" not in first.text
    toss.clear_faults()
    schedule(jobs=["reconcile_payments", "reconcile_cancels"])
    again = cancel(as_user, a, key, 3000)
    assert again.status_code == 200 and again.json()["refunded_amount"] == 3000, again.text
    keys = {c["idempotency_key"] for c in toss.calls(f"/v1/payments/{key}/cancel", "POST")}
    assert len(keys) == 1
    assert toss_cancels(toss, key) == [3000]


# --- 5. a stale confirm answers the current truth --------------------------------------------------------------


def test_replaying_an_old_confirm_after_the_room_was_cancelled_does_not_say_completed(as_user, toss, make_room):
    room = make_room(2)
    a, _ = room.members
    open_request(as_user, room)
    r, body = pay(as_user, toss, room, a)
    assert r.status_code == 200
    r = as_user(room.owner).post("/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "x"})
    assert r.status_code == 200, r.text
    replay = as_user(a).post("/api/v1/payment/initiate", body)
    assert replay.status_code == 409, replay.text
    assert replay.json()["error"]["code"] == "REQUEST_CLOSED"
    assert replay.json()["error"]["payment_status"] == "refunded"


def test_replaying_an_old_confirm_after_a_refund_does_not_say_completed(as_user, toss, make_room):
    room = make_room(2)
    a, _ = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, a)
    assert cancel(as_user, a, body["paymentKey"]).status_code == 200
    replay = as_user(a).post("/api/v1/payment/initiate", body)
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "PAYMENT_REFUNDED", replay.text


# --- 6. paymentKey squatting ------------------------------------------------------------------------------------


def test_someone_elses_payment_key_is_not_bound_to_your_order(as_user, toss, make_room, sql):
    room = make_room(2)
    a, b = room.members
    open_request(as_user, room)
    order_a = prepare(as_user, room, a)
    key_a = toss.widget(order_a["orderId"], order_a["amount"])
    order_b = prepare(as_user, room, b)
    squat = {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": key_a, "orderId": order_b["orderId"]}
    r = as_user(b).post("/api/v1/payment/initiate", squat)
    assert r.status_code == 402, r.text
    mine = {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": key_a, "orderId": order_a["orderId"]}
    r = as_user(a).post("/api/v1/payment/initiate", mine)
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text


# --- 7. one poison request does not stop the scheduled jobs ----------------------------------------------------


def test_more_participants_than_the_columns_hold_is_refused_up_front(as_user, make_room, sql):
    room = make_room(2)
    with sql.cursor() as cur:
        cur.executemany(
            "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, 0)",
            [(room.chat_room_id, f"crowd_{i}") for i in range(430)],
        )
    body = {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 10_000_000}
    r = as_user(room.owner).post("/api/v1/payment/request", body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "TOO_MANY_PARTICIPANTS", r.text
    assert not rows(sql, "SELECT id FROM payment_requests WHERE chat_room_id = %s", room.chat_room_id)


def test_a_request_that_cannot_be_released_is_set_aside_and_the_others_are_released(
    as_user, toss, make_room, sql, schedule
):
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    healthy = make_room(1)
    poison = make_room(2)
    for room in (healthy, poison):
        r = as_user(room.owner).post(
            "/api/v1/payment/request",
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "release_at": soon},
        )
        assert r.status_code == 201
        for member in room.members:
            assert pay(as_user, toss, room, member)[0].status_code == 200
    # The poison room as an overflow left it: funded, but its total no longer fits the settlement's columns (before
    # the participant cap, 430 x 10,000,000 KRW did this through the API).
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payments p JOIN payment_requests r ON r.id = p.payment_request_id "
            "SET p.amount = 4294967295, p.paid_amount = 4294967295, r.amount = 4294967295 WHERE r.chat_room_id = %s",
            (poison.chat_room_id,),
        )
    eventually(lambda: datetime.now(UTC).isoformat() > soon, timeout=5)
    report = schedule(jobs=["release"])
    assert report["release"]["released"] >= 1, report
    assert report["release"]["failed"] >= 1, report
    state = {
        r["chat_room_id"]: r["status"]
        for r in rows(
            sql,
            "SELECT chat_room_id, status FROM payment_requests WHERE chat_room_id IN (%s, %s)",
            healthy.chat_room_id,
            poison.chat_room_id,
        )
    }
    assert state == {healthy.chat_room_id: "released", poison.chat_room_id: "completed"}
    failures = rows(sql, "SELECT job, item_id, error FROM job_failures WHERE job = 'release'")
    assert any("1264" in f["error"] or "Out of range" in f["error"] for f in failures), failures
    # An operator repairs the rows; once its back-off is over the request is released, and no longer set aside.
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payments p JOIN payment_requests r ON r.id = p.payment_request_id "
            "SET p.amount = 15000, p.paid_amount = 15000, r.amount = 15000 WHERE r.chat_room_id = %s",
            (poison.chat_room_id,),
        )
        cur.execute("UPDATE job_failures SET next_attempt_at = NOW(3) - INTERVAL 1 SECOND WHERE job = 'release'")
    assert schedule(jobs=["release"])["release"]["released"] >= 1
    assert (
        rows(sql, "SELECT status FROM payment_requests WHERE chat_room_id = %s", poison.chat_room_id)[0]["status"]
        == "released"
    )
    assert not rows(
        sql,
        "SELECT item_id FROM job_failures WHERE job = 'release' AND item_id = (SELECT id FROM payment_requests "
        "WHERE chat_room_id = %s)",
        poison.chat_room_id,
    )


# --- 9. absurd path parameters ------------------------------------------------------------------------------------


def test_a_five_thousand_digit_room_id_is_a_4xx(as_user, make_room):
    r = as_user("someone").get("/api/v1/payment/status/" + "9" * 5000)
    assert 400 <= r.status_code < 500, r.text
    body = '{"chat_room_id": ' + "9" * 5000 + ', "store_id": "s", "amount": 15000}'
    r = as_user("someone").post("/api/v1/payment/request", data=body)
    assert 400 <= r.status_code < 500, r.text


# --- 10. store registration: tests/e2e/test_store_registration.py (with the asynchronous registration) --------------


# --- 11. the webhook endpoint is not a free write ----------------------------------------------------------------


def test_unverifiable_webhooks_are_kept_as_metadata_only_and_cost_no_toss_call(api, toss, sql):
    before = len(toss.calls("/v1/payments/", "GET"))
    junk = {
        "eventType": "PAYMENT_STATUS_CHANGED",
        "data": {"paymentKey": "..", "orderId": "x" * 10},
        "pad": "a" * 60000,
    }
    tid = "whtrans_" + uuid.uuid4().hex
    r = requests.post(
        f"{api}/api/v1/payment/webhook",
        data=json.dumps(junk),
        headers={"content-type": "application/json", "tosspayments-webhook-transmission-id": tid},
        timeout=30,
    )
    assert r.status_code in (200, 400, 401, 413), r.text
    assert len(toss.calls("/v1/payments/", "GET")) == before  # an unknown payment is never looked up
    logged = rows(sql, "SELECT raw_body, outcome FROM payment_webhooks WHERE transmission_id = %s", tid)
    assert len(logged) == 1 and len(logged[0]["raw_body"] or "") < 2048, logged
    assert not rows(sql, "SELECT dedupe_key FROM webhook_receipts WHERE dedupe_key LIKE %s", f"%{tid}%")


def test_seller_changed_bodies_are_stored_masked(as_user, toss, make_room, sql):
    room = make_room(1)
    store = register_store(as_user, room)
    toss.control(f"sellers/{store['seller_id']}/status", {"status": "APPROVED"})
    eventually(
        lambda: rows(
            sql,
            "SELECT id FROM payment_webhooks WHERE event_type = 'seller.changed' AND raw_body LIKE %s",
            f"%{store['seller_id']}%",
        )
    )
    stored = rows(
        sql,
        "SELECT raw_body FROM payment_webhooks WHERE event_type = 'seller.changed' AND raw_body LIKE %s",
        f"%{store['seller_id']}%",
    )
    for row in stored:
        assert "110123456789" not in row["raw_body"] and "01012345678" not in row["raw_body"]
        assert "홍길동" not in row["raw_body"]


def test_the_webhook_log_is_kept_for_its_retention_time_only(api, sql, schedule):
    tid_old, tid_new = "whtrans_old_" + uuid.uuid4().hex, "whtrans_new_" + uuid.uuid4().hex
    with sql.cursor() as cur:
        for tid, age in ((tid_old, 91), (tid_new, 1)):
            cur.execute(
                "INSERT INTO payment_webhooks (transmission_id, headers, verification, outcome, received_at) "
                "VALUES (%s, '{}', 'unreadable', 'rejected', NOW(3) - INTERVAL %s DAY)",
                (tid, age),
            )
    report = schedule(jobs=["webhook_retention"])
    assert report["webhook_retention"]["webhooks_deleted"] >= 1
    kept = {
        r["transmission_id"]
        for r in rows(
            sql, "SELECT transmission_id FROM payment_webhooks WHERE transmission_id IN (%s, %s)", tid_old, tid_new
        )
    }
    assert kept == {tid_new}


def test_a_flood_of_deliveries_for_one_payment_is_throttled(as_user, toss, make_room, api):
    room = make_room(1)
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, room.members[0])
    before = len(toss.calls(f"/v1/payments/{body['paymentKey']}", "GET"))
    answers = []
    for _ in range(12):
        event = {"eventType": "PAYMENT_STATUS_CHANGED", "data": {"paymentKey": body["paymentKey"], "status": "DONE"}}
        r = requests.post(
            f"{api}/api/v1/payment/webhook",
            json=event,
            headers={"tosspayments-webhook-transmission-id": "whtrans_" + uuid.uuid4().hex},
            timeout=30,
        )
        answers.append(r.status_code)
    lookups = len(toss.calls(f"/v1/payments/{body['paymentKey']}", "GET")) - before
    assert 429 in answers and lookups <= 5, (answers, lookups)


# --- issue 8 item 3: a 5xx answer and Idempotency-Keys, under both of Toss's possible behaviours -------------------


@pytest.mark.parametrize("bind_5xx", [True, False], ids=["5xx-replayed-for-its-key", "5xx-not-bound"])
def test_a_confirm_answered_with_a_5xx_is_settled_with_one_charge(as_user, toss, make_room, sql, bind_5xx):
    toss.control("config", {"idempotency_bind_5xx": bind_5xx})
    try:
        room = make_room(1)
        open_request(as_user, room)
        order = prepare(as_user, room, room.members[0])
        key = toss.widget(order["orderId"], order["amount"])
        toss.faults(server_error_rate=1.0, count=1, paths=["/v1/payments/confirm"])
        toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v1/payments/confirm"])
        body = {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": key, "orderId": order["orderId"]}
        r = as_user(room.members[0]).post("/api/v1/payment/initiate", body)
        toss.clear_faults()
        if r.status_code != 200:  # asked again by the app: it must not be stuck on the replayed 5xx
            assert r.status_code == 502 and r.json()["error"]["code"] == "PAYMENT_OUTCOME_UNKNOWN", r.text
            r = as_user(room.members[0]).post("/api/v1/payment/initiate", body)
        assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
        approvals = [c for c in toss.calls("/v1/payments/confirm") if c["status"] == 200 and not c["replayed"]]
        assert len([c for c in approvals if c["body"]["orderId"] == order["orderId"]]) == 1
        assert toss.payment(key)["status"] == "DONE"
    finally:
        toss.control("config", {"idempotency_bind_5xx": True})
