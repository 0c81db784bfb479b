"""`escrow.ops webhooks` and `replay-webhook`: the log, and replaying a delivery under the same verification rules."""

from __future__ import annotations

import json

import requests

from tests.ops.conftest import TOSS_TEST_SECRET_KEY, Rooms, Stack, eventually, rows


def _latest_delivery(sql, event_type: str, after_id: int = 0) -> dict:
    found = eventually(
        lambda: rows(
            sql,
            "SELECT id, verification, outcome, detail FROM payment_webhooks WHERE event_type = %s AND id > %s "
            "AND outcome <> 'received' ORDER BY id DESC LIMIT 1",
            event_type,
            after_id,
        )
    )
    return dict(found[0])


def _last_id(sql) -> int:
    return int(rows(sql, "SELECT COALESCE(MAX(id), 0) AS id FROM payment_webhooks")[0]["id"])


def test_a_forged_delivery_is_listed_as_rejected_and_stays_rejected_when_replayed(
    stack: Stack, rooms: Rooms, sql
) -> None:
    room = rooms.paid(2)
    settlement = rooms.release(room)
    start = _last_id(sql)
    stack.control("webhooks/send", {"eventType": "payout.changed", "payoutId": settlement["payout_id"], "forge": True})
    forged = _latest_delivery(sql, "payout.changed", start)
    assert (forged["verification"], forged["outcome"]) == ("bad_signature", "rejected")

    listed = stack.ops("webhooks", "--outcome", "rejected", "--since", "1h", "--json")
    assert listed.code == 0, listed
    entry = next(w for w in listed.json()["webhooks"] if w["id"] == forged["id"])
    assert entry["event_type"] == "payout.changed" and entry["verification"] == "bad_signature"
    assert all(w["outcome"] == "rejected" for w in listed.json()["webhooks"])
    assert "raw_body" not in entry and "headers" not in entry
    table = stack.ops("webhooks", "--outcome", "rejected", "--since", "1h")
    assert str(forged["id"]) in table.stdout and "bad_signature" in table.stdout

    replay = stack.ops("replay-webhook", str(forged["id"]), "--reason", "check", "--yes", "--json")
    assert replay.code == 0, replay  # Toss was asked about the payout the forgery named: nothing it said is believed
    result = replay.json()
    assert (result["result"], result["subject"]) == ("applied", f"payout:{settlement['payout_id']}")
    assert rooms.settlement_row(room)["payout_status"] == "in_progress"  # Toss says IN_PROGRESS, whatever it claimed
    (action,) = rows(sql, "SELECT * FROM operator_actions WHERE target = %s", f"webhook:{forged['id']}")
    assert (action["action"], action["status"]) == ("replay_webhook", "done")
    kept = rows(sql, "SELECT raw_body FROM payment_webhooks WHERE id = %s", forged["id"])
    assert kept[0]["raw_body"] is None  # a delivery that did not verify is kept as metadata only


def test_a_genuine_delivery_rejected_by_our_wrong_setting_is_processed_when_replayed_after_the_fix(
    stack: Stack, rooms: Rooms, sql
) -> None:
    """Toss signed with the key's ASCII bytes while we checked the hex-decoded key (the UNCONFIRMED setting)."""
    room = rooms.paid(2)
    settlement = rooms.release(room)
    start = _last_id(sql)
    stack.control("config", {"webhook_hmac_encoding": "ascii"})
    try:
        stack.control(f"payouts/{settlement['payout_id']}/complete", {"status": "COMPLETED"})
        rejected = _latest_delivery(sql, "payout.changed", start)
    finally:
        stack.control("config", {"webhook_hmac_encoding": "hex"})
    assert (rejected["verification"], rejected["outcome"]) == ("bad_signature", "rejected")
    assert rooms.settlement_row(room)["payout_status"] == "in_progress"

    replay = stack.ops("replay-webhook", str(rejected["id"]), "--reason", "HMAC key encoding fixed", "--yes", "--json")
    assert replay.code == 0, replay  # the payout it named is asked of Toss: COMPLETED there closes the settlement
    assert replay.json()["result"] == "applied"
    assert rooms.settlement_row(room)["payout_status"] == "completed"

    again = stack.ops("replay-webhook", str(rejected["id"]), "--reason", "twice", "--yes", "--json")
    assert again.code == 0, again
    assert again.json()["detail"] == "already_final"  # nothing applied twice


def test_a_payment_event_that_failed_while_toss_was_down_is_applied_by_a_replay(
    stack: Stack, rooms: Rooms, sql
) -> None:
    room = rooms.paid(2)
    key = next(iter(room.payment_keys.values()))
    with stack.toss_webhooks_lost():  # a refund at Toss's dashboard, its own webhook lost
        r = requests.post(
            f"{stack.sandbox}/v1/payments/{key}/cancel",
            json={"cancelReason": "대시보드 환불"},
            auth=(TOSS_TEST_SECRET_KEY, ""),
            headers={"Idempotency-Key": f"dash-{key}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    start = _last_id(sql)
    stack.control("faults", {"server_error_rate": 1.0, "paths": ["/v1/payments/"]})
    try:
        stack.control("webhooks/send", {"eventType": "PAYMENT_STATUS_CHANGED", "paymentKey": key})
        failed = _latest_delivery(sql, "PAYMENT_STATUS_CHANGED", start)
    finally:
        stack.control("faults", method="DELETE")
    assert failed["outcome"] == "error"
    share = lambda: rows(sql, "SELECT status FROM payments WHERE payment_key = %s", key)[0]["status"]  # noqa: E731
    assert share() == "completed"

    errors = stack.ops("webhooks", "--outcome", "error", "--event-type", "PAYMENT_STATUS_CHANGED", "--json").json()
    assert any(w["id"] == failed["id"] for w in errors["webhooks"])

    prompt = stack.ops("replay-webhook", str(failed["id"]), "--reason", "Toss is back", input="y\n")
    assert prompt.code == 0, prompt
    assert "fetched from Toss again" in prompt.stderr  # what a replay means for this event type, before the question
    assert "applied" in prompt.stdout
    assert share() == "refunded"
    view = stack.ops("room", str(room.chat_room_id), "--json").json()
    assert view["difference_count"] == 0


def test_replay_webhook_of_an_unknown_delivery_says_so(stack: Stack) -> None:
    missing = stack.ops("replay-webhook", "987654321", "--reason", "x", "--yes", "--json")
    assert missing.code == 2
    assert missing.json()["error"]["code"] == "WEBHOOK_NOT_FOUND"


def test_webhooks_since_takes_a_duration_or_a_time(stack: Stack) -> None:
    assert stack.ops("webhooks", "--since", "2d", "--json").code == 0
    assert stack.ops("webhooks", "--since", "2020-01-01T00:00:00Z", "--json").code == 0
    bad = stack.ops("webhooks", "--since", "yesterday")
    assert bad.code == 2 and "duration" in bad.stderr
    assert json.loads(stack.ops("webhooks", "--limit", "1", "--json").stdout)["webhooks"].__len__() <= 1
