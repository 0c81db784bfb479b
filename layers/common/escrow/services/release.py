"""Releasing held money to the store: one settlement per request, one Toss payout per settlement.

Releases. The schedule releases due requests in chunks: one transaction locks up to RELEASE_CHUNK requests (FOR UPDATE
SKIP LOCKED, MySQL 8 / MariaDB 10.6: two runs at once take different requests, and neither waits on a room someone is
releasing or refunding by hand), then their shares, and writes the chunk's shares, ledger entries, settlements, events
and request statuses with one statement each (about 0.2 statements per request instead of 11). The rules (only
`completed` money, once; not while a refund of the room is in flight) are those of the release endpoint, which goes
through the same code with one request.

Payouts go to Toss in requests of up to PAYOUT_BATCH items (`POST /v2/payouts` takes a JSON array; REFERENCE §8.3,
the limit of 100 is UNCONFIRMED). What keeps a payout from being made twice, or never:

* Lease. A settlement whose payout is being sent is `requesting` with `payout_lease_until`; only the run that claimed
  it (SELECT ... FOR UPDATE SKIP LOCKED, then the lease, in one transaction) sends it. A lease that has run out means
  the sender died or got no answer, and the next run takes the settlement over.
* One Idempotency-Key per request to Toss, derived from the settlements in it and their attempt numbers
  (`payout_idempotency_key`; a batch of one keeps the key `payout-{id}-{attempt}`).
* A retry after no answer (timeout, broken connection, 5xx, IDEMPOTENT_REQUEST_PROCESSING) reuses the same key: the
  settlements stay `requesting` with their attempt numbers, and every member of one request carries the same
  `payout_requested_at` (the batch marker, unique per request to the millisecond), so the run that takes over after
  the lease rebuilds the same batch, hence the same key. Toss answers a repeated key with its first answer.
* A fresh attempt after a definite refusal gets a new key: the settlement goes back to `scheduled` with the refusal,
  and its next claim increments `payout_attempts`.
* Toss refuses a request as a whole (one seller not approved refuses every item; nothing of it is created). A batch
  refused for a reason that may concern some items is split, each part a new request with its own key: in halves by
  seller, then in halves by item (not for a refusal about the only seller left), so one unpayable seller does not
  hold back the others. Refusals about the whole request (balance, holiday, transient errors) are not split; the
  batch goes back to `scheduled`. Settlements of stores whose seller we know is not payable yet are sent alone.
* `refPayoutId` (`escrow-req-{request id}`) is unique at Toss, the last guard: should a rebuilt batch differ from the
  one sent (two runs' markers in the same millisecond, a member settled by a webhook meanwhile), Toss refuses the
  duplicates, the split ends with single items, and a single item refused DUPLICATED_REF_PAYOUT_ID was created by an
  earlier request whose answer was lost: it waits for its payout.changed webhook (matched by refPayoutId).
* Once Toss has taken a payout, `payout_lease_until` says when to poll it (webhooks are the main signal, polling the
  fallback): each run polls a bounded number of the payouts it has heard of least recently.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.config import get_settings
from escrow.errors import Conflict, Forbidden, NotFound
from escrow.observability import count, logger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import requests as requests_repo
from escrow.repositories import settlements as settlements_repo
from escrow.states import HELD_PAYMENT_STATUSES, check_payment, check_request
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

if TYPE_CHECKING:
    from escrow.auth import Principal

RELEASE_CHUNK = 50  # requests released per transaction by the schedule
PAYOUT_BATCH = 100  # items per POST /v2/payouts
PAYOUT_LEASE = timedelta(minutes=3)  # longer than one payout call may take (TOSS_PAYOUT_READ_TIMEOUT, 60 s)
# Polling is the fallback for a lost payout.changed webhook (Toss retries those for days): an accepted payout is
# first polled after PAYOUT_POLL_AFTER and then at that interval, at most PAYOUT_POLLS_PER_RUN per run.
PAYOUT_POLL_AFTER = timedelta(minutes=30)
PAYOUT_POLLS_PER_RUN = 100
PAYABLE_SELLER_STATUSES = ("PARTIALLY_APPROVED", "APPROVED")
# Refusals that a later retry can overcome (seller not approved yet, balance not settled yet, Toss busy).
PAYOUT_RETRY_LATER = {
    "FORBIDDEN_SELLER_PAYOUT",
    "INSUFFICIENT_BALANCE",
    "NOT_ENOUGH_BALANCE",
    "NOT_ALLOWED_HOLIDAY",
    "SECURITY_KEY_MISSING",
    "SELLER_NOT_REGISTERED",
}
# Refusals about the whole request, whatever its items: splitting the batch would only repeat them.
PAYOUT_REFUSED_AS_A_WHOLE = {
    "INSUFFICIENT_BALANCE",
    "NOT_ENOUGH_BALANCE",
    "NOT_ALLOWED_HOLIDAY",
    "SECURITY_KEY_MISSING",
}

# Refusals about one seller: a batch of that seller's payouts alone is refused as a whole.
PAYOUT_SELLER_REFUSALS = {"FORBIDDEN_SELLER_PAYOUT", "NOT_FOUND_SELLER"}

_PAYOUT_COLUMNS = (
    "s.id, s.payment_request_id, s.store_id, s.net_amount, s.ref_payout_id, s.payout_status, s.payout_attempts, "
    "s.payout_lease_until, s.payout_requested_at, st.toss_seller_id, st.seller_status"
)


def platform_fee(gross: int, bps: int) -> int:
    return gross * bps // 10_000  # rounded down: the store never gets less than its share


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _rows(n: int, width: int) -> str:
    row = "(" + ", ".join(["%s"] * width) + ")"
    return ", ".join([row] * n)


# --- release ------------------------------------------------------------------------------------------------


def release_room(principal: Principal, chat_room_id: int, *, toss: TossClient | None = None) -> dict[str, Any]:
    with db.transaction() as tx:
        request = requests_repo.lock_open_for_room(tx, chat_room_id)
        if request is None:
            latest = tx.one(
                "SELECT id, status, requester_id FROM payment_requests WHERE chat_room_id = %s "
                "ORDER BY id DESC LIMIT 1",
                (chat_room_id,),
            )
            if latest is None:
                raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
            _authorise(principal, latest)
            if latest["status"] == "released":
                raise Conflict(
                    "this request was already released; nothing more was released",
                    code="ALREADY_RELEASED",
                    payment_request_id=latest["id"],
                )
            raise Conflict(f"the request is {latest['status']} and cannot be released", code="NOT_RELEASABLE")
        _authorise(principal, request)
        released, settlement_id = _release_locked(tx, request, actor=principal.user_id)
    settle = request_payout(settlement_id, toss=toss)
    return {"released_payments": released, "payment_request_id": request["id"], "settlement": settle}


def _authorise(principal: Principal, request: dict[str, Any]) -> None:
    if principal.user_id != request["requester_id"] and not principal.is_admin:
        raise Forbidden("only the room's owner can release the deposit", code="NOT_ROOM_OWNER")


_POSTPONED = {
    "REQUEST_NOT_FUNDED": "not every participant has paid yet",
    "REFUND_IN_PROGRESS": "a refund in this room is still in progress; release after it settles",
}


def _release_locked(tx: db.Tx, request: dict[str, Any], *, actor: str) -> tuple[list[dict[str, Any]], int]:
    """Release every held share of one locked, fully paid request; write the settlement and the event."""
    done, postponed = _release_locked_many(tx, [request], actor=actor)
    if request["id"] in postponed:
        code = postponed[request["id"]]
        raise Conflict(_POSTPONED[code], code=code)
    return done[request["id"]]


def _release_locked_many(
    tx: db.Tx, requests: Sequence[dict[str, Any]], *, actor: str
) -> tuple[dict[int, tuple[list[dict[str, Any]], int]], dict[int, str]]:
    """Release locked requests: {request id: (released shares, settlement id)} and {request id: why postponed}.

    The shares of all of them are locked, checked and written with one statement each (not one per share)."""
    postponed = {r["id"]: "REQUEST_NOT_FUNDED" for r in requests if r["status"] != "completed"}
    funded = [r for r in requests if r["id"] not in postponed]
    if not funded:
        return {}, postponed
    request_ids = [r["id"] for r in funded]
    shares = tx.all(
        "SELECT id, payment_request_id, payer_id, payment_key, status, paid_amount, refunded_amount FROM payments "
        f"WHERE payment_request_id IN ({_marks(request_ids)}) ORDER BY id FOR UPDATE",
        request_ids,
    )
    share_ids = [s["id"] for s in shares]
    in_flight = (
        {
            r["payment_id"]
            for r in tx.all(
                f"SELECT DISTINCT payment_id FROM payment_cancels WHERE payment_id IN ({_marks(share_ids)}) "
                "AND status IN ('requested', 'unknown')",
                share_ids,
            )
        }
        if share_ids
        else set()
    )
    by_request: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for share in shares:
        by_request[share["payment_request_id"]].append(share)

    bps = get_settings().platform_fee_bps
    plan: list[tuple[dict[str, Any], list[dict[str, Any]], int]] = []
    released_share_ids: list[int] = []
    ledger_rows: list[tuple[Any, ...]] = []
    for request in funded:
        own = by_request.get(request["id"], [])
        if any(share["id"] in in_flight for share in own):
            postponed[request["id"]] = "REFUND_IN_PROGRESS"
            continue
        released = []
        gross = 0
        for share in own:
            if share["status"] not in HELD_PAYMENT_STATUSES:
                continue
            held = share["paid_amount"] - share["refunded_amount"]
            check_payment(share["status"], "released")
            released_share_ids.append(share["id"])
            ledger_rows.append(
                (request["id"], share["id"], "release", held, f"release:{share['id']}", actor, "released to the store")
            )
            gross += held
            released.append(
                {
                    "payer_id": share["payer_id"],
                    "paymentKey": share["payment_key"],
                    "status": "RELEASED",
                    "amount": held,
                }
            )
        check_request(request["status"], "released")
        plan.append((request, released, gross))
    if not plan:
        return {}, postponed

    if released_share_ids:
        tx.execute(
            f"UPDATE payments SET status = 'released' WHERE id IN ({_marks(released_share_ids)})", released_share_ids
        )
        # Every movement once: (entry_type, reference) is unique, a repeat records nothing (as ledger.record does).
        tx.execute(
            "INSERT INTO ledger_entries (payment_request_id, payment_id, entry_type, amount, reference, actor, reason) "
            f"VALUES {_rows(len(ledger_rows), 7)} ON DUPLICATE KEY UPDATE id = id",
            [value for row in ledger_rows for value in row],
        )
    # One statement for the settlements of the chunk and one for its events (settlements_repo.insert and
    # outbox_repo.add, many rows at once): ref_payout_id is the settlement's refPayoutId at Toss, unique.
    money = [(request, released, gross, platform_fee(gross, bps)) for request, released, gross in plan]
    tx.execute(
        "INSERT INTO payment_settlements (payment_request_id, store_id, gross_amount, fee_bps, platform_fee, "
        f"net_amount, released_by, ref_payout_id, payout_status) VALUES {_rows(len(money), 9)}",
        [
            value
            for request, _, gross, fee in money
            for value in (
                request["id"],
                request["store_id"],
                gross,
                bps,
                fee,
                gross - fee,
                actor,
                f"escrow-req-{request['id']}",
                "scheduled" if gross - fee > 0 else "not_needed",
            )
        ],
    )
    settled = [request["id"] for request, *_ in money]
    settlement_ids = {
        row["payment_request_id"]: row["id"]
        for row in tx.all(
            f"SELECT id, payment_request_id FROM payment_settlements WHERE payment_request_id IN ({_marks(settled)})",
            settled,
        )
    }
    events = []
    done: dict[int, tuple[list[dict[str, Any]], int]] = {}
    for request, released, gross, fee in money:
        payload = {
            "payment_request_id": request["id"],
            "chat_room_id": request["chat_room_id"],
            "store_id": request["store_id"],
            "gross_amount": gross,
            "platform_fee": fee,
            "net_amount": gross - fee,
            "settlement_id": settlement_ids[request["id"]],
            "released_payments": released,
        }
        events += [
            "EscrowReleased",
            str(request["id"]),
            f"EscrowReleased:{request['id']}",
            json.dumps(payload, ensure_ascii=False, default=str),
        ]
        done[request["id"]] = (released, settlement_ids[request["id"]])
    tx.execute(
        f"INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload) VALUES {_rows(len(money), 4)} "
        "ON DUPLICATE KEY UPDATE id = id",
        events,
    )
    total = sum(gross for _, _, gross, _ in money)
    closed = list(done)
    tx.execute(
        "UPDATE payment_requests SET status = 'released', closed_at = %s, closed_by = %s, close_reason = 'released' "
        f"WHERE id IN ({_marks(closed)})",
        [db_time(utcnow()), actor, *closed],
    )
    count("EscrowReleased", len(done))
    count("AmountReleasedKRW", total)
    return done, postponed


def release_due(
    limit: int,
    *,
    now: Callable[[], datetime] = utcnow,
    toss: TossClient | None = None,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Auto-release completed requests whose release_at has passed, RELEASE_CHUNK per transaction. Safe to run twice
    at once: requests another run (or a person) holds are skipped, and every request is re-checked under its lock."""
    with db.reader() as tx:
        due = tx.all(
            "SELECT id FROM payment_requests WHERE status = 'completed' AND release_at <= %s "
            "ORDER BY release_at LIMIT %s",
            (db_time(now()), limit),
        )
    ids = [row["id"] for row in due]
    released = skipped = 0
    for start in range(0, len(ids), RELEASE_CHUNK):
        if deadline():
            break
        chunk = ids[start : start + RELEASE_CHUNK]
        with db.transaction() as tx:
            locked = tx.all(
                "SELECT id, chat_room_id, store_id, requester_id, status FROM payment_requests "
                f"WHERE id IN ({_marks(chunk)}) ORDER BY id FOR UPDATE SKIP LOCKED",
                chunk,
            )
            done, postponed = _release_locked_many(tx, locked, actor="schedule")
        for request_id, code in postponed.items():
            if code != "REQUEST_NOT_FUNDED":  # not completed any more: someone else released or refunded it
                logger.info("auto-release postponed", extra={"payment_request_id": request_id, "reason": code})
        released += len(done)
        skipped += len(chunk) - len(done)
    return {"released": released, "skipped": skipped, "settlements": released}


# --- payouts ------------------------------------------------------------------------------------------------


def _payout_item(s: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "refPayoutId": s["ref_payout_id"],
        "destination": s["toss_seller_id"],
        "scheduleType": "EXPRESS",
        "amount": {"currency": "KRW", "value": s["net_amount"]},
        "transactionDescription": "모임예약금",
        "metadata": {"paymentRequestId": str(s["payment_request_id"]), "storeId": s["store_id"][:500]},
    }


def payout_idempotency_key(batch: Sequence[Mapping[str, Any]]) -> str:
    """The key of one request to Toss: who is in it, at which attempt. The same batch sent again after no answer has
    the same key; any other batch, or a fresh attempt after a refusal, has another."""
    if len(batch) == 1:
        return f"payout-{batch[0]['id']}-{batch[0]['payout_attempts']}"
    basis = ",".join(f"{s['id']}:{s['payout_attempts']}" for s in sorted(batch, key=lambda s: int(s["id"])))
    return f"payout-batch-{len(batch)}-{hashlib.sha256(basis.encode()).hexdigest()[:48]}"


_marker_lock = threading.Lock()
_last_marker: datetime | None = None


def _new_marker(now: datetime) -> datetime:
    """A batch marker (`payout_requested_at`): the time to the millisecond, never the same twice in this process."""
    global _last_marker
    at = db_time(now)
    assert at is not None
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)
    with _marker_lock:
        if _last_marker is not None and at <= _last_marker:
            at = _last_marker + timedelta(milliseconds=1)
        _last_marker = at
    return at


def _claim_one(settlement_id: int, now: datetime) -> dict[str, Any] | None:
    """Take the payout of one settlement (the release endpoint), or None when it is not ours to send."""
    with db.transaction() as tx:
        s = tx.one(
            f"SELECT {_PAYOUT_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
            "WHERE s.id = %s FOR UPDATE",
            (settlement_id,),
        )
        if s is None or s["payout_status"] not in ("scheduled", "requesting"):
            return None
        if s["payout_lease_until"] is not None and s["payout_lease_until"] > db_time(now):
            return None
        if not s["toss_seller_id"]:
            settlements_repo.update(
                tx,
                s["id"],
                payout_error_code="SELLER_NOT_REGISTERED",
                payout_error_message="the store has no registered payout account yet",
            )
            return None
        fresh = s["payout_status"] == "scheduled"
        s["payout_attempts"] += 1 if fresh else 0
        s["payout_requested_at"] = _new_marker(now) if fresh else s["payout_requested_at"]
        settlements_repo.update(
            tx,
            s["id"],
            payout_status="requesting",
            payout_attempts=s["payout_attempts"],
            payout_lease_until=db_time(now + PAYOUT_LEASE),
            payout_requested_at=s["payout_requested_at"],
        )
        return s


def _claim_due(now: datetime, limit: int, run_started: datetime) -> list[list[dict[str, Any]]]:
    """Take up to `limit` payouts for this run, as the batches to send: first those whose answer was lost (rebuilt as
    they were sent, by their marker), then scheduled ones not touched since the run started (one refused in this run
    waits for the next), least recently touched first (one refused again and again does not hold up the others)."""
    at = db_time(now)
    lease = db_time(now + PAYOUT_LEASE)
    with db.transaction() as tx:
        ids = [
            r["id"]
            for r in tx.all(
                "SELECT id FROM payment_settlements WHERE payout_status = 'requesting' "
                "AND (payout_lease_until IS NULL OR payout_lease_until < %s) "
                "ORDER BY payout_requested_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (at, limit),
            )
        ]
        if len(ids) < limit:
            ids += [
                r["id"]
                for r in tx.all(
                    "SELECT s.id FROM payment_settlements s WHERE s.payout_status = 'scheduled' "
                    "AND (s.payout_lease_until IS NULL OR s.payout_lease_until < %s) "
                    "AND EXISTS (SELECT 1 FROM stores st WHERE st.store_id = s.store_id "
                    "AND st.toss_seller_id IS NOT NULL) AND s.updated_at < %s "
                    "ORDER BY s.updated_at, s.id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (at, run_started, limit - len(ids)),
                )
            ]
        if not ids:
            return []
        rows = tx.all(
            f"SELECT {_PAYOUT_COLUMNS} FROM payment_settlements s JOIN stores st ON st.store_id = s.store_id "
            f"WHERE s.id IN ({_marks(ids)}) ORDER BY s.id",
            ids,
        )
        batches: list[list[dict[str, Any]]] = []
        lost: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        payable: list[dict[str, Any]] = []
        for s in rows:
            if s["payout_status"] == "requesting":
                lost[s["payout_requested_at"]].append(s)
            elif s["seller_status"] in PAYABLE_SELLER_STATUSES or s["seller_status"] is None:
                payable.append(s)
            else:
                batches.append([s])  # Toss will likely refuse this seller: alone, it refuses nobody else
        retried = [group[i : i + PAYOUT_BATCH] for group in lost.values() for i in range(0, len(group), PAYOUT_BATCH)]
        if retried:
            again = [s["id"] for batch in retried for s in batch]
            tx.execute(
                f"UPDATE payment_settlements SET payout_lease_until = %s WHERE id IN ({_marks(again)})",
                [lease, *again],
            )
        fresh = [*[payable[i : i + PAYOUT_BATCH] for i in range(0, len(payable), PAYOUT_BATCH)], *batches]
        for batch in fresh:
            marker = _new_marker(now)
            members = [s["id"] for s in batch]
            tx.execute(
                "UPDATE payment_settlements SET payout_status = 'requesting', payout_attempts = payout_attempts + 1, "
                f"payout_lease_until = %s, payout_requested_at = %s WHERE id IN ({_marks(members)})",
                [lease, marker, *members],
            )
            for s in batch:
                s.update(
                    payout_status="requesting", payout_attempts=s["payout_attempts"] + 1, payout_requested_at=marker
                )
    return retried + fresh


def _send(
    batch: list[dict[str, Any]],
    toss: TossClient,
    now: Callable[[], datetime],
    tally: Counter[str],
    deadline: Callable[[], bool] = lambda: False,
) -> None:
    """One request to Toss for a claimed batch, and what its answer means for each settlement in it."""
    tally["calls"] += 1
    try:
        items = toss.request_payouts([_payout_item(s) for s in batch], idempotency_key=payout_idempotency_key(batch))
    except TossApiError as exc:
        if exc.code == "IDEMPOTENT_REQUEST_PROCESSING" or exc.outcome_unknown or 200 <= exc.status < 300:
            _no_answer(batch, exc, tally)  # (a 2xx we could not read: Toss took it; its answer comes back later)
            return
        if exc.code == "DUPLICATED_REF_PAYOUT_ID" and len(batch) == 1:
            _already_at_toss(batch[0], now())
            tally["accepted"] += 1
            return
        parts = _split(batch, exc)
        if parts and not deadline():
            # Nothing of the refused request was created: each part goes as a new request, with its own key.
            for part in parts:
                _remark(part, now())
                _send(part, toss, now, tally, deadline)
            return
        _payout_refused(batch, exc)
        tally["refused"] += len(batch)
    except TossError as exc:
        _no_answer(batch, exc, tally)
    else:
        tally["accepted"] += _record_payouts(batch, items, now())


def _split(batch: list[dict[str, Any]], exc: TossApiError) -> list[list[dict[str, Any]]]:
    """How to ask again after Toss refused a whole batch: in halves by seller (a refusal is most often about one
    seller), then in halves by item; [] when splitting cannot help (the refusal is about the whole request, or about
    the only seller in it)."""
    if len(batch) < 2 or exc.retryable or exc.configuration or exc.code in PAYOUT_REFUSED_AS_A_WHOLE:
        return []
    sellers = list(dict.fromkeys(s["toss_seller_id"] for s in batch))
    if len(sellers) > 1:
        first = set(sellers[: len(sellers) // 2])
        return [
            [s for s in batch if s["toss_seller_id"] in first],
            [s for s in batch if s["toss_seller_id"] not in first],
        ]
    if exc.code in PAYOUT_SELLER_REFUSALS:
        return []
    half = len(batch) // 2
    return [batch[:half], batch[half:]]


def _no_answer(batch: list[dict[str, Any]], exc: Exception, tally: Counter[str]) -> None:
    tally["unanswered"] += len(batch)
    logger.warning(
        "payout answer lost; the lease runs out and the schedule asks again with the same key",
        extra={"settlement_ids": [s["id"] for s in batch][:10], "items": len(batch), "error": str(exc)[:200]},
    )


def _remark(batch: list[dict[str, Any]], now: datetime) -> None:
    """A part of a refused batch becomes a request of its own: its own marker (and so its own key on a retry)."""
    marker = _new_marker(now)
    members = [s["id"] for s in batch]
    with db.transaction() as tx:
        tx.execute(
            "UPDATE payment_settlements SET payout_requested_at = %s, payout_lease_until = %s "
            f"WHERE id IN ({_marks(members)}) AND payout_status = 'requesting'",
            [marker, db_time(now + PAYOUT_LEASE), *members],
        )
    for s in batch:
        s["payout_requested_at"] = marker


def request_payout(
    settlement_id: int, *, toss: TossClient | None = None, now: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    """Send the payout of one settlement now (the release endpoint): a batch of one."""
    claimed = _claim_one(settlement_id, now())
    if claimed is not None:
        _send([claimed], toss or get_toss_client(), now, Counter())
    return settlement_view(settlement_id)


def _record_payouts(batch: list[dict[str, Any]], items: list[dict[str, Any]], now: datetime) -> int:
    """Toss took the request: each settlement gets its payout id (matched by refPayoutId) and the time to poll it."""
    answered = {str(item.get("refPayoutId")): item for item in items}
    poll_at = db_time(now + PAYOUT_POLL_AFTER)
    final: list[dict[str, Any]] = []
    missing: list[int] = []
    with db.transaction() as tx:
        for s in batch:
            item = answered.get(s["ref_payout_id"])
            if item is None:
                missing.append(s["id"])
                continue
            status = str(item.get("status") or "REQUESTED").lower()
            if status in ("completed", "failed"):
                final.append(item)
                status = "in_progress"  # apply_payout_status below closes it, with its event
            # Only while still ours: a webhook may have settled it already, or a run that took over recorded it.
            tx.execute(
                "UPDATE payment_settlements SET payout_id = %s, payout_status = %s, payout_error_code = NULL, "
                "payout_error_message = NULL, payout_lease_until = %s WHERE id = %s AND payout_status = 'requesting'",
                (item.get("id"), status, poll_at, s["id"]),
            )
        if missing:
            # Not in the answer: not created. A new attempt (a new key) asks again; refPayoutId guards a duplicate.
            tx.execute(
                "UPDATE payment_settlements SET payout_status = 'scheduled', "
                "payout_error_code = 'NOT_IN_PAYOUT_ANSWER', payout_error_message = 'Toss answered without this item', "
                "payout_lease_until = NULL "
                f"WHERE id IN ({_marks(missing)}) AND payout_status = 'requesting'",
                missing,
            )
    for item in final:
        apply_payout_status(item, actor="payout_answer")
    count("PayoutsRequested", len(batch) - len(missing))
    return len(batch) - len(missing)


def _already_at_toss(s: dict[str, Any], now: datetime) -> None:
    with db.transaction() as tx:
        tx.execute(
            "UPDATE payment_settlements SET payout_status = 'in_progress', "
            "payout_error_code = 'DUPLICATED_REF_PAYOUT_ID', payout_error_message = %s, payout_lease_until = %s "
            "WHERE id = %s AND payout_status = 'requesting'",
            (
                "Toss already holds this payout (an earlier answer was lost); its payout.changed webhook settles it",
                db_time(now + PAYOUT_POLL_AFTER),
                s["id"],
            ),
        )
    logger.warning("payout already at Toss", extra={"settlement_id": s["id"], "ref_payout_id": s["ref_payout_id"]})


def _payout_refused(batch: list[dict[str, Any]], exc: TossApiError) -> None:
    later = exc.code in PAYOUT_RETRY_LATER or exc.retryable
    members = [s["id"] for s in batch]
    with db.transaction() as tx:
        tx.execute(
            "UPDATE payment_settlements SET payout_status = %s, payout_error_code = %s, payout_error_message = %s, "
            f"payout_lease_until = NULL WHERE id IN ({_marks(members)}) AND payout_status = 'requesting'",
            ["scheduled" if later else "failed", exc.code, exc.message[:500], *members],
        )
    logger.warning(
        "payout refused",
        extra={"settlement_ids": members[:10], "items": len(members), "toss_code": exc.code, "retry_later": later},
    )
    count("PayoutsRefused", len(members))


def apply_payout_status(payout: dict[str, Any], *, actor: str) -> str:
    """Toss's word on a payout (webhook or poll): COMPLETED / FAILED close the settlement."""
    status = str(payout.get("status") or "").upper()
    with db.transaction() as tx:
        s = settlements_repo.by_payout(tx, payout_id=payout.get("id"), ref_payout_id=payout.get("refPayoutId"))
        if s is None:
            return "unknown_payout"
        if s["payout_status"] in ("completed", "failed"):
            return "already_final"
        fields: dict[str, Any] = {"payout_id": payout.get("id") or s["payout_id"]}
        if status == "COMPLETED":
            fields.update(payout_status="completed", payout_completed_at=db_time(utcnow()), payout_lease_until=None)
            outbox_repo.add(
                tx,
                event_type="PayoutCompleted",
                aggregate_id=s["payment_request_id"],
                dedupe_key=f"PayoutCompleted:{s['id']}",
                payload={
                    "payment_request_id": s["payment_request_id"],
                    "store_id": s["store_id"],
                    "net_amount": s["net_amount"],
                    "payout_id": fields["payout_id"],
                },
            )
        elif status == "FAILED":
            error = payout.get("error") or {}
            fields.update(
                payout_status="failed",
                payout_error_code=error.get("code"),
                payout_error_message=(error.get("message") or "")[:500],
                payout_lease_until=None,
            )
        elif status in ("IN_PROGRESS", "REQUESTED"):
            fields.update(payout_status=status.lower())
        else:
            return "ignored"
        settlements_repo.update(tx, s["id"], **fields)
    logger.info("payout status", extra={"settlement_id": s["id"], "status": status, "actor": actor})
    return status.lower()


def payouts_due(
    limit: int,
    *,
    toss: TossClient | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Send up to `limit` due payouts, PAYOUT_BATCH items per request to Toss, then poll up to PAYOUT_POLLS_PER_RUN
    payouts Toss has not reported on for longest (webhooks are the main signal)."""
    toss = toss or get_toss_client()
    tally: Counter[str] = Counter()
    run_started = _note_unregistered_sellers()
    claimed = 0
    while claimed < limit and not deadline():
        batches = _claim_due(now(), min(PAYOUT_BATCH, limit - claimed), run_started)
        if not batches:
            break
        for i, batch in enumerate(batches):
            if deadline():
                _unclaim([s for rest in batches[i:] for s in rest])
                break
            _send(batch, toss, now, tally, deadline)
        claimed += sum(len(batch) for batch in batches)
    polled = 0 if deadline() else _poll(min(limit, PAYOUT_POLLS_PER_RUN), toss=toss, now=now, deadline=deadline)
    return {
        "payouts_requested": tally["accepted"],
        "payouts_polled": polled,
        "payout_calls": tally["calls"],
        "payouts_refused": tally["refused"],
        "payouts_unanswered": tally["unanswered"],
    }


def _note_unregistered_sellers() -> datetime:
    """Payouts of stores with no payout account are not claimed; say why they wait (once, not every run). Returns
    the database's clock (the time `updated_at` is written in) at the start of the run."""
    with db.transaction() as tx:
        tx.execute(
            "UPDATE payment_settlements s JOIN stores st ON st.store_id = s.store_id "
            "SET s.payout_error_code = 'SELLER_NOT_REGISTERED', "
            "s.payout_error_message = 'the store has no registered payout account yet' "
            "WHERE s.payout_status = 'scheduled' AND st.toss_seller_id IS NULL "
            "AND (s.payout_error_code IS NULL OR s.payout_error_code <> 'SELLER_NOT_REGISTERED')"
        )
        row = tx.one("SELECT NOW(3) AS now")
    assert row is not None
    started: datetime = row["now"]
    return started


def _unclaim(rows: list[dict[str, Any]]) -> None:
    """Claimed but not sent (out of time): end the lease now, so the next run sends them as they were batched."""
    if not rows:
        return
    members = [s["id"] for s in rows]
    with db.transaction() as tx:
        tx.execute(
            f"UPDATE payment_settlements SET payout_lease_until = NULL WHERE id IN ({_marks(members)}) "
            "AND payout_status = 'requesting'",
            members,
        )


def _poll(limit: int, *, toss: TossClient, now: Callable[[], datetime], deadline: Callable[[], bool]) -> int:
    at = now()
    with db.reader() as tx:
        rows = tx.all(
            "SELECT id, payout_id FROM payment_settlements WHERE payout_status IN ('in_progress', 'requested') "
            "AND payout_id IS NOT NULL AND (payout_lease_until IS NULL OR payout_lease_until < %s) "
            "ORDER BY updated_at, id LIMIT %s",
            (db_time(at), limit),
        )
    polled = 0
    for row in rows:
        if deadline():
            break
        try:
            payout = toss.get_payout(row["payout_id"])
        except TossError as exc:
            logger.warning("payout poll failed", extra={"settlement_id": row["id"], "error": str(exc)})
            continue
        outcome = apply_payout_status(payout, actor="schedule")
        if outcome not in ("completed", "failed", "already_final"):
            with db.transaction() as tx:  # heard of now: poll the others first
                tx.execute(
                    "UPDATE payment_settlements SET payout_lease_until = %s "
                    "WHERE id = %s AND payout_status IN ('in_progress', 'requested')",
                    (db_time(at + PAYOUT_POLL_AFTER), row["id"]),
                )
        polled += 1
    return polled


def settlement_view(settlement_id: int) -> dict[str, Any]:
    with db.reader() as tx:
        s = tx.one(
            "SELECT id, gross_amount, platform_fee, net_amount, ref_payout_id, payout_id, payout_status, "
            "payout_error_code, payout_completed_at FROM payment_settlements WHERE id = %s",
            (settlement_id,),
        )
    assert s is not None
    return {
        "settlement_id": s["id"],
        "gross_amount": s["gross_amount"],
        "platform_fee": s["platform_fee"],
        "net_amount": s["net_amount"],
        "ref_payout_id": s["ref_payout_id"],
        "payout_id": s["payout_id"],
        "payout_status": s["payout_status"],
        "payout_error_code": s["payout_error_code"],
        "payout_completed_at": iso(s["payout_completed_at"]),
    }
