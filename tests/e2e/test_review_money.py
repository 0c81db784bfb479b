"""An outside review, attacking the money rules as a hostile room member, a hostile outsider and a misbehaving Toss.

Each test states an attack and the outcome that is correct. Every attack that worked (a finding, "Was (finding,
fixed)" in its comment) failed before its fix; the others document attacks that were defended. All are regression
tests now: a new finding is added as `xfail(strict=True, reason="finding: ...")` until it is fixed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import eventually
from tests.e2e.test_adversary import cancel, status_of, toss_cancels
from tests.e2e.test_deposit_reversal import SHARE_OF_CHARGE, deposit, pay_by_virtual_account, request_status
from tests.e2e.test_room_gets_paid import open_request, pay, prepare, rows

pytestmark = pytest.mark.e2e

SETTLEMENT = (
    "SELECT id, payout_status, payout_error_code, payout_id FROM payment_settlements WHERE payment_request_id = %s"
)


def ledger_of(sql, request_id: int) -> list[tuple[str, int, str]]:
    found = rows(
        sql,
        "SELECT entry_type, amount, reference FROM ledger_entries WHERE payment_request_id = %s ORDER BY id",
        request_id,
    )
    return [(e["entry_type"], int(e["amount"]), str(e["reference"])) for e in found]


def charge_of(sql, key: str) -> dict[str, Any]:
    return dict(rows(sql, "SELECT * FROM payment_charges WHERE payment_key = %s", key)[0])


def refunds_of(sql, key: str) -> list[dict[str, Any]]:
    return list(rows(sql, "SELECT * FROM payment_cancels WHERE payment_key = %s ORDER BY id", key))


# --- deposit reversal ----------------------------------------------------------------------------------------------


def test_a_released_deposit_reversed_and_deposited_again_goes_to_the_store_not_back_to_the_payer(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a payer with a bouncing bank): the deposit is released to the store, Toss takes it back (the payout is
    # held: DEPOSIT_REVERSED), the payer deposits into the same account again, exactly what the hold waits for
    # (`_hold_payout`: "the payer deposits again, then escrow.ops retry-payout"). Correct: the new deposit is the
    # released share's money again (charge released, no refund queued), so the held payout may be retried, and not
    # before. Was (finding, fixed): the request is `released`, so `_deposited` took the new deposit for a "deposit
    # after close" and refunded it; the operator then retried the payout and the store was paid 15000 the payer got
    # back.
    room = make_room(1)
    request_id = open_request(as_user, room)
    key = pay_by_virtual_account(as_user, toss, room, room.members[0])
    deposit(toss, sql, key)
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    toss.control(f"payments/{key}/deposit-error", {})
    eventually(lambda: charge_of(sql, key)["status"] == "waiting_for_deposit")
    assert rows(sql, SETTLEMENT, request_id)[0]["payout_error_code"] == "DEPOSIT_REVERSED"

    from escrow.errors import Conflict
    from escrow.services.operator import retry_payout

    settlement_id = rows(sql, "SELECT id FROM payment_settlements WHERE payment_request_id = %s", request_id)[0]["id"]
    with pytest.raises(Conflict) as refused:  # the store is not paid money we do not hold
        retry_payout(settlement_id, operator="ops-kim", reason="재시도")
    assert refused.value.code == "RELEASED_DEPOSIT_TAKEN_BACK"

    toss.control(f"payments/{key}/deposit", {})  # the payer deposits again
    eventually(lambda: charge_of(sql, key)["status"] != "waiting_for_deposit")
    rows(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_payments", "reconcile_cancels"])  # whatever the schedule would do with it
    state = (charge_of(sql, key)["status"], [(c["status"], c["request_key"]) for c in refunds_of(sql, key)])
    state += (toss.payment(key)["status"], toss_cancels(toss, key))
    assert state == ("released", [], "DONE", []), state
    assert (
        retry_payout(settlement_id, operator="ops-kim", reason="재입금 확인")["after"]["payout_status"] == "scheduled"
    )
    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    assert not [f for f in report.findings if f.check != "stale_payout"], [f.to_dict() for f in report.findings]


def _card_then_virtual_account(as_user, toss, room, sql, payer) -> tuple[str, str]:
    """A share of 15000 held by two charges: a card charge (15000, 10000 of it refunded) and a virtual account of
    10000 deposited. Returns (card key, account key)."""
    r, body = pay(as_user, toss, room, payer)
    assert r.status_code == 200, r.text
    card = body["paymentKey"]
    r = cancel(as_user, payer, card, 10000)
    assert r.status_code == 200, r.text
    account = pay_by_virtual_account(as_user, toss, room, payer)
    deposit(toss, sql, account)
    return card, account


def test_a_deposit_reversed_while_another_confirm_of_the_share_is_unknown_is_still_recorded(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a payer whose deposit bounces while they pay the rest by card and Toss's answers are lost): the share
    # holds 10000 by a virtual account and owes 5000, which it pays by card; Toss approves the card but neither the
    # answer nor the lookups arrive (share `unknown`). Then Toss takes the account's deposit back. Correct: the
    # reversal is recorded (the charge waits for a deposit again) whatever the share's other confirm is doing, so
    # that the share never counts money that is gone. Wrong: `_deposit_reversed` moves the share unknown ->
    # in_progress, which the machine refuses; the DEPOSIT_CALLBACK fails (409) on every delivery, the charge stays
    # `held`, and once the card confirm is reconciled the request is funded with 10000 KRW that Toss took back:
    # the owner can release it and the store is paid from the platform's money. (Fixed in this branch.)
    room = make_room(1)
    (payer,) = room.members
    request_id = open_request(as_user, room)
    card, account = _card_then_virtual_account(as_user, toss, room, sql, payer)
    r = cancel(as_user, payer, card, 5000)  # the card's last 5000: the share holds the account's 10000, owes 5000
    assert r.status_code == 200, r.text

    toss.faults(lose_answer_rate=1.0, timeout_seconds=3)
    r, body = pay(as_user, toss, room, payer)
    toss.clear_faults()
    assert r.status_code == 502 and r.json()["error"]["code"] == "PAYMENT_OUTCOME_UNKNOWN", r.text
    requests.delete(f"{toss.url}/sandbox/webhooks", timeout=5)  # the card's webhook retries are not due yet

    assert rows(sql, SHARE_OF_CHARGE, account)[0]["status"] == "unknown"
    toss.control(f"payments/{account}/deposit-error", {})
    callback = eventually(lambda: next((w for w in toss.webhooks() if w["eventType"] == "DEPOSIT_CALLBACK"), None))
    eventually(lambda: _delivery(toss, callback["transmissionId"])["state"] != "pending", timeout=10)
    answers = [a["status"] for a in _delivery(toss, callback["transmissionId"])["attempts"]]
    assert answers[-1] == 200, answers  # the reversal is Toss's word: never refused
    assert charge_of(sql, account)["status"] == "waiting_for_deposit"

    # The card's confirm is reconciled: the share must not be funded by the deposit Toss took back.
    rows(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE order_id = %s", body["orderId"])
    schedule(jobs=["reconcile_payments"])
    assert request_status(sql, request_id) == "pending", ledger_of(sql, request_id)
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409, r.text
    # The card's 5000 settled the share (partially held), its account waits again: one way to pay at a time, so a
    # later deposit never comes on top of a share paid by card meanwhile.
    r = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "PAYMENT_IN_PROGRESS", r.text
    deposit(toss, sql, account)
    assert rows(sql, SHARE_OF_CHARGE, account)[0]["status"] == "completed"
    assert request_status(sql, request_id) == "completed"


def _delivery(toss, transmission_id: str) -> dict[str, Any]:
    return next(w for w in toss.webhooks() if w["transmissionId"] == transmission_id)


def test_a_deposit_into_an_account_we_took_for_expired_is_never_silently_ignored(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a misbehaving Toss, or clocks that disagree at the due date): we decide the account expired (Toss said
    # `expired`, or its dueDate passed by our clock) and free the share; then Toss still takes a deposit into it.
    # Correct: Toss's DONE wins: the money is recorded (a charge in the ledger) and either held for the share or
    # refunded. Wrong: the charge row is `cancelled`, `_apply` sees a charge with this paymentKey that is not waiting
    # and answers `already_completed`: 15000 KRW sit at Toss that our books never mention.
    room = make_room(1)
    (payer,) = room.members
    request_id = open_request(as_user, room)
    key = pay_by_virtual_account(as_user, toss, room, payer)
    # Toss's record as a reconciliation reads it with our clock a little ahead of Toss's at the due date (the
    # sandbox's clock is never moved in e2e tests): still waiting, its dueDate passed by our clock.
    from escrow.services.payments import apply_toss_payment
    from escrow.toss.models import Payment

    # Fixed: Toss's own `expired` is what closes an account (a dueDate read without it gets an hour's margin), so an
    # account Toss still takes deposits into is never taken for lost.
    seen = toss.payment(key)
    seen["virtualAccount"] = {**seen["virtualAccount"], "dueDate": "2020-01-01T00:00:00+09:00", "expired": False}
    assert apply_toss_payment(Payment.from_api(seen), actor="reconcile", reason="reconciliation") == (
        "waiting_for_deposit"
    )
    assert charge_of(sql, key)["status"] == "waiting_for_deposit"

    toss.control(f"payments/{key}/deposit", {})  # Toss's own clock: the account still takes a deposit
    eventually(
        lambda: any(w["eventType"] == "DEPOSIT_CALLBACK" and w.get("state") == "delivered" for w in toss.webhooks()),
        timeout=5,
    )
    rows(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_payments"])
    assert toss.payment(key)["status"] == "DONE"
    charges = [e for e in ledger_of(sql, request_id) if e[0] == "charge"]
    assert charges == [("charge", 15000, key)], ledger_of(sql, request_id)


def test_a_confirm_resent_after_a_passing_refusal_still_checks_what_its_order_was_for(as_user, toss, make_room, sql):
    # Attack (a payer): an order for the 10000 owed is refused with PROVIDER_ERROR (503, "pay again shortly"). The
    # payer then has the rest of the share refunded (owed 15000 now) and sends the old confirm again with amount
    # 15000. Correct: 409 ORDER_OUTDATED, as for an order that was never sent (the order was prepared for 10000),
    # and Toss is not asked. Was: the passing-refusal branch of `_begin_confirm` checked only body.amount == owed, and
    # Toss's refusal of the mismatched amount was answered 402 PAYMENT_DECLINED (fixed in this branch).
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    r, first = pay(as_user, toss, room, payer)
    assert r.status_code == 200, r.text
    assert cancel(as_user, payer, first["paymentKey"], 10000).status_code == 200
    toss.faults(failure_code="PROVIDER_ERROR", count=1, paths=["/v1/payments/confirm"])
    r, body = pay(as_user, toss, room, payer)
    assert r.status_code == 503 and body["amount"] == 10000, r.text
    assert cancel(as_user, payer, first["paymentKey"]).status_code == 200  # the remaining 5000: owes 15000 now
    sent = len(toss.calls("/v1/payments/confirm", "POST"))

    r = as_user(payer).post("/api/v1/payment/initiate", {**body, "amount": 15000})
    assert r.status_code == 409 and r.json()["error"]["code"] == "ORDER_OUTDATED", r.text
    assert len(toss.calls("/v1/payments/confirm", "POST")) == sent


@pytest.mark.parametrize("pays_by_card_first", [True, False], ids=["second-deposit", "deposit-after-re-add"])
def test_a_removed_participants_account_reopened_by_a_reversal_takes_no_deposit(
    as_user, toss, make_room, sql, schedule, pays_by_card_first
):
    # Attack (a payer, with the owner's help): pay by virtual account, get removed (the refund waits for the
    # payer's refund account: needs_account), the deposit bounces (the account is open
    # for deposits again), get added back, maybe pay by card, then deposit into the old account again.
    # Was (finding, fixed in this branch): the account stayed open; the deposit met `_deposited` with the share
    # completed (completed -> completed: it computes held + deposit, 30000 of 15000) or pending (pending ->
    # completed), no transition either way: the DEPOSIT_CALLBACK answered 409 INVALID_STATE_TRANSITION on every
    # delivery and the 15000 stayed at Toss in no book of ours.
    # Correct: the reversal of a removed participant's deposit closes the reopened account (as the removal does for
    # a waiting one); the participant is added back once it is closed, and Toss takes no deposit into it.
    room = make_room(2)
    a, _b = room.members
    open_request(as_user, room)
    account = pay_by_virtual_account(as_user, toss, room, a)
    deposit(toss, sql, account)
    r = as_user(room.owner).post(
        "/api/v1/payment/participants/remove", {"chat_room_id": room.chat_room_id, "user_id": a}
    )
    assert r.status_code == 202 and r.json()["refunds"][0]["refund_status"] == "refund_account_needed", r.text
    toss.control(f"payments/{account}/deposit-error", {})
    eventually(lambda: charge_of(sql, account)["status"] == "waiting_for_deposit")
    add = {"chat_room_id": room.chat_room_id, "user_id": a}
    r = as_user(room.owner).post("/api/v1/payment/participants/add", add)
    assert r.status_code == 409 and r.json()["error"]["code"] == "REFUND_IN_PROGRESS", r.text  # closing it first

    rows(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", account)
    schedule(jobs=["reconcile_cancels"])
    assert toss.payment(account)["status"] == "CANCELED"
    assert charge_of(sql, account)["status"] == "cancelled"
    r = as_user(room.owner).post("/api/v1/payment/participants/add", add)
    assert r.status_code == 201, r.text
    if pays_by_card_first:
        r, _ = pay(as_user, toss, room, a)
        assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    with pytest.raises(AssertionError, match="INVALID_REQUEST"):
        toss.control(f"payments/{account}/deposit", {})  # Toss takes no deposit into a cancelled account
    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    assert not [f for f in report.findings if f.check != "refund_abandoned"], [f.to_dict() for f in report.findings]


# --- refunds: promises, minimum, doubles ---------------------------------------------------------------------------


def test_a_promised_refund_is_kept_once_and_for_what_was_asked_when_toss_replays_its_5xx(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a misbehaving Toss): the payer's partial refund is answered 5xx and the lookup fails too, so the payer
    # is told "settled automatically, do not ask again"; Toss then replays that 5xx for the key. Correct: the refund
    # happens, once, for the 3000 asked (a new key, refundableAmount guarding it), and the row is done.
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, payer)
    key = body["paymentKey"]
    toss.faults(server_error_rate=1.0, paths=[f"/v1/payments/{key}"])
    r = cancel(as_user, payer, key, 3000)
    toss.clear_faults()
    assert r.status_code in (200, 202) and "nothing" not in r.text, r.text
    assert r.json()["refund_status"] == "refund_pending", r.text

    again = cancel(as_user, payer, key, 3000)  # the payer asks again anyway: still one refund
    rows(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_cancels"])
    assert again.status_code in (200, 202), again.text
    assert toss_cancels(toss, key) == [3000]
    assert [(c["status"], c["cancel_amount"]) for c in refunds_of(sql, key)] == [("done", 3000)]
    sent = toss.calls(f"/v1/payments/{key}/cancel", "POST")
    assert any(c["replayed"] for c in sent) and len({c["idempotency_key"] for c in sent}) == 2, sent
    view = status_of(as_user, room)
    assert view["payments"][0]["refunded_amount"] == 3000 and view["payments"][0]["held_amount"] == 12000, view


def test_a_refund_minimum_counts_every_charge_of_the_share(as_user, toss, make_room, sql):
    # Attack (a payer): a share held by two charges (card 15000 with 10000 refunded, then 10000 paid again): a refund
    # of 4950 of the first charge's last 5000 would leave 4950 owed (fine), 4990 of it leaves 4990 owed (fine), but
    # the second charge refunded down to leave 50 owed must be refused, whatever charge is refunded.
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    r, first = pay(as_user, toss, room, payer)
    assert cancel(as_user, payer, first["paymentKey"], 10000).status_code == 200
    r, second = pay(as_user, toss, room, payer)
    assert r.status_code == 200 and second["amount"] == 10000, r.text
    r = cancel(as_user, payer, second["paymentKey"], 50)
    assert r.status_code == 422 and r.json()["error"]["code"] == "CANCEL_AMOUNT_BELOW_MINIMUM", r.text
    r = cancel(as_user, payer, first["paymentKey"], 4950)
    assert r.status_code == 200, r.text
    r = cancel(as_user, payer, second["paymentKey"], 10000 - 60)  # would leave 4950 + 9940 = 14890 owed: fine
    assert r.status_code == 200, r.text
    r = cancel(as_user, payer, first["paymentKey"], 40)  # the first charge's last 50 minus 40: 14930 owed, fine
    assert r.status_code == 200, r.text
    r = cancel(as_user, payer, second["paymentKey"])  # all that is left of the second: 14990 owed
    assert r.status_code == 200, r.text
    r = cancel(as_user, payer, first["paymentKey"], 5)  # 14995 owed: 5 KRW short of 15000 is fine (>= 100)
    assert r.status_code == 200, r.text
    held = status_of(as_user, room)["payments"][0]["held_amount"]
    assert held == 5
    assert prepare(as_user, room, payer)["amount"] == 14995


# --- the deadline ----------------------------------------------------------------------------------------------------


def test_a_deposit_after_the_deadline_does_not_fund_the_request(as_user, toss, make_room, sql, schedule):
    # Attack (a late payer): open a virtual account before the deadline (dueDate is 7 days later, past the
    # request's expires_at) and deposit after it. Correct, by the deadline rule (DESIGN, "The deadline": past
    # expires_at nobody pays; a request not funded in time is expired): the request is not funded by it, the expire
    # run expires it and what it holds is refunded. Was (finding, fixed): `_deposited` funded a pending request
    # whatever its deadline, the store was told "everyone paid", and the expire run skipped the completed request.
    # Now `refresh_funding` never funds a request past its deadline.
    room = make_room(2)
    a, b = room.members
    request_id = open_request(as_user, room)
    r, _ = pay(as_user, toss, room, a)
    assert r.status_code == 200, r.text
    account = pay_by_virtual_account(as_user, toss, room, b)
    rows(sql, "UPDATE payment_requests SET expires_at = NOW(3) - INTERVAL 1 SECOND WHERE id = %s", request_id)

    toss.control(f"payments/{account}/deposit", {})
    eventually(lambda: charge_of(sql, account)["status"] != "waiting_for_deposit")
    assert request_status(sql, request_id) == "pending"  # fully held, but not in time
    from escrow.audit import audit

    report = audit(chat_room_id=room.chat_room_id, reconciliation_period_seconds=0)
    assert not report.findings, [f.to_dict() for f in report.findings]  # waiting to be expired is no finding
    schedule(jobs=["expire"])
    assert request_status(sql, request_id) == "expired"
    assert "EscrowFunded" not in [
        e["event_type"] for e in rows(sql, "SELECT event_type FROM outbox WHERE aggregate_id = %s", str(request_id))
    ]


# --- two requests at once --------------------------------------------------------------------------------------------


def test_eight_resends_at_once_of_a_confirm_refused_for_a_passing_reason_charge_once(as_user, toss, make_room, sql):
    # Attack (a payer's app hammering "pay again shortly"): the confirm answered 503 PROVIDER_ERROR is sent again
    # eight times at once. Correct: one new attempt reaches Toss, one approval, one charge; the other answers are the
    # same completion or 409 PAYMENT_IN_PROGRESS, never a 500 or a second key approved.
    room = make_room(1)
    (payer,) = room.members
    request_id = open_request(as_user, room)
    toss.faults(failure_code="PROVIDER_ERROR", count=1, paths=["/v1/payments/confirm"])
    r, body = pay(as_user, toss, room, payer)
    assert r.status_code == 503, r.text
    toss.faults(latency_ms=300)
    client = as_user(payer)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/v1/payment/initiate", body), range(8)))
    toss.clear_faults()
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert all(a.json()["error"]["code"] == "PAYMENT_IN_PROGRESS" for a in answers if a.status_code == 409)
    approved = [
        c
        for c in toss.calls("/v1/payments/confirm", "POST")
        if c["body"]["orderId"] == body["orderId"] and c["status"] == 200 and not c["replayed"]
    ]
    assert len(approved) == 1, approved
    assert [e[:2] for e in ledger_of(sql, request_id)] == [("charge", 15000)]
    assert client.post("/api/v1/payment/initiate", body).json()["payment_status"] == "completed"


def test_a_release_racing_a_deposit_reversal_never_pays_out_money_toss_took_back(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a payer whose deposit bounces just as the owner releases): the release and the DEPOSIT_CALLBACK of the
    # reversal arrive together. Correct, whichever wins: either the release is refused (the request is no longer
    # funded) or it is released and the payout is held (DEPOSIT_REVERSED); never a payout of the reversed money.
    for _ in range(3):
        room = make_room(1)
        request_id = open_request(as_user, room)
        key = pay_by_virtual_account(as_user, toss, room, room.members[0])
        deposit(toss, sql, key)
        with ThreadPoolExecutor(2) as pool:
            released = pool.submit(
                as_user(room.owner).post, "/api/v1/payment/release", {"chat_room_id": room.chat_room_id}
            )
            pool.submit(toss.control, f"payments/{key}/deposit-error", {})
            r = released.result()
        eventually(lambda k=key: charge_of(sql, k)["status"] == "waiting_for_deposit")
        if r.status_code == 200:
            settlement = rows(sql, SETTLEMENT, request_id)[0]
            assert (settlement["payout_status"], settlement["payout_error_code"]) == ("failed", "DEPOSIT_REVERSED")
        else:
            assert r.status_code == 409 and r.json()["error"]["code"] == "REQUEST_NOT_FUNDED", r.text
            assert request_status(sql, request_id) == "pending"


def test_a_payer_cannot_pay_again_while_a_refund_we_promised_is_still_to_be_sent(
    as_user, toss, make_room, sql, schedule
):
    # Attack (a payer, with Toss's 5xx): refund 100 (owes 100), then ask for 30 more: Toss answers 5xx and the lookup
    # fails, so the payer is told "settled automatically"; the retry is refused again for a passing reason, and the
    # row waits for its back-off (failed, next_attempt_at). The payer now pays the 100 owed. Correct: paying is
    # refused (409 REFUND_IN_PROGRESS) while a refund of the share is still ours to send, as it is while one is in
    # flight. Was: the payment was taken, then the retry refunded 30 and the share owed 30 KRW for good (below
    # Toss's minimum: the room could never be funded again). Fixed in this branch (`cancels_repo._STILL_TO_HAPPEN`).
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, payer)
    key = body["paymentKey"]
    assert cancel(as_user, payer, key, 100).status_code == 200
    promised = _promise_a_refund_that_waits_for_its_retry(as_user, toss, sql, schedule, payer, key, 30)

    r = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    if r.status_code == 200:  # the payer pays the 100 owed
        r, _ = pay(as_user, toss, room, payer)
        assert r.status_code == 200, r.text
    rows(sql, "UPDATE payment_cancels SET next_attempt_at = NOW(3) - INTERVAL 1 SECOND WHERE id = %s", promised["id"])
    schedule(jobs=["reconcile_cancels"])
    owed = status_of(as_user, room)["payments"][0]["owed_amount"]
    assert not 0 < owed < 100, owed
    assert r.status_code == 409 and r.json()["error"]["code"] == "REFUND_IN_PROGRESS", r.text


# --- answers that must be true -----------------------------------------------------------------------------------


def test_the_confirm_of_an_expired_account_sent_again_does_not_say_refunded(as_user, toss, make_room, sql, schedule):
    # Attack (the payer's app replays its confirm after the account's due date): correct is an answer that says
    # what happened (the account expired unpaid: pay again), not "this payment was refunded" (409 PAYMENT_REFUNDED,
    # what `_replay` answered before the fix in this branch).
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    order = prepare(as_user, room, payer)
    toss.control("config", {"virtual_account_valid_seconds": 1.0})  # the sandbox's clock is never moved
    try:
        key = toss.widget(order["orderId"], order["amount"], method="가상계좌")
        body = {
            "chat_room_id": room.chat_room_id,
            "amount": order["amount"],
            "paymentKey": key,
            "orderId": order["orderId"],
        }
        r = as_user(payer).post("/api/v1/payment/initiate", body)
    finally:
        toss.control("config", {"virtual_account_valid_seconds": 7 * 86400.0})
    assert r.status_code == 200 and r.json()["payment_status"] == "in_progress", r.text
    assert eventually(lambda: toss.payment(key)["virtualAccount"]["expired"] is True, timeout=5)
    rows(sql, "UPDATE payment_orders SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_payments"])
    assert charge_of(sql, key)["status"] == "cancelled"

    r = as_user(payer).post("/api/v1/payment/initiate", body)
    assert r.status_code == 402 and r.json()["error"]["toss_code"] == "VIRTUAL_ACCOUNT_EXPIRED", r.text
    assert "refunded" not in r.json()["error"]["message"], r.text


def _promise_a_refund_that_waits_for_its_retry(as_user, toss, sql, schedule, payer: str, key: str, amount: int):
    """The payer's refund of `amount` answered "settled automatically" (a 5xx, the lookup failing), then refused
    again for a passing reason: its row waits for the schedule's retry (failed, next_attempt_at)."""
    toss.faults(server_error_rate=1.0, paths=[f"/v1/payments/{key}"])
    r = cancel(as_user, payer, key, amount)
    toss.clear_faults()
    assert r.status_code in (200, 202) and r.json()["refund_status"] == "refund_pending", r.text
    toss.faults(failure_code="PROVIDER_ERROR", paths=[f"/v1/payments/{key}/cancel"])
    rows(sql, "UPDATE payment_cancels SET updated_at = NOW(3) - INTERVAL 10 MINUTE WHERE payment_key = %s", key)
    schedule(jobs=["reconcile_cancels"])
    toss.clear_faults()
    promised = next(c for c in refunds_of(sql, key) if c["requested_amount"] == amount)
    assert promised["status"] == "failed" and promised["next_attempt_at"] is not None, promised
    return promised


def test_a_share_with_a_promised_refund_is_not_released_before_the_refund(as_user, toss, make_room, sql, schedule):
    # Attack (a payer, with Toss's 5xx): ask for a partial refund that is promised ("settled automatically") and
    # then refused again for a passing reason, so it waits for its retry; the share still holds 15000, so the request
    # stays funded and the owner releases it. Correct: the release waits (409 REFUND_IN_PROGRESS, as for a refund in
    # flight), or the promised refund is given up with a true answer; never both. Wrong: `release` only looks at
    # refunds in flight (requested, unknown), releases the share, and the schedule's retry refunds 3000 of the
    # released charge at Toss (the alarm ReleasedChargesRefunded), money the store was paid. Fixed in this branch.
    room = make_room(1)
    (payer,) = room.members
    request_id = open_request(as_user, room)
    _, body = pay(as_user, toss, room, payer)
    key = body["paymentKey"]
    promised = _promise_a_refund_that_waits_for_its_retry(as_user, toss, sql, schedule, payer, key, 3000)
    assert request_status(sql, request_id) == "completed"

    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    rows(sql, "UPDATE payment_cancels SET next_attempt_at = NOW(3) - INTERVAL 1 SECOND WHERE id = %s", promised["id"])
    schedule(jobs=["reconcile_cancels"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "REFUND_IN_PROGRESS", r.text
    assert toss_cancels(toss, key) == [3000]  # the promise is kept
    assert request_status(sql, request_id) == "pending"  # and the request waits for the 3000 to be paid again


def test_a_promised_refund_asked_again_keeps_its_promise_in_the_answer(as_user, toss, make_room, sql, schedule):
    # Attack (a payer who does not believe "settled automatically" and asks again while Toss is in trouble): the
    # identical cancel, sent again, meets Toss's replayed 5xx and then a passing refusal of the new key. Correct:
    # the answer keeps the promise (202 refund_pending: the schedule asks again), because the row is retried
    # automatically; "nothing was refunded, try again shortly" invites a second, different cancel on top of a
    # refund that will happen anyway (what `cancel_share` answered before the fix in this branch).
    room = make_room(1)
    (payer,) = room.members
    open_request(as_user, room)
    _, body = pay(as_user, toss, room, payer)
    key = body["paymentKey"]
    toss.faults(server_error_rate=1.0, paths=[f"/v1/payments/{key}"])
    r = cancel(as_user, payer, key, 3000)
    toss.clear_faults()
    assert r.status_code in (200, 202) and r.json()["refund_status"] == "refund_pending", r.text
    toss.faults(failure_code="PROVIDER_ERROR", paths=[f"/v1/payments/{key}/cancel"])
    again = cancel(as_user, payer, key, 3000)
    toss.clear_faults()
    row = next(c for c in refunds_of(sql, key) if c["requested_amount"] == 3000)
    assert row["status"] == "failed" and row["next_attempt_at"] is not None, row  # the schedule will refund it
    assert again.status_code == 202 and again.json()["refund_status"] == "refund_pending", again.text


def test_a_confirm_answer_that_predates_the_deposit_is_no_reversal(as_user, toss, make_room, sql):
    # Attack (a payer whose bank deposits the moment the account is issued, and a slow confirm): Toss answers our
    # confirm WAITING_FOR_DEPOSIT; before we apply that answer, the deposit is made and its webhook (a fresh lookup:
    # DONE) is applied first. Then the confirm's own, older answer is applied. Correct: an answer older than what we
    # hold is no deposit error (a reversal is only ever learnt from Toss's record now, which a webhook or the
    # reconciliation fetches): the share stays completed. Was (fixed in this branch): `_apply` took the stale
    # WAITING_FOR_DEPOSIT for a reversal: a ledger `reversal`, the share back to in_progress and the request unfunded,
    # with the money at Toss and no webhook left to correct it.
    from escrow.services.payments import apply_toss_payment
    from escrow.toss.models import Payment

    room = make_room(1)
    (payer,) = room.members
    request_id = open_request(as_user, room)
    key = pay_by_virtual_account(as_user, toss, room, payer)
    answer = toss.payment(key)  # what the confirm was answered: WAITING_FOR_DEPOSIT
    assert answer["status"] == "WAITING_FOR_DEPOSIT"
    deposit(toss, sql, key)
    assert request_status(sql, request_id) == "completed"

    apply_toss_payment(Payment.from_api(answer), actor=payer, reason="confirm")  # the confirm's answer, late
    assert charge_of(sql, key)["status"] == "held"
    assert rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "completed"
    assert [e[0] for e in ledger_of(sql, request_id)] == ["charge"]
    assert request_status(sql, request_id) == "completed"
