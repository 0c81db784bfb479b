"""Refunds of deposited virtual-account (가상계좌) payments, end to end: HTTP into the real handlers, MariaDB and the
Toss sandbox, which (as Toss) refuses such a refund without `refundReceiveAccount`.

The payer's own cancel carries their bank account; a refund the service owes them (the owner cancelled the request,
it expired, they were removed) waits in `needs_account`, shown on the status, until they give it. The account is
sealed at rest, masked in answers and never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from escrow.services.refunds import cancel_idempotency_key
from tests.e2e.conftest import eventually
from tests.e2e.test_money_out_and_back import money_trace, register_store
from tests.e2e.test_room_gets_paid import open_request, pay, prepare, rows

pytestmark = pytest.mark.e2e

NUMBER = "110123456789"
OTHERS = "3333012345678"  # an account the sandbox knows the holder of (registered by the test that uses it)
ACCOUNT = {"bank": "신한", "accountNumber": "110-123-456789", "holderName": "김환불"}
SENT = {"bank": "88", "accountNumber": NUMBER, "holderName": "김환불"}  # what Toss gets: its code, digits only
TOLD = "SELECT payload FROM outbox WHERE event_type = 'RefundAccountNeeded' AND aggregate_id = %s"
CHARGE = "SELECT status FROM payment_charges WHERE payment_key = %s"
SHARE_OF_CHARGE = (
    "SELECT p.status FROM payments p JOIN payment_charges c ON c.payment_id = p.id WHERE c.payment_key = %s"
)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__!r}")


@pytest.fixture()
def logs() -> Iterator[_Kept]:
    """Everything the service logs during the test (its logger at DEBUG), to look for personal data in it."""
    log = logging.getLogger("escrow")
    kept, level = _Kept(), log.level
    log.addHandler(kept)
    log.setLevel(logging.DEBUG)
    yield kept
    log.removeHandler(kept)
    log.setLevel(level)


def assert_never_shown(text: str) -> None:
    for secret in (NUMBER, "110-123-456789", "김환불"):
        assert secret not in text


def pay_by_virtual_account(as_user, toss, sql, room, payer) -> str:
    """The payer is issued a virtual account, deposits into it, and Toss's callback completes their share."""
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"], method="가상계좌")
    r = as_user(payer).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room.chat_room_id, "amount": order["amount"], "paymentKey": key, "orderId": order["orderId"]},
    )
    assert r.status_code == 200 and r.json()["payment_status"] == "in_progress", r.text
    toss.control(f"payments/{key}/deposit", {})
    eventually(lambda: rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "completed")
    eventually(
        lambda: rows(sql, "SELECT status FROM payment_charges WHERE payment_key = %s", key)[0]["status"] == "held"
    )
    return key


def cancel(as_user, user, key, **fields: Any):
    return as_user(user).post("/api/v1/payment/cancel", {"paymentKey": key, "cancelReason": "환불 요청", **fields})


def toss_cancels(toss, key) -> list[dict[str, Any]]:
    return [c for c in toss.calls(f"/v1/payments/{key}/cancel") if c["method"] == "POST"]


def cancel_rows(sql, key) -> list[dict[str, Any]]:
    return list(rows(sql, "SELECT id, status, attempt, toss_code FROM payment_cancels WHERE payment_key = %s", key))


def stored_accounts(sql, key) -> list[dict[str, Any]]:
    return list(rows(sql, "SELECT * FROM refund_accounts WHERE payment_key = %s", key))


def status_of(as_user, room, user) -> dict[str, Any]:
    r = as_user(user).get(f"/api/v1/payment/status/{room.chat_room_id}")
    assert r.status_code == 200, r.text
    return r.json()


def assert_audit_clean(room) -> None:
    """The ledger audit (against Toss, rules of intent) finds nothing: a refund waiting for an account is open."""
    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    # A released room's payout waits for the payouts job, which these tests do not run.
    findings = [f for f in report.findings if f.check != "stale_payout"]
    assert not findings, report.table()


def share_in(view, payer, part="payments") -> dict[str, Any]:
    return next(p for p in view[part] if p["payer_id"] == payer)


def test_the_payers_cancel_needs_their_account_and_then_refunds_it(as_user, toss, make_room, sql, logs):
    room = make_room(1)
    request_id = open_request(as_user, room)
    payer = room.members[0]
    key = pay_by_virtual_account(as_user, toss, sql, room, payer)

    r = cancel(as_user, payer, key)
    assert r.status_code == 422 and r.json()["error"]["code"] == "REFUND_ACCOUNT_REQUIRED", r.text
    assert "refundReceiveAccount" in r.json()["error"]["message"]
    assert toss_cancels(toss, key) == [] and cancel_rows(sql, key) == []  # nothing asked, nothing written
    # The owner cannot have it refunded without the payer's account either, nor give one.
    r = cancel(as_user, room.owner, key)
    assert r.status_code == 422 and r.json()["error"]["code"] == "REFUND_ACCOUNT_REQUIRED"
    r = cancel(as_user, room.owner, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 403 and r.json()["error"]["code"] == "REFUND_ACCOUNT_PAYER_ONLY"
    assert stored_accounts(sql, key) == []

    r = cancel(as_user, payer, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 200, r.text
    assert r.json()["refund_status"] == "refunded" and r.json()["refunded_amount"] == 15000
    assert r.json()["refund_account"]["account_number_masked"] == "********6789"
    assert r.json()["refund_account"]["bank"]["toss_code"] == "88"
    assert_never_shown(r.text)
    payment = toss.payment(key)
    assert payment["status"] == "CANCELED" and payment["cancels"][-1]["cancelAmount"] == 15000
    [call] = toss_cancels(toss, key)
    assert call["body"]["refundReceiveAccount"] == SENT and call["status"] == 200
    assert stored_accounts(sql, key) == []  # kept only until the refund that needed it is done
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}
    assert rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "refunded"
    assert_never_shown("\n".join(logs.lines))
    assert_never_shown(json.dumps(status_of(as_user, room, payer), ensure_ascii=False))


def test_a_bad_account_is_refused_before_anything_is_stored(as_user, toss, make_room, sql, logs):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    key = pay_by_virtual_account(as_user, toss, sql, room, payer)

    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "bank": "없는은행"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_BANK", r.text
    for bad in ("110-abc-456789", "12345", "1" * 21, "-110123456789", "١٢٣٤٥٦٧٨"):
        r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "accountNumber": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR", (bad, r.text)
        assert bad not in r.text
    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "holderName": "  "})
    assert r.status_code == 422
    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "holderName": "가" * 61})
    assert r.status_code == 422
    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "branch": "x"})
    assert r.status_code == 422
    # A whole-request cancel takes none: each payer gives their own.
    r = as_user(room.owner).post(
        "/api/v1/payment/cancel",
        {"chat_room_id": room.chat_room_id, "cancelReason": "취소", "refundReceiveAccount": ACCOUNT},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "REFUND_ACCOUNT_NOT_NEEDED"
    assert stored_accounts(sql, key) == [] and cancel_rows(sql, key) == [] and toss_cancels(toss, key) == []
    assert toss.payment(key)["status"] == "DONE"
    assert_never_shown("\n".join(logs.lines))


def test_a_card_payment_takes_no_refund_account(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    r, body = pay(as_user, toss, room, payer)
    assert r.status_code == 200, r.text
    key = body["paymentKey"]
    r = cancel(as_user, payer, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 422 and r.json()["error"]["code"] == "REFUND_ACCOUNT_NOT_NEEDED", r.text
    assert stored_accounts(sql, key) == [] and cancel_rows(sql, key) == [] and toss_cancels(toss, key) == []
    assert cancel(as_user, payer, key).status_code == 200  # without one, refunded to the card


def test_the_owner_cancels_the_room_and_the_virtual_account_refund_waits_for_the_payer(
    as_user, toss, make_room, sql, logs, schedule
):
    room = make_room(2)
    request_id = open_request(as_user, room)
    va_payer, card_payer = room.members
    key = pay_by_virtual_account(as_user, toss, sql, room, va_payer)
    answer, body = pay(as_user, toss, room, card_payer)
    assert answer.status_code == 200

    r = as_user(room.owner).post("/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "취소"})
    assert r.status_code == 202, r.text
    result = r.json()
    assert result["refund_status"] == "refund_pending" and result["refund_account_needed"] is True
    by_key = {x["paymentKey"]: x for x in result["refunds"]}
    assert by_key[body["paymentKey"]]["refund_status"] == "refunded"
    assert by_key[key]["refund_status"] == "refund_account_needed" and by_key[key]["refund_account_needed"] is True
    assert toss_cancels(toss, key) == []  # never sent without an account
    [row] = cancel_rows(sql, key)
    assert row["status"] == "needs_account"
    [told] = rows(sql, TOLD, str(request_id))
    told = json.loads(told["payload"])
    assert (told["payer_id"], told["paymentKey"], told["refund_amount"]) == (va_payer, key, 15000)
    assert told["chat_room_id"] == room.chat_room_id and told["account_refused"] is False

    # The status says so, to everyone; the paymentKey to the payer only.
    mine = share_in(status_of(as_user, room, va_payer), va_payer)
    assert mine["refund_account_needed"] is True and mine["refund_payment_keys"] == [key]
    theirs = share_in(status_of(as_user, room, card_payer), va_payer)
    assert theirs["refund_account_needed"] is True and "refund_payment_keys" not in theirs
    assert share_in(status_of(as_user, room, va_payer), card_payer)["refund_account_needed"] is False
    # Asked again: the same answer; the schedule leaves the waiting refund alone (never failed, never sent).
    again = as_user(room.owner).post(
        "/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "취소"}
    )
    assert again.status_code == 202 and again.json()["refund_account_needed"] is True
    schedule(jobs=["reconcile_cancels"])
    assert cancel_rows(sql, key)[0]["status"] == "needs_account" and toss_cancels(toss, key) == []
    assert_audit_clean(room)

    r = cancel(as_user, va_payer, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 200, r.text
    assert r.json()["refund_status"] == "refunded"
    assert_never_shown(r.text)
    [call] = toss_cancels(toss, key)
    assert call["body"]["refundReceiveAccount"] == SENT
    assert call["idempotency_key"] == cancel_idempotency_key(row["id"], 2)  # a new attempt, a new key
    assert toss.payment(key)["status"] == "CANCELED"
    assert cancel_rows(sql, key)[0]["status"] == "done" and stored_accounts(sql, key) == []
    assert money_trace(sql, request_id) == {"charge": 30000, "refund": 30000}
    assert share_in(status_of(as_user, room, va_payer), va_payer)["refund_account_needed"] is False
    assert_audit_clean(room)
    assert_never_shown("\n".join(logs.lines))


def test_an_expired_request_refunds_the_deposit_once_the_payer_gives_an_account_toss_accepts(
    as_user, toss, make_room, sql, schedule, logs
):
    room = make_room(2)
    expires = datetime.now(UTC) + timedelta(seconds=3)
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": 15000,
            "expires_at": expires.isoformat(),
        },
    )
    assert r.status_code == 201, r.text
    request_id = r.json()["payment_request_id"]
    payer = room.members[0]
    key = pay_by_virtual_account(as_user, toss, sql, room, payer)
    eventually(lambda: datetime.now(UTC) > expires + timedelta(milliseconds=200), timeout=10)
    report = schedule(jobs=["expire"])
    assert report["expire"]["expired"] >= 1
    assert rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)[0]["status"] == "expired"
    [row] = cancel_rows(sql, key)
    assert row["status"] == "needs_account"
    assert share_in(status_of(as_user, room, payer), payer)["refund_account_needed"] is True

    # Toss refuses the account (the number belongs to someone else): forgotten, nothing refunded, still waiting.
    toss.control("bank-accounts", {"bank": "88", "accountNumber": OTHERS, "holderName": "다른사람"})
    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "accountNumber": OTHERS})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "REFUND_ACCOUNT_REFUSED" and error["toss_code"] == "INVALID_REFUND_ACCOUNT_INFO"
    assert_never_shown(r.text)
    assert stored_accounts(sql, key) == [] and toss.payment(key)["status"] == "DONE"
    assert cancel_rows(sql, key)[0]["status"] == "needs_account"
    told = [json.loads(r["payload"]) for r in rows(sql, TOLD, str(request_id))]
    assert [t["account_refused"] for t in told] == [False, True]  # told when it waited, and again after the refusal
    assert money_trace(sql, request_id) == {"charge": 15000}
    assert share_in(status_of(as_user, room, payer), payer)["refund_account_needed"] is True
    assert_audit_clean(room)

    r = cancel(as_user, payer, key, refundReceiveAccount={**ACCOUNT, "accountNumber": OTHERS, "holderName": "다른사람"})
    assert r.status_code == 200 and r.json()["refund_status"] == "refunded", r.text
    keys = [c["idempotency_key"] for c in toss_cancels(toss, key)]
    assert keys == [cancel_idempotency_key(row["id"], 2), cancel_idempotency_key(row["id"], 3)]  # each its own key
    assert toss.payment(key)["status"] == "CANCELED"
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}
    assert share_in(status_of(as_user, room, payer), payer)["refund_account_needed"] is False
    text = "\n".join(logs.lines)
    assert_never_shown(text)
    assert "다른사람" not in text and OTHERS not in text


def test_a_removed_participants_deposit_waits_for_their_account_and_the_room_is_released_meanwhile(
    as_user, toss, make_room, sql
):
    room = make_room(2)
    register_store(as_user, room, approve_with=toss)
    request_id = open_request(as_user, room)
    leaving, staying = room.members
    key = pay_by_virtual_account(as_user, toss, sql, room, leaving)
    r = as_user(room.owner).post(
        "/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": leaving}
    )
    assert r.status_code in (200, 202), r.text
    assert r.json()["refund_account_needed"] is True and r.json()["refund_status"] == "refund_pending"
    removed = share_in(status_of(as_user, room, leaving), leaving, "removed_participants")
    assert removed["refund_account_needed"] is True and removed["refund_payment_keys"] == [key]
    assert removed["held_amount"] == 15000

    # The others pay and the room is released: the removed participant's deposit is not the store's.
    answer, _ = pay(as_user, toss, room, staying)
    assert answer.status_code == 200
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert [p["payer_id"] for p in r.json()["released_payments"]] == [staying]
    assert rows(sql, CHARGE, key)[0]["status"] == "held"
    assert_audit_clean(room)

    r = cancel(as_user, leaving, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 200 and r.json()["refund_status"] == "refunded", r.text
    assert toss.payment(key)["status"] == "CANCELED"
    assert money_trace(sql, request_id) == {"charge": 30000, "release": 15000, "refund": 15000}
    removed = share_in(status_of(as_user, room, leaving), leaving, "removed_participants")
    assert removed["refund_account_needed"] is False and removed["held_amount"] == 0
    assert_audit_clean(room)


def test_the_account_given_twice_at_once_refunds_once(as_user, toss, make_room, sql):
    from concurrent.futures import ThreadPoolExecutor

    room = make_room(1)
    request_id = open_request(as_user, room)
    payer = room.members[0]
    key = pay_by_virtual_account(as_user, toss, sql, room, payer)
    r = as_user(room.owner).post("/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "취소"})
    assert r.status_code == 202 and r.json()["refund_account_needed"] is True, r.text

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: cancel(as_user, payer, key, refundReceiveAccount=ACCOUNT), range(2)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409).json()["error"]["code"]
    assert refused in ("REFUND_IN_PROGRESS", "ALREADY_REFUNDED")
    assert [c["status"] for c in toss_cancels(toss, key)] == [200]  # one refund asked, one made
    assert money_trace(sql, request_id) == {"charge": 15000, "refund": 15000}
    assert stored_accounts(sql, key) == []


def test_an_account_left_by_a_refund_toss_did_not_make_goes_when_the_money_is_released(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    key = pay_by_virtual_account(as_user, toss, sql, room, payer)
    toss.faults(failure_code="PROVIDER_ERROR", count=1, paths=[f"/v1/payments/{key}/cancel"])
    r = cancel(as_user, payer, key, refundReceiveAccount=ACCOUNT)
    assert r.status_code == 503 and r.json()["error"]["toss_code"] == "PROVIDER_ERROR", r.text
    assert len(stored_accounts(sql, key)) == 1  # the payer may ask again without giving it again
    assert toss.payment(key)["status"] == "DONE"
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert stored_accounts(sql, key) == []  # released: nothing of theirs is refunded any more
