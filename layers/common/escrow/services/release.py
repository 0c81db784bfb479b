"""Releasing held money to the store: the decision, one settlement per request. Sending the settlement's payout to
Toss is `escrow.services.payouts`, in the scheduled run: the release endpoint never calls Toss (a payout call may
take 60 s, inside a 30 s API), it answers with the settlement `scheduled` and what its payout waits for.

The schedule releases due requests in chunks: one transaction locks up to RELEASE_CHUNK requests, skipping those
another transaction holds (`requests_repo.lock_many_skip_locked`; MySQL 8 / MariaDB 10.6: two runs at once take
different requests, and neither waits on a room someone is releasing or refunding by hand), then their shares, and
writes the chunk's shares, ledger entries, settlements, events and request statuses with one statement each (about
0.2 statements per request instead of 11). The rules (only `completed` money, once; not while a refund of the room
is in flight) are those of the release endpoint, which goes through the same code with one request: `plan_release`
decides from the locked rows, without I/O, and the repositories write what it decided.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, utcnow
from escrow.config import get_settings
from escrow.errors import Conflict, NotFound
from escrow.money import platform_fee
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import charges as charges_repo
from escrow.repositories import ledger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import refund_accounts as refund_accounts_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import settlements as settlements_repo
from escrow.services import isolation, payouts, rooms
from escrow.states import HELD, PAYMENT, REQUEST, PaymentStatus, RequestStatus
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal

RELEASE_CHUNK = 50  # requests released per transaction by the schedule

_POSTPONED = {
    "REQUEST_NOT_FUNDED": "not every participant has paid yet",
    "REFUND_IN_PROGRESS": "a refund in this room is still in progress; release after it settles",
}


# --- the decision (pure) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRelease:
    """One request to release: its held shares, what each one releases, and the settlement's amounts."""

    request: Mapping[str, Any]
    shares: tuple[Mapping[str, Any], ...]  # the held shares, each released in full (paid - refunded)
    gross: int
    fee: int

    @property
    def net(self) -> int:
        return self.gross - self.fee

    def released_payments(self) -> list[dict[str, Any]]:
        """The answer's and the event's list of released shares."""
        return [
            {
                "payer_id": s["payer_id"],
                "paymentKey": s["payment_key"],
                "status": "RELEASED",
                "amount": s["paid_amount"] - s["refunded_amount"],
            }
            for s in self.shares
        ]

    def event(self, settlement_id: int) -> outbox_repo.Event:
        request_id = self.request["id"]
        return outbox_repo.Event(
            event_type="EscrowReleased",
            aggregate_id=request_id,
            dedupe_key=f"EscrowReleased:{request_id}",
            payload={
                "payment_request_id": request_id,
                "chat_room_id": self.request["chat_room_id"],
                "store_id": self.request["store_id"],
                "gross_amount": self.gross,
                "platform_fee": self.fee,
                "net_amount": self.net,
                "settlement_id": settlement_id,
                "released_payments": self.released_payments(),
            },
        )


@dataclass(frozen=True)
class ReleasePlan:
    """What releasing a set of locked requests writes, and which of them wait (request id -> code, see _POSTPONED)."""

    releases: list[RequestRelease] = field(default_factory=list)
    postponed: dict[int, str] = field(default_factory=dict)
    fee_bps: int = 0
    actor: str = ""

    @property
    def shares(self) -> list[Mapping[str, Any]]:
        return [s for r in self.releases for s in r.shares]

    @property
    def ledger_entries(self) -> list[ledger.Entry]:
        """Every movement once: (entry_type, reference) is unique, a repeat records nothing."""
        return [
            ledger.Entry(
                request_id=r.request["id"],
                payment_id=s["id"],
                entry_type="release",
                amount=s["paid_amount"] - s["refunded_amount"],
                reference=f"release:{s['id']}",
                actor=self.actor,
                reason="released to the store",
            )
            for r in self.releases
            for s in r.shares
        ]

    @property
    def settlements(self) -> list[settlements_repo.NewSettlement]:
        return [
            settlements_repo.NewSettlement(
                request_id=r.request["id"],
                store_id=r.request["store_id"],
                gross=r.gross,
                fee_bps=self.fee_bps,
                fee=r.fee,
                net=r.net,
                released_by=self.actor,
            )
            for r in self.releases
        ]

    def events(self, settlement_ids: Mapping[int, int]) -> list[outbox_repo.Event]:
        return [r.event(settlement_ids[r.request["id"]]) for r in self.releases]


def plan_release(
    requests: Sequence[Mapping[str, Any]],
    shares: Sequence[Mapping[str, Any]],
    refunds_in_flight: set[int],
    *,
    fee_bps: int,
    actor: str,
) -> ReleasePlan:
    """Decide, from locked rows only, what releasing `requests` means. Only a funded (completed) request is released;
    one whose shares have a refund in flight waits for it; every held share is released in full, once. Raises
    InvalidTransition when a row could not make its transition."""
    postponed = {r["id"]: "REQUEST_NOT_FUNDED" for r in requests if r["status"] != RequestStatus.COMPLETED}
    by_request: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for share in shares:
        by_request[share["payment_request_id"]].append(share)
    releases = []
    for request in requests:
        if request["id"] in postponed:
            continue
        own = by_request.get(request["id"], [])
        if any(share["id"] in refunds_in_flight for share in own):
            postponed[request["id"]] = "REFUND_IN_PROGRESS"
            continue
        current = [share for share in own if share["status"] != PaymentStatus.REMOVED]
        if not current or any(
            share["status"] not in HELD or share["paid_amount"] - share["refunded_amount"] != share["amount"]
            for share in current
        ):
            # Funded means every current participant holds their share in full; a row that says otherwise is not
            # released (the funding rule and this check are the same rule; the audit reports the disagreement).
            postponed[request["id"]] = "REQUEST_NOT_FUNDED"
            continue
        held = tuple(current)
        PAYMENT.check_each([share["status"] for share in held], PaymentStatus.RELEASED)
        REQUEST.check(request["status"], RequestStatus.RELEASED)
        gross = sum(share["paid_amount"] - share["refunded_amount"] for share in held)
        releases.append(RequestRelease(request, held, gross, platform_fee(gross, fee_bps)))
    return ReleasePlan(releases, postponed, fee_bps, actor)


# --- applying it ------------------------------------------------------------------------------------------------


def _release_locked_many(
    tx: db.Tx, requests: Sequence[Mapping[str, Any]], *, actor: str
) -> tuple[ReleasePlan, dict[int, int]]:
    """Release locked requests: their shares are locked, checked and written with one statement each (not one per
    share), then the ledger entries, settlements, events and request statuses. Returns the plan and the settlement
    ids ({request id: settlement id})."""
    funded = [r["id"] for r in requests if r["status"] == RequestStatus.COMPLETED]
    if not funded:
        return plan_release(requests, [], set(), fee_bps=0, actor=actor), {}
    shares = payments_repo.lock_for_requests(tx, funded)
    in_flight = cancels_repo.payments_with_refund_in_flight(tx, [s["id"] for s in shares])
    # A current participant's refund waiting for their refund account holds the release too (its money is on its way
    # back); a removed participant's does not: what they hold is never released.
    waiting = cancels_repo.payments_waiting_for_account(tx, [s["id"] for s in shares])
    in_flight |= {s["id"] for s in shares if s["id"] in waiting and s["status"] != PaymentStatus.REMOVED}
    plan = plan_release(requests, shares, in_flight, fee_bps=get_settings().platform_fee_bps, actor=actor)
    if not plan.releases:
        return plan, {}
    if plan.shares:
        payments_repo.release_many(tx, plan.shares)
        charges_repo.release_for_shares(tx, [s["id"] for s in plan.shares])
        # A payer's refund account left from a refund Toss did not make (the payer did not ask again) is not kept
        # once their money is released: nothing of theirs is refunded any more.
        refund_accounts_repo.forget_for_payments(tx, [s["id"] for s in plan.shares])
        ledger.record_many(tx, plan.ledger_entries)
    # One statement for the settlements of the chunk and one for its events: ref_payout_id is the settlement's
    # refPayoutId at Toss, unique.
    settlement_ids = settlements_repo.insert_many(tx, plan.settlements)
    outbox_repo.add_many(tx, plan.events(settlement_ids))
    requests_repo.release_many(tx, [r.request for r in plan.releases], closed_at=db_time(utcnow()), closed_by=actor)
    count("EscrowReleased", len(plan.releases))
    count("AmountReleasedKRW", sum(r.gross for r in plan.releases))
    return plan, settlement_ids


# --- the release endpoint -----------------------------------------------------------------------------------


def release_room(principal: Principal, chat_room_id: int) -> dict[str, Any]:
    """Release a funded room's held shares: the shares, ledger, settlement and event in one transaction. The payout
    is the schedule's (the answer shows the settlement scheduled)."""
    with db.transaction() as tx:
        room = rooms.known_room(tx, chat_room_id)
        rooms.require_owner(principal, room, "release the deposit")
        request = requests_repo.lock_open_for_room(tx, chat_room_id)
        if request is None:
            latest = requests_repo.latest_for_room(tx, chat_room_id)
            if latest is None:
                raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
            if latest["status"] == RequestStatus.RELEASED:
                # Asked again (a retry after a lost answer, or a second tap): the first release, as it stands.
                raise Conflict(
                    "this request was already released; nothing more was released",
                    code="ALREADY_RELEASED",
                    payment_request_id=latest["id"],
                    **released_view(tx, latest["id"]),
                )
            raise Conflict(f"the request is {latest['status']} and cannot be released", code="NOT_RELEASABLE")
        plan, settlement_ids = _release_locked_many(tx, [request], actor=principal.user_id)
        if request["id"] in plan.postponed:
            code = plan.postponed[request["id"]]
            raise Conflict(_POSTPONED[code], code=code)
    (released,) = plan.releases
    settle = payouts.settlement_view(settlement_ids[request["id"]], principal)
    return {
        "released_payments": released.released_payments(),
        "payment_request_id": request["id"],
        "settlement": settle,
    }


def released_view(tx: db.Tx, request_id: int) -> dict[str, Any]:
    """What a release wrote, read back: the released shares and the settlement."""
    released = [
        {"payer_id": r["payer_id"], "paymentKey": r["payment_key"], "status": "RELEASED", "amount": int(r["amount"])}
        for r in ledger.released_shares(tx, request_id)
    ]
    settlement = settlements_repo.for_request(tx, request_id)
    view = payouts.settlement_view(settlement["id"]) if settlement is not None else None
    return {"released_payments": released, "settlement": view}


# --- the schedule -------------------------------------------------------------------------------------------


def release_due(
    limit: int,
    *,
    now: Callable[[], datetime] = utcnow,
    toss: TossPort | None = None,
    deadline: Callable[[], bool] = lambda: False,
    only: Sequence[int] | None = None,
) -> dict[str, int]:
    """Auto-release completed requests whose release_at has passed, RELEASE_CHUNK per transaction. Safe to run twice
    at once: requests another run (or a person) holds are skipped, and every request is re-checked under its lock.

    One request that cannot be released (its numbers break a column, a row breaks a rule) does not stop the others:
    a chunk that fails is released again one request at a time, and the request that fails alone is set aside
    (`job_failures`, with its error and a growing back-off), counted (JobItemsFailed) and skipped until then.

    `only`: release among these requests (a chunk the scheduled planner handed a worker, `escrow.services.fanout`):
    each is due again now or skipped, so a chunk delivered twice releases nothing twice."""
    at = now()
    with db.reader() as tx:
        due = requests_repo.due_for_release(tx, db_time(at), limit, only)
    waiting = isolation.waiting("release", "request", due, at)
    ids = [i for i in due if str(i) not in waiting]
    retried = isolation.set_aside_before("release", "request", ids)
    released = skipped = failed = 0
    for start in range(0, len(ids), RELEASE_CHUNK):
        if deadline():
            break
        chunk = ids[start : start + RELEASE_CHUNK]
        try:
            plan = _release_chunk(chunk)
        except Exception as exc:
            if isolation.infrastructure(exc):
                raise
            logger.warning("a release chunk failed; releasing its requests one at a time", extra={"error": str(exc)})
            plan = ReleasePlan()
            for request_id in chunk:
                try:
                    one = _release_chunk([request_id])
                except Exception as one_exc:
                    if isolation.infrastructure(one_exc):
                        raise
                    isolation.set_aside("release", "request", request_id, one_exc)
                    failed += 1
                    continue
                plan.releases.extend(one.releases)
                plan.postponed.update(one.postponed)
        for request_id, code in plan.postponed.items():
            if code != "REQUEST_NOT_FUNDED":  # not completed any more: someone else released or refunded it
                logger.info("auto-release postponed", extra={"payment_request_id": request_id, "reason": code})
        released += len(plan.releases)
        skipped += len(chunk) - len(plan.releases)
        isolation.cleared("release", "request", [r.request["id"] for r in plan.releases], retried)
    return {"released": released, "skipped": skipped + len(waiting), "settlements": released, "failed": failed}


def _release_chunk(chunk: Sequence[int]) -> ReleasePlan:
    with db.transaction() as tx:
        locked = requests_repo.lock_many_skip_locked(tx, chunk)
        plan, _ = _release_locked_many(tx, locked, actor="schedule")
    return plan
