"""Time budgets (escrow.deadline): a handler behind API Gateway answers before Lambda stops it, whatever Toss does.

The handlers are invoked in-process with API Gateway events and a Lambda context that has little time left (the
local runner's FakeLambdaContext, whose remaining time runs down with the clock), against the Toss sandbox slowed
down by its latency fault. Without the deadline each Toss call would wait its configured timeouts (connect 1 s +
read 2 s here, 3 s + 20 s deployed) and Lambda would stop the function before the outcome was recorded; with it the
unknown outcome is recorded and answered in time, and settled afterwards.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from escrow.deadline import DEFAULT_MARGIN_SECONDS
from local.functions import FakeLambdaContext
from tests.e2e.conftest import eventually
from tests.support.events import http_event
from tests.support.functions import load_function

pytestmark = pytest.mark.e2e

SECONDS_LEFT = 4.0  # what the context says is left: 2 s for Toss calls after the 2 s margin
SLOW = 4000  # ms the sandbox takes before it processes a slowed call (then it processes it anyway)


def rows(sql: Any, query: str, *args: Any) -> list[dict[str, Any]]:
    with sql.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


def invoke(function: str, path: str, body: dict[str, Any], user: str, seconds_left: float) -> tuple[int, Any, float]:
    """One API Gateway event into the function, with `seconds_left` on its Lambda context: (status, body, seconds
    taken). Lambda would have stopped it past `seconds_left`."""
    context = FakeLambdaContext(function, timeout_s=seconds_left)
    started = time.monotonic()
    result = load_function(function).lambda_handler(http_event("POST", path, body=body, user=user), context)
    return result["statusCode"], json.loads(result["body"]), time.monotonic() - started


def confirms_of(toss: Any, order_id: str) -> list[dict[str, Any]]:
    """The confirms of one order Toss answered (the sandbox lists a call once it is answered)."""
    return [c for c in toss.calls("/v1/payments/confirm", "POST") if (c["body"] or {}).get("orderId") == order_id]


def open_request(as_user: Any, room: Any, amount: int = 15000) -> int:
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": amount, "message": "예약금"},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["payment_request_id"])


def confirm_body(as_user: Any, toss: Any, room: Any, payer: str) -> dict[str, Any]:
    r = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    order = r.json()
    return {
        "chat_room_id": room.chat_room_id,
        "amount": order["amount"],
        "paymentKey": toss.widget(order["orderId"], order["amount"]),
        "orderId": order["orderId"],
        "payment_method": "card",
    }


def test_a_confirm_toss_is_too_slow_for_is_recorded_unknown_and_answered_before_the_deadline(
    as_user, toss, make_room, sql
):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    body = confirm_body(as_user, toss, room, payer)
    toss.faults(latency_ms=SLOW, paths=["/v1/payments/confirm", "/v1/payments/orders/"])

    status, answer, took = invoke("confirm", "/api/v1/payment/confirm", body, payer, SECONDS_LEFT)

    # Not API Gateway's generic 5xx after Lambda stopped the function: our answer, in time, with its advice.
    assert status == 502, answer
    assert answer["error"]["code"] == "PAYMENT_OUTCOME_UNKNOWN"
    assert "do not pay again" in answer["error"]["message"]
    assert took < SECONDS_LEFT - DEFAULT_MARGIN_SECONDS + 0.5, took
    # Recorded before the answer: the schedule, the webhook or a retry settles it.
    share = rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])
    order = rows(sql, "SELECT status FROM payment_orders WHERE order_id = %s", body["orderId"])
    assert share[0]["status"] == order[0]["status"] == "unknown"
    # The lookup after the confirm timed out was not started: no time was left for it.
    assert toss.calls(f"/v1/payments/orders/{body['orderId']}", "GET") == []

    # Toss processes the confirm once its latency is over, and says so with a webhook: the share is settled.
    toss.clear_faults()
    eventually(
        lambda: (
            rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "completed"
        ),
        timeout=20,
        interval=0.2,
    )
    # The app's retry of the same confirm answers the truth now, without a second charge.
    again = as_user(payer).post("/api/v1/payment/confirm", body)
    assert again.status_code == 200, again.text
    assert again.json()["payment_status"] == "completed"
    charges = rows(
        sql, "SELECT amount FROM ledger_entries WHERE entry_type = 'charge' AND reference = %s", body["paymentKey"]
    )
    assert [c["amount"] for c in charges] == [15000]
    assert toss.payment(body["paymentKey"])["balanceAmount"] == 15000
    assert len(confirms_of(toss, body["orderId"])) == 1  # sent once (its answer came too late to be heard)


def test_a_confirm_with_no_time_left_is_not_sent_and_its_retry_confirms_it(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    body = confirm_body(as_user, toss, room, payer)

    # Less than the margin plus one call's minimum: nothing is sent to Toss at all.
    status, answer, took = invoke("confirm", "/api/v1/payment/initiate", body, payer, DEFAULT_MARGIN_SECONDS + 0.5)

    assert (status, answer["error"]["code"]) == (502, "PAYMENT_OUTCOME_UNKNOWN"), answer
    assert took < 2.5
    assert confirms_of(toss, body["orderId"]) == [] and toss.calls(body["orderId"]) == []
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "unknown"
    assert toss.payment(body["paymentKey"])["status"] == "IN_PROGRESS"  # authenticated, never approved

    # The retry (with the whole function's time) looks the order up, finds it unapproved and confirms it, same key.
    again = as_user(payer).post("/api/v1/payment/initiate", body)
    assert again.status_code == 200, again.text
    assert again.json()["payment_status"] == "completed"
    assert len(confirms_of(toss, body["orderId"])) == 1


def test_a_refund_toss_is_too_slow_for_is_answered_pending_in_time_and_settled_by_the_schedule(
    as_user, toss, make_room, sql, schedule
):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    body = confirm_body(as_user, toss, room, payer)
    r = as_user(payer).post("/api/v1/payment/confirm", body)
    assert r.status_code == 200, r.text
    key = body["paymentKey"]
    toss.faults(latency_ms=SLOW, paths=[f"/v1/payments/{key}"])  # the cancel and the lookup after it

    cancel = {"paymentKey": key, "cancelReason": "개인 사정"}
    status, answer, took = invoke("cancel", "/api/v1/payment/cancel", cancel, payer, SECONDS_LEFT)

    # The existing truthful answer: pending at Toss, settled automatically; never "nothing was refunded".
    assert status == 202, answer
    assert answer["refund_status"] == "refund_pending"
    assert took < SECONDS_LEFT - DEFAULT_MARGIN_SECONDS + 0.5, took
    cancels = rows(sql, "SELECT status FROM payment_cancels WHERE payment_key = %s", key)
    assert [c["status"] for c in cancels] == ["unknown"]

    toss.clear_faults()
    eventually(lambda: toss.payment(key)["status"] == "CANCELED", timeout=20, interval=0.2)

    def settled() -> bool:
        schedule(jobs=["reconcile_cancels"])
        return rows(sql, "SELECT status FROM payment_cancels WHERE payment_key = %s", key)[0]["status"] == "done"

    eventually(settled, timeout=20, interval=0.5)
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "refunded"
    cancelled = [c for c in toss.calls(f"/v1/payments/{key}/cancel", "POST") if c["status"] == 200]
    assert len({c["idempotency_key"] for c in toss.calls(f"/v1/payments/{key}/cancel", "POST")}) == 1
    assert cancelled, "the schedule's repeat (same key) is answered with the refund"
