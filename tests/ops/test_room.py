"""`escrow.ops room`: our records side by side with Toss's, and differences highlighted."""

from __future__ import annotations

import requests

from tests.ops.conftest import TOSS_TEST_SECRET_KEY, Rooms, Stack


def test_room_shows_request_shares_ledger_settlement_and_toss_agreeing(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2)
    settlement = rooms.release(room)

    table = stack.ops("room", str(room.chat_room_id))
    assert table.code == 0, table
    for text in (
        f"Request {room.request_id}",
        "Shares: ours | Toss",
        "Ledger entries",
        "charge",
        "release",
        f"Settlement {settlement['settlement_id']}",
        settlement["payout_id"],
        "Our records and Toss agree.",
    ):
        assert text in table.stdout, text
    for key in room.payment_keys.values():
        assert key in table.stdout

    view = stack.ops("room", str(room.chat_room_id), "--json")
    assert view.code == 0, view
    data = view.json()
    assert data["difference_count"] == 0
    (request,) = data["requests"]
    assert request["totals"] == {"charged": 30000, "refunded": 0, "released": 30000, "held": 0}
    assert {s["ours"]["status"] for s in request["shares"]} == {"released"}
    assert {s["toss"]["status"] for s in request["shares"]} == {"DONE"}
    assert [e["entry_type"] for e in request["ledger"]].count("charge") == 2
    (s,) = request["settlements"]
    assert s["ours"]["net_amount"] == 29100 and s["toss"]["amount"]["value"] == 29100
    assert s["toss"]["refPayoutId"] == s["ours"]["ref_payout_id"]


def test_room_highlights_a_refund_made_at_toss_that_we_do_not_know(stack: Stack, rooms: Rooms) -> None:
    room = rooms.paid(2)
    payer, key = next(iter(room.payment_keys.items()))
    # Someone refunds at Toss directly (the merchant dashboard): Toss holds nothing, we still hold the share.
    # Its PAYMENT_STATUS_CHANGED webhook is lost, so nothing tells us.
    with stack.toss_webhooks_lost():
        r = requests.post(
            f"{stack.sandbox}/v1/payments/{key}/cancel",
            json={"cancelReason": "대시보드에서 환불"},
            auth=(TOSS_TEST_SECRET_KEY, ""),
            headers={"Idempotency-Key": f"dashboard-{key}"},
            timeout=10,
        )
    assert r.status_code == 200, r.text

    view = stack.ops("room", str(room.chat_room_id), "--json").json()
    assert view["difference_count"] >= 1
    share = next(s for s in view["requests"][0]["shares"] if s["ours"]["payer_id"] == payer)
    assert share["toss"]["status"] == "CANCELED"
    assert any(f"{key}: status ours held, Toss CANCELED" in d for d in share["differences"]), share["differences"]
    assert any("Toss lists a cancel we have not recorded" in d for d in share["differences"])

    table = stack.ops("room", str(room.chat_room_id))
    assert "difference(s) between our records and Toss" in table.stdout
    assert "Toss CANCELED" in table.stdout


def test_room_of_an_unknown_room_says_so(stack: Stack) -> None:
    table = stack.ops("room", "999999999999")
    assert table.code == 0, table
    assert "No payment request in this room." in table.stdout
