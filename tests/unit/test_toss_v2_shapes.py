"""The shapes a payouts v2 answer may take, read by the Toss client without a network (an in-memory session that
answers as Toss's v2 endpoints do, encrypted with the security key): errors in the v2 envelope or in the v1 shape,
entityBody as an object, a list or {"items": [...]}, and answers we cannot read (issue 8 item 8)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from escrow.toss import TossApiError, jwe
from escrow.toss.client import TossClient

KEY = "5f2b1c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"


@dataclass
class Answer:
    status_code: int
    text: str


class Session:
    """Answers every request with the next prepared (status, body); a dict body is encrypted as Toss does."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kw: Any) -> Answer:
        self.sent.append({"method": method, "url": url, **kw})
        status, body = self.answers.pop(0)
        text = body if isinstance(body, str) else jwe.encrypt(json.dumps(body, ensure_ascii=False), KEY)
        return Answer(status, text)


def client(*answers: tuple[int, Any]) -> TossClient:
    return TossClient("https://toss.invalid", "test_sk_x", security_key=KEY, session=Session(*answers))  # type: ignore[arg-type]


def envelope(entity_type: str | None, body: Any, error: dict[str, str] | None = None) -> dict[str, Any]:
    found = {"version": "2022-11-16", "traceId": "t", "entityType": entity_type, "entityBody": body}
    if error is not None:
        found["error"] = error
    return found


PAYOUT = {"id": "FPA_1", "refPayoutId": "escrow-req-1", "status": "IN_PROGRESS", "amount": {"value": 100}}


@pytest.mark.parametrize(
    "entity",
    [{"items": [PAYOUT]}, [PAYOUT], PAYOUT],
    ids=["items", "a bare list", "one object"],
)
def test_a_payout_answer_is_read_whatever_its_entity_body(entity):
    items = client((200, envelope("payout", entity))).request_payouts([{"refPayoutId": "x"}], idempotency_key="k")
    assert items == [PAYOUT]


def test_a_v2_error_in_the_v1_shape_keeps_its_code():
    toss = client((403, {"code": "FORBIDDEN_SELLER_PAYOUT", "message": "지급대행이 불가능한 셀러입니다."}))
    with pytest.raises(TossApiError) as raised:
        toss.request_payouts([{"refPayoutId": "x"}], idempotency_key="k")
    assert (raised.value.status, raised.value.code, raised.value.answered) == (403, "FORBIDDEN_SELLER_PAYOUT", True)
    assert not raised.value.retryable


def test_a_v2_error_in_the_envelope_keeps_its_code():
    error = {"code": "NOT_ENOUGH_AMOUNT", "message": "지급가능한 금액을 초과했습니다."}
    with pytest.raises(TossApiError) as raised:
        client((400, envelope(None, None, error))).request_payouts([{}], idempotency_key="k")
    assert (raised.value.code, raised.value.answered) == ("NOT_ENOUGH_AMOUNT", True)


def test_an_answer_we_cannot_read_is_no_answer():
    """A proxy's page, or a body that does not decrypt: nothing bound the key that we know of (it is reused)."""
    with pytest.raises(TossApiError) as raised:
        client((502, "<html>bad gateway</html>")).request_payouts([{}], idempotency_key="k")
    assert (raised.value.code, raised.value.answered) == ("UNREADABLE_RESPONSE", False)
    assert raised.value.outcome_unknown


def test_an_error_status_without_a_code_is_not_unknown_error_retried_forever():
    with pytest.raises(TossApiError) as raised:
        client((400, {"message": "no code"})).request_payouts([{}], idempotency_key="k")
    assert raised.value.code == "UNREADABLE_RESPONSE" and not raised.value.retryable


@pytest.mark.parametrize(
    "balance",
    [
        {"availableAmount": {"currency": "KRW", "value": 5000}, "pendingAmount": {"currency": "KRW", "value": 7}},
        {"availableAmount": 5000.0, "pendingAmount": 7},
    ],
)
def test_balances_are_read_as_amounts(balance):
    assert client((200, envelope("balance", balance))).get_balances() == {"available": 5000, "pending": 7}


def test_a_balance_without_amounts_is_not_read_as_zero():
    with pytest.raises(TossApiError) as raised:
        client((200, envelope("balance", {"availableAmount": None}))).get_balances()
    assert raised.value.code == "UNREADABLE_RESPONSE"


def test_listings_are_lists_whatever_their_shape():
    assert client((200, envelope("payout", {"items": [PAYOUT]}))).list_payouts() == [PAYOUT]
    assert client((200, envelope("payout", None))).list_payouts() == []
