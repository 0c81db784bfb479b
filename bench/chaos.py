"""Chaos run: many complete room lifecycles at once against the local stack while Toss and the database misbehave,
then the schedule until everything is settled, then the ledger audit, which must find nothing.

    python -m bench.chaos [--rooms 250] [--participants 4] [--clients 32] [--seed N] [--no-db-kills] [--keep-db]

Everything stays on this machine: MariaDB on 127.0.0.1 (a fresh database of its own, created and migrated with
`python -m escrow.migrate --database-url ...`, dropped at the end unless --keep-db), the Toss sandbox and the local
API on 127.0.0.1 ports chosen by the OS. Each room is driven over HTTP by one client thread, as the app would:
the admin registers the store (the sandbox approves the seller), the owner opens a request, each participant
prepares, pays in the sandbox widget and confirms; mixed in are duplicate confirms (one after the other and at
once), duplicate requests (409), partial and full refunds (a refund unfunds the request: the payer pays the
difference, or the whole share again, before the release), the owner removing a participant (refunded in the same
flow) or adding a member, the owner cancelling whole requests (also while participants are still paying), releases
and duplicate releases, automatic releases and expiries by the schedule, races of release against cancel and
refund, and duplicate webhooks (a fresh delivery and its verbatim replay).

Meanwhile the sandbox declines 10 % of confirms, loses 5 % of answers after processing them (hanging a little longer
than our Toss read timeout), and adds latency; a chaos thread KILLs random connections to this run's database
(and only this database's: other people use the server) every ~0.5 s; the schedule runs every 2 s. Clients retry
502/503 (same body) a bounded number of times.

Then faults stop, the schedule runs until nothing is left in flight and no refund is owed (bounded in time; the
settling passes run as if the payout leases and the refunds' back-offs had run out), `escrow.audit` compares the
ledger with the sandbox and with what each room asked for, and every payment and payout the sandbox holds is
compared with the ledger as a whole (the one check the audit cannot make: Toss has no API to list payments). Exit
status 1 on any audit finding, any 500 answer, a mismatch of the totals, a room left open, or a run that does not
settle; such a run keeps its database for inspection.
The services' own log lines go to a log file (its path is printed), the figures to standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import requests

ROOT = Path(__file__).resolve().parents[1]
MYSQL_URL = os.environ.get("CHAOS_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
HOST = "127.0.0.1"

TOSS_READ_TIMEOUT = 3.0  # the services' Toss read timeout in this run
FAULTS = {
    "failure_rate": 0.10,
    "lose_answer_rate": 0.05,
    "timeout_seconds": TOSS_READ_TIMEOUT + 0.5,  # a lost answer hangs a bit longer than we wait
    "latency_ms": 15,
    "jitter_ms": 60,
}
WEBHOOK_RETRY_DELAYS = [0.5, 1, 2, 4]
SCHEDULE_EVERY = 2.0  # seconds between scheduled runs while the rooms run (EventBridge's 5 minutes, compressed)
KILL_EVERY = 0.5
HTTP_TIMEOUT = 40.0  # above the local API's 30 s integration timeout
RETRIES = 6  # tries of one call on 502/503 (and on the codes a call says are worth waiting for)
PAY_ATTEMPTS = 6  # payment attempts of one participant (each declined attempt is paid again with a new order)
SETTLEMENT_SECONDS = 3.0  # the sandbox's settlement cycle (Toss's is days), compressed like the schedule
KYC_EVERY = 1.0  # seconds between the sweeps in which stores registered at Toss complete its KYC
SETTLE_SECONDS = 300  # the settle phase gives up after this long (the sandbox sends webhooks on one thread)
REPLAY_WAIT = 120  # seconds the last replays may wait for their first delivery
# A release waits for refunds in flight in the room (a removed participant's too); one whose answer was lost is asked
# again by the schedule once its own worker's time is up (about 13 s here).
RELEASE_TRIES = 12
# Answers of a confirm that tell the payer the request closed (or they were removed) while they paid.
CLOSED_WHILE_PAYING = ("REQUEST_CLOSED", "REQUEST_CLOSED_REFUNDED", "PARTICIPANT_REMOVED", "NOT_A_PARTICIPANT")
AMOUNTS = (10_000, 15_000, 20_000, 30_000)
KINDS = {  # flow kind -> weight
    "release": 18,
    "partial_refund_pay_difference_release": 10,
    "refund_pay_again_release": 8,
    "remove_participant_release": 8,
    "add_participant_release": 8,
    "refund_then_cancel": 8,
    "owner_cancels": 8,
    "cancel_while_paying": 6,
    "expire": 8,
    "pay_at_the_deadline": 5,
    "auto_release": 8,
    "release_races_cancel": 8,
    "refund_races_release": 7,
}


# --- figures -------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    lock: threading.Lock = field(default_factory=threading.Lock)
    flows: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    http: Counter[int] = field(default_factory=Counter)
    by_route: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    gave_up: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    client_errors: Counter[str] = field(default_factory=Counter)
    mixed_in: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)  # "db kills", "scheduled runs"
    deadlocks: Counter[str] = field(default_factory=Counter)  # sampled: the statements of each deadlock seen
    schedule_failures: Counter[str] = field(default_factory=Counter)

    def add(self, counter: str, key: Any, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += n


# --- the client side ---------------------------------------------------------------------------------------


def token(user_id: str, secret: str, *, admin: bool = False) -> str:
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"user_id": user_id, "sub": user_id, "iat": now, "exp": now + 3600}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Answer:
    status: int
    data: dict[str, Any]

    @property
    def code(self) -> str:
        error = self.data.get("error") if isinstance(self.data, dict) else None
        return str(error.get("code") or "") if isinstance(error, dict) else ""


class Api:
    """HTTP to the local API as the app would call it: JWT per user, bounded retries of 502/503 with the same body."""

    def __init__(self, base: str, jwt_secret: str, figures: Figures):
        self.base = base
        self.jwt_secret = jwt_secret
        self.figures = figures
        self._local = threading.local()
        self._tokens: dict[tuple[str, bool], str] = {}

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _token(self, user: str, admin: bool) -> str:
        key = (user, admin)
        if key not in self._tokens:
            self._tokens[key] = token(user, self.jwt_secret, admin=admin)
        return self._tokens[key]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        user: str,
        admin: bool = False,
        route: str | None = None,
        wait_for: tuple[str, ...] = (),
        tries: int = RETRIES,
    ) -> Answer:
        route = f"{method} {route or path}"
        headers = {"authorization": f"Bearer {self._token(user, admin)}", "content-type": "application/json"}
        answer = Answer(0, {})
        for attempt in range(tries):
            try:
                r = self._session().request(method, self.base + path, json=body, headers=headers, timeout=HTTP_TIMEOUT)
                try:
                    data = r.json()
                except ValueError:
                    data = {"raw": r.text[:200]}
                answer = Answer(r.status_code, data if isinstance(data, dict) else {"items": data})
            except requests.RequestException as exc:
                self.figures.add("client_errors", type(exc).__name__)
                answer = Answer(0, {"error": {"code": type(exc).__name__}})
                self._local.session = None
            self.figures.add("http", answer.status)
            self.figures.add("by_route", (route, answer.status, answer.code))
            if answer.status == 500:
                with self.figures.lock:
                    self.figures.server_errors.append(f"{route} -> 500 {json.dumps(answer.data)[:300]}")
                return answer
            retry = answer.status in (0, 502, 503) or (answer.status == 409 and answer.code in wait_for)
            if not retry:
                return answer
            if attempt < tries - 1:
                time.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.6, 1.4))
        if answer.status in (0, 502, 503):
            self.figures.add("gave_up", (route, answer.status, answer.code))
        return answer

    def post(self, path: str, body: Any, **kw: Any) -> Answer:
        return self.call("POST", path, body, **kw)

    def get(self, path: str, **kw: Any) -> Answer:
        return self.call("GET", path, **kw)


class Sandbox:
    """The sandbox's test controls (never faulted: faults apply to /v1/ and /v2/ only)."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def post(self, path: str, body: Any) -> requests.Response:
        return self._session().post(f"{self.url}/sandbox/{path}", json=body, timeout=10)

    def widget(self, order_id: str, amount: int) -> str:
        r = self.post("payments", {"orderId": order_id, "amount": amount, "orderName": "모임 예약금", "method": "카드"})
        r.raise_for_status()
        return str(r.json()["paymentKey"])

    def stats(self) -> dict[str, Any]:
        return dict(self._session().get(f"{self.url}/sandbox/stats", timeout=10).json())


# --- one room ----------------------------------------------------------------------------------------------


@dataclass
class Room:
    index: int
    chat_room_id: int
    owner: str
    members: list[str]
    store_id: str
    amount: int
    kind: str
    rng: random.Random
    request_id: int | None = None
    keys: dict[str, str] = field(default_factory=dict)  # payer -> paymentKey of the latest confirmed payment
    removed: list[str] = field(default_factory=list)  # participants the owner took out


class Replays:
    """Verbatim replays of webhook deliveries (same transmission id): the sandbox replays a delivery only once its
    first attempt was made, and it sends on one thread, so replays wait here instead of holding a client up."""

    def __init__(self, sandbox: Sandbox, figures: Figures):
        self.sandbox, self.figures = sandbox, figures
        self._lock = threading.Lock()
        self._waiting: list[str] = []

    def add(self, transmission_id: str) -> None:
        with self._lock:
            self._waiting.append(transmission_id)

    def _pass(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for tid in waiting:
            if self.sandbox.post("webhooks/send", {"replay_transmission_id": tid}).status_code == 200:
                self.figures.add("mixed_in", "webhook replayed verbatim")
            else:
                self.add(tid)

    def loop(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._pass()
        deadline = time.monotonic() + REPLAY_WAIT  # the rest, once the sandbox has sent their first attempts
        while self._waiting and time.monotonic() < deadline:
            self._pass()
            time.sleep(0.5)
        if self._waiting:
            self.figures.add("mixed_in", "webhook replay skipped", len(self._waiting))


class Flows:
    def __init__(self, api: Api, sandbox: Sandbox, db: Inspector, figures: Figures, replays: Replays):
        self.api, self.sandbox, self.db, self.figures, self.replays = api, sandbox, db, figures, replays

    def unexpected(self, room: Room, step: str, answer: Answer) -> None:
        self.figures.add("unexpected", (room.kind, step, answer.status, answer.code))

    # --- steps ---

    def register_store(self, room: Room) -> None:
        body = {
            "store_id": room.store_id,
            "owner_id": f"boss_{room.index}",
            "name": f"가게 {room.index}",
            "bank_code": "88",
            "account_number": f"1101{room.index:08d}",
            "holder_name": "홍길동",
            "business_type": "INDIVIDUAL",
            "email": f"store{room.index}@example.com",
            "phone": "01012345678",
        }
        a = self.api.post("/api/v1/admin/stores", body, user="ops_admin", admin=True)
        # Answered at once with the seller pending (200: an earlier try went through and its answer was lost; 409: that
        # try is being sent to Toss right now). The schedule's sellers job registers it with Toss; the store's owner
        # completes Toss's KYC some time later (kyc_loop approves it), and payouts wait for that.
        if not (a.status in (200, 202) or (a.status == 409 and a.code == "SELLER_REGISTRATION_IN_PROGRESS")):
            self.unexpected(room, "register_store", a)

    def open_request(self, room: Room, **extra: Any) -> bool:
        body = {
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": room.amount,
            "message": "모임 예약금을 보내주세요.",
            **extra,
        }
        a = self.api.post("/api/v1/payment/request", body, user=room.owner)
        if a.status == 201:
            room.request_id = int(a.data["payment_request_id"])
        elif a.status == 409 and a.code == "OPEN_REQUEST_EXISTS":  # our own retried create went through
            room.request_id = self.status(room).get("payment_request", {}).get("payment_request_id")
        else:
            self.unexpected(room, "open_request", a)
            return False
        if room.rng.random() < 0.3:
            self.figures.add("mixed_in", "duplicate request")
            again = self.api.post("/api/v1/payment/request", body, user=room.owner)
            if not (again.status == 409 and again.code == "OPEN_REQUEST_EXISTS"):
                self.unexpected(room, "duplicate_request", again)
        return room.request_id is not None

    def status(self, room: Room) -> dict[str, Any]:
        a = self.api.get(
            f"/api/v1/payment/status/{room.chat_room_id}",
            user=room.owner,
            route="/api/v1/payment/status/{chatRoomId}",
        )
        return a.data if a.status == 200 else {}

    def pay(self, room: Room, payer: str) -> bool:
        """Pay one share as the app does: prepare, widget, confirm; a declined payment is paid again."""
        rng = room.rng
        for _ in range(PAY_ATTEMPTS):
            prep = self.api.post(
                "/api/v1/payment/prepare",
                {"chat_room_id": room.chat_room_id},
                user=payer,
                wait_for=("PAYMENT_IN_PROGRESS", "PAYMENT_OUTCOME_UNKNOWN", "REFUND_IN_PROGRESS"),
                tries=8,
            )
            if prep.status == 409 and prep.code == "ALREADY_PAID":
                return self._paid(room, payer)
            if prep.status == 404 or (prep.status == 403 and prep.code == "NOT_A_PARTICIPANT"):
                return False  # the request was closed (cancelled or expired), or the payer removed from it
            if prep.status == 409 and prep.code == "REQUEST_DEADLINE_PASSED":
                return False  # too late: nobody pays after the deadline; the next scheduled run expires it
            if prep.status != 200:
                self.unexpected(room, "prepare", prep)
                time.sleep(0.5)
                continue
            order_id = prep.data["orderId"]
            key = self.sandbox.widget(order_id, prep.data["amount"])
            body = {
                "chat_room_id": room.chat_room_id,
                "amount": prep.data["amount"],
                "paymentKey": key,
                "orderId": order_id,
                "payment_method": "card",
            }
            path = "/api/v1/payment/initiate" if rng.random() < 0.5 else "/api/v1/payment/confirm"
            if rng.random() < 0.1:
                self.figures.add("mixed_in", "two confirms at once")
                with ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(self._confirm, path, body, payer) for _ in range(2)]
                    answers = [f.result() for f in futures]
                answer = next((a for a in answers if a.status == 200), answers[0])
            else:
                answer = self._confirm(path, body, payer)
            if answer.status == 200:
                if rng.random() < 0.2:
                    self.figures.add("mixed_in", "duplicate confirm")
                    again = self._confirm(path, body, payer)
                    # A repeat answers what is true now: the request may have closed, or the payer been removed.
                    if again.status != 200 and not (again.status == 409 and again.code in CLOSED_WHILE_PAYING):
                        self.unexpected(room, "duplicate_confirm", again)
                room.keys[payer] = key
                if rng.random() < 0.15:
                    self.duplicate_webhook(room, key)
                return True
            if answer.status == 402 or (answer.status == 409 and answer.code == "AMOUNT_MISMATCH_REFUNDED"):
                continue  # declined: pay again with a new order
            if answer.status == 409 and answer.code == "ALREADY_PAID":
                return self._paid(room, payer)
            if answer.status == 404 or (answer.status in (403, 409) and answer.code in CLOSED_WHILE_PAYING):
                return False  # the request closed (or the payer was removed) while they paid: refunded if charged
            if answer.status == 409 and answer.code == "REQUEST_DEADLINE_PASSED":
                return False  # the deadline passed between prepare and confirm: Toss was not asked, nothing charged
            if answer.status in (0, 502, 503):
                continue  # still unknown after our retries: the schedule settles it; prepare waits for that
            self.unexpected(room, "confirm", answer)
        return False

    def _confirm(self, path: str, body: dict[str, Any], payer: str) -> Answer:
        return self.api.post(path, body, user=payer, wait_for=("PAYMENT_IN_PROGRESS",), tries=8)

    def _paid(self, room: Room, payer: str) -> bool:
        key = self.db.payment_key(room.request_id, payer)
        if key:
            room.keys[payer] = key
        return bool(key)

    def duplicate_webhook(self, room: Room, key: str) -> None:
        """A fresh PAYMENT_STATUS_CHANGED for the payment now, and a verbatim replay of it once it was delivered."""
        self.figures.add("mixed_in", "duplicate webhook")
        sent = self.sandbox.post("webhooks/send", {"eventType": "PAYMENT_STATUS_CHANGED", "paymentKey": key})
        if sent.status_code != 200:
            self.figures.add("mixed_in", "webhook send refused")
            return
        self.replays.add(sent.json()["transmissionId"])

    def refund(self, room: Room, payer: str, amount: int | None) -> Answer:
        body: dict[str, Any] = {"paymentKey": room.keys[payer], "cancelReason": "개인 사정으로 환불"}
        if amount is not None:
            body["cancelAmount"] = amount
        a = self.api.post("/api/v1/payment/cancel", body, user=payer, wait_for=("REFUND_IN_PROGRESS",))
        if a.status not in (200, 202) and not (a.status == 409 and a.code in ("ALREADY_RELEASED", "ALREADY_REFUNDED")):
            self.unexpected(room, "refund", a)
        if a.status in (200, 202) and room.rng.random() < 0.2:
            self.duplicate_webhook(room, room.keys[payer])
        if a.status in (200, 202) and room.rng.random() < 0.3:
            self.figures.add("mixed_in", "duplicate refund")
            again = self.api.post("/api/v1/payment/cancel", body, user=payer, wait_for=("REFUND_IN_PROGRESS",))
            if again.status not in (200, 202, 409):
                self.unexpected(room, "duplicate_refund", again)
        return a

    def release(self, room: Room, *, race: bool = False) -> Answer:
        a = self.api.post(
            "/api/v1/payment/release",
            {"chat_room_id": room.chat_room_id},
            user=room.owner,
            wait_for=("REFUND_IN_PROGRESS",),
            tries=RELEASE_TRIES,
        )
        fine = a.status == 200 or (a.status == 409 and a.code == "ALREADY_RELEASED")
        raced = a.status in (404, 409) and race
        if not (fine or raced):
            self.unexpected(room, "release", a)
        payout_id = (a.data.get("settlement") or {}).get("payout_id") if a.status == 200 else None
        if payout_id and room.rng.random() < 0.3:
            self.figures.add("mixed_in", "duplicate payout webhook")
            sent = self.sandbox.post("webhooks/send", {"eventType": "payout.changed", "payoutId": payout_id})
            if sent.status_code == 200:
                self.replays.add(sent.json()["transmissionId"])
        if a.status == 200 and room.rng.random() < 0.5:
            self.figures.add("mixed_in", "duplicate release")
            again = self.api.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}, user=room.owner)
            if not (again.status == 409 and again.code == "ALREADY_RELEASED"):
                self.unexpected(room, "duplicate_release", again)
        return a

    def cancel_request(self, room: Room, *, race: bool = False) -> Answer:
        a = self.api.post(
            "/api/v1/payment/cancel",
            {"chat_room_id": room.chat_room_id, "cancelReason": "모임이 취소되었습니다"},
            user=room.owner,
        )
        if a.status not in (200, 202) and not (a.status in (404, 409) and race):
            if a.status != 404:  # 404: closed already (our retried cancel went through, or it expired)
                self.unexpected(room, "cancel_request", a)
        return a

    def remove_participant(self, room: Room, user: str) -> bool:
        """The owner takes a participant out; what they hold is refunded in the same flow. True once they are out
        (also when an earlier try went through and its answer was lost: the retry answers NOT_A_PARTICIPANT)."""
        a = self.api.post(
            "/api/v1/payment/participants/remove",
            {"chat_room_id": room.chat_room_id, "user_id": user, "reason": "모임에서 빠짐"},
            user=room.owner,
            wait_for=("PAYMENT_IN_PROGRESS", "REFUND_IN_PROGRESS"),
            tries=10,
        )
        if a.status in (200, 202):
            room.removed.append(user)
            return True
        removed = {p["payer_id"] for p in self.status(room).get("removed_participants", [])}
        if user in removed:
            room.removed.append(user)
            return True
        self.unexpected(room, "remove_participant", a)
        return False

    def add_participant(self, room: Room, user: str) -> bool:
        a = self.api.post(
            "/api/v1/payment/participants/add",
            {"chat_room_id": room.chat_room_id, "user_id": user},
            user=room.owner,
            wait_for=("REFUND_IN_PROGRESS",),
        )
        if a.status == 201 or (a.status == 409 and a.code == "ALREADY_A_PARTICIPANT"):  # our retried add went through
            return True
        self.unexpected(room, "add_participant", a)
        return False

    def release_or_cancel(self, room: Room, done: str) -> str:
        """Release a room the flow funded; a room it could not fund (a payer gave up) is cancelled."""
        a = self.release(room, race=True)
        if released(a):
            return done
        if a.status == 409 and a.code == "REQUEST_NOT_FUNDED":
            self.cancel_request(room)
            return "not funded: cancelled"
        self.unexpected(room, "release", a)
        self.cancel_request(room)
        return "release refused: cancelled"

    # --- the flows ---

    def run(self, room: Room) -> str:
        self.figures.add("flows", room.kind)
        try:
            outcome = self._run(room)
        except Exception as exc:  # noqa: BLE001 - a flow that crashes is a figure, not the end of the run
            outcome = f"crashed: {type(exc).__name__}: {exc}"[:160]
        self.figures.add("outcomes", outcome)
        return outcome

    def _run(self, room: Room) -> str:
        rng, kind = room.rng, room.kind
        self.register_store(room)
        extra: dict[str, Any] = {}
        now = datetime.now(UTC)
        if kind == "expire":
            extra["expires_at"] = (now + timedelta(seconds=rng.uniform(3, 6))).isoformat()
        elif kind == "pay_at_the_deadline":
            extra["expires_at"] = (now + timedelta(seconds=rng.uniform(1.0, 2.5))).isoformat()
        elif kind == "auto_release":
            extra["release_at"] = (now + timedelta(seconds=rng.uniform(1, 4))).isoformat()
        if kind == "add_participant_release":
            extra["participant_ids"] = room.members[:-1]  # the last member is added later
        if not self.open_request(room, **extra):
            return "request not opened"
        payers = room.members
        if kind == "add_participant_release":
            return self._add_participant_flow(room)
        if kind == "remove_participant_release":
            return self._remove_participant_flow(room)
        if kind == "expire":
            payers = room.members[: rng.randint(0, len(room.members) - 1)]  # never everyone: it must expire
        if kind == "cancel_while_paying":
            canceller = threading.Timer(rng.uniform(0.1, 1.5), lambda: self.cancel_request(room, race=True))
            canceller.start()
            for payer in payers:
                self.pay(room, payer)
            canceller.join()
            return "cancelled while paying"
        paid = [payer for payer in payers if self.pay(room, payer)]
        if kind == "expire":
            return "left to expire"
        if kind == "pay_at_the_deadline":
            if len(paid) == len(room.members) and self.release(room, race=True).status == 200:
                return "paid in time, released"
            return "the deadline won"
        if len(paid) < len(room.members):
            self.cancel_request(room)
            return "not everyone could pay: cancelled"
        if kind == "release":
            return "released" if released(self.release(room)) else "release refused"
        if kind == "partial_refund_pay_difference_release":
            # A partial refund unfunds the request: the payer pays the difference, then the owner releases.
            payer = rng.choice(paid)
            a = self.refund(room, payer, rng.randrange(1_000, room.amount // 2, 100))
            if a.status in (200, 202) and not self.pay(room, payer):
                self.cancel_request(room)
                return "the difference not paid: cancelled"
            return self.release_or_cancel(room, "partly refunded, difference paid, released")
        if kind == "refund_pay_again_release":
            payer = rng.choice(paid)
            a = self.refund(room, payer, None)
            if a.status in (200, 202) and not self.pay(room, payer):
                self.cancel_request(room)
                return "not paid again: cancelled"
            return self.release_or_cancel(room, "refunded, paid again, released")
        if kind == "refund_then_cancel":
            self.refund(room, rng.choice(paid), None)
            self.cancel_request(room)
            return "refunded one, cancelled"
        if kind == "owner_cancels":
            self.cancel_request(room)
            return "cancelled"
        if kind == "auto_release":
            refunder = None
            if rng.random() < 0.4:  # a participant asks for a refund right when the schedule releases
                release_at = datetime.fromisoformat(extra["release_at"])
                delay = max(0.0, (release_at - datetime.now(UTC)).total_seconds() + rng.uniform(-0.3, 0.3))
                refunder = threading.Timer(delay, self.refund, args=(room, rng.choice(paid), None))
                refunder.start()
            deadline = time.monotonic() + 20
            outcome = ""
            while time.monotonic() < deadline and not outcome:
                state = self.status(room).get("payment_request", {}).get("status")
                if state == "released":
                    outcome = "released by the schedule"
                elif state == "pending":  # the refund came first: the room is no longer funded
                    self.cancel_request(room)
                    outcome = "refunded before the release, cancelled"
                else:
                    time.sleep(0.5)
            if refunder is not None:
                refunder.join()
            if outcome:
                return outcome
            return "released by the owner" if released(self.release(room, race=True)) else "release refused"
        if kind == "release_races_cancel":
            with ThreadPoolExecutor(2) as pool:
                rel = pool.submit(self.release, room, race=True)
                can = pool.submit(self.cancel_request, room, race=True)
                won = ["release"] if released(rel.result()) else []
                won += ["cancel"] if can.result().status in (200, 202) else []
            return f"race won by {'+'.join(won) or 'nobody'}"
        if kind == "refund_races_release":
            payer = rng.choice(paid)
            with ThreadPoolExecutor(2) as pool:
                ref = pool.submit(self.refund, room, payer, None)
                rel = pool.submit(self.release, room, race=True)
                refunded, went = ref.result().status in (200, 202), rel.result().status == 200
            if not went:
                self.cancel_request(room)
            outcomes = {
                (True, True): "refunded, then released",
                (True, False): "refund won, cancelled",
                (False, True): "release won",
                (False, False): "neither: cancelled",
            }
            return outcomes[(refunded, went)]
        raise AssertionError(kind)

    def _add_participant_flow(self, room: Room) -> str:
        """The request is opened without the last member; the owner adds them (before or after the others paid:
        a funded request waits for them again), they pay, and the owner releases."""
        rng, newcomer = room.rng, room.members[-1]
        first = room.members[:-1]
        early = rng.random() < 0.4
        if early and not self.add_participant(room, newcomer):
            self.cancel_request(room)
            return "add refused: cancelled"
        paid = [payer for payer in first if self.pay(room, payer)]
        if not early and not self.add_participant(room, newcomer):
            self.cancel_request(room)
            return "add refused: cancelled"
        if len(paid) < len(first) or not self.pay(room, newcomer):
            self.cancel_request(room)
            return "not everyone could pay: cancelled"
        return self.release_or_cancel(room, f"member added {'before' if early else 'after'} the others paid, released")

    def _remove_participant_flow(self, room: Room) -> str:
        """Everyone pays but one, who pays or not, or is paying right when the owner removes them; the owner removes
        that one (what they paid is refunded, a charge landing after the removal too), the rest is funded without
        them, and the owner releases."""
        rng = room.rng
        victim = rng.choice(room.members)
        how = rng.choices(("paid", "unpaid", "paying"), (5, 3, 2))[0]
        others = [m for m in room.members if m != victim]
        payers = [*others, victim] if how == "paid" else list(others)
        rng.shuffle(payers)
        paid = [payer for payer in payers if self.pay(room, payer)]
        if how == "paying":
            self.figures.add("mixed_in", "removal while paying")
            with ThreadPoolExecutor(1) as pool:
                paying = pool.submit(self.pay, room, victim)
                time.sleep(rng.uniform(0.0, 0.3))
                removed = self.remove_participant(room, victim)
                paying.result()
        else:
            removed = self.remove_participant(room, victim)
        if not removed:
            self.cancel_request(room)
            return "removal refused: cancelled"
        if any(m not in paid for m in others):
            self.cancel_request(room)
            return "not everyone left could pay: cancelled"
        return self.release_or_cancel(room, f"{how} participant removed, released")


def released(answer: Answer) -> bool:
    return answer.status == 200 or (answer.status == 409 and answer.code == "ALREADY_RELEASED")


# --- the database side: setup, the killer, the settled check ---------------------------------------------------


class Inspector:
    """Our own connection for setup and for looking at rows. It has no default database, so the killer (which only
    kills connections whose database is the run's) leaves it alone; tables are named with the database."""

    def __init__(self, params: Any, database: str):
        self.params = params
        self.database = database
        self.q = "`" + database.replace("`", "``") + "`"
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _connect(self) -> pymysql.connections.Connection:
        p = self.params
        return pymysql.connect(
            host=p.host,
            port=p.port,
            user=p.user,
            password=p.password,
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
            connect_timeout=5,
        )

    def all(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        with self._lock:
            for attempt in range(2):
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(sql.replace("{db}", self.q), args)
                        return list(cur.fetchall())
                except pymysql.err.OperationalError:
                    if attempt:
                        raise
                    self._conn = self._connect()
        raise AssertionError("unreachable")

    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock, self._conn.cursor() as cur:
            cur.executemany(sql.replace("{db}", self.q), rows)

    def seller_id(self, store_id: str) -> str | None:
        rows = self.all("SELECT toss_seller_id FROM {db}.stores WHERE store_id = %s", (store_id,))
        return rows[0]["toss_seller_id"] if rows else None

    def payment_key(self, request_id: int | None, payer: str) -> str | None:
        rows = self.all(
            "SELECT payment_key FROM {db}.payments WHERE payment_request_id = %s AND payer_id = %s AND status IN "
            "('completed', 'partially_refunded', 'released', 'refunded')",
            (request_id, payer),
        )
        return rows[0]["payment_key"] if rows else None

    def unsettled(self) -> dict[str, int]:
        """What the schedule still has to settle (all zero once the run is quiescent)."""
        queries = {
            "payments in flight": "SELECT COUNT(*) n FROM {db}.payments WHERE status IN ('in_progress', 'unknown')",
            "orders in flight": "SELECT COUNT(*) n FROM {db}.payment_orders "
            "WHERE status IN ('in_progress', 'unknown', 'refund_pending')",
            "refunds in flight": "SELECT COUNT(*) n FROM {db}.payment_cancels WHERE status IN ('requested', 'unknown')",
            "refunds owed": "SELECT COUNT(*) n FROM {db}.payment_cancels "
            "WHERE status = 'failed' AND next_attempt_at IS NOT NULL",
            "requests overdue": "SELECT COUNT(*) n FROM {db}.payment_requests WHERE "
            "(status = 'pending' AND expires_at <= UTC_TIMESTAMP(3)) OR "
            "(status = 'completed' AND release_at <= UTC_TIMESTAMP(3))",
            "payouts open": "SELECT COUNT(*) n FROM {db}.payment_settlements "
            "WHERE payout_status NOT IN ('completed', 'not_needed', 'failed')",
            "events unpublished": "SELECT COUNT(*) n FROM {db}.outbox WHERE published_at IS NULL",
        }
        return {name: int(self.all(sql)[0]["n"]) for name, sql in queries.items()}

    def drop(self) -> None:
        self.all("DROP DATABASE IF EXISTS {db}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def watch_deadlocks(params: Any, database: str, figures: Figures, stop: threading.Event) -> None:
    """Sample InnoDB's latest detected deadlock every 0.2 s and keep those of this run's database (which
    statements deadlocked is the useful part of a DATABASE_BUSY answer). Read-only; misses some under load."""
    conn = None
    seen = ""
    while not stop.wait(0.2):
        try:
            if conn is None:
                conn = pymysql.connect(
                    host=params.host, port=params.port, user=params.user, password=params.password, autocommit=True
                )
            with conn.cursor() as cur:
                cur.execute("SHOW ENGINE INNODB STATUS")
                row = cur.fetchone()
        except pymysql.err.MySQLError:
            conn = None
            continue
        text = str(row[2]) if row else ""
        start = text.find("LATEST DETECTED DEADLOCK")
        if start < 0:
            continue
        section = text[start : text.find("\nTRANSACTIONS\n", start)]
        if section == seen or f"`{database}`" not in section:
            seen = section
            continue
        seen = section
        statements = [  # values out, so that deadlocks of one kind count together
            re.sub(r"\b\d+\b", "?", re.sub(r"'[^']*'", "?", line.strip()))[:120]
            for line in section.splitlines()
            if line.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE"))
        ]
        figures.add("deadlocks", " / ".join(sorted(set(statements))) or "(statements not shown)")
    if conn is not None:
        conn.close()


def kill_connections(params: Any, database: str, figures: Figures, rng: random.Random, stop: threading.Event) -> None:
    """KILL random connections of this run's database (never another database's, never our own)."""
    conn = None
    while not stop.wait(rng.uniform(KILL_EVERY * 0.5, KILL_EVERY * 1.5)):
        try:
            if conn is None:
                conn = pymysql.connect(
                    host=params.host, port=params.port, user=params.user, password=params.password, autocommit=True
                )
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", (database,)
                )
                ids = [int(row[0]) for row in cur.fetchall()]
                for victim in rng.sample(ids, min(len(ids), rng.choice((1, 1, 2, 3)))):
                    try:
                        cur.execute("KILL %s", (victim,))
                        figures.add("counts", "db kills")
                    except pymysql.err.OperationalError:
                        pass  # gone already (1094 unknown thread id)
        except pymysql.err.MySQLError:
            conn = None
    if conn is not None:
        conn.close()


def approve_registered_sellers(inspector: Inspector, sandbox: Sandbox) -> int:
    """Stores whose seller Toss registered complete Toss's KYC: the sandbox approves them (and sends seller.changed)."""
    approved = 0
    for row in inspector.all("SELECT toss_seller_id FROM {db}.stores WHERE toss_seller_id IS NOT NULL"):
        seller = sandbox.post(f"sellers/{row['toss_seller_id']}/status", {"status": "APPROVED"})
        approved += seller.status_code == 200
    return approved


def kyc_loop(inspector: Inspector, sandbox: Sandbox, stop: threading.Event) -> None:
    """While the rooms run: registered sellers complete KYC, a while after the sellers job registered them."""
    while not stop.wait(KYC_EVERY):
        with contextlib.suppress(Exception):  # a killed connection: the next sweep
            approve_registered_sellers(inspector, sandbox)


def schedule_loop(invoke: Callable[[], Any], figures: Figures, offset: float, stop: threading.Event) -> None:
    """The schedule while the rooms run: the release function with the scheduled event, every few seconds."""
    stop.wait(offset)
    while not stop.wait(SCHEDULE_EVERY):
        try:
            invoke()
        except Exception as exc:  # noqa: BLE001 - a failed scheduled run is retried by the next one
            figures.add("schedule_failures", type(exc).__name__)
        figures.add("counts", "scheduled runs")


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class Options:
    rooms: int = 250
    participants: int = 4
    clients: int = 32
    seed: int | None = None
    db_kills: bool = True
    keep_db: bool = False
    workers: int = 16
    mysql_url: str = MYSQL_URL
    log_file: str | None = None
    report_json: str | None = None


def migrate(url: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "escrow.migrate", "--database-url", url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise SystemExit(f"migration failed:\n{result.stderr}")


@contextlib.contextmanager
def quiet_services(path: Path) -> Iterator[Any]:
    """The services log (and print metrics) to stdout/stderr; send all of that to a file, keep the real streams."""
    out, err = sys.stdout, sys.stderr
    with path.open("a", encoding="utf-8") as log:
        sys.stdout = sys.stderr = log
        try:
            yield out
        finally:
            sys.stdout, sys.stderr = out, err


def plan_rooms(opts: Options, rng: random.Random) -> list[Room]:
    kinds = list(KINDS)
    weights = [KINDS[k] for k in kinds]
    base = rng.randrange(10**6, 10**7) * 1000
    rooms = []
    for i in range(1, opts.rooms + 1):
        tag = f"{i:05d}"
        rooms.append(
            Room(
                index=i,
                chat_room_id=base + i,
                owner=f"owner_{tag}",
                members=[f"guest_{tag}_{n}" for n in range(1, opts.participants + 1)],
                store_id=f"chaos_st_{tag}",
                amount=rng.choice(AMOUNTS),
                kind=rng.choices(kinds, weights)[0],
                rng=random.Random(rng.random()),
            )
        )
    return rooms


def run(opts: Options) -> dict[str, Any]:
    started = time.monotonic()
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1, 10**6)
    rng = random.Random(seed)
    database = f"escrow_chaos_{uuid.uuid4().hex[:8]}"
    url = f"{opts.mysql_url.rstrip('/')}/{database}"
    log_path = Path(opts.log_file or f"/tmp/{database}.log")
    from escrow.config import parse_database_url

    if parse_database_url(url).host != HOST:
        raise SystemExit(f"the chaos run only talks to MariaDB on {HOST}")
    migrate(url)
    with quiet_services(log_path) as out:
        result = _run_stack(opts, seed, rng, database, url, started, out)
    result["log_file"] = str(log_path)
    return result


def _run_stack(
    opts: Options, seed: int, rng: random.Random, database: str, url: str, started: float, out: Any
) -> dict[str, Any]:
    from escrow.config import LOCAL_JWT_SECRET, TOSS_PUBLIC_TEST_SECRET_KEY, parse_database_url
    from local.api import start_local_api
    from toss_sandbox import DEFAULT_SECURITY_KEY, start_sandbox

    params = parse_database_url(url)
    figures = Figures()
    inspector = Inspector(params, database)
    # Toss's balances as they are, the settlement cycle compressed like the schedule: a released payout waits until
    # the sales it pays have settled (and refunds have taken theirs back), then the payout job sends it.
    sb = start_sandbox(
        host=HOST,
        port=0,
        seed=seed,
        payout_auto_complete_seconds=1.0,
        settlement_delay_seconds=SETTLEMENT_SECONDS,
    )
    env = {
        "APP_ENV": "local",
        "DATABASE_URL": url,
        "DB_SECRET_ARN": "",
        "DB_HOST": "",
        "DB_NAME": "",
        "JWT_SECRET": LOCAL_JWT_SECRET,
        "TOSS_API_BASE": sb.url,
        "TOSS_SECRET_KEY": TOSS_PUBLIC_TEST_SECRET_KEY,
        "TOSS_SECRET_ARN": "",
        "TOSS_SECURITY_KEY": DEFAULT_SECURITY_KEY,
        "TOSS_READ_TIMEOUT": str(TOSS_READ_TIMEOUT),
        "TOSS_CONNECT_TIMEOUT": "1",
        "TOSS_PAYOUT_READ_TIMEOUT": "5",
        "OUTBOX_PUBLISHER": "log",
        "RECONCILE_AFTER_SECONDS": "0",
        "PLATFORM_FEE_BPS": "300",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    handle = start_local_api(host=HOST, port=0, workers=opts.workers, env=env)
    stops: list[threading.Event] = []
    keep = opts.keep_db
    threads: list[threading.Thread] = []
    try:
        sandbox = Sandbox(sb.url)
        sandbox.post(
            "config",
            {"webhook_url": f"{handle.url}/api/v1/payment/webhook", "webhook_retry_delays": WEBHOOK_RETRY_DELAYS},
        ).raise_for_status()
        rooms = plan_rooms(opts, rng)
        inspector.execute_many(
            "INSERT INTO {db}.chat_rooms (chat_room_id, owner_id, updated_by) VALUES (%s, %s, 'chat-service')",
            [(r.chat_room_id, r.owner) for r in rooms],
        )
        inspector.execute_many(
            "INSERT INTO {db}.chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s)",
            [(r.chat_room_id, r.owner, 1) for r in rooms] + [(r.chat_room_id, m, 0) for r in rooms for m in r.members],
        )
        api = Api(handle.url, LOCAL_JWT_SECRET, figures)
        replays = Replays(sandbox, figures)
        flows = Flows(api, sandbox, inspector, figures, replays)
        sandbox.post("faults", FAULTS).raise_for_status()

        def background(target: Callable[..., None], *args: Any) -> None:
            stop = threading.Event()
            thread = threading.Thread(target=target, args=(*args, stop), daemon=True)
            stops.append(stop)
            threads.append(thread)
            thread.start()

        from local.scheduler import load_schedule_event, scheduled_event

        event = load_schedule_event(runtime=handle.api.runtime)

        def scheduled_run() -> Any:
            return handle.api.runtime.invoke("ReleaseFunction", scheduled_event(event))

        # Two schedules that overlap: every job must be safe to run twice at once.
        background(schedule_loop, scheduled_run, figures, 0.0)
        background(schedule_loop, scheduled_run, figures, SCHEDULE_EVERY / 2)
        if opts.db_kills:
            background(kill_connections, params, database, figures, random.Random(seed + 1))
        background(watch_deadlocks, params, database, figures)
        background(kyc_loop, inspector, sandbox)
        replay_stop = threading.Event()
        replayer = threading.Thread(target=replays.loop, args=(replay_stop,), daemon=True)
        replayer.start()

        flows_started = time.monotonic()
        with ThreadPoolExecutor(opts.clients, thread_name_prefix="client") as pool:
            list(pool.map(flows.run, rooms))
        flows_seconds = time.monotonic() - flows_started

        # The chaos stops (faults, kills, the compressed schedule); the replays still waiting go out now.
        requests.delete(f"{sb.url}/sandbox/faults", timeout=10)
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(30)
        replay_stop.set()
        replayer.join(REPLAY_WAIT + 10)

        settle_started = time.monotonic()
        passes, left = settle(sandbox, inspector)
        settle_seconds = time.monotonic() - settle_started

        from escrow.audit import audit
        from escrow.toss.client import TossClient

        toss = TossClient(sb.url, TOSS_PUBLIC_TEST_SECRET_KEY, security_key=DEFAULT_SECURITY_KEY, read_timeout=10)
        audit_started = time.monotonic()
        report = audit(toss=toss, reconciliation_period_seconds=0)
        audit_seconds = time.monotonic() - audit_started
        toss_stats = sandbox.stats()
        cross = cross_check(sandbox, inspector)
        # A run that found something keeps its database for inspection (it is named in the output).
        keep = opts.keep_db or bool(report.findings or figures.server_errors or cross["mismatches"])
        requests_by_status = {
            r["status"]: int(r["n"])
            for r in inspector.all("SELECT status, COUNT(*) n FROM {db}.payment_requests GROUP BY status")
        }
        money = {
            r["entry_type"]: int(r["total"])
            for r in inspector.all("SELECT entry_type, SUM(amount) total FROM {db}.ledger_entries GROUP BY entry_type")
        }
    finally:
        for stop in stops:
            stop.set()
        handle.stop()
        sb.stop()
        if not keep:
            with contextlib.suppress(Exception):
                inspector.drop()
        inspector.close()

    result = {
        "seed": seed,
        "database": database,
        "kept_db": keep,
        "rooms": opts.rooms,
        "participants": opts.participants,
        "clients": opts.clients,
        "flows": dict(figures.flows),
        "outcomes": dict(figures.outcomes),
        "mixed_in": dict(figures.mixed_in),
        "http": {str(k): v for k, v in sorted(figures.http.items())},
        "http_by_route": {f"{r} {s} {c}".rstrip(): n for (r, s, c), n in sorted(figures.by_route.items())},
        "gave_up": {f"{r} {s} {c}".rstrip(): n for (r, s, c), n in sorted(figures.gave_up.items())},
        "unexpected": {f"{k} {st} {s} {c}".rstrip(): n for (k, st, s, c), n in sorted(figures.unexpected.items())},
        "server_errors": figures.server_errors,
        "client_errors": dict(figures.client_errors),
        "toss_calls": toss_stats.get("calls"),
        "toss_calls_by_path": toss_stats.get("callsByPath"),
        "toss": {
            k: toss_stats.get(k) for k in ("approvals", "cancels", "payouts", "payoutsCompleted", "idempotentReplays")
        },
        "faults": toss_stats.get("faults"),
        "webhooks": toss_stats.get("webhooks"),
        "db_kills": figures.counts["db kills"],
        "deadlocks_sampled": dict(figures.deadlocks),
        "schedule_runs": figures.counts["scheduled runs"],
        "schedule_failures": dict(figures.schedule_failures),
        "settle_passes": passes,
        "unsettled": left,
        "requests_by_status": requests_by_status,
        "ledger": money,
        "cross_check": cross,
        "audit": report.to_json(),
        "audit_findings": len(report.findings),
        "audit_summary": report.summary(),
        "audit_table": report.table() if report.findings else "",
        "seconds": {
            "flows": round(flows_seconds, 1),
            "settle": round(settle_seconds, 1),
            "audit": round(audit_seconds, 1),
            "wall": round(time.monotonic() - started, 1),
        },
    }
    left_open = sum(n for status, n in requests_by_status.items() if status in ("pending", "completed"))
    result["rooms_left_open"] = left_open
    result["ok"] = (
        not report.findings
        and not figures.server_errors
        and not any(left.values())
        and not cross["mismatches"]
        and not left_open
    )
    return result


def cross_check(sandbox: Sandbox, inspector: Inspector) -> dict[str, Any]:
    """What the audit cannot do (Toss has no API to list payments): every payment the sandbox holds, against the
    ledger as a whole. Money Toss holds for us = charged - refunded (ledger); payouts made = settlements' net."""
    items = sandbox._session().get(f"{sandbox.url}/sandbox/payments", timeout=30).json()["items"]
    toss_balance = sum(
        int(p.get("balanceAmount") or 0) for p in items if p.get("status") in ("DONE", "PARTIAL_CANCELED")
    )
    money = {
        r["entry_type"]: int(r["total"])
        for r in inspector.all("SELECT entry_type, SUM(amount) total FROM {db}.ledger_entries GROUP BY entry_type")
    }
    ledger_balance = money.get("charge", 0) - money.get("refund", 0)
    payouts = sandbox._session().get(f"{sandbox.url}/v2/payouts", timeout=30, headers=_payout_headers())
    paid_out = sum(int(p["amount"]["value"]) for p in _payout_items(payouts) if p.get("status") == "COMPLETED")
    net = int(inspector.all("SELECT COALESCE(SUM(net_amount), 0) n FROM {db}.payment_settlements")[0]["n"])
    mismatches = []
    if toss_balance != ledger_balance:
        mismatches.append(f"Toss holds {toss_balance}, ledger charge - refund = {ledger_balance}")
    if paid_out != net:
        mismatches.append(f"Toss paid out {paid_out}, settlements' net = {net}")
    return {
        "toss_balance": toss_balance,
        "ledger_balance": ledger_balance,
        "paid_out": paid_out,
        "settlements_net": net,
        "mismatches": mismatches,
    }


def _payout_headers() -> dict[str, str]:
    import base64

    from escrow.config import TOSS_PUBLIC_TEST_SECRET_KEY

    return {"Authorization": "Basic " + base64.b64encode(f"{TOSS_PUBLIC_TEST_SECRET_KEY}:".encode()).decode()}


def _payout_items(response: requests.Response) -> list[dict[str, Any]]:
    body = response.json()
    entity = body.get("entityBody") if isinstance(body, dict) else None
    found = entity.get("items") if isinstance(entity, dict) else entity
    return list(found or [])


def settle(sandbox: Sandbox, inspector: Inspector) -> tuple[int, dict[str, int]]:
    """Run the schedule until nothing is in flight, no refund is owed, every webhook delivered and every payout final
    (bounded)."""
    from escrow.clock import utcnow
    from escrow.services import jobs, payouts

    # Leases of payout answers lost during the run, and the first poll of a payout, are minutes away.
    later = max(payouts.PAYOUT_LEASE, payouts.PAYOUT_POLL_AFTER) + timedelta(seconds=1)

    left: dict[str, int] = {}
    deadline = time.monotonic() + SETTLE_SECONDS
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        # From the second pass on, the schedule runs as if those minutes had passed.
        shift = later if attempt > 1 else timedelta(0)
        if attempt > 1:
            # Refunds Toss refused for a reason that passes are asked again after a back-off of minutes, compared
            # with the database's clock: bring those next attempts forward, as if the back-off had run out.
            inspector.all(
                "UPDATE {db}.payment_cancels SET next_attempt_at = NOW(3) "
                "WHERE status = 'failed' AND next_attempt_at > NOW(3)"
            )
        try:
            jobs.run_scheduled(jobs="all", now=lambda shift=shift: utcnow() + shift)
        except Exception:  # noqa: BLE001 - a failed pass is followed by the next
            pass
        approve_registered_sellers(inspector, sandbox)  # stores registered in this pass finish their KYC
        left = inspector.unsettled()
        left["webhooks pending"] = int((sandbox.stats().get("webhooks") or {}).get("pending") or 0)
        if not any(left.values()):
            return attempt, left
        time.sleep(1.0)
    return attempt, left


def _line(counter: dict[Any, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "none"


def print_result(result: dict[str, Any], out: Any) -> None:
    def p(label: str, text: Any) -> None:
        print(f"{label + ':':<28}{text}", file=out)

    db_note = "kept" if result["kept_db"] else "dropped"
    print(
        f"chaos: {result['rooms']} rooms x {result['participants']} participants, {result['clients']} clients, "
        f"seed {result['seed']}, database {result['database']} ({db_note})",
        file=out,
    )
    p("flows by kind", _line(result["flows"]))
    p("flow outcomes", _line(result["outcomes"]))
    p("mixed in", _line(result["mixed_in"]))
    p("HTTP answers by status", ", ".join(f"{k} {v}" for k, v in result["http"].items()))
    for route, n in result["http_by_route"].items():
        print(f"{'':<28}{route}: {n}", file=out)
    p("5xx given up after retries", _line(result["gave_up"]))
    p("500 answers", len(result["server_errors"]))
    for line in result["server_errors"][:20]:
        print(f"{'':<28}{line}", file=out)
    p("unexpected answers", _line(result["unexpected"]))
    if result["client_errors"]:
        p("client-side errors", _line(result["client_errors"]))
    p("Toss calls", result["toss_calls"])
    for path, n in sorted((result["toss_calls_by_path"] or {}).items()):
        print(f"{'':<28}{path}: {n}", file=out)
    p("Toss", _line(result["toss"]))
    p("injected faults", _line(result["faults"] or {}))
    p("webhooks", _line(result["webhooks"] or {}))
    p("DB kills", result["db_kills"])
    p("deadlocks (sampled)", sum(result["deadlocks_sampled"].values()))
    for statements, n in sorted(result["deadlocks_sampled"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"{'':<28}{n} x {statements}", file=out)
    p("scheduled runs", f"{result['schedule_runs']} (failed: {_line(result['schedule_failures'])})")
    left = {k: v for k, v in result["unsettled"].items() if v}
    p("settled after", f"{result['settle_passes']} pass(es); left: {_line(left)}")
    p("requests by status", _line(result["requests_by_status"]))
    if result["rooms_left_open"]:
        p("rooms left open", f"{result['rooms_left_open']} (every flow ends by releasing, cancelling or expiring)")
    p("ledger (KRW)", _line(result["ledger"]))
    c = result["cross_check"]
    p(
        "Toss vs ledger (all)",
        f"Toss holds {c['toss_balance']} = ledger {c['ledger_balance']}; paid out {c['paid_out']} = net "
        f"{c['settlements_net']}" + (f"; MISMATCH: {'; '.join(c['mismatches'])}" if c["mismatches"] else ""),
    )
    p("audit findings", f"{result['audit_findings']} ({result['audit_summary']})")
    if result["audit_table"]:
        print(result["audit_table"], file=out)
    s = result["seconds"]
    p("wall time", f"{s['wall']} s (flows {s['flows']} s, settle {s['settle']} s, audit {s['audit']} s)")
    p("service log", result["log_file"])
    print(f"result: {'PASS' if result['ok'] else 'FAIL'}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=250)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=16, help="local API worker threads (warm containers)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-db-kills", action="store_true")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--mysql-url", default=MYSQL_URL, help="server URL without a database (127.0.0.1 only)")
    parser.add_argument("--log-file", help="where the services' log goes (default /tmp/<database>.log)")
    parser.add_argument("--report-json", help="also write the figures as JSON to this file")
    parser.add_argument(
        "--watchdog",
        type=float,
        help="after this many seconds print every thread's stack to stderr and exit (a stuck run says where)",
    )
    args = parser.parse_args(argv)
    if args.watchdog:
        import faulthandler

        faulthandler.dump_traceback_later(args.watchdog, exit=True)
    if args.rooms < 1 or args.participants < 1 or args.clients < 1:
        parser.error("--rooms, --participants and --clients must be at least 1")
    opts = Options(
        rooms=args.rooms,
        participants=args.participants,
        clients=args.clients,
        seed=args.seed,
        db_kills=not args.no_db_kills,
        keep_db=args.keep_db,
        workers=args.workers,
        mysql_url=args.mysql_url,
        log_file=args.log_file,
        report_json=args.report_json,
    )
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    result = run(opts)
    print_result(result, sys.stdout)
    if opts.report_json:
        Path(opts.report_json).write_text(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
