"""The invocation's deadline (escrow.deadline) and what it leaves each Toss call, on a fixed clock."""

from __future__ import annotations

from typing import Any

import pytest
import requests  # noqa: F401 - imported at collection: urllib3 probes for IPv6 with a socket when first imported

from escrow.deadline import FALLBACK_SECONDS, MIN_CALL_SECONDS, Deadline
from escrow.toss.client import TossClient
from escrow.toss.errors import TossNotSent


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_deadline_is_the_contexts_remaining_time_from_now() -> None:
    clock = Clock()
    deadline = Deadline.from_context(LambdaContext(27_500), margin=2.0, clock=clock)
    assert deadline.ends_at == 1027.5
    assert deadline.remaining() == 27.5
    assert deadline.budget() == 25.5
    clock.now += 20
    assert deadline.remaining() == 7.5 and deadline.budget() == 5.5
    clock.now += 10
    assert deadline.remaining() == 0.0 and deadline.budget() == 0.0  # never negative


def test_without_a_context_the_deadline_is_the_api_functions_timeout() -> None:
    clock = Clock()
    assert Deadline.from_context(None, clock=clock).remaining() == FALLBACK_SECONDS
    assert Deadline.from_context(object(), fallback_seconds=5, clock=clock).remaining() == 5


def test_a_call_gets_the_configured_timeouts_while_they_fit() -> None:
    deadline = Deadline.from_context(LambdaContext(28_000), margin=2.0, clock=Clock())
    assert deadline.call_timeouts(3.0, 20.0) == (3.0, 20.0)  # 23 s of the 26 s budget


def test_a_call_is_cut_so_that_connect_and_read_together_fit_in_the_budget() -> None:
    clock = Clock()
    deadline = Deadline.from_context(LambdaContext(28_000), margin=2.0, clock=clock)
    clock.now += 23  # a first confirm waited its 23 s: 5 s left, 3 s of budget
    connect, read = deadline.call_timeouts(3.0, 20.0) or (0.0, 0.0)
    assert (connect, read) == (1.5, 1.5)
    assert connect + read <= deadline.budget()


def test_no_call_is_started_with_less_than_the_minimum_left() -> None:
    clock = Clock()
    deadline = Deadline.from_context(LambdaContext(10_000), margin=2.0, clock=clock)
    clock.now += 8 - MIN_CALL_SECONDS + 0.01
    assert deadline.call_timeouts(3.0, 20.0) is None
    clock.now -= 0.02
    assert deadline.call_timeouts(3.0, 20.0) is not None


def test_a_pause_is_allowed_only_when_a_call_still_fits_after_it() -> None:
    deadline = Deadline.from_context(LambdaContext(5_000), margin=2.0, clock=Clock())  # 3 s of budget
    assert deadline.allows(1.0)
    assert not deadline.allows(2.5)


class Session:
    """Records what the client asks of the transport; answers a payment."""

    def __init__(self) -> None:
        self.timeouts: list[Any] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs["timeout"])

        class Answer:
            status_code = 200

            @staticmethod
            def json() -> dict[str, Any]:
                return {"paymentKey": "pk_1", "orderId": "order-1", "status": "DONE", "totalAmount": 1000}

        return Answer()


def test_the_client_bounds_each_call_by_the_deadline_and_starts_none_past_it() -> None:
    session = Session()
    client = TossClient("http://toss.invalid", "test_sk", connect_timeout=3, read_timeout=20, session=session)  # type: ignore[arg-type]
    clock = Clock()
    bounded = client.within(Deadline.from_context(LambdaContext(10_000), margin=2.0, clock=clock))
    bounded.get_payment("pk_1")
    client.get_payment("pk_1")  # the client itself is not bound
    clock.now += 5  # 3 s of budget
    bounded.get_payment("pk_1")
    assert session.timeouts == [(3, 5.0), (3, 20), (1.5, 1.5)]
    clock.now += 2.5
    with pytest.raises(TossNotSent):
        bounded.get_payment("pk_1")
    assert len(session.timeouts) == 3  # not sent
    assert client.calls == bounded.calls == 3  # one count for the client and its views
    assert client.within(None) is client


def test_a_confirm_still_processing_at_toss_is_not_waited_for_past_the_deadline() -> None:
    """IDEMPOTENT_REQUEST_PROCESSING is asked again after a pause, but only while a call still fits after it."""
    from escrow.services.payments import Attempt, _call_confirm
    from escrow.toss.errors import TossApiError
    from tests.support.fake_toss import FakeToss

    toss = FakeToss()
    key = toss.authenticate("order-deadline-1", 1000)
    attempt = Attempt(1, 1, "order-deadline-1", key, 1000)
    clock = Clock()
    toss.processing_next("confirm")
    roomy = Deadline.from_context(LambdaContext(10_000), margin=2.0, clock=clock)
    assert _call_confirm(toss, attempt, roomy).status == "DONE"  # asked again after 0.25 s: approved
    assert [c.operation for c in toss.calls].count("confirm") == 2

    toss = FakeToss()
    key = toss.authenticate("order-deadline-2", 1000)
    attempt = Attempt(1, 1, "order-deadline-2", key, 1000)
    toss.processing_next("confirm")
    tight = Deadline.from_context(LambdaContext(3_100), margin=2.0, clock=clock)  # 1.1 s: no pause leaves 1 s
    with pytest.raises(TossApiError) as refused:
        _call_confirm(toss, attempt, tight)
    assert refused.value.code == "IDEMPOTENT_REQUEST_PROCESSING"
    assert [c.operation for c in toss.calls].count("confirm") == 1
