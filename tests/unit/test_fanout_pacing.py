"""A worker's pacing of its Toss calls (escrow.services.fanout.TokenBucket, PacedToss): at most `rate` calls per
second on average, `burst` at once, every call of the port paced, none dropped."""

from __future__ import annotations

from typing import Any, cast

from escrow.services.fanout import PacedToss, TokenBucket
from escrow.toss.port import TossPort


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_bucket_lets_a_burst_through_then_paces_to_its_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(5.0, burst=2, clock=t.clock, sleep=t.sleep)

    waits = [bucket.take() for _ in range(12)]

    assert waits[:2] == [0.0, 0.0]  # the burst
    assert all(abs(w - 0.2) < 1e-9 for w in waits[2:])  # then one call per 1/rate seconds
    assert abs((t.now - 100.0) - 10 * 0.2) < 1e-9  # 12 calls: 2 at once, 10 paced over 2 s


def test_tokens_build_up_while_idle_but_never_beyond_the_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        bucket.take()
    t.now += 60  # a long pause: the bucket is full again, not 120 tokens
    waits = [bucket.take() for _ in range(4)]

    assert waits == [0.0, 0.0, 0.0, 0.5]


def test_every_call_of_the_port_takes_a_token_and_goes_through() -> None:
    t = FakeTime()
    bucket = TokenBucket(10.0, burst=1, clock=t.clock, sleep=t.sleep)

    class Toss:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def cancel(self, payment_key: str, reason: str, **kwargs: Any) -> str:
            self.calls.append(("cancel", payment_key))
            return "answer"

        def get_balances(self) -> dict[str, int]:
            self.calls.append(("balances", None))
            return {"available": 1}

    inner = Toss()
    paced = cast(TossPort, PacedToss(cast(TossPort, inner), bucket))

    assert paced.cancel("pk", "why", idempotency_key="k") == "answer"  # type: ignore[comparison-overlap]
    assert paced.get_balances() == {"available": 1}
    assert inner.calls == [("cancel", "pk"), ("balances", None)]
    assert t.slept == [0.1]  # the second call waited for its token
