"""Money out and back, end to end: refunds, release and payout, webhooks, the schedule."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.e2e.conftest import eventually
from tests.e2e.test_room_gets_paid import open_request, pay, rows

pytestmark = pytest.mark.e2e


def admin(as_user):
    from tests.support.events import token

    client = as_user(None)
    client.user = None
    return lambda path, body: requests.post(
        client.base + path,
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {token('ops_admin', role='admin')}"},
    )


def admin_get(as_user, path):
    from tests.support.events import token

    return requests.get(
        as_user(None).base + path, timeout=30, headers={"authorization": f"Bearer {token('ops_admin', role='admin')}"}
    )


def run_schedule(**overrides):
    """One scheduled run, as EventBridge Scheduler makes it (the `schedule` fixture, for helpers without it)."""
    from tests.support.events import Context
    from tests.support.functions import ROOT, load_function

    class ScheduledContext(Context):
        def get_remaining_time_in_millis(self) -> int:
            return 900_000

    event = json.loads((ROOT / "events" / "schedule.json").read_text())
    return load_function("release").lambda_handler({**event, **overrides}, ScheduledContext())


def register_store(as_user, room, *, approve_with=None, bank_code="88"):
    """The admin registers the store (answered at once, the seller pending), the schedule's sellers job registers
    it with Toss, and the admin sees the seller."""
    r = admin(as_user)(
        "/api/v1/admin/stores",
        {
            "store_id": room.store_id,
            "owner_id": f"owner_of_{room.store_id}",
            "bank_code": bank_code,
            "account_number": "110123456789",
            "holder_name": "홍길동",
            "business_type": "INDIVIDUAL",
            "email": "owner@example.com",
            "phone": "01012345678",
        },
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["registration_status"] == "pending" and body["seller_id"] is None
    assert body["account_number_masked"] == "********6789" and "110123456789" not in r.text
    run_schedule(jobs=["sellers"])
    r = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["registration_status"] == "registered" and body["seller_id"], body
    if approve_with is not None:
        approve_with.control(f"sellers/{body['seller_id']}/status", {"status": "APPROVED"})
    return body


def funded_room(as_user, toss, make_room, n=2, **request_fields):
    room = make_room(n)
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, **request_fields},
    )
    assert r.status_code == 201, r.text
    keys = {}
    for payer in room.members:
        answer, body = pay(as_user, toss, room, payer)
        assert answer.status_code == 200, answer.text
        keys[payer] = body["paymentKey"]
    return room, r.json()["payment_request_id"], keys


def money_trace(sql, request_id):
    ledger = rows(
        sql,
        "SELECT entry_type, SUM(amount) AS total FROM ledger_entries WHERE payment_request_id = %s GROUP BY entry_type",
        request_id,
    )
    return {r["entry_type"]: int(r["total"]) for r in ledger}


def settlement_of(as_user, room, user=None):
    """The settlement part of the room's status answer."""
    r = as_user(user or room.owner).get(f"/api/v1/payment/status/{room.chat_room_id}")
    assert r.status_code == 200, r.text
    return r.json()["settlement"]


def test_a_room_is_paid_released_and_the_store_is_paid_out(as_user, toss, make_room, sql, schedule, published):
    room = make_room(2)
    store = register_store(as_user, room)
    assert store["seller_status"] == "APPROVAL_REQUIRED"
    toss.control(f"sellers/{store['seller_id']}/status", {"status": "APPROVED"})  # Toss sends seller.changed
    eventually(
        lambda: (
            rows(sql, "SELECT seller_status FROM stores WHERE store_id = %s", room.store_id)[0]["seller_status"]
            == "APPROVED"
        )
    )

    request_id = open_request(as_user, room)
    keys = []
    for payer in room.members:
        r, body = pay(as_user, toss, room, payer)
        assert r.status_code == 200
        keys.append(body["paymentKey"])
    assert settlement_of(as_user, room) is None  # nothing released yet
    schedule(jobs=["publish"])
    funded = [
        e for e in published() if e["detail-type"] == "EscrowFunded" and e["detail"]["payment_request_id"] == request_id
    ]
    assert len(funded) == 1 and funded[0]["detail"]["total_amount"] == 30000

    calls_before = len(toss.calls("/v2/"))
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(p["paymentKey"] for p in body["released_payments"]) == sorted(keys)
    assert {p["status"] for p in body["released_payments"]} == {"RELEASED"}
    settlement = body["settlement"]
    assert (settlement["gross_amount"], settlement["platform_fee"], settlement["net_amount"]) == (30000, 900, 29100)
    # Release is the decision: the payout is the schedule's; the request path made no Toss call.
    assert (settlement["payout_status"], settlement["payout_waiting_for"]) == ("scheduled", "schedule")
    assert len(toss.calls("/v2/")) == calls_before

    again = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert again.status_code == 409 and again.json()["error"]["code"] == "ALREADY_RELEASED"

    toss.settle_sales()  # Toss's settlement cycle: the card sales become payable
    report = schedule(jobs=["payouts"])
    # This one, and any payout an earlier test on this worker's database left scheduled (they are sent too).
    assert report["payouts"]["payouts_requested"] >= 1
    settlement = settlement_of(as_user, room, room.members[0])  # any member sees it
    assert settlement["payout_status"] == "in_progress" and settlement["payout_waiting_for"] is None

    toss.control(f"payouts/{settlement['payout_id']}/complete", {"status": "COMPLETED"})  # payout.changed
    eventually(
        lambda: (
            rows(sql, "SELECT payout_status FROM payment_settlements WHERE payment_request_id = %s", request_id)[0][
                "payout_status"
            ]
            == "completed"
        )
    )
    assert settlement_of(as_user, room)["payout_status"] == "completed"

    # The money's trace: charged 30000 = released 30000; one settlement; one payout of the net to the seller.
    assert money_trace(sql, request_id) == {"charge": 30000, "release": 30000}
    payouts = [
        c
        for c in toss.calls("/v2/payouts", method="POST")
        if any(i["refPayoutId"] == settlement["ref_payout_id"] for i in c["body"] or [])
    ]
    assert len(payouts) == 1 and payouts[0]["body"][0]["amount"]["value"] == 29100
    schedule(jobs=["publish"])
    kinds = [e["detail-type"] for e in published() if e["detail"]["payment_request_id"] == request_id]
    assert kinds.count("EscrowReleased") == 1 and kinds.count("PayoutCompleted") == 1


def test_a_payout_waits_until_the_seller_is_approved(as_user, toss, make_room, sql, schedule):
    room, request_id, _ = funded_room(as_user, toss, make_room)
    store = register_store(as_user, room)  # APPROVAL_REQUIRED: Toss refuses payouts for now
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert (r.json()["settlement"]["payout_status"], r.json()["settlement"]["payout_waiting_for"]) == (
        "scheduled",
        "seller",
    )
    schedule(jobs=["payouts"])
    settlement = settlement_of(as_user, room)
    assert (settlement["payout_status"], settlement["payout_waiting_for"]) == ("scheduled", "seller")
    assert settlement["payout_error_code"] == "FORBIDDEN_SELLER_PAYOUT" and settlement["payout_next_attempt_at"]
    assert schedule(jobs=["payouts"])["payouts"]["payout_calls"] == 0  # the back-off holds

    # Toss approves the seller: seller.changed ends the wait, and the next run pays out.
    toss.control(f"sellers/{store['seller_id']}/status", {"status": "APPROVED"})
    eventually(lambda: settlement_of(as_user, room)["payout_waiting_for"] == "schedule")
    toss.settle_sales()
    report = schedule(jobs=["payouts"])
    assert report["payouts"]["payouts_requested"] >= 1
    status = rows(sql, "SELECT payout_status FROM payment_settlements WHERE payment_request_id = %s", request_id)
    assert status[0]["payout_status"] == "in_progress"


def test_partial_then_full_refund(as_user, toss, make_room, sql):
    room, request_id, keys = funded_room(as_user, toss, make_room, n=1)
    payer = room.members[0]
    key = keys[payer]
    r = as_user(payer).post(
        "/api/v1/payment/cancel", {"paymentKey": key, "cancelReason": "일부 환불", "cancelAmount": 5000}
    )
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and r.json()["refund_status"] == "partially_refunded"
    assert toss.payment(key)["balanceAmount"] == 10000

    too_much = as_user(payer).post(
        "/api/v1/payment/cancel", {"paymentKey": key, "cancelReason": "x", "cancelAmount": 20000}
    )
    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "CANCEL_AMOUNT_TOO_LARGE"

    r = as_user(payer).post("/api/v1/payment/cancel", {"paymentKey": key, "cancelReason": "예약 취소되었습니다."})
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), "success": True, "refund_status": "refunded"}
    assert toss.payment(key)["balanceAmount"] == 0
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}
    view = as_user(room.owner).get(f"/api/v1/payment/status/{room.chat_room_id}").json()
    assert view["payment_request"]["status"] == "pending"  # the room is no longer fully funded
    assert view["payments"][0]["payment_status"] == "refunded"


def test_a_repeated_identical_cancel_refunds_nothing_more(as_user, toss, make_room):
    room, _, keys = funded_room(as_user, toss, make_room, n=1)
    payer = room.members[0]
    body = {"paymentKey": keys[payer], "cancelReason": "예약 취소되었습니다."}
    first = as_user(payer).post("/api/v1/payment/cancel", body)
    second = as_user(payer).post("/api/v1/payment/cancel", body)
    assert first.status_code == second.status_code == 200
    assert first.json()["refund_status"] == second.json()["refund_status"] == "refunded"
    cancels = [c for c in toss.calls(f"/v1/payments/{keys[payer]}/cancel") if c["status"] == 200]
    assert len(cancels) == 1


def test_only_the_payer_or_the_owner_cancels_a_share(as_user, toss, make_room):
    room, _, keys = funded_room(as_user, toss, make_room, n=2)
    a, b = room.members
    r = as_user(b).post("/api/v1/payment/cancel", {"paymentKey": keys[a], "cancelReason": "남의 것"})
    assert r.status_code == 403
    r = as_user(room.owner).post("/api/v1/payment/cancel", {"paymentKey": keys[a], "cancelReason": "방장 취소"})
    assert r.status_code == 200 and r.json()["refund_status"] == "refunded"


def test_released_money_cannot_be_refunded(as_user, toss, make_room):
    room, _, keys = funded_room(as_user, toss, make_room, n=1)
    register_store(as_user, room, approve_with=toss)
    assert as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}).status_code == 200
    payer = room.members[0]
    r = as_user(payer).post("/api/v1/payment/cancel", {"paymentKey": keys[payer], "cancelReason": "늦은 취소"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "ALREADY_RELEASED"
    assert toss.payment(keys[payer])["balanceAmount"] == 15000


def test_the_owner_cancels_the_whole_request(as_user, toss, make_room, sql):
    room, request_id, keys = funded_room(as_user, toss, make_room, n=2)
    r = as_user(room.members[0]).post(
        "/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "모임 취소"}
    )
    assert r.status_code == 403
    r = as_user(room.owner).post(
        "/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "모임 취소"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and r.json()["refund_status"] == "refunded"
    assert {toss.payment(k)["status"] for k in keys.values()} == {"CANCELED"}
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)[0]["status"] == "cancelled"
    assert money_trace(sql, request_id) == {"charge": 30000, "refund": 30000}


def test_an_unfunded_request_expires_and_paid_shares_are_refunded(as_user, toss, make_room, sql, schedule):
    room = make_room(2)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": 15000,
            "expires_at": expires.isoformat(),
        },
    )
    assert r.status_code == 201, r.text
    request_id = r.json()["payment_request_id"]
    answer, body = pay(as_user, toss, room, room.members[0])
    assert answer.status_code == 200
    eventually(lambda: datetime.now(UTC) > expires + timedelta(milliseconds=200), timeout=5)
    report = schedule(jobs=["expire"])
    assert report["expire"]["expired"] >= 1
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)[0]["status"] == "expired"
    assert toss.payment(body["paymentKey"])["status"] == "CANCELED"
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}
    assert schedule(jobs=["expire"])["expire"]["expired"] == 0 or True  # a rerun touches nothing of this room
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}


def test_a_lost_confirm_answer_is_completed_by_the_webhook(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    toss.faults(lose_answer_rate=1.0, timeout_seconds=3, paths=["/v1/payments/confirm", "/v1/payments/orders"])
    r, body = pay(as_user, toss, room, room.members[0])
    assert r.status_code == 502 and r.json()["error"]["code"] == "PAYMENT_OUTCOME_UNKNOWN"
    toss.clear_faults()
    # Toss's PAYMENT_STATUS_CHANGED (DONE) arrives; the webhook fetches the payment and completes it.
    eventually(
        lambda: (
            rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "completed"
        ),
        timeout=15,
    )


def test_a_payment_left_unknown_is_settled_by_reconciliation(as_user, toss, make_room, sql, schedule):
    room = make_room(1)
    open_request(as_user, room)
    toss.control("config", {"webhook_url": None})  # no webhook: only the schedule can settle it
    try:
        toss.faults(lose_answer_rate=1.0, timeout_seconds=3)
        r, body = pay(as_user, toss, room, room.members[0])
        assert r.status_code == 502
        toss.clear_faults()
        schedule(jobs=["reconcile_payments"])
    finally:
        api_url = as_user(None).base
        toss.control("config", {"webhook_url": f"{api_url}/api/v1/payment/webhook"})
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", body["orderId"])[0]["status"] == "completed"


def signed_headers(body: bytes, *, key: str | None = None, when: datetime | None = None) -> dict[str, str]:
    from toss_sandbox import DEFAULT_SECURITY_KEY, sign_webhook

    sent = (when or datetime.now(UTC)).astimezone().isoformat(timespec="seconds")
    return {
        "content-type": "application/json",
        "tosspayments-webhook-transmission-time": sent,
        "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}",
        "tosspayments-webhook-transmission-retried-count": "0",
        "tosspayments-webhook-signature": sign_webhook(body, sent, key or DEFAULT_SECURITY_KEY),
    }


def payout_event(payout_id: str, ref: str, status: str = "COMPLETED") -> bytes:
    return json.dumps(
        {
            "eventType": "payout.changed",
            "createdAt": datetime.now(UTC).isoformat(),
            "version": "2022-11-16",
            "eventId": f"evt_{uuid.uuid4().hex}",
            "entityType": "payout",
            "entityBody": {
                "id": payout_id,
                "refPayoutId": ref,
                "status": status,
                "error": None,
                "amount": {"currency": "KRW", "value": 1000.0},
            },
        }
    ).encode()


def test_forged_stale_and_replayed_webhooks_change_nothing(as_user, toss, make_room, sql, api, schedule):
    room, request_id, _ = funded_room(as_user, toss, make_room, n=1)
    register_store(as_user, room, approve_with=toss)
    assert as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}).status_code == 200
    toss.settle_sales()
    schedule(jobs=["payouts"])
    settlement = settlement_of(as_user, room)
    hook = f"{api}/api/v1/payment/webhook"
    body = payout_event(settlement["payout_id"], settlement["ref_payout_id"])

    forged = requests.post(hook, data=body, headers=signed_headers(body, key="ab" * 32), timeout=10)
    assert forged.status_code == 401
    stale = requests.post(  # older than any retry of Toss's (about 4 days): a replay
        hook, data=body, headers=signed_headers(body, when=datetime.now(UTC) - timedelta(days=9)), timeout=10
    )
    assert stale.status_code == 401
    unsigned = {k: v for k, v in signed_headers(body).items() if k != "tosspayments-webhook-signature"}
    assert requests.post(hook, data=body, headers=unsigned, timeout=10).status_code == 401
    status = rows(sql, "SELECT payout_status FROM payment_settlements WHERE payment_request_id = %s", request_id)
    assert status[0]["payout_status"] == "in_progress"

    headers = signed_headers(body)
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 200
    replay = requests.post(hook, data=body, headers=headers, timeout=10)
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    event_id = json.loads(body)["eventId"]
    logged = rows(sql, "SELECT verification, outcome, raw_body FROM payment_webhooks WHERE event_id = %s", event_id)
    assert sorted(r["outcome"] for r in logged) == ["duplicate", "processed", "rejected", "rejected", "rejected"]
    # Only the delivery that verified keeps its body; the others are metadata (issue 7, finding 11).
    assert [r["outcome"] for r in logged if r["raw_body"] is not None] == ["processed"]


def test_payment_webhooks_are_only_a_trigger(as_user, toss, make_room, sql, api):
    room = make_room(1)
    open_request(as_user, room)
    order = as_user(room.members[0]).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id}).json()
    key = toss.widget(order["orderId"], order["amount"])  # authenticated, never confirmed
    claim = {
        "eventType": "PAYMENT_STATUS_CHANGED",
        "createdAt": "2026-11-23T00:00:00.000000",
        "data": {**toss.payment(key), "status": "DONE"},
    }
    r = requests.post(
        f"{api}/api/v1/payment/webhook",
        json=claim,
        timeout=10,
        headers={"tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}"},
    )
    assert r.status_code == 200
    assert toss.payment(key)["status"] == "IN_PROGRESS"
    assert rows(sql, "SELECT status FROM payments WHERE payer_id = %s", room.members[0])[0]["status"] == "pending"


def test_a_deposit_callback_with_a_wrong_secret_is_refused(as_user, toss, make_room, sql, api):
    _room, request_id, _keys = funded_room(as_user, toss, make_room, n=1)
    order_id = rows(sql, "SELECT order_id FROM payments WHERE payment_request_id = %s", request_id)[0]["order_id"]
    body = {
        "createdAt": "2026-11-23T00:00:00.000000",
        "secret": "ps_forged",
        "status": "CANCELED",
        "transactionKey": "tx_forged",
        "orderId": order_id,
    }
    r = requests.post(f"{api}/api/v1/payment/webhook", json=body, timeout=10)
    assert r.status_code == 401
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", order_id)[0]["status"] == "completed"


def test_two_scheduled_runs_at_once_release_nothing_twice(as_user, toss, make_room, sql, schedule):
    release_at = datetime.now(UTC) + timedelta(seconds=3)
    rooms = []
    for _ in range(3):
        room, request_id, _ = funded_room(as_user, toss, make_room, n=2, release_at=release_at.isoformat())
        register_store(as_user, room, approve_with=toss)
        rooms.append(request_id)
    eventually(lambda: datetime.now(UTC) > release_at + timedelta(milliseconds=200), timeout=10)
    toss.settle_sales()
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: schedule(jobs=["release", "payouts"]), range(2)))
    assert sum(r["release"]["released"] for r in reports) >= 3
    for request_id in rooms:
        settlements = rows(
            sql, "SELECT id, ref_payout_id FROM payment_settlements WHERE payment_request_id = %s", request_id
        )
        assert len(settlements) == 1
        assert money_trace(sql, request_id) == {"charge": 30000, "release": 30000}
        ref = settlements[0]["ref_payout_id"]
        created = [
            c
            for c in toss.calls("/v2/payouts", method="POST")
            if c["status"] == 200 and any(i["refPayoutId"] == ref for i in c["body"] or [])
        ]
        assert len(created) == 1


def test_a_repeated_confirm_after_release_answers_the_truth_without_asking_toss(as_user, toss, make_room):
    room = make_room(1)
    register_store(as_user, room, approve_with=toss)
    open_request(as_user, room)
    r, body = pay(as_user, toss, room, room.members[0])
    assert r.status_code == 200
    assert as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}).status_code == 200
    again = as_user(room.members[0]).post("/api/v1/payment/initiate", body)
    assert again.status_code == 200, again.text
    assert again.json()["payment_status"] == "released"  # paid, and what was held went to the store (issue 7 #5)
    confirms = [c for c in toss.calls("/v1/payments/confirm") if (c["body"] or {}).get("orderId") == body["orderId"]]
    assert len(confirms) == 1
