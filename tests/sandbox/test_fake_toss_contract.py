"""The in-memory Toss of the unit tests (tests/support/fake_toss.py) answers as the sandbox does.

Each scenario runs twice: against the fake, and against the sandbox through the layer's real HTTP client
(`escrow.toss.client.TossClient`). Both write a transcript of what a service would see (statuses, amounts, refunds,
error codes and HTTP statuses); the transcripts must be equal. A rule changed in the sandbox and not in the fake (or
the other way round) fails here, not in a unit test that trusts the fake."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

import pytest
import requests

from escrow.clock import FixedClock
from escrow.toss.client import TossClient
from escrow.toss.errors import TossApiError
from escrow.toss.models import Payment
from escrow.toss.port import TossPort
from tests.support.fake_toss import FakeToss
from toss_sandbox import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY, Sandbox

_orders = itertools.count(1)


class Side(Protocol):
    """One Toss (the fake or the sandbox), with what the widget, Toss's operators and time do to it."""

    toss: TossPort

    def authenticate(self, order_id: str, amount: int, method: str = "카드") -> str: ...
    def advance(self, seconds: float) -> None: ...
    def set_seller_status(self, seller_id: str, status: str) -> None: ...
    def set_available(self, amount: int) -> None: ...


class FakeSide:
    def __init__(self) -> None:
        self.clock = FixedClock()
        self.fake = FakeToss(self.clock)
        self.toss: TossPort = self.fake

    def authenticate(self, order_id: str, amount: int, method: str = "카드") -> str:
        return self.fake.authenticate(order_id, amount, method=method)

    def advance(self, seconds: float) -> None:
        self.clock.advance(timedelta(seconds=seconds))

    def set_seller_status(self, seller_id: str, status: str) -> None:
        self.fake.set_seller_status(seller_id, status)

    def set_available(self, amount: int) -> None:
        self.fake.set_balance(amount)


class SandboxSide:
    def __init__(self, sandbox: Sandbox) -> None:
        self.url = sandbox.url
        self.toss: TossPort = TossClient(sandbox.url, DEFAULT_SECRET_KEYS[0], security_key=DEFAULT_SECURITY_KEY)

    def _control(self, path: str, body: dict[str, Any]) -> Any:
        response = requests.post(self.url + path, json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def authenticate(self, order_id: str, amount: int, method: str = "카드") -> str:
        created = self._control("/sandbox/payments", {"orderId": order_id, "amount": amount, "method": method})
        return str(created["paymentKey"])

    def advance(self, seconds: float) -> None:
        self._control("/sandbox/clock", {"advance_seconds": seconds})

    def set_seller_status(self, seller_id: str, status: str) -> None:
        self._control(f"/sandbox/sellers/{seller_id}/status", {"status": status})

    def set_available(self, amount: int) -> None:
        self._control("/sandbox/balance", {"available": amount})


def _seen(call: Callable[[], Any]) -> Any:
    """What a service sees of one call: the payment, payout or seller in short, or the error."""
    try:
        answer = call()
    except TossApiError as exc:
        return ("error", exc.status, exc.code)
    if isinstance(answer, Payment):
        cancels = [(c.cancel_amount, c.refundable_amount) for c in answer.cancels or []]
        failure = answer.failure.code if answer.failure else None
        return (answer.status, answer.total_amount, answer.balance_amount, cancels, failure)
    if isinstance(answer, list):
        return [_short(item) for item in answer]
    return _short(answer)


def _short(entity: dict[str, Any]) -> Any:
    if "refPayoutId" in entity:
        return ("payout", entity["status"], entity["amount"]["value"])
    return ("seller", entity["status"])


# Every scenario gets its own orderIds (the sandbox is per test, but the ids read better when they differ).
def _order() -> str:
    return f"contract-{next(_orders):05d}"


SCENARIOS: dict[str, Callable[[Side], list[Any]]] = {}


def scenario(fn: Callable[[Side], list[Any]]) -> Callable[[Side], list[Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def confirm_and_look_up(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 15_000)
    toss = side.toss
    return [
        _seen(lambda: toss.confirm("tnope-unknown", order, 15_000, idempotency_key=f"k0-{order}")),
        _seen(lambda: toss.confirm(key, _order(), 15_000, idempotency_key=f"k1-{order}")),
        _seen(lambda: toss.confirm(key, order, 14_000, idempotency_key=f"k2-{order}")),
        _seen(lambda: toss.get_payment(key)),  # still to confirm
        _seen(lambda: toss.confirm(key, order, 15_000, idempotency_key=f"k3-{order}")),
        _seen(lambda: toss.confirm(key, order, 15_000, idempotency_key=f"k3-{order}")),  # the same key: replayed
        _seen(lambda: toss.confirm(key, order, 15_000, idempotency_key=f"k4-{order}")),  # a new key: refused
        _seen(lambda: toss.get_payment_by_order(order)),
        _seen(lambda: toss.get_payment_by_order(_order())),
    ]


@scenario
def an_errors_key_replays_the_error(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 15_000)
    toss = side.toss
    return [
        _seen(lambda: toss.confirm(key, order, 1, idempotency_key=f"same-{order}")),
        _seen(lambda: toss.confirm(key, order, 15_000, idempotency_key=f"same-{order}")),  # right body, same key
        _seen(lambda: toss.get_payment(key)),
    ]


@scenario
def the_confirm_window_closes(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 15_000)
    side.advance(601)
    return [
        _seen(lambda: side.toss.confirm(key, order, 15_000, idempotency_key=f"late-{order}")),
        _seen(lambda: side.toss.get_payment(key)),
    ]


@scenario
def partial_cancels_then_the_rest(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 30_000)
    toss = side.toss
    before = _seen(lambda: toss.cancel(key, "too early", idempotency_key=f"c0-{order}"))
    toss.confirm(key, order, 30_000, idempotency_key=f"confirm-{order}")
    return [
        before,
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c1-{order}", amount=10_000, refundable_amount=20_000)),
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c2-{order}", amount=10_000, refundable_amount=30_000)),
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c2-{order}", amount=10_000, refundable_amount=30_000)),
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c3-{order}", amount=20_001)),
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c4-{order}", refundable_amount=20_000)),
        _seen(lambda: toss.cancel(key, "r", idempotency_key=f"c5-{order}")),
        _seen(lambda: toss.get_payment(key)),
    ]


@scenario
def a_whole_cancel(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 30_000)
    side.toss.confirm(key, order, 30_000, idempotency_key=f"confirm-{order}")
    return [
        _seen(lambda: side.toss.cancel(key, "r", idempotency_key=f"all-{order}", refundable_amount=30_000)),
        _seen(lambda: side.toss.cancel(key, "r", idempotency_key=f"again-{order}")),
    ]


@scenario
def a_virtual_account_before_its_deposit(side: Side) -> list[Any]:
    order = _order()
    key = side.authenticate(order, 30_000, method="가상계좌")
    return [
        _seen(lambda: side.toss.confirm(key, order, 30_000, idempotency_key=f"confirm-{order}")),
        _seen(lambda: side.toss.cancel(key, "r", idempotency_key=f"part-{order}", amount=1_000)),
    ]


def _seller(ref: str, business_type: str = "INDIVIDUAL") -> dict[str, Any]:
    return {
        "refSellerId": ref,
        "businessType": business_type,
        "individual": {"name": "홍길동", "email": "owner@example.com", "phone": "01012345678"},
        "account": {"bankCode": "088", "accountNumber": "1234567890123", "holderName": "홍길동"},
    }


def _item(ref: str, seller_id: str, value: int) -> dict[str, Any]:
    return {
        "refPayoutId": ref,
        "destination": seller_id,
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": value},
        "transactionDescription": "모임예약금",
    }


@scenario
def payouts_wait_for_the_seller_and_the_balance(side: Side) -> list[Any]:
    toss = side.toss
    tag = _order()
    seller = toss.register_seller(_seller(f"s{tag[-5:]}"), idempotency_key=f"seller-{tag}")
    first = [_item(f"ref-{tag}-1", seller["id"], 20_000)]
    seen = [
        _short(seller),
        _seen(lambda: toss.register_seller(_seller(f"s{tag[-5:]}"), idempotency_key=f"seller2-{tag}")),
        _seen(lambda: toss.request_payouts(first, idempotency_key=f"p1-{tag}")),
    ]
    side.set_seller_status(seller["id"], "APPROVED")
    seen.append(_seen(lambda: toss.request_payouts(first, idempotency_key=f"p2-{tag}")))
    side.set_available(25_000)
    both = [*first, _item(f"ref-{tag}-2", seller["id"], 10_000)]
    seen += [
        _seen(lambda: toss.request_payouts(both, idempotency_key=f"p3-{tag}")),  # all or nothing: 30,000 > 25,000
        _seen(lambda: toss.request_payouts(first, idempotency_key=f"p4-{tag}")),
        _seen(lambda: toss.request_payouts(first, idempotency_key=f"p5-{tag}")),
        _seen(lambda: toss.request_payouts([_item(f"ref-{tag}-3", seller["id"], 5_000)], idempotency_key=f"p6-{tag}")),
        _seen(lambda: toss.request_payouts([_item(f"ref-{tag}-4", "seller_nobody", 1)], idempotency_key=f"p7-{tag}")),
    ]
    return seen


@scenario
def a_sale_settles_before_it_is_paid_out(side: Side) -> list[Any]:
    toss = side.toss
    order = _order()
    key = side.authenticate(order, 30_000)
    toss.confirm(key, order, 30_000, idempotency_key=f"confirm-{order}")
    seller = toss.register_seller(_seller(f"s{order[-5:]}", "CORPORATE") | _company(), idempotency_key=f"s-{order}")
    item = [_item(f"ref-{order}", seller["id"], 29_100)]
    seen = [_short(seller), _seen(lambda: toss.request_payouts(item, idempotency_key=f"p1-{order}"))]
    side.advance(2 * 24 * 3600)
    (payout,) = toss.request_payouts(item, idempotency_key=f"p2-{order}")
    return [*seen, _short(payout), _short(toss.get_payout(payout["id"]))]


def _company() -> dict[str, Any]:
    return {
        "individual": None,
        "company": {
            "name": "가게",
            "representativeName": "홍길동",
            "businessRegistrationNumber": "1234567890",
            "email": "owner@example.com",
            "phone": "01012345678",
        },
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_fake_answers_as_the_sandbox(name: str, make_sandbox: Callable[..., Sandbox]) -> None:
    run = SCENARIOS[name]

    fake = run(FakeSide())
    sandbox = run(SandboxSide(make_sandbox(seed=7)))

    assert fake == sandbox
