"""Toss's ``Idempotency-Key`` semantics.

Sources: [DOC https://docs.tosspayments.com/reference/using-api/idempotency-key,
https://docs.tosspayments.com/guides/using-api/idempotency-key, https://docs.tosspayments.com/en/api-guide];
[TC https://techchat.tosspayments.com/m/1186570706016809030] (one constant key replays the first payment).

* Identity = (key, API key, path, method); the body is not part of it.
* A repeat replays the first response verbatim for 15 days, "even in the case of an error" (English docs);
  4xx replays observed for 15 days [3P-live].
* While the first request is still running, a repeat gets 409 IDEMPOTENT_REQUEST_PROCESSING.
* Keys longer than 300 characters get 400 INVALID_IDEMPOTENCY_KEY.

Not observed: whether a 5xx answer (server error, timeout) is bound too. Setting ``idempotency_bind_5xx``:
True (default, the English docs' wording) binds it like any answer, so a retry with the same key replays the
5xx; False releases the key, so a retry with it is processed. A forced 409 never binds the key (it is the
answer "someone else holds the key").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from .routing import Response

MAX_KEY_LENGTH = 300

Identity = tuple[str, str, str, str]


class Outcome(Enum):
    NEW = "new"
    PROCESSING = "processing"
    REPLAY = "replay"


@dataclass
class _Entry:
    first_used_at: datetime
    response: Response | None = None  # None while the first request is processing


class IdempotencyRegistry:
    def __init__(self, lock: threading.RLock, ttl_seconds: float) -> None:
        self._lock = lock
        self._entries: dict[Identity, _Entry] = {}
        self.ttl = timedelta(seconds=ttl_seconds)

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()

    def begin(self, identity: Identity, now: datetime) -> tuple[Outcome, Response | None]:
        """Claim the key for a new request, or report that it is running or finished."""
        with self._lock:
            entry = self._entries.get(identity)
            if entry is not None and now - entry.first_used_at > self.ttl:
                # An expired key is treated as a new one (the idempotency-key docs: "treated as new").
                entry = None
            if entry is None:
                self._entries[identity] = _Entry(first_used_at=now)
                return Outcome.NEW, None
            if entry.response is None:
                return Outcome.PROCESSING, None
            return Outcome.REPLAY, entry.response.copy()

    def finish(self, identity: Identity, response: Response, *, bind_5xx: bool = True) -> None:
        """Bind the first response to the key; a 5xx answer releases the key instead unless ``bind_5xx``."""
        with self._lock:
            if response.status >= 500 and not bind_5xx:
                self._entries.pop(identity, None)
                return
            entry = self._entries.get(identity)
            if entry is not None:
                stored = response.copy()
                stored.drop_after_seconds = None
                entry.response = stored

    def release(self, identity: Identity) -> None:
        with self._lock:
            self._entries.pop(identity, None)
