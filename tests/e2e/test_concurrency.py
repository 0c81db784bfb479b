"""Concurrency, end to end: the same request many times at once, every participant at once, releases racing each
other and cancels, and two scheduled runs at once. Whatever the interleaving, money moves once.

A second local API with 24 workers (24 warm containers) takes the bursts, so requests really run side by side
instead of queueing behind the default 8 workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Client
from tests.e2e.test_money_out_and_back import funded_room, register_store
from tests.e2e.test_room_gets_paid import open_request, prepare
from tests.e2e.test_room_gets_paid import rows as _rows

pytestmark = pytest.mark.e2e


def rows(sql, query: str, *args: Any) -> list[dict[str, Any]]:
    return list(_rows(sql, query, *args))


@pytest.fixture(scope="module")
def wide_api(api: str) -> Iterator[str]:
    from local.api import start_local_api

    handle = start_local_api(host="127.0.0.1", port=0, workers=24)
    yield handle.url
    handle.stop()


def at_once(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    """Run every call on its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], requests.Response]) -> requests.Response:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def sandbox_stats(toss) -> dict[str, Any]:
    return dict(requests.get(f"{toss.url}/sandbox/stats", timeout=5).json())


def error_code(r: requests.Response) -> str | None:
    try:
        return r.json().get("error", {}).get("code")
    except ValueError:
        return None


def ledger_of(sql, payment_key: str) -> list[tuple[str, int]]:
    found = rows(
        sql,
        "SELECT l.entry_type, l.amount FROM ledger_entries l JOIN payments p ON p.id = l.payment_id "
        "WHERE p.payment_key = %s ORDER BY l.id",
        payment_key,
    )
    return [(e["entry_type"], e["amount"]) for e in found]


def test_fifty_identical_confirms_make_one_toss_approval(wide_api, as_user, toss, make_room, sql):
    room = make_room(1)
    request_id = open_request(as_user, room)
    payer = room.members[0]
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"])
    body = {
        "chat_room_id": room.chat_room_id,
        "amount": 15000,
        "paymentKey": key,
        "orderId": order["orderId"],
        "payment_method": "card",
    }
    approvals = sandbox_stats(toss)["approvals"]
    toss.faults(latency_ms=300, paths=["/v1/payments/confirm"])  # the first confirm is still running at Toss
    client = Client(wide_api, payer)
    answers = at_once([lambda: client.post("/api/v1/payment/initiate", body)] * 50)
    toss.clear_faults()

    for a in answers:
        assert (a.status_code, error_code(a)) in ((200, None), (409, "PAYMENT_IN_PROGRESS")), a.text
        if a.status_code == 200:
            assert a.json()["payment_status"] == "completed"
    assert any(a.status_code == 200 for a in answers)
    assert sandbox_stats(toss)["approvals"] - approvals == 1
    confirms = [c for c in toss.calls("/v1/payments/confirm") if c["body"]["orderId"] == order["orderId"]]
    sent = [c for c in confirms if not c["replayed"]]
    assert sent and {c["idempotency_key"] for c in sent} == {f"confirm-{order['orderId']}"}
    assert len([c for c in sent if c["status"] == 200]) == 1
    final = client.post("/api/v1/payment/initiate", body)
    assert final.status_code == 200 and final.json()["payment_status"] == "completed", final.text
    assert ledger_of(sql, key) == [("charge", 15000)]
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id) == [{"status": "completed"}]
    assert toss.payment(key)["status"] == "DONE"


def test_every_participant_confirming_at_once_funds_the_room_once(
    wide_api, as_user, toss, make_room, sql, schedule, published
):
    room = make_room(8)
    request_id = open_request(as_user, room)
    bodies = {}
    for payer in room.members:
        order = prepare(as_user, room, payer)
        bodies[payer] = {
            "chat_room_id": room.chat_room_id,
            "amount": 15000,
            "paymentKey": toss.widget(order["orderId"], order["amount"]),
            "orderId": order["orderId"],
        }
    answers = at_once(
        [lambda p=p: Client(wide_api, p).post("/api/v1/payment/initiate", bodies[p]) for p in room.members]
    )
    assert [(a.status_code, a.json().get("payment_status")) for a in answers] == [(200, "completed")] * 8

    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id) == [{"status": "completed"}]
    funded = rows(sql, "SELECT id FROM outbox WHERE aggregate_id = %s AND event_type = 'EscrowFunded'", str(request_id))
    assert len(funded) == 1
    charges = rows(
        sql,
        "SELECT COUNT(*) AS n, SUM(amount) AS total FROM ledger_entries "
        "WHERE payment_request_id = %s AND entry_type = 'charge'",
        request_id,
    )
    assert (charges[0]["n"], int(charges[0]["total"])) == (8, 120000)
    schedule(jobs=["publish"])
    events = [
        e for e in published() if e["detail-type"] == "EscrowFunded" and e["detail"]["payment_request_id"] == request_id
    ]
    assert len(events) == 1 and events[0]["detail"]["total_amount"] == 120000


def test_twenty_simultaneous_releases_pay_the_store_once(wide_api, as_user, toss, make_room, sql, schedule):
    room, request_id, keys = funded_room(as_user, toss, make_room, n=2)
    register_store(as_user, room, approve_with=toss)
    owner = Client(wide_api, room.owner)
    answers = at_once([lambda: owner.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})] * 20)

    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1, [a.text for a in answers]
    assert sorted(p["paymentKey"] for p in ok[0].json()["released_payments"]) == sorted(keys.values())
    for a in answers:
        if a.status_code != 200:
            assert (a.status_code, error_code(a)) == (409, "ALREADY_RELEASED"), a.text
    settlements = rows(sql, "SELECT ref_payout_id FROM payment_settlements WHERE payment_request_id = %s", request_id)
    assert len(settlements) == 1
    ref = settlements[0]["ref_payout_id"]
    toss.settle_sales()
    schedule(jobs=["payouts"])  # the release decided; the scheduled run pays out
    payouts = [
        c
        for c in toss.calls("/v2/payouts", method="POST")
        if any(i["refPayoutId"] == ref for i in c["body"] or []) and not c["replayed"]
    ]
    assert len(payouts) == 1 and payouts[0]["status"] == 200
    released = rows(
        sql,
        "SELECT SUM(amount) AS total, COUNT(*) AS n FROM ledger_entries "
        "WHERE payment_request_id = %s AND entry_type = 'release'",
        request_id,
    )
    assert (released[0]["n"], int(released[0]["total"])) == (2, 30000)


def test_a_release_racing_a_cancel_moves_each_share_one_way_only(wide_api, as_user, toss, make_room, sql):
    outcomes = []
    for i in range(10):
        room, request_id, keys = funded_room(as_user, toss, make_room, n=2)
        payer = room.members[0]
        key = keys[payer]
        release = lambda room=room: Client(wide_api, room.owner).post(  # noqa: E731
            "/api/v1/payment/release", {"chat_room_id": room.chat_room_id}
        )
        cancel = lambda payer=payer, key=key: Client(wide_api, payer).post(  # noqa: E731
            "/api/v1/payment/cancel", {"paymentKey": key, "cancelReason": "경합 취소"}
        )
        first, second = (release, cancel) if i % 2 == 0 else (cancel, release)
        a, b = at_once([first, second])
        released, cancelled = (a, b) if first is release else (b, a)

        status = rows(sql, "SELECT status FROM payments WHERE payment_key = %s", key)[0]["status"]
        entries = {kind for kind, _ in ledger_of(sql, key)}
        balance = toss.payment(key)["balanceAmount"]
        if released.status_code == 200:
            assert (cancelled.status_code, error_code(cancelled)) == (409, "ALREADY_RELEASED"), cancelled.text
            assert status == "released" and entries == {"charge", "release"} and balance == 15000
            outcomes.append("released")
        else:
            assert cancelled.status_code == 200, (released.text, cancelled.text)
            assert cancelled.json()["refund_status"] == "refunded"
            assert (released.status_code, error_code(released)) in (
                (409, "REFUND_IN_PROGRESS"),
                (409, "REQUEST_NOT_FUNDED"),
            ), released.text
            assert status == "refunded" and entries == {"charge", "refund"} and balance == 0
            assert rows(sql, "SELECT id FROM payment_settlements WHERE payment_request_id = %s", request_id) == []
            other = rows(sql, "SELECT status FROM payments WHERE payment_key = %s", keys[room.members[1]])
            assert other == [{"status": "completed"}]  # the other share is still held, not released
            outcomes.append("refunded")
    assert len(outcomes) == 10  # (both endings occur across runs; which one wins each race is up to the scheduler)


def test_two_scheduled_runs_at_once_do_nothing_twice(as_user, toss, make_room, sql, schedule, published):
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    to_release, to_expire = [], []
    for _ in range(3):
        room, request_id, _ = funded_room(as_user, toss, make_room, n=2, release_at=later)
        register_store(as_user, room, approve_with=toss)
        to_release.append(request_id)
    for _ in range(3):
        room = make_room(3)
        r = as_user(room.owner).post(
            "/api/v1/payment/request",
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "expires_at": later},
        )
        assert r.status_code == 201, r.text
        for payer in room.members[:2]:  # two of three pay: the third never does
            order = prepare(as_user, room, payer)
            key = toss.widget(order["orderId"], order["amount"])
            answer = as_user(payer).post(
                "/api/v1/payment/initiate",
                {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": key, "orderId": order["orderId"]},
            )
            assert answer.status_code == 200, answer.text
        to_expire.append(r.json()["payment_request_id"])
    # The clock moves on: the deadlines are now behind us (stored as naive UTC, as the service stores them).
    past = (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None)
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payment_requests SET release_at = %s WHERE id IN %s AND release_at IS NOT NULL",
            (past, to_release),
        )
        cur.execute("UPDATE payment_requests SET expires_at = %s WHERE id IN %s", (past, to_expire))

    toss.settle_sales()
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: schedule(), range(2)))
    assert sum(r["release"]["released"] for r in reports) >= 3
    assert sum(r["expire"]["expired"] for r in reports) >= 3

    for request_id in to_release:
        assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id) == [{"status": "released"}]
        settlements = rows(
            sql, "SELECT ref_payout_id FROM payment_settlements WHERE payment_request_id = %s", request_id
        )
        assert len(settlements) == 1
        created = [
            c
            for c in toss.calls("/v2/payouts", method="POST")
            if c["status"] == 200
            and not c["replayed"]
            and any(i["refPayoutId"] == settlements[0]["ref_payout_id"] for i in c["body"] or [])
        ]
        assert len(created) == 1
        totals = rows(
            sql,
            "SELECT entry_type, COUNT(*) AS n, SUM(amount) AS total FROM ledger_entries "
            "WHERE payment_request_id = %s GROUP BY entry_type ORDER BY entry_type",
            request_id,
        )
        assert [(t["entry_type"], t["n"], int(t["total"])) for t in totals] == [
            ("charge", 2, 30000),
            ("release", 2, 30000),
        ]

    for request_id in to_expire:
        assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id) == [{"status": "expired"}]
        paid = rows(
            sql,
            "SELECT id, payment_key, status FROM payments WHERE payment_request_id = %s AND payment_key IS NOT NULL",
            request_id,
        )
        assert len(paid) == 2
        for share in paid:
            assert share["status"] == "refunded"
            assert ledger_of(sql, share["payment_key"]) == [("charge", 15000), ("refund", 15000)]
            done = rows(sql, "SELECT id FROM payment_cancels WHERE payment_id = %s AND status = 'done'", share["id"])
            assert len(done) == 1
            at_toss = toss.payment(share["payment_key"])
            assert at_toss["balanceAmount"] == 0 and len(at_toss["cancels"]) == 1
            sent = [
                c
                for c in toss.calls(f"/v1/payments/{share['payment_key']}/cancel")
                if c["status"] == 200 and not c["replayed"]
            ]
            assert len(sent) == 1

    schedule(jobs=["publish"])
    events = published()
    for request_id in to_release:
        kinds = [e["detail-type"] for e in events if e["detail"].get("payment_request_id") == request_id]
        assert kinds.count("EscrowReleased") == 1, kinds
    for request_id in to_expire:
        kinds = [e["detail-type"] for e in events if e["detail"].get("payment_request_id") == request_id]
        assert kinds.count("RequestExpired") == 1, kinds


def test_two_different_cancels_of_one_share_at_once_refund_within_the_balance(wide_api, as_user, toss, make_room, sql):
    for i in range(5):
        room, _request_id, keys = funded_room(as_user, toss, make_room, n=1)
        payer = room.members[0]
        key = keys[payer]
        client = Client(wide_api, payer)
        answers = at_once(
            [
                lambda client=client, key=key, n=n: client.post(
                    "/api/v1/payment/cancel",
                    {"paymentKey": key, "cancelReason": f"부분 취소 {n}", "cancelAmount": 10000},
                )
                for n in range(2)
            ]
        )
        ok = [a for a in answers if a.status_code == 200]
        assert len(ok) == 1, [a.text for a in answers]
        refused = next(a for a in answers if a.status_code != 200)
        assert (refused.status_code, error_code(refused)) in (
            (409, "REFUND_IN_PROGRESS"),
            (422, "CANCEL_AMOUNT_TOO_LARGE"),
        ), (i, refused.text)
        assert toss.payment(key)["balanceAmount"] == 5000
        assert ledger_of(sql, key) == [("charge", 15000), ("refund", 10000)]
        sent = [c for c in toss.calls(f"/v1/payments/{key}/cancel") if not c["replayed"]]
        assert len(sent) == 1, (i, sent)  # the second never reached Toss


def test_a_cancel_toss_never_processed_cannot_refund_after_the_release(as_user, toss, make_room, sql):
    """Release and cancel interleaved over time rather than at once: a cancel that failed at Toss (a 5xx, nothing
    refunded), then the release, then the payer's app repeating the very same cancel."""
    room, _request_id, keys = funded_room(as_user, toss, make_room, n=1)
    payer = room.members[0]
    key = keys[payer]
    cancel = {"paymentKey": key, "cancelReason": "예약 취소"}
    toss.faults(server_error_rate=1.0, paths=[f"/v1/payments/{key}/cancel"])
    r = as_user(payer).post("/api/v1/payment/cancel", cancel)
    toss.clear_faults()
    assert r.status_code >= 500 and error_code(r) == "TOSS_UNAVAILABLE", r.text  # not a "success"
    assert toss.payment(key)["balanceAmount"] == 15000
    assert rows(sql, "SELECT status FROM payments WHERE payment_key = %s", key) == [{"status": "completed"}]

    released = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert released.status_code == 200, released.text
    again = as_user(payer).post("/api/v1/payment/cancel", cancel)
    assert (again.status_code, error_code(again)) == (409, "ALREADY_RELEASED"), again.text
    assert toss.payment(key)["balanceAmount"] == 15000  # the store's money stays where it was released to
    assert ledger_of(sql, key) == [("charge", 15000), ("release", 15000)]
    assert rows(sql, "SELECT status FROM payments WHERE payment_key = %s", key) == [{"status": "released"}]
