"""`escrow.ops payouts` and `retry-payout`: what waits, what was refused, and the operator's way to pay again."""

from __future__ import annotations

import json

from tests.ops.conftest import Rooms, Stack, eventually, rows


def _failed_payout(stack: Stack, rooms: Rooms, sql) -> tuple:
    """A released room whose payout Toss accepted and then reported FAILED (payout.changed)."""
    room = rooms.paid(2)
    settlement = rooms.release(room)
    assert settlement["payout_status"] == "in_progress"
    stack.control(
        f"payouts/{settlement['payout_id']}/complete",
        {"status": "FAILED", "error": {"code": "INVALID_ACCOUNT", "message": "예금주 불일치"}},
    )
    eventually(lambda: rooms.settlement_row(room)["payout_status"] == "failed")
    return room, rooms.settlement_row(room)


def test_payouts_lists_a_refused_payout_with_its_reason_and_next_step(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2, approve=False)  # the seller is not approved: Toss refuses, the schedule asks again
    rooms.release(room)
    s = rooms.settlement_row(room)
    assert (s["payout_status"], s["payout_error_code"]) == ("scheduled", "FORBIDDEN_SELLER_PAYOUT")

    refused = stack.ops("payouts", "--refused", "--json")
    assert refused.code == 0, refused
    mine = [p for p in refused.json()["payouts"] if p["id"] == s["id"]]
    assert len(mine) == 1
    assert mine[0]["payout_error_code"] == "FORBIDDEN_SELLER_PAYOUT"
    assert mine[0]["chat_room_id"] == room.chat_room_id and mine[0]["net_amount"] == 29100
    assert mine[0]["next_step"].startswith("waits for the store's seller at Toss (seller.changed ends the wait)")
    assert any(p["id"] == s["id"] for p in stack.ops("payouts", "--waiting", "--json").json()["payouts"])

    table = stack.ops("payouts", "--refused")
    assert table.code == 0, table
    assert "FORBIDDEN_SELLER_PAYOUT" in table.stdout and room.store_id in table.stdout


def test_a_failed_payout_is_retried_by_an_operator_and_paid_with_a_new_attempt(stack: Stack, rooms: Rooms, sql) -> None:
    room, before = _failed_payout(stack, rooms, sql)
    sid = before["id"]
    listed = stack.ops("payouts", "--refused", "--json").json()["payouts"]
    assert next(p for p in listed if p["id"] == sid)["next_step"] == f"fix the cause, then: retry-payout {sid}"

    # Asked, answered no: nothing changes, nothing is recorded.
    declined = stack.ops("retry-payout", str(sid), "--reason", "store fixed its account", input="n\n")
    assert declined.code == 1, declined
    assert "nothing was done" in declined.stderr
    assert rooms.settlement_row(room)["payout_status"] == "failed"
    assert rows(sql, "SELECT id FROM operator_actions WHERE target = %s", f"settlement:{sid}") == []

    done = stack.ops(
        "retry-payout", str(sid), "--reason", "store fixed its account", "--operator", "kim.ops", "--yes", "--json"
    )
    assert done.code == 0, done
    result = done.json()
    assert result["before"]["payout_status"] == "failed" and result["toss_payout_status"] == "FAILED"
    assert result["after"] == {
        "payout_status": "scheduled",
        "ref_payout_id": f"local-escrow-req-{room.request_id}-a2",  # Toss keeps a used refPayoutId for ever
        "payout_id": None,
        "next_attempt": 2,
    }
    after = rooms.settlement_row(room)
    assert (after["payout_status"], after["payout_id"], after["ref_payout_id"]) == (
        "scheduled",
        None,
        f"local-escrow-req-{room.request_id}-a2",
    )
    (action,) = rows(sql, "SELECT * FROM operator_actions WHERE target = %s", f"settlement:{sid}")
    assert (action["action"], action["operator"], action["reason"], action["status"]) == (
        "retry_payout",
        "kim.ops",
        "store fixed its account",
        "done",
    )
    assert json.loads(action["detail"])["before"]["payout_error_code"] == "INVALID_ACCOUNT"
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(r.get("message") == "operator action" and r.get("operator") == "kim.ops" for r in logged)

    # The scheduled job sends it: a new attempt, so a new Idempotency-Key, under the new refPayoutId.
    run = stack.ops("run-job", "payouts", "--yes", "--operator", "kim.ops", "--json")
    assert run.code == 0, run
    sent = [
        c
        for c in stack.toss_calls("/v2/payouts", "POST")
        if any(i.get("refPayoutId") == after["ref_payout_id"] for i in (c.get("decryptedBody") or []))
    ]
    assert len(sent) == 1 and sent[0]["idempotencyKey"] == f"local-payout-{sid}-2"
    paid = rooms.settlement_row(room)
    assert paid["payout_status"] == "in_progress" and paid["payout_id"] not in (None, before["payout_id"])
    stack.control(f"payouts/{paid['payout_id']}/complete", {"status": "COMPLETED"})
    eventually(lambda: rooms.settlement_row(room)["payout_status"] == "completed")

    view = stack.ops("room", str(room.chat_room_id), "--json").json()
    assert view["difference_count"] == 0, view["requests"][0]["settlements"]
    settlement_view = view["requests"][0]["settlements"][0]
    assert [a["action"] for a in settlement_view["operator_actions"]] == ["retry_payout"]


def test_retry_payout_refuses_what_is_not_failed_and_changes_nothing(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2)
    rooms.release(room)
    sid = rooms.settlement_row(room)["id"]

    again = stack.ops("retry-payout", str(sid), "--reason", "try", "--yes", "--json")
    assert again.code == 2, again
    assert again.json()["error"]["code"] == "INVALID_STATE_TRANSITION"
    assert rooms.settlement_row(room)["payout_status"] == "in_progress"

    missing = stack.ops("retry-payout", "987654321", "--reason", "try", "--yes")
    assert missing.code == 2 and "SETTLEMENT_NOT_FOUND" in missing.stderr

    no_reason = stack.ops("retry-payout", str(sid), "--yes")
    assert no_reason.code == 2 and "--reason" in no_reason.stderr


def test_retry_payout_will_not_pay_again_what_toss_has_not_failed(stack: Stack, rooms: Rooms, sql) -> None:
    """Our record says failed but Toss still has the payout in progress: paying again could pay twice."""
    room = rooms.paid(2)
    rooms.release(room)
    s = rooms.settlement_row(room)
    with sql.cursor() as cur:  # a wrong record (a bug, a hand edit): failed here, IN_PROGRESS at Toss
        cur.execute("UPDATE payment_settlements SET payout_status = 'failed' WHERE id = %s", (s["id"],))

    refused = stack.ops("retry-payout", str(s["id"]), "--reason", "try", "--yes", "--json")
    assert refused.code == 2, refused
    error = refused.json()["error"]
    assert error["code"] == "PAYOUT_NOT_FAILED_AT_TOSS" and "IN_PROGRESS" in error["message"]
    assert rooms.settlement_row(room)["ref_payout_id"] == s["ref_payout_id"]
    assert rows(sql, "SELECT id FROM operator_actions WHERE target = %s", f"settlement:{s['id']}") == []
