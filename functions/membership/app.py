"""MembershipFunction: the chat service's `RoomMembershipChanged` events (EventBridge), applied to our copy of a
room's membership. The event's `detail`: `{"chat_room_id": 123, "owner_id": "user_1", "member_ids": ["user_2",
...], "version": 42}`; `version` (the chat service's counter for the room) lets an older event arriving late be
ignored. A detail that is not valid fails the invocation: EventBridge retries it, then sends it to the queue for
failed events, where it waits for a person."""

from __future__ import annotations

from typing import Any

from escrow import db
from escrow.observability import lambda_entry, logger
from escrow.services import rooms


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from escrow.models import RoomMembersBody

    db.new_invocation()
    detail = event.get("detail") or {}
    if event.get("detail-type") != "RoomMembershipChanged" or not isinstance(detail, dict):
        logger.warning("not a RoomMembershipChanged event; ignored", extra={"detail_type": event.get("detail-type")})
        return {"applied": False, "reason": "not_a_membership_event"}
    room_id = detail.get("chat_room_id")
    if isinstance(room_id, bool) or not isinstance(room_id, int) or not 0 < room_id <= 2**62:
        raise ValueError("chat_room_id must be a positive integer")
    body = RoomMembersBody.model_validate(
        {k: v for k, v in detail.items() if k in ("owner_id", "member_ids", "version")}
    )
    source = str(event.get("source") or "chat-service")[:64]
    return rooms.sync_membership(room_id, body.owner_id, body.member_ids, updated_by=source, version=body.version)


lambda_handler = lambda_entry(_handle)
