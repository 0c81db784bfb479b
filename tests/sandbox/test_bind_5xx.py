"""Whether a 5xx answer is bound to its Idempotency-Key is not observed (docs/toss-behaviours.md, "Idempotency"):
the sandbox plays both (setting `idempotency_bind_5xx`), so the client is tested under each."""

from __future__ import annotations

import pytest

from .conftest import TossClient


@pytest.mark.parametrize("bind", [True, False])
def test_a_retry_after_a_5xx_replays_it_only_when_5xx_answers_are_bound(toss: TossClient, bind: bool) -> None:
    toss.control("POST", "/sandbox/config", {"idempotency_bind_5xx": bind})
    widget = toss.widget()
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1)
    first = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="k-5xx")
    again = toss.confirm(widget["paymentKey"], widget["orderId"], widget["amount"], idempotency_key="k-5xx")
    assert first.status_code == 500
    if bind:
        assert again.status_code == 500 and again.json() == first.json() and toss.calls()[-1]["replayed"]
    else:
        assert again.status_code == 200 and again.json()["status"] == "DONE"
