from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import assignments, marks
from escrow.states import REQUEST, RequestStatus

_COLUMNS = (
    "id, chat_room_id, store_id, requester_id, amount, message, status, participant_count, funding_round, "
    "release_at, expires_at, completed_at, closed_at, closed_by, close_reason, created_at"
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
    REQUEST.check_initial(RequestStatus.PENDING)
    return tx.insert(
        "INSERT INTO payment_requests (chat_room_id, store_id, requester_id, amount, message, status, "
        "participant_count, release_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            chat_room_id,
            store_id,
            requester_id,
            amount,
            message,
            RequestStatus.PENDING,
            participant_count,
            release_at,
            expires_at,
        ),
    )


def lock_open_for_room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE open_room_id = %s FOR UPDATE", (chat_room_id,))


def find_open_for_room(tx: Tx, chat_room_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE open_room_id = %s", (chat_room_id,))


def latest_for_room(tx: Tx, chat_room_id: int) -> Row | None:
    """The room's latest request, open or not (no lock)."""
    return tx.one(
        f"SELECT {_COLUMNS} FROM payment_requests WHERE chat_room_id = %s ORDER BY id DESC LIMIT 1",
        (chat_room_id,),
    )


def set_participant_count(tx: Tx, request_id: int, count: int) -> None:
    """A locked request's number of current participants (a participant was added or removed)."""
    tx.execute("UPDATE payment_requests SET participant_count = %s WHERE id = %s", (count, request_id))


def find(tx: Tx, request_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE id = %s", (request_id,))


def lock(tx: Tx, request_id: int) -> Row | None:
    return tx.one(f"SELECT {_COLUMNS} FROM payment_requests WHERE id = %s FOR UPDATE", (request_id,))


def set_status(tx: Tx, request_id: int, current: str, new: RequestStatus, **fields: Any) -> None:
    """Move one locked request from `current` (as read under its lock) to `new`, with the columns that go with it."""
    REQUEST.check(current, new)
    extra = assignments(fields)
    sql = f"UPDATE payment_requests SET status = %s{', ' + extra if extra else ''} WHERE id = %s"
    tx.execute(sql, (new, *fields.values(), request_id))


def due_for_release(tx: Tx, now: datetime | None, limit: int, only: Sequence[int] | None = None) -> list[int]:
    """Funded requests whose release time has passed, earliest first (no lock: each is locked and re-checked);
    `only`: among these ids (a chunk the scheduled planner handed a worker, re-checked when the worker takes it)."""
    if only is not None and not only:
        return []
    among = f"AND id IN ({marks(only)}) " if only else ""
    rows = tx.all(
        f"SELECT id FROM payment_requests WHERE status = %s AND release_at <= %s {among}ORDER BY release_at LIMIT %s",
        (RequestStatus.COMPLETED, now, *(only or ()), limit),
    )
    return [row["id"] for row in rows]


def due_for_expiry(tx: Tx, now: datetime | None, limit: int, only: Sequence[int] | None = None) -> list[int]:
    """Requests still waiting for payers whose deadline has passed, earliest first (no lock); `only`: among these."""
    if only is not None and not only:
        return []
    among = f"AND id IN ({marks(only)}) " if only else ""
    rows = tx.all(
        f"SELECT id FROM payment_requests WHERE status = %s AND expires_at <= %s {among}ORDER BY expires_at LIMIT %s",
        (RequestStatus.PENDING, now, *(only or ()), limit),
    )
    return [row["id"] for row in rows]


def lock_many_skip_locked(tx: Tx, request_ids: Sequence[int]) -> list[Row]:
    """Lock these requests in id order, skipping those another transaction holds (MySQL 8 / MariaDB 10.6): two
    schedule runs at once take different requests, and neither waits on a room someone releases or refunds by hand."""
    return tx.all(
        "SELECT id, chat_room_id, store_id, requester_id, status FROM payment_requests "
        f"WHERE id IN ({marks(request_ids)}) ORDER BY id FOR UPDATE SKIP LOCKED",
        list(request_ids),
    )


def release_many(tx: Tx, requests: Sequence[Mapping[str, Any]], *, closed_at: datetime | None, closed_by: str) -> None:
    """Close locked requests as released, one statement for all (each row's transition checked)."""
    REQUEST.check_each([r["status"] for r in requests], RequestStatus.RELEASED)
    ids = [r["id"] for r in requests]
    tx.execute(
        "UPDATE payment_requests SET status = %s, closed_at = %s, closed_by = %s, close_reason = 'released' "
        f"WHERE id IN ({marks(ids)})",
        [RequestStatus.RELEASED, closed_at, closed_by, *ids],
    )


def status_view(tx: Tx, chat_room_id: int, user_id: str) -> Row:
    """Everything the status endpoint needs about the room and the caller, in one statement: the room's open
    request (else its latest), whether we know the room (and its owner) and whether the caller is a member."""
    row = tx.one(
        f"""SELECT (SELECT COUNT(*) FROM chat_rooms c WHERE c.chat_room_id = %(room)s) AS known_room,
                   (SELECT owner_id FROM chat_rooms c WHERE c.chat_room_id = %(room)s) AS owner_id,
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
