"""The state machines. A transition that is not in these tables raises; nothing else decides them."""

from __future__ import annotations

from escrow.errors import Conflict

PAYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"in_progress"}),
    # Toss's record wins: an attempt we had marked failed that Toss reports approved is completed.
    "failed": frozenset({"in_progress", "completed"}),
    "in_progress": frozenset({"completed", "failed", "unknown"}),
    "unknown": frozenset({"completed", "failed", "unknown"}),
    "completed": frozenset({"released", "refunded", "partially_refunded"}),
    "partially_refunded": frozenset({"released", "refunded", "partially_refunded"}),
    "released": frozenset(),
    "refunded": frozenset(),
}

REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"completed", "cancelled", "expired"}),
    "completed": frozenset({"released", "pending", "cancelled"}),
    "released": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}

HELD_PAYMENT_STATUSES = ("completed", "partially_refunded")
OPEN_REQUEST_STATUSES = ("pending", "completed")


class InvalidTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


def check_payment(current: str, new: str) -> None:
    if new not in PAYMENT_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"a payment cannot go from {current} to {new}")


def check_request(current: str, new: str) -> None:
    if new not in REQUEST_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"a payment request cannot go from {current} to {new}")


# A settlement's payout (payment_settlements.payout_status) as people may move it. The schedule's own moves (claim,
# answer, refusal, Toss's webhook) are guarded by their SQL in services/release.py; the moves here are an operator's
# (escrow.ops retry-payout through services/operator.py): only a failed payout goes back to the schedule.
OPERATOR_PAYOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    "failed": frozenset({"scheduled"}),
}


def check_operator_payout(current: str, new: str) -> None:
    if new not in OPERATOR_PAYOUT_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"an operator cannot move a payout from {current} to {new}")
