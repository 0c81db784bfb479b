"""Paying released money out to the store: one Toss payout per settlement, sent by the release endpoint at once and
by the schedule in batches. (What to release, and the settlement, is `escrow.services.release`.)

Payouts go to Toss in requests of up to PAYOUT_BATCH items (`POST /v2/payouts` takes a JSON array;
docs/toss-behaviours.md: the limit of 100 is UNCONFIRMED). What keeps a payout from being made twice, or never:

* Lease. A settlement whose payout is being sent is `requesting` with `payout_lease_until`; only the run that claimed
  it (locked skipping rows other runs hold, then the lease, in one transaction) sends it. A lease that has run out means
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
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.observability import count, logger
from escrow.repositories import clock as clock_repo
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import settlements as settlements_repo
from escrow.states import PAYOUT_CLAIMABLE, PAYOUT_FINAL, InvalidTransition, PayoutStatus
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

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
        s = settlements_repo.lock_for_payout(tx, settlement_id)
        if s is None or s["payout_status"] not in PAYOUT_CLAIMABLE:
            return None
        if s["payout_lease_until"] is not None and s["payout_lease_until"] > db_time(now):
            return None
        if not s["toss_seller_id"]:
            settlements_repo.note_unregistered_seller(tx, s["id"])
            return None
        fresh = s["payout_status"] == PayoutStatus.SCHEDULED
        s["payout_attempts"] += 1 if fresh else 0
        s["payout_requested_at"] = _new_marker(now) if fresh else s["payout_requested_at"]
        settlements_repo.set_payout_status(
            tx,
            s["id"],
            s["payout_status"],
            PayoutStatus.REQUESTING,
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
        ids = settlements_repo.lock_unanswered(tx, at, limit)
        if len(ids) < limit:
            ids += settlements_repo.lock_scheduled(tx, at, run_started, limit - len(ids))
        if not ids:
            return []
        rows = settlements_repo.payout_rows(tx, ids)
        batches: list[list[dict[str, Any]]] = []
        lost: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        payable: list[dict[str, Any]] = []
        for s in rows:
            if s["payout_status"] == PayoutStatus.REQUESTING:
                lost[s["payout_requested_at"]].append(s)
            elif s["seller_status"] in PAYABLE_SELLER_STATUSES or s["seller_status"] is None:
                payable.append(s)
            else:
                batches.append([s])  # Toss will likely refuse this seller: alone, it refuses nobody else
        retried = [group[i : i + PAYOUT_BATCH] for group in lost.values() for i in range(0, len(group), PAYOUT_BATCH)]
        if retried:
            settlements_repo.extend_lease(tx, [s["id"] for batch in retried for s in batch], lease)
        fresh = [*[payable[i : i + PAYOUT_BATCH] for i in range(0, len(payable), PAYOUT_BATCH)], *batches]
        for batch in fresh:
            marker = _new_marker(now)
            settlements_repo.mark_requesting(tx, batch, lease_until=lease, marker=marker)
            for s in batch:
                s.update(
                    payout_status=PayoutStatus.REQUESTING,
                    payout_attempts=s["payout_attempts"] + 1,
                    payout_requested_at=marker,
                )
    return retried + fresh


def _send(
    batch: list[dict[str, Any]],
    toss: TossPort,
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
    with db.transaction() as tx:
        settlements_repo.remark(tx, [s["id"] for s in batch], marker=marker, lease_until=db_time(now + PAYOUT_LEASE))
    for s in batch:
        s["payout_requested_at"] = marker


def request_payout(
    settlement_id: int, *, toss: TossPort | None = None, now: Callable[[], datetime] = utcnow
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
            status = _answered_status(item)
            if status in PAYOUT_FINAL:
                final.append(item)
                status = PayoutStatus.IN_PROGRESS  # apply_payout_status below closes it, with its event
            # Only while still ours: a webhook may have settled it already, or a run that took over recorded it.
            settlements_repo.record_accepted(tx, s["id"], payout_id=item.get("id"), new=status, poll_at=poll_at)
        if missing:
            # Not in the answer: not created. A new attempt (a new key) asks again; refPayoutId guards a duplicate.
            settlements_repo.reschedule_unanswered_items(tx, missing)
    for item in final:
        apply_payout_status(item, actor="payout_answer")
    count("PayoutsRequested", len(batch) - len(missing))
    return len(batch) - len(missing)


def _answered_status(item: Mapping[str, Any]) -> PayoutStatus:
    """The status of an item in Toss's answer to a payout request, in our vocabulary (Toss's, lower case)."""
    status = str(item.get("status") or "REQUESTED").lower()
    try:
        return PayoutStatus(status)
    except ValueError:
        raise InvalidTransition(f"Toss answered a payout request with an unknown status {status!r}") from None


def _already_at_toss(s: dict[str, Any], now: datetime) -> None:
    with db.transaction() as tx:
        settlements_repo.mark_already_at_toss(
            tx,
            s["id"],
            message=(
                "Toss already holds this payout (an earlier answer was lost); its payout.changed webhook settles it"
            ),
            poll_at=db_time(now + PAYOUT_POLL_AFTER),
        )
    logger.warning("payout already at Toss", extra={"settlement_id": s["id"], "ref_payout_id": s["ref_payout_id"]})


def _payout_refused(batch: list[dict[str, Any]], exc: TossApiError) -> None:
    later = exc.code in PAYOUT_RETRY_LATER or exc.retryable
    members = [s["id"] for s in batch]
    with db.transaction() as tx:
        settlements_repo.mark_refused(
            tx,
            members,
            new=PayoutStatus.SCHEDULED if later else PayoutStatus.FAILED,
            error_code=exc.code,
            error_message=exc.message[:500],
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
        if s["payout_status"] in PAYOUT_FINAL:
            return "already_final"
        fields: dict[str, Any] = {"payout_id": payout.get("id") or s["payout_id"]}
        new: PayoutStatus
        if status == "COMPLETED":
            new = PayoutStatus.COMPLETED
            fields.update(payout_completed_at=db_time(utcnow()), payout_lease_until=None)
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
            new = PayoutStatus.FAILED
            fields.update(
                payout_error_code=error.get("code"),
                payout_error_message=(error.get("message") or "")[:500],
                payout_lease_until=None,
            )
        elif status in ("IN_PROGRESS", "REQUESTED"):
            new = PayoutStatus(status.lower())
        else:
            return "ignored"
        settlements_repo.set_payout_status(tx, s["id"], s["payout_status"], new, **fields)
    logger.info("payout status", extra={"settlement_id": s["id"], "status": status, "actor": actor})
    return status.lower()


def payouts_due(
    limit: int,
    *,
    toss: TossPort | None = None,
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
        settlements_repo.note_unregistered_sellers(tx)
        return clock_repo.database_now(tx)


def _unclaim(rows: list[dict[str, Any]]) -> None:
    """Claimed but not sent (out of time): end the lease now, so the next run sends them as they were batched."""
    if not rows:
        return
    with db.transaction() as tx:
        settlements_repo.unclaim(tx, [s["id"] for s in rows])


def _poll(limit: int, *, toss: TossPort, now: Callable[[], datetime], deadline: Callable[[], bool]) -> int:
    at = now()
    with db.reader() as tx:
        rows = settlements_repo.to_poll(tx, db_time(at), limit)
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
                settlements_repo.poll_later(tx, row["id"], db_time(at + PAYOUT_POLL_AFTER))
        polled += 1
    return polled


def settlement_view(settlement_id: int) -> dict[str, Any]:
    with db.reader() as tx:
        s = settlements_repo.view(tx, settlement_id)
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
