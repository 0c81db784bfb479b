from __future__ import annotations

from escrow.db import Row, Tx


def members(tx: Tx, chat_room_id: int) -> list[Row]:
    return tx.all(
        "SELECT user_id, is_owner FROM chat_room_members WHERE chat_room_id = %s ORDER BY user_id", (chat_room_id,)
    )


def put_member(tx: Tx, chat_room_id: int, user_id: str, *, is_owner: bool) -> None:
    tx.execute(
        "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE is_owner = VALUES(is_owner)",
        (chat_room_id, user_id, int(is_owner)),
    )
