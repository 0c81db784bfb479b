"""Money out as Toss really pays it (issue 8 items 1-3, 5-7; issue 7 finding 10), through the real handlers and the
Toss sandbox: a released payout waits for Toss's payout balance, refusals are retried with a growing back-off or
fail saying what to do, keys are reused only when no answer came, a payout Toss already holds is found and followed,
and store registrations go to Toss from the schedule, under keys that cover their content.

Times the service waits for (a back-off, a lease) are moved into the past in the database, as the clock would."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.e2e.conftest import eventually
from tests.e2e.test_money_out_and_back import admin, admin_get, funded_room, register_store, settlement_of
from tests.e2e.test_room_gets_paid import rows

pytestmark = pytest.mark.e2e

NET = 15000 - 450  # one share of 15,000 KRW, 3 % platform fee


@contextlib.contextmanager
def toss_balance(toss: Any, available: int) -> Iterator[None]:
    """Toss's available payout balance set to `available` for the block (the sandbox's control), and sales made in it
    settling only in a year (so that the test alone decides what is available); restored afterwards."""
    before = requests.get(f"{toss.url}/sandbox/balance", timeout=5).json()
    delay = requests.get(f"{toss.url}/sandbox/config", timeout=5).json()["settlement_delay_seconds"]
    toss.control("config", {"settlement_delay_seconds": 365 * 24 * 3600.0})
    toss.settle_sales()  # sales made before the block settle now, not into the balance the block sets
    toss.control("balance", {"available": available})
    try:
        yield
    finally:
        toss.control("config", {"settlement_delay_seconds": delay})
        toss.control("balance", {"available": before["availableAmount"]["value"]})


def drained(schedule: Any, toss: Any) -> None:
    """Pay out what earlier tests left scheduled, so this test's payout is the oldest one waiting."""
    with toss_balance(toss, 1_000_000_000):
        schedule(jobs=["payouts"])


def released(as_user: Any, toss: Any, make_room: Any) -> tuple[Any, int]:
    room, request_id, _ = funded_room(as_user, toss, make_room, n=1)
    register_store(as_user, room, approve_with=toss)
    r = as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    assert r.json()["settlement"]["payout_status"] == "scheduled"
    toss.settle_sales()  # Toss's settlement cycle: the room's card sales become payable
    return room, request_id


def settlement_row(sql: Any, request_id: int) -> dict[str, Any]:
    found = rows(sql, "SELECT * FROM payment_settlements WHERE payment_request_id = %s", request_id)
    assert len(found) == 1
    _SETTLEMENT_OF_REF[found[0]["ref_payout_id"]] = found[0]["id"]
    return dict(found[0])


def back_off_over(sql: Any, request_id: int) -> None:
    """The back-off has passed (the clock moved on)."""
    past = (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None)
    with sql.cursor() as cur:
        cur.execute(
            "UPDATE payment_settlements SET payout_next_attempt_at = %s WHERE payment_request_id = %s",
            (past, request_id),
        )


def payout_posts(toss: Any, ref: str) -> list[dict[str, Any]]:
    """The POST /v2/payouts calls that carried this refPayoutId (a call refused before Toss decrypted it is known by
    its key: a batch of one settlement has the key `{prefix}-payout-{settlement id}-{attempt}`)."""
    found = []
    for c in toss.calls("/v2/payouts", "POST"):
        items = c["body"] if isinstance(c["body"], list) else []
        if any(i.get("refPayoutId") == ref for i in items) or _key_of(ref, c["idempotency_key"]):
            found.append(c)
    return found


_SETTLEMENT_OF_REF: dict[str, int] = {}


def _key_of(ref: str, key: str | None) -> bool:
    settlement_id = _SETTLEMENT_OF_REF.get(ref)
    return bool(key and settlement_id is not None and re.search(rf"(^|-)payout-{settlement_id}-\d+$", key))


def seller_posts(toss: Any, ref: str) -> list[dict[str, Any]]:
    """The registrations of the seller `ref` sent to Toss (known by their key `{prefix}-seller-register-{seq}-...`
    even when Toss refused them before reading the body)."""
    seq = ref.rsplit("-st", 1)[-1] if "-st" in ref else ref.removeprefix("st")
    return [
        c
        for c in toss.calls("/v2/sellers", "POST")
        if re.search(rf"(^|-)seller-register-{seq}-", c["idempotency_key"] or "")
    ]


def metric(out: str, name: str) -> list[float]:
    """Values of an EMF metric the functions printed (Powertools Metrics writes one JSON line per invocation)."""
    values: list[float] = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            values += json.loads(line).get(name, [])
    return values


# --- the payout balance -----------------------------------------------------------------------------------------


def test_a_payout_waits_for_tosss_balance_and_goes_when_it_covers_it(as_user, toss, make_room, sql, schedule, capsys):
    drained(schedule, toss)
    with toss_balance(toss, 0):
        room, request_id = released(as_user, toss, make_room)
        ref = settlement_row(sql, request_id)["ref_payout_id"]
        capsys.readouterr()
        report = schedule(jobs=["payouts"])
        assert report["payouts"]["payouts_waiting_for_balance"] >= 1
        assert metric(capsys.readouterr().out, "PayoutsWaitingForBalance")[-1] >= 1
        assert payout_posts(toss, ref) == []  # nothing was asked of Toss that its balance does not cover
        view = settlement_of(as_user, room, room.members[0])
        assert (view["payout_status"], view["payout_waiting_for"]) == ("scheduled", "balance")
        assert view["balance_checked_at"] and view["net_amount"] == NET
        assert "balance" not in view  # the merchant's balance is not shown to the room

        toss.control("balance", {"available": NET - 1})
        schedule(jobs=["payouts"])
        assert settlement_of(as_user, room)["payout_waiting_for"] == "balance" and payout_posts(toss, ref) == []

        toss.control("balance", {"available": NET})  # the sales settled: exactly enough
        report = schedule(jobs=["payouts"])
        assert report["payouts"]["payouts_requested"] == 1
        view = settlement_of(as_user, room)
        assert (view["payout_status"], view["payout_waiting_for"]) == ("in_progress", None)
        assert len(payout_posts(toss, ref)) == 1


def test_payouts_go_oldest_first_as_far_as_the_balance_goes(as_user, toss, make_room, sql, schedule):
    drained(schedule, toss)
    with toss_balance(toss, 0):
        first_room, first = released(as_user, toss, make_room)
        second_room, second = released(as_user, toss, make_room)
        toss.control("balance", {"available": NET + NET // 2})  # one and a half payouts
        schedule(jobs=["payouts"])
        assert settlement_of(as_user, first_room)["payout_status"] == "in_progress"
        assert settlement_of(as_user, second_room)["payout_waiting_for"] == "balance"
        assert payout_posts(toss, settlement_row(sql, second)["ref_payout_id"]) == []
    assert settlement_row(sql, first)["payout_status"] == "in_progress"


def test_no_payout_goes_while_the_balance_cannot_be_read(as_user, toss, make_room, sql, schedule, capsys):
    drained(schedule, toss)
    room, _ = released(as_user, toss, make_room)
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v2/balances"])
    capsys.readouterr()
    report = schedule(jobs=["payouts"])
    assert report["payouts"]["payout_calls"] == 0
    assert metric(capsys.readouterr().out, "PayoutBalanceUnreadable") == [1.0]
    assert settlement_of(as_user, room)["payout_status"] == "scheduled"
    schedule(jobs=["payouts"])  # read again in the next run
    assert settlement_of(as_user, room)["payout_status"] == "in_progress"


# --- refusals -----------------------------------------------------------------------------------------------------


def test_a_refusal_we_do_not_know_is_retried_with_a_growing_back_off_and_counted(
    as_user, toss, make_room, sql, schedule, capsys
):
    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    ref = settlement_row(sql, request_id)["ref_payout_id"]
    waits = []
    for _ in range(2):
        toss.faults(failure_code="PAYOUT_RULE_WE_NEVER_HEARD_OF", count=1, paths=["/v2/payouts"])
        capsys.readouterr()
        started = datetime.now(UTC)
        schedule(jobs=["payouts"])
        assert metric(capsys.readouterr().out, "PayoutsRefused") == [1.0]
        view = settlement_of(as_user, room)
        assert (view["payout_status"], view["payout_waiting_for"]) == ("scheduled", "retry")  # never failed
        assert view["payout_error_code"] == "PAYOUT_RULE_WE_NEVER_HEARD_OF"
        waits.append(datetime.fromisoformat(view["payout_next_attempt_at"]) - started)
        calls = len(payout_posts(toss, ref))
        schedule(jobs=["payouts"])
        assert len(payout_posts(toss, ref)) == calls  # the back-off holds
        back_off_over(sql, request_id)
    assert timedelta(minutes=4) < waits[0] < timedelta(minutes=6) and waits[1] > waits[0] + timedelta(minutes=4)

    schedule(jobs=["payouts"])
    assert settlement_of(as_user, room)["payout_status"] == "in_progress"
    sent = payout_posts(toss, ref)
    assert len(sent) == 3 and len({c["idempotency_key"] for c in sent}) == 3  # each attempt after an answer: a new key
    assert settlement_row(sql, request_id)["payout_refusals"] == 0


def test_a_refusal_only_a_person_can_fix_fails_saying_what_to_do_and_the_operator_retries_it(
    as_user, toss, make_room, sql, schedule, capsys
):
    from escrow.services import operator

    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    toss.faults(failure_code="NOT_FOUND_SELLER", count=1, paths=["/v2/payouts"])
    capsys.readouterr()
    schedule(jobs=["payouts"])
    assert metric(capsys.readouterr().out, "PayoutsRefused") == [1.0]
    view = settlement_of(as_user, room)
    assert (view["payout_status"], view["payout_error_code"]) == ("failed", "NOT_FOUND_SELLER")
    assert "/api/v1/admin/stores" in view["payout_error_message"] and "retry-payout" in view["payout_error_message"]
    assert schedule(jobs=["payouts"])["payouts"]["payout_calls"] == 0  # failed stays failed until a person acts

    # The admin corrects the store's account: the sellers job sends Toss an update of its seller.
    seller_id = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()["seller_id"]
    r = admin(as_user)(
        "/api/v1/admin/stores",
        {
            "store_id": room.store_id,
            "owner_id": f"owner_of_{room.store_id}",
            "bank_code": "하나은행",
            "account_number": "99988877766",
            "holder_name": "홍길동",
            "email": "owner@example.com",
            "phone": "01012345678",
        },
    )
    assert r.status_code == 202 and r.json()["registration_status"] == "pending", r.text
    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert (store["registration_status"], store["seller_id"]) == ("registered", seller_id)
    update = toss.calls(f"/v2/sellers/{seller_id}", "POST")[-1]
    assert update["body"]["account"] == {"bankCode": "081", "accountNumber": "99988877766", "holderName": "홍길동"}

    # The operator retries the payout (escrow.ops retry-payout): failed -> scheduled, a checked transition. Toss made
    # no payout for it, so its refPayoutId stays.
    row = settlement_row(sql, request_id)
    retried = operator.retry_payout(row["id"], operator="lee.ops", reason="the store's account was corrected")
    assert retried["after"]["ref_payout_id"] == row["ref_payout_id"]
    schedule(jobs=["payouts"])
    row = settlement_row(sql, request_id)
    assert (row["payout_status"], row["payout_attempts"]) == ("in_progress", 2)
    sent = payout_posts(toss, row["ref_payout_id"])
    assert len(sent) == 2 and sent[0]["idempotency_key"] != sent[1]["idempotency_key"]


def test_a_payout_toss_failed_is_retried_under_a_new_ref_payout_id(as_user, toss, make_room, sql, schedule):
    from escrow.repositories import settlements as settlements_repo
    from escrow.services import operator

    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    schedule(jobs=["payouts"])
    first = settlement_row(sql, request_id)
    toss.control(
        f"payouts/{first['payout_id']}/complete",
        {"status": "FAILED", "error": {"code": "INVALID_ACCOUNT", "message": "계좌 확인이 필요합니다."}},
    )
    eventually(lambda: settlement_row(sql, request_id)["payout_status"] == "failed")
    assert settlement_of(as_user, room)["payout_error_code"] == "INVALID_ACCOUNT"

    # The operator retries it (escrow.ops retry-payout): Toss says FAILED, so it goes under a new refPayoutId.
    retried = operator.retry_payout(first["id"], operator="lee.ops", reason="the store's account was corrected")
    new_ref = settlements_repo.retry_ref_payout_id(request_id, first["payout_attempts"] + 1)
    assert retried["toss_payout_status"] == "FAILED" and retried["after"]["ref_payout_id"] == new_ref
    schedule(jobs=["payouts"])
    again = settlement_row(sql, request_id)
    assert again["payout_status"] == "in_progress" and again["ref_payout_id"] == new_ref != first["ref_payout_id"]
    made = [
        c
        for c in toss.calls("/v2/payouts", "POST")
        if isinstance(c["body"], list) and any(i.get("refPayoutId") == new_ref for i in c["body"])
    ]
    assert again["payout_id"] != first["payout_id"] and len(made) == 1


# --- keys after errors and 5xx -----------------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["5xx bound to the key", "5xx not bound"])
def bind_5xx(request: pytest.FixtureRequest, toss: Any) -> Iterator[bool]:
    """Toss's docs say errors are replayed for a key; whether a 5xx is is not observed: both, as sandbox settings."""
    before = requests.get(f"{toss.url}/sandbox/config", timeout=5).json().get("idempotency_bind_5xx")
    if before is None:
        pytest.fail("the sandbox has no idempotency_bind_5xx setting (issue 8 item 3)")
    toss.control("config", {"idempotency_bind_5xx": request.param})
    yield request.param
    toss.control("config", {"idempotency_bind_5xx": before})


def test_a_payout_after_a_5xx_answer_goes_again_with_a_new_key_and_pays_once(
    bind_5xx, as_user, toss, make_room, sql, schedule
):
    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    ref = settlement_row(sql, request_id)["ref_payout_id"]
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v2/payouts"])
    schedule(jobs=["payouts"])
    view = settlement_of(as_user, room)
    assert (view["payout_status"], view["payout_waiting_for"]) == ("scheduled", "retry")
    assert view["payout_error_code"] == "FAILED_INTERNAL_SYSTEM_PROCESSING"
    assert toss.calls("/v2/payouts", "GET")  # Toss's payouts were listed before anything was sent again

    back_off_over(sql, request_id)
    schedule(jobs=["payouts"])
    assert settlement_of(as_user, room)["payout_status"] == "in_progress"
    sent = payout_posts(toss, ref)
    assert [c["status"] for c in sent] == [500, 200] and sent[0]["idempotency_key"] != sent[1]["idempotency_key"]


def payout_made_behind_our_back(as_user: Any, toss: Any, room: Any, row: Any, key: str) -> dict[str, Any]:
    """The settlement's payout, made at Toss by a request whose answer never reached us (another client, same ref)."""
    from escrow.toss.client import TossClient
    from toss_sandbox import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY

    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    behind = TossClient(toss.url, DEFAULT_SECRET_KEYS[0], security_key=DEFAULT_SECURITY_KEY)
    item = {
        "refPayoutId": row["ref_payout_id"],
        "destination": store["seller_id"],
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": NET},
    }
    return dict(behind.request_payouts([item], idempotency_key=key)[0])


def test_a_payout_toss_made_before_its_5xx_answer_is_recorded_not_sent_again(
    bind_5xx, as_user, toss, make_room, sql, schedule
):
    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    row = settlement_row(sql, request_id)
    # Toss made the payout, then answered our request with a 5xx (played: the payout made behind our back first).
    made = payout_made_behind_our_back(as_user, toss, room, row, f"made-by-the-lost-attempt-{row['id']}")
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v2/payouts"])
    with toss_balance(toss, 1_000_000_000):  # the earlier payout took its money: this test is not about that
        schedule(jobs=["payouts"])
    after = settlement_row(sql, request_id)
    assert (after["payout_status"], after["payout_id"]) == ("in_progress", made["id"])
    assert len([c for c in payout_posts(toss, row["ref_payout_id"]) if c["status"] == 200]) == 1  # only Toss's own


def test_a_payout_refused_as_duplicated_is_found_by_its_ref_and_settled(as_user, toss, make_room, sql, schedule):
    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    row = settlement_row(sql, request_id)
    # An earlier request made the payout and its answer never reached us (played: made behind our back).
    made = payout_made_behind_our_back(as_user, toss, room, row, f"an-earlier-attempt-{row['id']}")
    with toss_balance(toss, 1_000_000_000):  # the earlier payout took its money: this test is not about that
        schedule(jobs=["payouts"])
    refused = payout_posts(toss, row["ref_payout_id"])[-1]
    assert refused["code"] == "DUPLICATED_REF_PAYOUT_ID"
    after = settlement_row(sql, request_id)
    assert (after["payout_status"], after["payout_id"]) == ("in_progress", made["id"])

    toss.control(f"payouts/{made['id']}/complete", {"status": "COMPLETED"})  # payout.changed
    eventually(lambda: settlement_row(sql, request_id)["payout_status"] == "completed")
    assert settlement_of(as_user, room)["payout_status"] == "completed"


# --- store registration ------------------------------------------------------------------------------------------


def registration(store_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "store_id": store_id,
        "owner_id": f"owner_of_{store_id}",
        "bank_code": "88",
        "account_number": "110123456789",
        "holder_name": "홍길동",
        "email": "owner@example.com",
        "phone": "01012345678",
        **changes,
    }


def test_registration_answers_at_once_and_the_schedule_registers_the_seller(as_user, toss, make_room, schedule):
    room = make_room(1)
    before = len(toss.calls("/v2/sellers"))
    r = admin(as_user)("/api/v1/admin/stores", registration(room.store_id))
    assert r.status_code == 202, r.text
    answer = r.json()
    assert (answer["registration_status"], answer["seller_id"]) == ("pending", None)
    assert answer["account_number_masked"] == "********6789" and "110123456789" not in r.text
    assert len(toss.calls("/v2/sellers")) == before  # no Toss call on the request path

    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert (store["registration_status"], store["seller_status"]) == ("registered", "APPROVAL_REQUIRED")
    (sent,) = seller_posts(toss, store["ref_seller_id"])
    assert sent["body"]["refSellerId"] == store["ref_seller_id"] and len(store["ref_seller_id"]) <= 20

    # The same registration again asks nothing new of Toss.
    posts = len(toss.calls("/v2/sellers", "POST"))
    again = admin(as_user)("/api/v1/admin/stores", registration(room.store_id))
    assert again.status_code == 200 and again.json()["registration_status"] == "registered", again.text
    schedule(jobs=["sellers"])
    assert len(toss.calls("/v2/sellers", "POST")) == posts


@pytest.mark.parametrize(
    ("given", "sent"),
    [("05", "081"), ("하나은행", "081"), ("81", "081"), ("04", "004"), ("KB국민은행", "004"), ("88", "088")],
)
def test_payout_accounts_go_to_toss_with_the_standard_code_of_the_bank(as_user, toss, make_room, schedule, given, sent):
    room = make_room(1)
    r = admin(as_user)("/api/v1/admin/stores", registration(room.store_id, bank_code=given))
    assert r.status_code == 202, r.text
    assert r.json()["bank_code"] == sent
    schedule(jobs=["sellers"])
    body = next(
        c["body"]
        for c in reversed(toss.calls("/v2/sellers", "POST"))
        if c["body"]["refSellerId"] == r.json()["ref_seller_id"]
    )
    assert body["account"]["bankCode"] == sent


def test_an_unknown_bank_is_a_422_and_nothing_is_stored(as_user, make_room, sql):
    room = make_room(1)
    r = admin(as_user)("/api/v1/admin/stores", registration(room.store_id, bank_code="005"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_BANK", r.text
    assert rows(sql, "SELECT seller_registration FROM stores WHERE store_id = %s", room.store_id) == [
        {"seller_registration": None}
    ]


def test_a_refusal_is_shown_with_its_code_and_a_registration_in_flight_is_not_overwritten(
    as_user, toss, make_room, sql, schedule
):
    room = make_room(1)
    toss.faults(
        failure_code="INVALID_REQUEST", failure_message="계좌 정보가 올바르지 않습니다.", count=1, paths=["/v2/sellers"]
    )
    assert admin(as_user)("/api/v1/admin/stores", registration(room.store_id)).status_code == 202
    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert (store["registration_status"], store["seller_error_code"]) == ("refused", "INVALID_REQUEST")
    assert store["seller_id"] is None

    # Registered again while Toss's answer is lost: the admin is told to wait, nothing is half-written.
    toss.faults(lose_answer_rate=1.0, timeout_seconds=0.5, paths=["/v2/sellers"])
    assert admin(as_user)("/api/v1/admin/stores", registration(room.store_id, holder_name="김철수")).status_code == 202
    schedule(jobs=["sellers"])
    toss.clear_faults()
    assert admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()["registration_status"] == "sending"
    r = admin(as_user)("/api/v1/admin/stores", registration(room.store_id, holder_name="박영희"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "SELLER_REGISTRATION_IN_PROGRESS", r.text

    # The lease runs out; the next run asks again with the same key and reads Toss's first answer.
    with sql.cursor() as cur:
        cur.execute("UPDATE stores SET seller_lease_until = NULL WHERE store_id = %s", (room.store_id,))
    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert store["registration_status"] == "registered" and store["holder_name"] == "김철수"
    mine = seller_posts(toss, store["ref_seller_id"])
    assert [c["idempotency_key"] for c in mine[1:]] == [mine[1]["idempotency_key"]] * 2 and mine[2]["replayed"]
    assert mine[0]["idempotency_key"] != mine[1]["idempotency_key"]


def test_a_5xx_registration_answer_is_tried_again_with_a_new_key(bind_5xx, as_user, toss, make_room, sql, schedule):
    room = make_room(1)
    toss.faults(failure_code="FAILED_INTERNAL_SYSTEM_PROCESSING", count=1, paths=["/v2/sellers"])
    assert admin(as_user)("/api/v1/admin/stores", registration(room.store_id)).status_code == 202
    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert (store["registration_status"], store["seller_error_code"]) == (
        "pending",
        "FAILED_INTERNAL_SYSTEM_PROCESSING",
    )
    assert store["seller_next_attempt_at"]
    with sql.cursor() as cur:
        cur.execute("UPDATE stores SET seller_next_attempt_at = NULL WHERE store_id = %s", (room.store_id,))
    schedule(jobs=["sellers"])
    store = admin_get(as_user, f"/api/v1/admin/stores/{room.store_id}").json()
    assert store["registration_status"] == "registered"
    mine = seller_posts(toss, store["ref_seller_id"])
    assert [c["status"] for c in mine] == [500, 200] and mine[0]["idempotency_key"] != mine[1]["idempotency_key"]


def test_a_payout_under_our_ref_to_another_seller_is_not_taken_for_ours(as_user, toss, make_room, sql, schedule):
    """DUPLICATED_REF_PAYOUT_ID, and what Toss holds under the ref is another store's payout: never recorded as ours
    (it would mark this store paid with money that went elsewhere)."""
    from escrow.toss.client import TossClient
    from toss_sandbox import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY

    drained(schedule, toss)
    room, request_id = released(as_user, toss, make_room)
    other = make_room(1)
    other_seller = register_store(as_user, other, approve_with=toss)["seller_id"]
    row = settlement_row(sql, request_id)
    behind = TossClient(toss.url, DEFAULT_SECRET_KEYS[0], security_key=DEFAULT_SECURITY_KEY)
    behind.request_payouts(
        [
            {
                "refPayoutId": row["ref_payout_id"],
                "destination": other_seller,
                "scheduleType": "EXPRESS",
                "amount": {"currency": "KRW", "value": NET},
            }
        ],
        idempotency_key=f"someone-elses-{row['id']}",
    )
    with toss_balance(toss, 1_000_000_000):  # the earlier payout took its money: this test is not about that
        schedule(jobs=["payouts"])
    view = settlement_of(as_user, room)
    assert (view["payout_status"], view["payout_error_code"], view["payout_id"]) == (
        "failed",
        "REF_PAYOUT_ID_TAKEN",
        None,
    )
    assert "TOSS_ID_PREFIX" in view["payout_error_message"]


# --- answer shapes -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sandbox_setting(toss: Any, name: str, value: Any) -> Iterator[None]:
    before = requests.get(f"{toss.url}/sandbox/config", timeout=5).json()[name]
    toss.control("config", {name: value})
    try:
        yield
    finally:
        toss.control("config", {name: before})


def test_a_v2_refusal_in_the_v1_shape_is_read_by_its_code(as_user, toss, make_room, sql, schedule):
    drained(schedule, toss)
    room, _, _ = funded_room(as_user, toss, make_room, n=1)
    register_store(as_user, room)  # not approved: Toss refuses the payout
    assert as_user(room.owner).post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}).status_code == 200
    toss.settle_sales()
    with sandbox_setting(toss, "v2_error_shape", "v1"):
        schedule(jobs=["payouts"])
    view = settlement_of(as_user, room)
    assert (view["payout_status"], view["payout_waiting_for"]) == ("scheduled", "seller")
    assert view["payout_error_code"] == "FORBIDDEN_SELLER_PAYOUT"  # not UNKNOWN_ERROR retried forever


def test_a_payout_answer_whose_entity_body_is_a_list_is_recorded(as_user, toss, make_room, sql, schedule):
    drained(schedule, toss)
    _, request_id = released(as_user, toss, make_room)
    with sandbox_setting(toss, "payout_entity_body", "list"):
        schedule(jobs=["payouts"])
    row = settlement_row(sql, request_id)
    assert row["payout_status"] == "in_progress" and row["payout_id"]
