"""Time and id ports: services take these as arguments so tests can pin them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def db_time(value: datetime | None) -> datetime | None:
    """MySQL DATETIME holds UTC without an offset."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    """DATETIME (UTC, naive) to ISO 8601 with an explicit offset."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_order_id(request_id: int) -> str:
    """6-64 chars of [A-Za-z0-9_-], unique: the stack prefix (escrow.toss.ids), the request id and 96 random bits
    (at most 8 + 1 + 23 + 1 + 16 = 49 characters)."""
    from escrow.toss.ids import toss_name

    return toss_name(f"esc{request_id}-{secrets.token_urlsafe(12)}")
