"""Time and id ports: services take these as arguments so tests can pin them.

The clock port is a function that says what time it is (`Clock`): `utcnow` in production, a `FixedClock` in tests,
which stands still until the test moves it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]  # now, in UTC, with its offset


def utcnow() -> datetime:
    return datetime.now(UTC)


class FixedClock:
    """A clock that says the same time until it is moved (`advance`, `set`): what a test pins time with."""

    def __init__(self, at: datetime | None = None) -> None:
        at = at or datetime(2026, 1, 5, 3, 0, tzinfo=UTC)  # a Monday, 12:00 in Seoul
        if at.tzinfo is None:
            raise ValueError("a clock tells aware time: give the datetime an offset")
        self._at = at
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._at

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        """Move forward by `delta` or by timedelta's keywords (`seconds=`, `minutes=`, `days=` ...)."""
        step = delta if delta is not None else timedelta(**parts)
        if step < timedelta(0):
            raise ValueError("time does not go back")
        with self._lock:
            self._at += step
            return self._at

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a clock tells aware time: give the datetime an offset")
        with self._lock:
            self._at = at


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
