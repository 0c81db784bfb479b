"""Paying released money out to the store: one Toss payout per settlement, sent by the schedule in batches (the
`payouts` job; the release endpoint only decides, `escrow.services.release`).

Release means "decided". Toss pays out only from `availableAmount` of its payout balance, which card sales reach
after the settlement cycle (docs/toss-behaviours.md, "Balances and payouts"), so a settlement waits in `scheduled`
until the balance covers it:

* Balance. Each scheduled run reads `GET /v2/balances` once (when a payout is due) and sends only what the
  available amount covers, oldest settlement first; the first one it does not cover, and every one after it, waits
  (`payout_waiting_for = balance`, the gauge metric PayoutsWaitingForBalance). Toss's refusal for a short balance
  (`NOT_ENOUGH_AMOUNT`, from Toss's error list) means the same; no run relies on a refusal to learn the balance.
* Refusals. A payout Toss refuses for a reason it names and we know waits and is tried again after a growing back-off
  (`payout_next_attempt_at`; a seller Toss does not pay yet, a holiday). One refused for a reason only a person can
  fix (the seller's account) is `failed` with Toss's code and message; an operator retries it after fixing the store
  (settlements_repo.reschedule_failed: failed -> scheduled, a new attempt). A refusal whose code we do not know is
  tried again with the back-off and counted (metric PayoutsRefused, alarmed): never a silent permanent failure.
* Lease. A settlement whose payout is being sent is `requesting` with `payout_lease_until`; only the run that claimed
  it (locked skipping rows other runs hold, then the lease, in one transaction) sends it. A lease that has run out
  means the sender died or got no answer, and the next run takes the settlement over.
* One Idempotency-Key per request to Toss, derived from the settlements in it and their attempt numbers
  (`payout_idempotency_key`; a batch of one keeps the key `payout-{id}-{attempt}`, with the stack prefix).
* A key is reused only when no answer arrived (timeout, broken connection, an answer we could not read,
  IDEMPOTENT_REQUEST_PROCESSING): the settlements stay `requesting` with their attempt numbers, and every member of
  one request carries the same `payout_requested_at` (the batch marker), so the run that takes over after the lease
  rebuilds the same batch, hence the same key, and Toss answers it with its first answer.
* Any answer with an error code is bound to its key at Toss (4xx for 15 days; 5xx perhaps, UNCONFIRMED), so the next
  attempt after one has a new key: the settlement goes back to `scheduled` and its next claim increments
  `payout_attempts`. After an answer that leaves the outcome open (a 5xx), Toss's payouts are listed first and those
  it made are recorded; only the others are sent again. Correct whether or not Toss binds a 5xx to the key.
* Toss refuses a request as a whole (one seller not approved refuses every item; nothing of it is created). A batch
  refused for a reason that may concern some items is split, each part a new request with its own key: in halves by
  seller, then in halves by item (not for a refusal about the only seller left), so one unpayable seller does not
  hold back the others. Settlements of stores whose seller we know is not payable yet are sent alone.
* `refPayoutId` (`{prefix}-escrow-req-{request id}`) is unique at Toss, the last guard: a request refused as
  DUPLICATED_REF_PAYOUT_ID names payouts Toss already holds (made by a request whose answer we did not read). They are
  found by listing Toss's payouts and matching refPayoutId, recorded, and polled (or settled by payout.changed) to
  their end; one Toss names but we cannot find yet is polled by its refPayoutId.
* Once Toss has taken a payout, `payout_lease_until` says when to poll it (webhooks are the main signal, polling the
  fallback): each run polls a bounded number of the payouts it has heard of least recently.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time, iso, utcnow
from escrow.errors import AppError
from escrow.observability import count, logger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import settlements as settlements_repo
from escrow.repositories.settlements import Refusal
from escrow.services import isolation
from escrow.states import PAYABLE_SELLER_STATUSES, PAYOUT_FINAL, InvalidTransition, PayoutStatus, PayoutWaitingFor
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.ids import toss_name
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal

PAYOUT_BATCH = 100  # items per POST /v2/payouts
RECORD_ATTEMPTS = 3  # recording Toss's answer to a payout request, after a deadlock
PAYOUT_LEASE = timedelta(minutes=3)  # longer than one payout call may take (TOSS_PAYOUT_READ_TIMEOUT, 60 s)
# Polling is the fallback for a lost payout.changed webhook (Toss retries those for days): an accepted payout is
# first polled after PAYOUT_POLL_AFTER and then at that interval, at most PAYOUT_POLLS_PER_RUN per run.
PAYOUT_POLL_AFTER = timedelta(minutes=30)
PAYOUT_POLLS_PER_RUN = 100
# The back-off after a refusal: RETRY_FIRST, doubling with each refusal in a row, at most RETRY_LONGEST.
RETRY_FIRST = timedelta(minutes=5)
RETRY_LONGEST = timedelta(hours=6)

# What Toss's refusal codes mean for a payout. Codes not listed are unknown: tried again with the back-off, alarmed.
# The payout balance does not cover the request: 400 NOT_ENOUGH_AMOUNT "지급가능한 금액을 초과했습니다" in Toss's full
# error list (that POST /v2/payouts answers exactly it is UNCONFIRMED). Waits for the balance; not a back-off.
PAYOUT_BALANCE_REFUSALS = frozenset({"NOT_ENOUGH_AMOUNT"})
# Toss does not pay this seller yet (not approved, or KYC required): waits for seller.changed, with the back-off.
PAYOUT_SELLER_REFUSALS = frozenset({"FORBIDDEN_SELLER_PAYOUT"})
# Expected and temporary: tried again with the back-off, not alarmed.
PAYOUT_LATER_REFUSALS = frozenset({"NOT_ALLOWED_HOLIDAY"})
# Only a person can fix these (the store's seller or account): the payout fails with Toss's code and message, and an
# operator retries it after fixing the store (escrow.ops retry-payout).
PAYOUT_PERMANENT_REFUSALS = frozenset(
    {
        "NOT_FOUND_SELLER",
        "INVALID_BANK",
        "INVALID_ACCOUNT_INFO_RE_REGISTER",
        "RESTRICTED_TRANSFER_ACCOUNT",
        REF_TAKEN := "REF_PAYOUT_ID_TAKEN",  # ours: Toss holds another payout under our refPayoutId
    }
)
# Refusals about the whole request, whatever its items: splitting the batch would only repeat them.
PAYOUT_REFUSED_AS_A_WHOLE = PAYOUT_BALANCE_REFUSALS | PAYOUT_LATER_REFUSALS | {"SECURITY_KEY_MISSING"}
# Refusals about one seller: a batch of that seller's payouts alone is refused as a whole.
PAYOUT_SELLER_SCOPED = frozenset({"FORBIDDEN_SELLER_PAYOUT", "NOT_FOUND_SELLER"})


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
    the same key; any other batch, or a fresh attempt after an answer, has another."""
    if len(batch) == 1:
        return toss_name(f"payout-{batch[0]['id']}-{batch[0]['payout_attempts']}")
    basis = ",".join(f"{s['id']}:{s['payout_attempts']}" for s in sorted(batch, key=lambda s: int(s["id"])))
    return toss_name(f"payout-batch-{len(batch)}-{hashlib.sha256(basis.encode()).hexdigest()[:48]}")


def retry_after(refusals: int) -> timedelta:
    """The back-off before the next attempt after `refusals` refusals in a row (1 = the first)."""
    steps = max(refusals, 1) - 1
    if steps >= 16:
        return RETRY_LONGEST
    return min(RETRY_FIRST * (1 << steps), RETRY_LONGEST)


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


# --- the balance ------------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """Toss's available payout balance, read once per scheduled run (`GET /v2/balances`), less what the run has sent
    since. `exhausted_at` is the first settlement it did not cover: nothing newer is sent in this run."""

    available: int | None = None
    pending: int | None = None
    read_failed: bool = False
    exhausted_at: int | None = None

    @property
    def usable(self) -> bool:
        return self.available is not None and self.exhausted_at is None

    def read(self, toss: TossPort, now: datetime) -> None:
        if self.available is not None or self.read_failed:
            return
        try:
            balance = toss.get_balances()
        except TossError as exc:
            self.read_failed = True
            # Alarmed (PayoutBalanceUnreadable): while Toss's balance cannot be read, no new payout goes.
            logger.error("payout balance unknown; no new payout is sent in this run", extra={"error": str(exc)[:200]})
            count("PayoutBalanceUnreadable")
            return
        self.available, self.pending = balance["available"], balance["pending"]
        with db.transaction() as tx:
            settlements_repo.record_balance(tx, available=self.available, pending=self.pending, checked_at=db_time(now))

    def take(self, amount: int) -> bool:
        if self.available is None or self.exhausted_at is not None or amount > self.available:
            return False
        self.available -= amount
        return True


@dataclass
class _Run:
    """One payouts run: the Toss client, its clock, its budget and what happened."""

    toss: TossPort
    now: Callable[[], datetime]
    budget: Budget
    deadline: Callable[[], bool] = lambda: False
    tally: Counter[str] = field(default_factory=Counter)


# --- claiming -----------------------------------------------------------------------------------------------


def _claim_due(run: _Run, limit: int, only: Sequence[int] | None = None) -> list[list[dict[str, Any]]]:
    """Take up to `limit` payouts for this run, as the batches to send: first those whose answer was lost (rebuilt as
    they were sent, by their marker; the balance already paid for them), then scheduled ones whose back-off is over,
    oldest first, as far as the balance covers them."""
    now = run.now()
    at = db_time(now)
    lease = db_time(now + PAYOUT_LEASE)
    with db.transaction() as tx:
        ids = settlements_repo.lock_unanswered(tx, at, limit, only)
        if len(ids) < limit and run.budget.usable:
            ids += settlements_repo.lock_scheduled(tx, at, limit - len(ids), only)
        if not ids:
            return []
        rows = settlements_repo.payout_rows(tx, ids)
        batches: list[list[dict[str, Any]]] = []
        lost: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        payable: list[dict[str, Any]] = []
        for s in rows:  # in id order: the oldest settlement first
            if s["payout_status"] == PayoutStatus.REQUESTING:
                lost[s["payout_requested_at"]].append(s)
            elif run.budget.exhausted_at is not None:
                continue  # locked but not claimed: it waits for the balance with every newer one
            elif s["seller_status"] is not None and s["seller_status"] not in PAYABLE_SELLER_STATUSES:
                batches.append([s])  # Toss will likely refuse this seller: alone, it refuses nobody else
            elif run.budget.take(s["net_amount"]):
                payable.append(s)
            else:
                run.budget.exhausted_at = s["id"]
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


# --- sending --------------------------------------------------------------------------------------------------


def _send(batch: list[dict[str, Any]], run: _Run) -> None:
    """One request to Toss for a claimed batch, and what its answer means for each settlement in it."""
    run.tally["calls"] += 1
    try:
        items = run.toss.request_payouts(
            [_payout_item(s) for s in batch], idempotency_key=payout_idempotency_key(batch)
        )
    except TossApiError as exc:
        if exc.configuration:
            _refused(batch, exc, run)  # our keys are wrong (or missing): alarmed, tried again after the back-off
        elif not exc.answered or exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            _no_answer(batch, exc, run)  # no answer of Toss's read, or the first request still runs: same key
        elif exc.code == "DUPLICATED_REF_PAYOUT_ID":
            _duplicated(batch, exc, run)
        elif exc.outcome_unknown:
            _answered_without_outcome(batch, exc, run)
        else:
            parts = _split(batch, exc)
            if parts and not run.deadline():
                # Nothing of the refused request was created: each part goes as a new request, with its own key.
                for part in parts:
                    _remark(part, run.now())
                    _send(part, run)
                return
            _refused(batch, exc, run)
    except TossError as exc:
        _no_answer(batch, exc, run)  # a timeout or a broken connection: Toss may have it; the same key again
    else:
        # An answer for payouts that are not ours (another stack's, replayed for a key it shares with us) is not
        # recorded as ours.
        answered = {str(item.get("refPayoutId")): item for item in items}
        taken = [s for s in batch if s["ref_payout_id"] in answered and not _ours(s, answered[s["ref_payout_id"]])]
        if taken:
            _refused(taken, TossApiError(400, REF_TAKEN, _TAKEN_MESSAGE), run)
        mine = [s for s in batch if s not in taken]
        run.tally["accepted"] += _record_payouts(mine, items, run.now()) if mine else 0


_TAKEN_MESSAGE = (
    "Toss holds another payout (another seller, amount or request) under this refPayoutId or Idempotency-Key: "
    "another stack or a rebuilt database shares this merchant id and TOSS_ID_PREFIX. Set a prefix of its own, then "
    "retry the payout."
)


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
    if exc.code in PAYOUT_SELLER_SCOPED:
        return []
    half = len(batch) // 2
    return [batch[:half], batch[half:]]


def _no_answer(batch: list[dict[str, Any]], exc: Exception, run: _Run) -> None:
    run.tally["unanswered"] += len(batch)
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


def _find_at_toss(refs: Sequence[str], toss: TossPort) -> dict[str, dict[str, Any]] | None:
    """The payouts Toss holds under these refPayoutIds ({ref: payout}), from one listing; None if Toss did not
    answer it."""
    try:
        listed = toss.list_payouts()
    except TossError as exc:
        logger.warning("could not list Toss's payouts", extra={"error": str(exc)[:200]})
        return None
    wanted = set(refs)
    return {str(p.get("refPayoutId")): p for p in listed if p.get("refPayoutId") in wanted}


def _ours(s: Mapping[str, Any], payout: Mapping[str, Any]) -> bool:
    """Whether a payout Toss holds under our refPayoutId is this settlement's: to our store's seller, of its net.
    Another one means another stack (or a rebuilt database) shares the merchant id and the stack prefix."""
    amount = payout.get("amount")
    value = amount.get("value") if isinstance(amount, dict) else amount
    metadata = payout.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    for key, mine in (("paymentRequestId", str(s["payment_request_id"])), ("storeId", s["store_id"][:500])):
        if key in metadata and metadata[key] != mine:  # what we sent with it (_payout_item), when Toss shows it
            return False
    return bool(payout.get("destination") == s["toss_seller_id"] and value == s["net_amount"])


def _sort_found(
    batch: list[dict[str, Any]], found: Mapping[str, dict[str, Any]], run: _Run
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Record the settlements of `batch` that Toss made (found by refPayoutId); fail those whose refPayoutId holds
    another payout; return (recorded, not found)."""
    made = [s for s in batch if s["ref_payout_id"] in found and _ours(s, found[s["ref_payout_id"]])]
    taken = [s for s in batch if s["ref_payout_id"] in found and s not in made]
    if made:
        run.tally["accepted"] += _record_payouts(made, [found[s["ref_payout_id"]] for s in made], run.now())
    if taken:
        _refused(taken, TossApiError(400, REF_TAKEN, _TAKEN_MESSAGE), run)
    return made, [s for s in batch if s["ref_payout_id"] not in found]


def _answered_without_outcome(batch: list[dict[str, Any]], exc: TossApiError, run: _Run) -> None:
    """Toss answered with an error that leaves open whether it made the payouts (a 5xx). That answer may be bound to
    the key, so asking again needs a new key: first find what Toss made (recorded as accepted), then the rest goes
    back to `scheduled` for a new attempt after the back-off. refPayoutId guards a payout the listing missed."""
    _, rest = _sort_found(batch, _find_at_toss([s["ref_payout_id"] for s in batch], run.toss) or {}, run)
    if rest:
        _refused(rest, exc, run)


def _duplicated(batch: list[dict[str, Any]], exc: TossApiError, run: _Run) -> None:
    """Toss refused the request as DUPLICATED_REF_PAYOUT_ID: it already holds a payout under a refPayoutId of it,
    made by a request whose answer we did not read. Those found are recorded and followed to their end; the others
    go as a new request."""
    found = _find_at_toss([s["ref_payout_id"] for s in batch], run.toss) or {}
    _, rest = _sort_found(batch, found, run)
    if not rest:
        return
    if len(rest) == len(batch) == 1:
        # Toss says it holds this one, but its listing does not show it (yet): follow it by its refPayoutId.
        _already_at_toss(rest[0], run.now())
        run.tally["accepted"] += 1
        return
    # The duplicates were found: the rest goes as a new request. None found: split to find the duplicate.
    parts = [rest] if len(rest) < len(batch) else _split(rest, exc)
    if run.deadline() or not parts:
        _refused(rest, exc, run)
        return
    for part in parts:
        _remark(part, run.now())
        _send(part, run)


def _record_payouts(batch: list[dict[str, Any]], items: list[dict[str, Any]], now: datetime) -> int:
    """Toss took the request: each settlement gets its payout id (matched by refPayoutId) and the time to poll it."""
    answered = {str(item.get("refPayoutId")): item for item in items}
    poll_at = db_time(now + PAYOUT_POLL_AFTER)
    final: list[dict[str, Any]] = []
    missing: list[int] = []
    # Toss's answer is in hand: a deadlock with another worker (InnoDB rolls the whole transaction back) must not
    # leave it unrecorded until the lease runs out, so the transaction is tried again a few times.
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        final, missing = [], []
        try:
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
                    # Only while still ours: a webhook may have settled it already, or a run that took over did.
                    settlements_repo.record_accepted(tx, s["id"], payout_id=item.get("id"), new=status, poll_at=poll_at)
                if missing:
                    # Not in the answer: not created. A new attempt (a new key) asks again; refPayoutId guards a
                    # duplicate.
                    settlements_repo.reschedule_unanswered_items(
                        tx, missing, next_attempt_at=db_time(now + RETRY_FIRST)
                    )
            break
        except AppError as exc:
            if exc.code != "DATABASE_BUSY" or attempt == RECORD_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
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
            payout_id=None,
            message=(
                "Toss already holds this payout (an earlier answer was lost); it is polled by its refPayoutId and "
                "its payout.changed webhook settles it"
            ),
            poll_at=db_time(now),
        )
    logger.warning("payout already at Toss", extra={"settlement_id": s["id"], "ref_payout_id": s["ref_payout_id"]})


def _refusal(exc: TossApiError) -> tuple[Refusal, bool]:
    """What a refusal (or an error answer) means for the payouts it concerns, and whether it is alarmed."""
    code, message = exc.code, exc.message[:400]
    if code in PAYOUT_BALANCE_REFUSALS:
        return Refusal(PayoutStatus.SCHEDULED, code, message, PayoutWaitingFor.BALANCE, counts=False), True
    if code in PAYOUT_SELLER_REFUSALS:
        return Refusal(PayoutStatus.SCHEDULED, code, message, PayoutWaitingFor.SELLER), False
    if code in PAYOUT_LATER_REFUSALS:
        return Refusal(PayoutStatus.SCHEDULED, code, message, PayoutWaitingFor.RETRY), False
    if code in PAYOUT_PERMANENT_REFUSALS:
        why = (
            f"Toss refused the payout: {message}. Fix the store's payout account (POST /api/v1/admin/stores), then "
            "retry the payout (escrow.ops retry-payout)."
        )
        return Refusal(PayoutStatus.FAILED, code, why[:500]), True
    # Unknown, transient or a configuration error: tried again with the back-off, alarmed, never failed silently.
    return Refusal(PayoutStatus.SCHEDULED, code, message, PayoutWaitingFor.RETRY), True


def _refused(batch: list[dict[str, Any]], exc: TossApiError, run: _Run) -> None:
    refusal, alarmed = _refusal(exc)
    now = run.now()
    if refusal.waiting_for == PayoutWaitingFor.BALANCE:
        # Toss's balance is shorter than the one we read: nothing newer is sent in this run.
        run.budget.exhausted_at = min(s["id"] for s in batch)
        next_at: dict[int, datetime | None] = {s["id"]: None for s in batch}
    elif refusal.new == PayoutStatus.FAILED:
        next_at = {s["id"]: None for s in batch}
    else:
        next_at = {s["id"]: db_time(now + retry_after(s["payout_refusals"] + 1)) for s in batch}
    with db.transaction() as tx:
        current = (
            settlements_repo.seller_payable_since_sent(tx, [s["id"] for s in batch])
            if refusal.waiting_for == PayoutWaitingFor.SELLER
            else []
        )
        for settlement_id in current:
            # Toss approved the seller while this request was in flight (its seller.changed came before this
            # answer): the next run sends it again, without the back-off that would wait for nothing.
            next_at[settlement_id] = None
        settlements_repo.mark_refused(tx, batch, refusal, next_at)
        for settlement_id in current:
            settlements_repo.update(tx, settlement_id, payout_waiting_for=PayoutWaitingFor.SCHEDULE)
    members = [s["id"] for s in batch]
    (logger.error if refusal.new == PayoutStatus.FAILED else logger.warning)(
        "payout refused",
        extra={
            "settlement_ids": members[:10],
            "items": len(members),
            "toss_code": exc.code,
            "toss_status": exc.status,
            "payout_status": refusal.new,
            "waiting_for": refusal.waiting_for,
        },
    )
    run.tally["refused"] += len(members)
    if alarmed:
        count("PayoutsRefused", len(members))


# --- Toss's word on a payout -------------------------------------------------------------------------------------


def apply_payout_status(payout: dict[str, Any], *, actor: str) -> str:
    """Toss's word on a payout (webhook or poll): COMPLETED / FAILED close the settlement."""
    status = str(payout.get("status") or "").upper()
    with db.transaction() as tx:
        s = settlements_repo.by_payout(tx, payout_id=payout.get("id"), ref_payout_id=payout.get("refPayoutId"))
        if s is None:
            return "unknown_payout"
        if s["payout_status"] in PAYOUT_FINAL:
            return "already_final"
        fields: dict[str, Any] = {"payout_id": payout.get("id") or s["payout_id"], "payout_waiting_for": None}
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
    if new == PayoutStatus.FAILED:
        # Money released to the store did not reach it: a person must look (the store's account, then retry-payout).
        logger.error(
            "payout failed at Toss",
            extra={"settlement_id": s["id"], "toss_code": (payout.get("error") or {}).get("code"), "actor": actor},
        )
        count("PayoutsFailed")
    logger.info("payout status", extra={"settlement_id": s["id"], "status": status, "actor": actor})
    return status.lower()


# --- the schedule -------------------------------------------------------------------------------------------------


def payouts_due(
    limit: int,
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
    budget: Budget | None = None,
    only: Sequence[int] | None = None,
    poll: bool = True,
) -> dict[str, int]:
    """Send up to `limit` due payouts that the payout balance covers (read once per `budget`: the scheduled run
    passes one budget to each of its passes), PAYOUT_BATCH items per request to Toss, then poll up to
    PAYOUT_POLLS_PER_RUN payouts Toss has not reported on for longest (webhooks are the main signal).

    `only` (a worker's chunk, `escrow.services.fanout`): send among these settlements, with the `budget` the planner
    set aside for them (`plan_payouts`), and no polling (`poll=False`: polls are chunks of their own)."""
    run = _Run(toss or get_toss_client(), now, budget or Budget(), deadline)
    with db.transaction() as tx:
        settlements_repo.note_unregistered_sellers(tx)
        due = settlements_repo.scheduled_due(tx, db_time(now()))
    if due:
        run.budget.read(run.toss, now())
    claimed = 0
    while claimed < limit and not deadline():
        batches = _claim_due(run, min(PAYOUT_BATCH, limit - claimed), only)
        if not batches:
            break
        for i, batch in enumerate(batches):
            if deadline():
                _unclaim([s for rest in batches[i:] for s in rest])
                break
            try:
                _send(batch, run)
            except Exception as exc:
                if isolation.infrastructure(exc):
                    raise
                # One batch must not stop everyone's payouts: it goes back to `scheduled` with the back-off (a new
                # key next time; its refPayoutIds guard a payout Toss made), counted and alarmed as a refusal.
                logger.exception("payout batch failed", extra={"settlement_ids": [s["id"] for s in batch][:10]})
                _refused(batch, TossApiError(0, "UNEXPECTED_ERROR", f"{type(exc).__name__}: {exc}"[:300]), run)
        claimed += sum(len(batch) for batch in batches)
    with db.transaction() as tx:
        if run.budget.exhausted_at is not None:
            settlements_repo.note_waiting_for_balance(tx, db_time(now()), run.budget.exhausted_at)
        waiting = settlements_repo.waiting_for_balance(tx)
    polled = 0 if deadline() or not poll else _poll(min(limit, PAYOUT_POLLS_PER_RUN), run)
    return {
        "payouts_requested": run.tally["accepted"],
        "payouts_polled": polled,
        "payout_calls": run.tally["calls"],
        "payouts_refused": run.tally["refused"],
        "payouts_unanswered": run.tally["unanswered"],
        "payouts_waiting_for_balance": waiting,
    }


def _unclaim(rows: list[dict[str, Any]]) -> None:
    """Claimed but not sent (out of time): end the lease now, so the next run sends them as they were batched."""
    if not rows:
        return
    with db.transaction() as tx:
        settlements_repo.unclaim(tx, [s["id"] for s in rows])


def poll_payouts(
    settlement_ids: Sequence[int],
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Poll these payouts (a planner's chunk) whose poll time has come: Toss's word settles them."""
    run = _Run(toss or get_toss_client(), now, Budget(), deadline)
    return {"payouts_polled": _poll(len(settlement_ids), run, settlement_ids)}


def plan_payouts(
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    limit: int = 20_000,
    chunk: int = PAYOUT_BATCH,
) -> tuple[list[tuple[list[int], int]], dict[str, int]]:
    """The scheduled planner's part of the payouts job: chunks of settlement ids for workers, each with the part of
    Toss's payout balance set aside for it, so workers sending at once never send more than the balance covers.

    As `_claim_due` takes them: payouts whose answer was lost, whole by batch marker (the worker rebuilds the batch
    as it was sent, hence the same key), then scheduled ones oldest first while the balance (read once here) covers
    them; the first it does not cover and every newer one wait for the balance. A store whose seller Toss does not
    pay yet goes in a chunk of its own. Polls are planned by `plan_polls`."""
    toss_ = toss or get_toss_client()
    at = now()
    with db.transaction() as tx:
        settlements_repo.note_unregistered_sellers(tx)
        rows = settlements_repo.to_plan(tx, db_time(at), limit)
    lost: dict[Any, list[int]] = defaultdict(list)
    scheduled = []
    for row in rows:
        if row["payout_status"] == PayoutStatus.REQUESTING:
            lost[row["payout_requested_at"]].append(int(row["id"]))
        else:
            scheduled.append(row)
    chunks: list[tuple[list[int], int]] = [
        (group[i : i + PAYOUT_BATCH], 0) for group in lost.values() for i in range(0, len(group), PAYOUT_BATCH)
    ]
    budget = Budget()
    if scheduled:
        budget.read(toss_, at)
    payable: list[Mapping[str, Any]] = []
    for row in scheduled if budget.usable else []:
        if row["seller_status"] is not None and row["seller_status"] not in PAYABLE_SELLER_STATUSES:
            chunks.append(([int(row["id"])], 0))
        elif budget.take(int(row["net_amount"])):
            payable.append(row)
        else:
            budget.exhausted_at = int(row["id"])
            break
    for i in range(0, len(payable), chunk):
        part = payable[i : i + chunk]
        chunks.append(([int(r["id"]) for r in part], sum(int(r["net_amount"]) for r in part)))
    with db.transaction() as tx:
        if budget.exhausted_at is not None:
            settlements_repo.note_waiting_for_balance(tx, db_time(at), budget.exhausted_at)
        waiting = settlements_repo.waiting_for_balance(tx)
    return chunks, {
        "payouts_planned": sum(len(ids) for ids, _ in chunks),
        "payouts_waiting_for_balance": waiting,
    }


def plan_polls(*, now: Callable[[], datetime] = utcnow, limit: int = PAYOUT_POLLS_PER_RUN * 10) -> list[int]:
    """The payouts whose poll time has come, for workers (each re-reads and polls them)."""
    with db.reader() as tx:
        return [int(r["id"]) for r in settlements_repo.to_poll(tx, db_time(now()), limit)]


def _poll(limit: int, run: _Run, only: Sequence[int] | None = None) -> int:
    at = run.now()
    with db.reader() as tx:
        rows = settlements_repo.to_poll(tx, db_time(at), limit, only)
    unknown_ids = [row for row in rows if not row["payout_id"]]
    found = _find_at_toss([row["ref_payout_id"] for row in unknown_ids], run.toss) if unknown_ids else {}
    polled = 0
    for row in rows:
        if run.deadline():
            break
        payout: dict[str, Any] | None
        if row["payout_id"]:
            try:
                payout = run.toss.get_payout(row["payout_id"])
            except TossError as exc:
                logger.warning("payout poll failed", extra={"settlement_id": row["id"], "error": str(exc)})
                continue
        else:
            payout = (found or {}).get(row["ref_payout_id"])
            if payout is not None and not _ours(row, payout):
                logger.error("another payout holds our refPayoutId", extra={"settlement_id": row["id"]})
                payout = None
            if payout is not None and payout.get("id"):
                with db.transaction() as tx:
                    settlements_repo.set_payout_id(tx, row["id"], str(payout["id"]))
        outcome = apply_payout_status(payout, actor="schedule") if payout is not None else "not_found"
        if outcome not in ("completed", "failed", "already_final"):
            with db.transaction() as tx:  # heard of now: poll the others first
                settlements_repo.poll_later(tx, row["id"], db_time(at + PAYOUT_POLL_AFTER))
        polled += 1
    return polled


# --- what answers show ------------------------------------------------------------------------------------------


def settlement_view(settlement_id: int, principal: Principal | None = None) -> dict[str, Any]:
    with db.reader() as tx:
        s = settlements_repo.view(tx, settlement_id)
        assert s is not None
        return _view(tx, s, principal)


def settlement_for_request(request_id: int, principal: Principal | None = None) -> dict[str, Any] | None:
    """The settlement part of a room's status answer (None before release)."""
    with db.reader() as tx:
        s = settlements_repo.view_for_request(tx, request_id)
        return _view(tx, s, principal) if s is not None else None


def _waiting_for(s: Mapping[str, Any]) -> str | None:
    """What a scheduled payout waits for, as answers show it: the store's seller when it has none at Toss or Toss
    does not pay it yet (our copy of its status), else what the payout job recorded."""
    if s["payout_status"] != PayoutStatus.SCHEDULED:
        return None
    stored = s["payout_waiting_for"] or PayoutWaitingFor.SCHEDULE
    unpayable = s["seller_status"] is not None and s["seller_status"] not in PAYABLE_SELLER_STATUSES
    if not s["toss_seller_id"] or (stored == PayoutWaitingFor.SCHEDULE and unpayable):
        return PayoutWaitingFor.SELLER
    return str(stored)


def _view(tx: db.Tx, s: Mapping[str, Any], principal: Principal | None) -> dict[str, Any]:
    """A settlement as answers show it: its amounts, its payout, and what a scheduled payout waits for. The merchant's
    payout balance itself (every room's money) is shown to admins only."""
    waiting = _waiting_for(s)
    view: dict[str, Any] = {
        "settlement_id": s["id"],
        "gross_amount": s["gross_amount"],
        "platform_fee": s["platform_fee"],
        "net_amount": s["net_amount"],
        "ref_payout_id": s["ref_payout_id"],
        "payout_id": s["payout_id"],
        "payout_status": s["payout_status"],
        "payout_waiting_for": waiting,
        "payout_attempts": s["payout_attempts"],
        "payout_error_code": s["payout_error_code"],
        "payout_error_message": s["payout_error_message"],
        "payout_next_attempt_at": iso(s["payout_next_attempt_at"]) if waiting else None,
        "payout_completed_at": iso(s["payout_completed_at"]),
        "released_at": iso(s["created_at"]),
    }
    if waiting == PayoutWaitingFor.BALANCE:
        view["balance_checked_at"] = iso(s["balance_checked_at"])
        if principal is not None and principal.is_admin:
            view["balance"] = {
                "available_amount": s["balance_available"],
                "pending_amount": s["balance_pending"],
                "needed_amount": settlements_repo.needed_before(tx, s["id"]),
            }
    return view
