from __future__ import annotations

from escrow.db import Row, Tx


def members(tx: Tx, chat_room_id: int) -> list[Row]:
    return tx.all(
        "SELECT user_id, is_owner FROM chat_room_members WHERE chat_room_id = %s ORDER BY user_id", (chat_room_id,)
    )


def store(tx: Tx, store_id: str) -> Row | None:
    return tx.one("SELECT store_id, owner_id FROM stores WHERE store_id = %s", (store_id,))
