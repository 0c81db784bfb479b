"""The funding rule (services.funding.funding_move): a request is funded exactly while it is open and every current
participant holds their share in full. `refresh_funding` applies it under the request's lock and announces each
change once (tests/integration, tests/e2e)."""

from __future__ import annotations

import pytest

from escrow.services.funding import funding_move
from escrow.states import RequestStatus


@pytest.mark.parametrize(
    ("status", "participants", "fully_held", "move"),
    [
        (RequestStatus.PENDING, 3, 3, RequestStatus.COMPLETED),  # the last share paid: funded, the store is told
        (RequestStatus.PENDING, 3, 2, None),
        (RequestStatus.PENDING, 0, 0, None),  # nobody left to pay is not "everyone paid"
        (RequestStatus.COMPLETED, 3, 3, None),
        (RequestStatus.COMPLETED, 3, 2, RequestStatus.PENDING),  # any refund, partial or full, un-funds it
        (RequestStatus.COMPLETED, 0, 0, RequestStatus.PENDING),
        (RequestStatus.PENDING, 2, 2, RequestStatus.COMPLETED),  # a participant who had not paid was removed
        (RequestStatus.COMPLETED, 4, 3, RequestStatus.PENDING),  # a member was added: they owe their share
    ],
)
def test_funding_follows_every_current_participant_holding_their_share(status, participants, fully_held, move):
    assert funding_move(status, participants=participants, fully_held=fully_held) == move


@pytest.mark.parametrize("closed", [RequestStatus.RELEASED, RequestStatus.CANCELLED, RequestStatus.EXPIRED])
def test_a_closed_request_never_moves(closed):
    assert funding_move(closed, participants=2, fully_held=2) is None
    assert funding_move(closed, participants=2, fully_held=0) is None
