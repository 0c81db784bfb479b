"""The chat service's notifications through the local runner: the outbox relay publishes to the local bus, whose rule
(read from template.yaml) delivers each room event, as is, to the chat service's URL."""

from __future__ import annotations

import json

from tests.ops.conftest import Rooms, Stack, eventually, rows


def _published(stack: Stack, room_id: int, count: int) -> list[dict]:
    run = stack.ops("run-job", "publish", "--json")
    assert run.code == 0, run
    bodies = eventually(lambda: (b := stack.receiver.bodies(room_id)) and len(b) >= count and b)
    return sorted(bodies, key=lambda b: b["detail"]["outbox_id"])  # delivery order is not guaranteed, as deployed


def test_a_room_paid_and_released_tells_the_chat_service_twice_with_room_request_amounts_and_event_id(
    stack: Stack, rooms: Rooms, sql
) -> None:
    room = rooms.paid(2)
    rooms.release(room)
    bodies = _published(stack, room.chat_room_id, 2)
    assert [b["detail-type"] for b in bodies] == ["EscrowFunded", "EscrowReleased"]
    funded, released = (b["detail"] for b in bodies)
    assert (funded["chat_room_id"], funded["payment_request_id"]) == (room.chat_room_id, room.request_id)
    assert (funded["amount_per_participant"], funded["participant_count"], funded["total_amount"]) == (15000, 2, 30000)
    assert (released["gross_amount"], released["platform_fee"], released["net_amount"]) == (30000, 900, 29100)
    assert funded["outbox_id"] != released["outbox_id"]

    # The body is the outbox row as the publisher puts it on the bus: same event, same payload.
    outbox = {
        r["id"]: r
        for r in rows(sql, "SELECT id, event_type, payload FROM outbox WHERE aggregate_id = %s", str(room.request_id))
    }
    for body in bodies:
        row = outbox[body["detail"]["outbox_id"]]
        assert body["detail-type"] == row["event_type"] == body["detail"]["event_type"]
        assert {k: v for k, v in body["detail"].items() if k not in ("outbox_id", "event_type", "occurred_at")} == (
            json.loads(row["payload"])
        )
    assert all(b["source"] == "escrow.payments" and b["id"] for b in bodies)
    request = next(r for r in stack.receiver.requests if r["body"] == bodies[0])
    assert request["headers"]["x-api-key"] == "chat-test-key"


def test_an_owner_cancelling_tells_the_refund_and_the_cancellation_with_amounts(stack: Stack, rooms: Rooms) -> None:
    room = rooms.new(2)
    rooms.register_store(room)
    rooms.open_request(room)
    rooms.pay(room, room.members[0])
    r = stack.post(
        "/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "모임 취소"}, room.owner
    )
    assert r.status_code == 200, r.text
    bodies = _published(stack, room.chat_room_id, 2)
    kinds = {b["detail-type"]: b["detail"] for b in bodies}
    assert set(kinds) == {"PaymentRequestCancelled", "PaymentRefunded"}
    cancelled, refunded = kinds["PaymentRequestCancelled"], kinds["PaymentRefunded"]
    assert (cancelled["payment_request_id"], cancelled["refund_amount"], cancelled["amount_per_participant"]) == (
        room.request_id,
        15000,
        15000,
    )
    assert (refunded["chat_room_id"], refunded["payer_id"], refunded["refunded_amount"], refunded["held_amount"]) == (
        room.chat_room_id,
        room.members[0],
        15000,
        0,
    )


def test_an_expired_request_tells_what_is_refunded(stack: Stack, rooms: Rooms, sql) -> None:
    room = rooms.new(2)
    rooms.register_store(room)
    rooms.open_request(room)
    rooms.pay(room, room.members[0])
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payment_requests SET expires_at = NOW(3) - INTERVAL 1 MINUTE WHERE id = %s", (room.request_id,)
        )
    assert stack.ops("run-job", "expire", "--yes").code == 0
    bodies = _published(stack, room.chat_room_id, 2)
    expired = next(b["detail"] for b in bodies if b["detail-type"] == "RequestExpired")
    assert (expired["chat_room_id"], expired["refund_amount"], expired["participant_count"]) == (
        room.chat_room_id,
        15000,
        2,
    )
