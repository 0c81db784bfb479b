"""The sandbox's clock: real time in KST plus an offset that tests can advance."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta, timezone

KST = timezone(timedelta(hours=9))


class SandboxClock:
    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC).astimezone(KST) + offset

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._offset += timedelta(seconds=seconds)
        return self.now()

    def reset(self) -> None:
        with self._lock:
            self._offset = timedelta(0)

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset.total_seconds()

    def today(self) -> date:
        return self.now().date()


def iso(moment: datetime) -> str:
    """Toss's ISO-8601 with offset and whole seconds: ``2024-09-05T12:19:21+09:00``."""
    return moment.astimezone(KST).replace(microsecond=0).isoformat()


def webhook_created_at(moment: datetime) -> str:
    """``createdAt`` of PAYMENT_STATUS_CHANGED / DEPOSIT_CALLBACK: ``yyyy-MM-dd'T'HH:mm:ss.SSSSSS``, no offset."""
    return moment.astimezone(KST).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)
