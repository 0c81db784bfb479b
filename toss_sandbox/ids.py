"""Identifiers in Toss's shapes, drawn from one (optionally seeded) random generator."""

from __future__ import annotations

import random
import string
import threading
from datetime import datetime

_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits


class IdFactory:
    """Randomness of the sandbox. With a seed, runs are reproducible (faults and ids alike)."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._random = random.Random(seed)

    def chance(self, rate: float) -> bool:
        """True with probability ``rate`` (0 never, 1 always)."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._random.random() < rate

    def uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._random.uniform(low, high)

    def choice(self, items: list[str]) -> str:
        with self._lock:
            return self._random.choice(items)

    def _chars(self, alphabet: str, length: int) -> str:
        with self._lock:
            return "".join(self._random.choice(alphabet) for _ in range(length))

    def digits(self, length: int) -> str:
        return self._chars(string.digits, length)

    def payment_key(self, now: datetime) -> str:
        # Real keys look like ``tgen_20250301123456AbCd1``; the stamp keeps keys unique across restarts.
        return f"tgen_{now.strftime('%Y%m%d%H%M%S')}{self._chars(_ALNUM, 5)}"

    def transaction_key(self) -> str:
        return f"txrd_{self._chars(_LOWER_ALNUM, 24)}"

    def payment_secret(self) -> str:
        return f"ps_{self._chars(_ALNUM, 24)}"

    def transmission_id(self) -> str:
        return f"whtrans_{self._chars(_LOWER_ALNUM, 26)}"

    def event_id(self) -> str:
        return f"whevt_{self._chars(_LOWER_ALNUM, 26)}"

    def seller_id(self) -> str:
        return f"seller_{self._chars(_LOWER_ALNUM, 26)}"

    def payout_id(self) -> str:
        return f"FPA_{self._chars(_UPPER_ALNUM, 20)}"

    def trace_id(self) -> str:
        return self._chars("0123456789abcdef", 32)

    def approve_no(self) -> str:
        return self.digits(8)
