"""Rooms and who may do what in them. Membership is the chat service's: it reaches us only through a trusted
source (the service route `PUT /api/v1/admin/rooms/{chatRoomId}/members`, or the chat service's
`RoomMembershipChanged` event), never from a caller's word. A room we have no membership for is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.errors import Forbidden, NotFound, ValidationFailed
from escrow.observability import count, logger
from escrow.repositories import rooms as rooms_repo

if TYPE_CHECKING:
    from escrow.auth import Principal

MAX_MEMBERS = 1000  # a chat room's members we keep; a request takes at most models.MAX_PARTICIPANTS of them


@dataclass(frozen=True)
class Room:
    chat_room_id: int
    owner_id: str


def known_room(tx: db.Tx, chat_room_id: int) -> Room:
    """The room (read with a shared lock: see rooms_repo.room_shared), or 404 ROOM_NOT_FOUND."""
    row = rooms_repo.room_shared(tx, chat_room_id)
    if row is None:
        raise NotFound(
            "the service has no membership for this room; the chat service must send it first",
            code="ROOM_NOT_FOUND",
        )
    return Room(int(row["chat_room_id"]), str(row["owner_id"]))


def current_owner(tx: db.Tx, chat_room_id: int) -> str | None:
    row = rooms_repo.room(tx, chat_room_id)
    return None if row is None else str(row["owner_id"])


def require_owner(principal: Principal, room: Room, what: str) -> None:
    """Owner-only actions check the room's current owner (an ownership transfer moves them), or an admin."""
    if principal.user_id != room.owner_id and not principal.is_admin:
        raise Forbidden(f"only the room's owner can {what}", code="NOT_ROOM_OWNER")


def is_trusted_source(principal: Principal) -> bool:
    """The chat service (a token with role `service`) or an admin."""
    return principal.is_admin or principal.has_role("service")


def sync_membership(
    chat_room_id: int,
    owner_id: str,
    member_ids: list[str],
    *,
    updated_by: str,
    version: int | None = None,
) -> dict[str, Any]:
    """Make our copy of the room's membership the chat service's. With a `version` (the chat service's counter), an
    update older than the one applied is ignored, so events delivered out of order cannot undo a newer one.

    The open request's participants are not changed here: a member who left keeps their share (and any money held)
    until the owner removes them; the owner (possibly a new one) decides."""
    if len(set(member_ids) | {owner_id}) > MAX_MEMBERS:
        raise ValidationFailed(f"a room has at most {MAX_MEMBERS} members", code="TOO_MANY_MEMBERS")
    with db.transaction() as tx:
        current = rooms_repo.lock_room(tx, chat_room_id)
        if current is None and not rooms_repo.insert_room(tx, chat_room_id, owner_id, version or 0, updated_by):
            current = rooms_repo.lock_room(tx, chat_room_id)  # created by a concurrent writer meanwhile
        if current is not None:
            if version is not None and version <= int(current["membership_version"]):
                logger.info("stale membership update ignored", extra={"chat_room_id": chat_room_id})
                return {"chat_room_id": chat_room_id, "applied": False, "reason": "stale_version"}
            rooms_repo.update_room(
                tx,
                chat_room_id,
                owner_id,
                version if version is not None else int(current["membership_version"]),
                updated_by,
            )
        rooms_repo.replace_members(tx, chat_room_id, owner_id, member_ids)
    count("RoomMembershipSynced")
    changed_owner = current is not None and current["owner_id"] != owner_id
    logger.info(
        "room membership synced",
        extra={
            "chat_room_id": chat_room_id,
            "members": len(set(member_ids) | {owner_id}),
            "owner_changed": changed_owner,
        },
    )
    return {
        "chat_room_id": chat_room_id,
        "owner_id": owner_id,
        "member_ids": sorted(set(member_ids) - {owner_id}),
        "applied": True,
        "owner_changed": changed_owner,
    }
