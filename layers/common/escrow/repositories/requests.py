from __future__ import annotations

from datetime import datetime
from typing import Any

from escrow.db import Row, Tx

_COLUMNS = (
    "id, chat_room_id, store_id, requester_id, amount, message, status, participant_count, release_at, "
    "expires_at, completed_at, closed_at, created_at"
)


def insert(
    tx: Tx,
    *,
    chat_room_id: int,
    store_id: str,
    requester_id: str,
    amount: int,
    message: str | None,
    participant_count: int,
    release_at: datetime | None,
    expires_at: datetime | None,
) -> int:
    return tx.insert(
        "INSERT INTO payment_requests (chat_room_id, store_id, requester_id, amount, message, status, "
        "participant_count, release_at, expires_at) VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s)",
        (chat_room_id, store_id, requester_id, amount, message, participant_count, release_at, expires_at),
    )


def lock_open_for_room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE open_room_id = %s FOR UPDATE", (chat_room_id,))


def find_open_for_room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE open_room_id = %s", (chat_room_id,))


def lock(tx: Tx, request_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE id = %s FOR UPDATE", (request_id,))


def set_status(tx: Tx, request_id: int, status: str, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %s" for name in fields)
    sql = f"UPDATE payment_requests SET status = %s{', ' + assignments if assignments else ''} WHERE id = %s"
    tx.execute(sql, (status, *fields.values(), request_id))


def status_view(tx: Tx, chat_room_id: int, user_id: str) -> Row:
    """Everything the status endpoint needs about the room and the caller, in one statement: the room's open
    request (else its latest), how many member rows the room has and whether the caller is one of them."""
    row = tx.one(
        f"""SELECT (SELECT COUNT(*) FROM chat_room_members m WHERE m.chat_room_id = %(room)s) AS member_rows,
                   EXISTS(SELECT 1 FROM chat_room_members m
                          WHERE m.chat_room_id = %(room)s AND m.user_id = %(user)s) AS is_member,
                   r.{_COLUMNS.replace(", ", ", r.")}
            FROM (SELECT 1 AS one) d
            LEFT JOIN payment_requests r ON r.id = (
                SELECT id FROM payment_requests WHERE chat_room_id = %(room)s
                ORDER BY open_room_id IS NULL, id DESC LIMIT 1)""",
        {"room": chat_room_id, "user": user_id},
    )
    assert row is not None
    return row
