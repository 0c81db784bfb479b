"""The release decision (services.release.plan_release) and the state tables: pure, no database."""

from __future__ import annotations

import pytest

from escrow.services.release import plan_release
from escrow.states import (
    CANCEL,
    OPERATOR_ACTION,
    ORDER,
    PAYOUT,
    InvalidTransition,
    OperatorActionStatus,
    OrderStatus,
    PayoutStatus,
)


def _request(request_id: int, status: str = "completed") -> dict:
    return {"id": request_id, "status": status, "chat_room_id": 100 + request_id, "store_id": "store_1"}


def _share(share_id: int, request_id: int, status: str = "completed", paid: int = 10_000, refunded: int = 0) -> dict:
    return {
        "id": share_id,
        "amount": 10_000,
        "payment_request_id": request_id,
        "payer_id": f"user_{share_id}",
        "payment_key": f"pk_{share_id}",
        "status": status,
        "paid_amount": paid,
        "refunded_amount": refunded,
    }


def test_a_funded_request_releases_every_current_share_minus_the_fee():
    shares = [
        _share(1, 7),
        _share(2, 7),
        _share(3, 7, "removed", refunded=10_000),  # taken out of the request; refunded
    ]

    plan = plan_release([_request(7)], shares, set(), fee_bps=300, actor="user_1")

    (release,) = plan.releases
    assert [s["id"] for s in release.shares] == [1, 2]  # the removed participant's share is not the store's
    assert (release.gross, release.fee, release.net) == (20_000, 600, 19_400)
    assert [(e.payment_id, e.amount, e.reference) for e in plan.ledger_entries] == [
        (1, 10_000, "release:1"),
        (2, 10_000, "release:2"),
    ]
    (settlement,) = plan.settlements
    assert (settlement.gross, settlement.fee, settlement.net, settlement.payout_status) == (
        20_000,
        600,
        19_400,
        "scheduled",
    )
    (event,) = plan.events({7: 55})
    assert event.dedupe_key == "EscrowReleased:7"
    assert event.payload["settlement_id"] == 55
    assert event.payload["released_payments"][1] == {
        "payer_id": "user_2",
        "paymentKey": "pk_2",
        "status": "RELEASED",
        "amount": 10_000,
    }
    assert plan.postponed == {}


def test_a_completed_request_with_a_share_not_held_in_full_is_not_released():
    # Funding counts intent: a share partly refunded does not fund the request, whatever its status row says.
    shares = [_share(1, 7), _share(2, 7, "partially_refunded", refunded=1)]
    plan = plan_release([_request(7)], shares, set(), fee_bps=300, actor="user_1")
    assert plan.releases == [] and plan.postponed == {7: "REQUEST_NOT_FUNDED"}


def test_unfunded_requests_and_refunds_in_flight_postpone_the_release():
    plan = plan_release(
        [_request(1, "pending"), _request(2), _request(3)],
        [_share(10, 2), _share(11, 3)],
        {10},
        fee_bps=300,
        actor="schedule",
    )

    assert plan.postponed == {1: "REQUEST_NOT_FUNDED", 2: "REFUND_IN_PROGRESS"}
    assert [r.request["id"] for r in plan.releases] == [3]


def test_a_request_whose_fee_takes_everything_needs_no_payout():
    share = {**_share(1, 1, paid=3), "amount": 3}
    plan = plan_release([_request(1)], [share], set(), fee_bps=10_000, actor="schedule")

    assert plan.settlements[0].net == 0
    assert plan.settlements[0].payout_status == "not_needed"


@pytest.mark.parametrize(
    ("machine", "current", "new"),
    [
        (ORDER, OrderStatus.ISSUED, OrderStatus.IN_PROGRESS),
        (ORDER, OrderStatus.IN_PROGRESS, OrderStatus.DONE),
        (ORDER, OrderStatus.FAILED, OrderStatus.DONE),  # Toss's record wins
        (ORDER, OrderStatus.REFUND_PENDING, OrderStatus.REFUNDED),
        (CANCEL, "requested", "done"),
        (CANCEL, "failed", "requested"),
        (PAYOUT, PayoutStatus.SCHEDULED, PayoutStatus.REQUESTING),
        (PAYOUT, PayoutStatus.REQUESTING, PayoutStatus.SCHEDULED),
        (PAYOUT, PayoutStatus.IN_PROGRESS, PayoutStatus.COMPLETED),
        (OPERATOR_ACTION, OperatorActionStatus.STARTED, OperatorActionStatus.REFUSED),
    ],
)
def test_allowed_transitions(machine, current, new):
    machine.check(current, new)


@pytest.mark.parametrize(
    ("machine", "current", "new"),
    [
        (ORDER, OrderStatus.DONE, OrderStatus.FAILED),
        (ORDER, OrderStatus.SUPERSEDED, OrderStatus.IN_PROGRESS),
        (CANCEL, "done", "failed"),
        (PAYOUT, PayoutStatus.COMPLETED, PayoutStatus.FAILED),
        (PAYOUT, PayoutStatus.NOT_NEEDED, PayoutStatus.REQUESTING),
        (PAYOUT, PayoutStatus.FAILED, PayoutStatus.REQUESTING),  # only an operator's retry: failed -> scheduled
        (OPERATOR_ACTION, OperatorActionStatus.DONE, OperatorActionStatus.FAILED),  # an outcome is written once
    ],
)
def test_refused_transitions(machine, current, new):
    with pytest.raises(InvalidTransition):
        machine.check(current, new)
