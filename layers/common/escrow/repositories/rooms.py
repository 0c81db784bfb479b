"""Rooms (`chat_rooms`, `chat_room_members`): our copy of the chat service's membership, written only from a
trusted source (the service route or the chat service's event)."""

from __future__ import annotations

from collections.abc import Sequence

from escrow.db import Row, Tx
from escrow.repositories._sql import marks


def room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(
        "SELECT chat_room_id, owner_id, membership_version FROM chat_rooms WHERE chat_room_id = %s", (chat_room_id,)
    )


def room_shared(tx: Tx, chat_room_id: int) -> Row | None:
    """The room, read with a shared lock: a locking read, so it does not fix the transaction's snapshot (InnoDB takes
    it at the first plain read). Owner-only actions read the room first and then wait for the request's lock; with a
    plain read here, what they read after that wait (a release or a refund that committed meanwhile) was stale."""
    return tx.one(
        "SELECT chat_room_id, owner_id, membership_version FROM chat_rooms WHERE chat_room_id = %s LOCK IN SHARE MODE",
        (chat_room_id,),
    )


def lock_room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(
        "SELECT chat_room_id, owner_id, membership_version FROM chat_rooms WHERE chat_room_id = %s FOR UPDATE",
        (chat_room_id,),
    )


def members(tx: Tx, chat_room_id: int) -> list[Row]:
    return tx.all(
        "SELECT user_id, is_owner FROM chat_room_members WHERE chat_room_id = %s ORDER BY user_id", (chat_room_id,)
    )


def is_member(tx: Tx, chat_room_id: int, user_id: str) -> bool:
    row = tx.one(
        "SELECT 1 AS yes FROM chat_room_members WHERE chat_room_id = %s AND user_id = %s", (chat_room_id, user_id)
    )
    return row is not None


def insert_room(tx: Tx, chat_room_id: int, owner_id: str, version: int, updated_by: str) -> bool:
    """A room we did not know; False when another writer created it first (then lock it and update)."""
    return (
        tx.execute(
            "INSERT INTO chat_rooms (chat_room_id, owner_id, membership_version, updated_by) VALUES (%s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE chat_room_id = chat_room_id",
            (chat_room_id, owner_id, version, updated_by),
        )
        == 1
    )


def update_room(tx: Tx, chat_room_id: int, owner_id: str, version: int, updated_by: str) -> None:
    tx.execute(
        "UPDATE chat_rooms SET owner_id = %s, membership_version = %s, updated_by = %s WHERE chat_room_id = %s",
        (owner_id, version, updated_by, chat_room_id),
    )


def replace_members(tx: Tx, chat_room_id: int, owner_id: str, member_ids: Sequence[str]) -> None:
    """The room's members become exactly `member_ids` plus the owner (the owner marked)."""
    everyone = sorted({owner_id, *member_ids})
    tx.execute(
        f"DELETE FROM chat_room_members WHERE chat_room_id = %s AND user_id NOT IN ({marks(everyone)})",
        (chat_room_id, *everyone),
    )
    tx.executemany(
        "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE is_owner = VALUES(is_owner)",
        [(chat_room_id, user, int(user == owner_id)) for user in everyone],
    )


def put_member(tx: Tx, chat_room_id: int, user_id: str, *, is_owner: bool) -> None:
    tx.execute(
        "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE is_owner = VALUES(is_owner)",
        (chat_room_id, user_id, int(is_owner)),
    )
