"""`escrow.ops run-job` (the schedule's own code, on demand) and `audit` (with its progress bar)."""

from __future__ import annotations

import json

from tests.ops.conftest import TOSS_TEST_SECRET_KEY, Rooms, Stack, rows


def test_run_job_expire_asks_first_then_expires_and_refunds_as_the_schedule_does(
    stack: Stack, rooms: Rooms, sql
) -> None:
    room = rooms.new(2)
    rooms.register_store(room)
    rooms.open_request(room)
    key = rooms.pay(room, room.members[0])  # one of two paid: the request stays pending
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payment_requests SET expires_at = NOW(3) - INTERVAL 1 MINUTE WHERE id = %s", (room.request_id,)
        )

    declined = stack.ops("run-job", "expire", input="n\n")
    assert declined.code == 1, declined
    assert "moves money" in declined.stderr
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", room.request_id)[0]["status"] == "pending"

    run = stack.ops("run-job", "expire", "--yes", "--operator", "lee.ops", "--reason", "deadline passed", "--json")
    assert run.code == 0, run
    report = run.json()
    assert report["job"] == "expire" and report["report"]["expire"]["expired"] >= 1
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", room.request_id)[0]["status"] == "expired"
    assert rows(sql, "SELECT status FROM payments WHERE payment_key = %s", key)[0]["status"] == "refunded"
    (action,) = rows(sql, "SELECT * FROM operator_actions WHERE id = %s", report["operator_action_id"])
    assert (action["action"], action["target"], action["operator"], action["reason"], action["status"]) == (
        "run_job",
        "job:expire",
        "lee.ops",
        "deadline passed",
        "done",
    )
    assert json.loads(action["detail"])["report"]["expire"]["expired"] >= 1


def test_run_job_publish_needs_no_question_and_the_chat_service_gets_the_events(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2)
    run = stack.ops("run-job", "publish")
    assert run.code == 0, run
    assert "run-job publish" in run.stdout and "events_published" in run.stdout
    from tests.ops.conftest import eventually

    bodies = eventually(lambda: stack.receiver.bodies(room.chat_room_id))
    assert [b["detail-type"] for b in bodies] == ["EscrowFunded"]


def test_run_job_refuses_an_unknown_job(stack: Stack) -> None:
    unknown = stack.ops("run-job", "payout", "--yes", "--json")
    assert unknown.code == 2
    assert unknown.json()["error"]["code"] == "UNKNOWN_JOB"


def test_audit_of_a_clean_room_passes_and_shows_its_progress(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2)
    rooms.release(room)
    clean = stack.ops("audit", "--room", str(room.chat_room_id))
    assert clean.code == 0, clean
    assert "1 requests, 2 payments checked, 0 findings" in clean.stdout
    assert "auditing requests" in clean.stderr and "1/1" in clean.stderr  # the progress bar reached the end


def test_audit_finds_what_toss_and_our_ledger_disagree_on(stack: Stack, rooms: Rooms) -> None:
    import requests

    room = rooms.paid(2)
    key = next(iter(room.payment_keys.values()))
    with stack.toss_webhooks_lost():
        r = requests.post(
            f"{stack.sandbox}/v1/payments/{key}/cancel",
            json={"cancelReason": "대시보드 환불"},
            auth=(TOSS_TEST_SECRET_KEY, ""),
            headers={"Idempotency-Key": f"audit-{key}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    found = stack.ops("audit", "--room", str(room.chat_room_id), "--json")
    assert found.code == 1, found
    report = found.json()
    assert report["by_check"].get("toss_payment", 0) >= 1
    assert any(f["paymentKey"] == key for f in report["findings"])
    table = stack.ops("audit", "--room", str(room.chat_room_id))
    assert table.code == 1 and "toss_payment" in table.stdout
