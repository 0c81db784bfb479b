"""The time an invocation has left, and how much of it a Toss call may take.

Lambda stops a function at its timeout without letting it finish. A confirm still waiting for Toss then never
records that its outcome is unknown, and the app gets API Gateway's generic 5xx instead of PAYMENT_OUTCOME_UNKNOWN
(with the configured timeouts one confirm could take connect 3 s + read 20 s, then a lookup and a second confirm:
about 69 s, in a 28 s function behind HTTP API's 30 s). So every HTTP handler works to a `Deadline` taken from the
Lambda context when the invocation starts, and hands it to the services that call Toss; the Toss client cuts each
call's timeouts to what is left minus a margin kept back to record the outcome and answer
(`DEADLINE_MARGIN_SECONDS`), and does not start a call at all when less than `MIN_CALL_SECONDS` would be left for it.

Without a Lambda context (a direct call) the deadline is the API functions' timeout from now (`FALLBACK_SECONDS`).
The scheduled jobs keep their own budget (`services/jobs.py`); services called without a deadline use the
configured timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MARGIN_SECONDS = 2.0  # recording an outcome is two short transactions; the answer is immediate
MIN_CALL_SECONDS = 1.0  # less than this for connect + read: the call is not started
FALLBACK_SECONDS = 28.0  # the API functions' timeout (template parameter ApiTimeout's default)


@dataclass(frozen=True)
class Deadline:
    """When the invocation ends (`ends_at`, on `clock`), and the margin kept back after the last Toss call."""

    ends_at: float
    margin: float = DEFAULT_MARGIN_SECONDS
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def from_context(
        cls,
        context: Any,
        *,
        margin: float = DEFAULT_MARGIN_SECONDS,
        fallback_seconds: float = FALLBACK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> Deadline:
        """The deadline of the invocation `context` belongs to (a Lambda context: `get_remaining_time_in_millis`),
        or `fallback_seconds` from now without one."""
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        remaining = remaining_ms() / 1000.0 if callable(remaining_ms) else fallback_seconds
        return cls(clock() + max(0.0, float(remaining)), margin, clock)

    def remaining(self) -> float:
        """Seconds until Lambda stops the invocation."""
        return max(0.0, self.ends_at - self.clock())

    def budget(self) -> float:
        """Seconds Toss calls may still take: what is left minus the margin."""
        return max(0.0, self.remaining() - self.margin)

    def allows(self, seconds: float) -> bool:
        """Whether `seconds` of waiting still leave a call its minimum time."""
        return self.budget() - seconds >= MIN_CALL_SECONDS

    def call_timeouts(self, connect: float, read: float) -> tuple[float, float] | None:
        """The (connect, read) timeouts of a call starting now: the configured ones, cut so that both together fit in
        the budget (connect at most half of it). None when the budget is below MIN_CALL_SECONDS: do not start."""
        budget = self.budget()
        if budget < MIN_CALL_SECONDS:
            return None
        connect = min(connect, budget / 2)
        return connect, min(read, budget - connect)
