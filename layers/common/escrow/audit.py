"""Ledger audit: our ledger and state against Toss's own record and against what the room asked for, read-only.

    python -m escrow.audit [--room N] [--since ISO] [--until ISO] [--period SECONDS] [--json]

Exit code 1 when there is any finding, 0 otherwise. The audit never writes: it reads the database inside one
consistent snapshot per batch of requests (so the ledger identities and the rules of intent hold exactly for a
consistent state, whatever runs at the same time) and asks Toss with GET calls only (`TossClient.get_payment`,
`get_payment_by_order`, `get_payout`). A disagreement with Toss is checked a second time against fresh reads of our
rows and of Toss before it is reported, so a payment or refund that moves while the audit runs is not reported; a
charge with a refund in flight (younger than the reconciliation period) is settling and is not compared with Toss.

The money model: a share (`payments`, one per request and payer) owes `amount`; it is funded by charges
(`payment_charges`, one per Toss payment confirmed for one of its orders). held = what its held charges still hold
(amount - refunded_amount each). An unexpected charge (money we must not keep) is no charge of a share: it lives on
its order (refund_pending, then refunded) and in the ledger (a charge entry, then refund entries).

Checks (the `check` of a finding):

Against Toss
- `toss_payment`: every charge we hold as held, released or refunded matches Toss by paymentKey: status (DONE while
  nothing was refunded, PARTIAL_CANCELED after a partial refund, CANCELED or PARTIAL_CANCELED with balance 0 once
  refunded), balanceAmount == amount - refunded_amount, totalAmount == amount, the same orderId; a charge waiting
  for a deposit is WAITING_FOR_DEPOSIT at Toss, a cancelled one holds nothing.
- `toss_refund`: Toss's refunds of a charge are our done refund rows of it: each Toss refund transaction recorded on
  exactly one done row of that charge with Toss's amount, and no done row for a transaction Toss does not list.
- `toss_order`: every order we hold as done, refunded or refund_pending is known to Toss; a done order is the order
  of a charge; a refunded order has balance 0 at Toss.
- `charged_not_held`: an order we consider failed, superseded, issued (or in flight for longer than the period)
  holds money at Toss.
- `double_charge`: Toss holds more for one share (over all its orders) than the share owes.
- `funding_at_toss`: a completed request whose current participant's charges do not hold the share in full at Toss.
- `toss_lookup`: Toss did not answer a lookup (after retries), so the item could not be checked.

Shares
- `share_amounts`: a share's paid_amount / refunded_amount are not the sums over its held, released and refunded
  charges.
- `share_status`: a share's status does not say what it holds (for a share not being confirmed, released or
  removed: completed exactly when it holds its amount, partially_refunded when it holds part, pending, failed or
  refunded when it holds nothing); a released share with a charge still held.
- `over_held`: a share holds (or released) more than it owes.
- `amount`: a share owes another amount than its request's.

Intent
- `request_state`: a request is completed exactly when it is open and every current (not removed) participant holds
  their share in full; participant_count is the number of current participants; a released request has every
  current share released; a pending request has none released; a known status.
- `funding_notice`: the request's funding notices (outbox) alternate EscrowFunded / EscrowUnfunded starting with
  EscrowFunded, one EscrowFunded per funding round (funding_round of them), the n-th of each keyed for round n, and
  they end with EscrowFunded exactly when the request is completed or released.
- `released_in_full`: a released request released every current share in full and once (one release entry of the
  share's amount), and nothing of a removed participant.
- `closed_holding`: a cancelled or expired request's share, or a removed participant, still holds money (a held
  charge) and no refund of it is in flight or owed by the schedule.
- `over_refunded`: a refund row recorded more than it asked for (cancel_amount > requested_amount).
- `refund_abandoned`: a refund the schedule owes (a cancelled or expired request, a removed participant) failed
  with no next attempt while its charge still holds money.
- `settlement`: a released request has exactly one settlement, gross == sum of its release entries,
  fee == floor(gross * fee_bps / 10000), net == gross - fee; `settlement_without_release` for the others.
- `payout`: a settlement's payout at Toss (when it has one) has amount == net and its refPayoutId, and its status
  agrees with ours; `payout_failed`: a payout that failed (the store is owed money and nothing retries it).

Ledger
- `ledger_identity`: per request and per share, charge == refund + release + reversal + held + awaiting_refund,
  where held is what the share's held charges hold and awaiting_refund is the charge entry of every order in
  refund_pending (a charge we must not keep, recorded and not refunded yet). The detail names the shares that do
  not balance, and entries of no share of the request.
- `ledger_charge`: every held, released or refunded charge has a charge entry of its amount for its paymentKey; no
  charge entry of a share is for a paymentKey that is none of its charges' or orders'.
- `ledger_refund`: a charge's refunded_amount == its done refund rows' amounts == the refund entries of those rows'
  Toss transactions.
- `ledger_release`: a release entry of what the share's released charges hold exactly when the share is released.

Stale items (older than the reconciliation period, default 2 x RECONCILE_AFTER_SECONDS)
- `stale_payment`, `stale_order`: a share or order in_progress/unknown (not one waiting for a virtual-account
  deposit); `stale_refund_pending`: an order in refund_pending; `stale_cancel`: a refund requested/unknown;
  `stale_refund_retry`: a refund refused for now whose next attempt is overdue; `stale_payout`: a payout never sent
  (and not saying what it waits for: Toss's payout balance, the store's seller, a retry) or with an expired lease.
- `job_failure`: an item a scheduled job set aside (`job_failures`), with its error; reported by an audit of all
  rooms (and, for a request set aside, by an audit that covers the request).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import db_time
from escrow.config import get_settings
from escrow.money import platform_fee
from escrow.repositories import audit as audit_repo
from escrow.states import (
    CANCEL_IN_FLIGHT,
    CANCEL_OPEN,
    CONFIRMING,
    OPEN,
    ORDER_IN_FLIGHT,
    ORDER_TO_RECONCILE,
    CancelStatus,
    ChargeStatus,
    OrderStatus,
    PaymentStatus,
    RequestStatus,
)
from escrow.toss import TossApiError, TossError

if TYPE_CHECKING:
    from escrow.toss.models import Payment
    from escrow.toss.port import TossPort

Row = dict[str, Any]

TOSS_HOLDING = ("DONE", "PARTIAL_CANCELED")  # statuses under which Toss can still hold a balance
NOT_FOUND_CODES = ("NOT_FOUND_PAYMENT", "NOT_FOUND_PAYMENT_SESSION", "NOT_FOUND_PAYOUT")
BATCH = 200  # requests per database snapshot
_LOOKUP_ATTEMPTS = 3

# Charges that took money (paid_amount counts them); of those, the ones whose money we still hold or released.
_COUNTED = (ChargeStatus.HELD, ChargeStatus.RELEASED, ChargeStatus.REFUNDED)
_HOLDING = (ChargeStatus.HELD, ChargeStatus.RELEASED)
# Refund rows a payer or the owner asked for themselves (`auto:` is the key of a payer's or owner's cancel, not an
# automatic one), and rows recording a refund made outside our API: nobody owes them a retry.
_NOT_OWED_PREFIXES = ("auto:", "client:", "toss:")
_NOT_CLOSED = (RequestStatus.PENDING, RequestStatus.COMPLETED, RequestStatus.RELEASED)
_KNOWN_STATUSES = frozenset(RequestStatus)


@dataclass(frozen=True)
class Finding:
    check: str
    payment_request_id: int | None
    payment_id: int | None = None
    order_id: str | None = None
    payment_key: str | None = None
    expected: str = ""
    actual: str = ""
    detail: str = ""

    @property
    def paymentKey(self) -> str | None:  # noqa: N802 - the API's spelling, for callers that use it
        return self.payment_key

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["paymentKey"] = data.pop("payment_key")
        return data


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    complete: bool = True  # False when the deadline stopped the audit before every request was checked
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_check(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for f in self.findings:
            counts[f.check] += 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        line = (
            f"audit: {self.checked.get('requests', 0)} requests, {self.checked.get('payments', 0)} payments checked, "
            f"{len(self.findings)} findings"
        )
        return line if self.complete else line + " (incomplete: stopped at the deadline)"

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "checked": dict(self.checked),
            "by_check": self.by_check(),
            "complete": self.complete,
            "seconds": self.seconds,
            "summary": self.summary(),
        }

    def table(self, width: int = 48) -> str:
        """The findings as a plain text table: check, request, payment, expected, actual (and the detail)."""
        head = ("check", "request", "payment", "expected", "actual", "detail")
        rows = [
            (
                f.check,
                "" if f.payment_request_id is None else str(f.payment_request_id),
                _payment_label(f),
                f.expected,
                f.actual,
                f.detail,
            )
            for f in self.findings
        ]
        cells = [head, *[tuple(_clip(c, width) for c in row) for row in rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _payment_label(f: Finding) -> str:
    parts = []
    if f.payment_id is not None:
        parts.append(f"#{f.payment_id}")
    if f.order_id:
        parts.append(f.order_id)
    elif f.payment_key:
        parts.append(f.payment_key)
    return " ".join(parts)


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# --- Toss lookups (GET only, retried: a GET is safe to repeat) ------------------------------------------------


class _LookupFailed(Exception):
    pass


class _Toss:
    """Cached GET lookups. None means Toss knows no such object."""

    def __init__(self, client: TossPort, report: AuditReport, period: int):
        self.client = client
        self.report = report
        self.period = period  # the reconciliation period, for the fresh re-reads
        self._by_key: dict[str, Payment | None] = {}
        self._by_order: dict[str, Payment | None] = {}

    def _get(self, fn: Callable[[str], Any], arg: str) -> Any:
        last: Exception | None = None
        for attempt in range(_LOOKUP_ATTEMPTS):
            try:
                return fn(arg)
            except TossApiError as exc:
                if exc.code in NOT_FOUND_CODES:
                    return None
                if not exc.retryable:
                    raise _LookupFailed(f"{exc.code}: {exc.message}") from exc
                last = exc
            except TossError as exc:
                last = exc
            time.sleep(0.2 * (attempt + 1))
        raise _LookupFailed(f"{type(last).__name__}: {last}")

    def payment(self, payment_key: str, *, fresh: bool = False) -> Payment | None:
        if fresh or payment_key not in self._by_key:
            self.report.checked["toss_lookups"] += 1
            found = self._get(self.client.get_payment, payment_key)
            self._by_key[payment_key] = found
            if found is not None:
                self._by_order[found.order_id] = found
        return self._by_key[payment_key]

    def order(self, order_id: str, *, fresh: bool = False) -> Payment | None:
        if fresh or order_id not in self._by_order:
            self.report.checked["toss_lookups"] += 1
            found = self._get(self.client.get_payment_by_order, order_id)
            self._by_order[order_id] = found
            if found is not None:
                self._by_key[found.payment_key] = found
        return self._by_order[order_id]

    def of_order(self, order: Row, *, fresh: bool = False) -> Payment | None:
        """Toss's payment of this order. The paymentKey an order was tried with may be someone else's (a key sent
        with the wrong orderId is refused by Toss, and is no payment of this order): then ask by orderId."""
        if order["payment_key"]:
            found = self.payment(order["payment_key"], fresh=fresh)
            if found is not None and found.order_id == order["order_id"]:
                return found
        return self.order(order["order_id"], fresh=fresh)

    def payout(self, payout_id: str) -> dict[str, Any] | None:
        self.report.checked["toss_lookups"] += 1
        found = self._get(self.client.get_payout, payout_id)
        return dict(found) if found is not None else None


def _holds_money(payment: Payment | None) -> bool:
    return payment is not None and payment.status in TOSS_HOLDING and payment.balance_amount > 0


def _held_at_toss(payment: Payment | None) -> int:
    """What Toss holds of a payment (0 when it holds nothing, or knows no such payment)."""
    return payment.balance_amount if payment is not None and _holds_money(payment) else 0


def _balance(charge: Row) -> int:
    return int(charge["amount"]) - int(charge["refunded_amount"])


def _sum(entries: Iterable[Row], entry_type: str) -> int:
    return sum(int(e["amount"]) for e in entries if e["entry_type"] == entry_type)


# --- the database snapshot -------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    requests: list[Row]
    shares: dict[int, list[Row]]  # request id -> shares
    charges: dict[int, list[Row]]  # payment id -> charges
    orders: dict[int, list[Row]]  # payment id -> orders
    ledger: dict[int, list[Row]]  # request id -> entries
    cancels: dict[int, list[Row]]  # payment id -> refund rows
    settlements: dict[int, list[Row]]  # request id -> settlements
    events: dict[int, list[Row]]  # request id -> funding notices, in the order written


def _group(rows: Iterable[Row], key: str) -> dict[int, list[Row]]:
    grouped: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[int(row[key])].append(row)
    return grouped


def _load(request_ids: list[int], period: int) -> _Snapshot:
    """Everything about these requests, read in one transaction: one consistent snapshot (REPEATABLE READ)."""
    with db.transaction() as tx:
        requests = audit_repo.requests(tx, request_ids)
        shares = audit_repo.shares(tx, request_ids, period)
        charges = audit_repo.charges(tx, request_ids, period)
        orders = audit_repo.orders(tx, request_ids, period)
        ledger = audit_repo.ledger_entries(tx, request_ids)
        cancels = audit_repo.cancels(tx, request_ids, period)
        settlements = audit_repo.settlements(tx, request_ids, period)
        events = audit_repo.funding_events(tx, request_ids)
    return _Snapshot(
        requests=requests,
        shares=_group(shares, "payment_request_id"),
        charges=_group(charges, "payment_id"),
        orders=_group(orders, "payment_id"),
        ledger=_group(ledger, "payment_request_id"),
        cancels=_group(cancels, "payment_id"),
        settlements=_group(settlements, "payment_request_id"),
        events=_group(events, "aggregate_id"),
    )


def _read(fn: Callable[..., Any], *args: Any) -> Any:
    """One fresh read outside the snapshot (to confirm a disagreement with Toss)."""
    with db.reader() as tx:
        return fn(tx, *args)


# --- the audit --------------------------------------------------------------------------------------------


def audit(
    *,
    chat_room_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    request_ids: Sequence[int] | None = None,
    toss: TossPort | None = None,
    reconciliation_period_seconds: int | None = None,
    deadline: Callable[[], bool] = lambda: False,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Compare our ledger with Toss (GET calls only) and with the rules of intent, for the requests of a room, created
    in [since, until) and/or among `request_ids`.

    `progress(done, total)` is called with the number of requests checked so far (once with 0 before the first,
    then after each request): about 2 minutes for 20,000 requests, so a console can show how far it is."""
    started = time.monotonic()
    period = (
        get_settings().reconcile_after_seconds * 2
        if reconciliation_period_seconds is None
        else int(reconciliation_period_seconds)
    )
    report = AuditReport()
    for name in (
        "requests",
        "payments",
        "charges",
        "orders",
        "cancels",
        "settlements",
        "ledger_entries",
        "funding_notices",
        "job_failures",
        "toss_lookups",
    ):
        report.checked[name] = 0
    if toss is None:
        from escrow.toss.client import get_toss_client

        toss = get_toss_client()
    lookups = _Toss(toss, report, period)
    with db.reader() as tx:
        ids = audit_repo.request_ids(
            tx,
            chat_room_id=chat_room_id,
            since=db_time(since),
            until=db_time(until),
            ids=None if request_ids is None else [int(i) for i in request_ids],
        )
    done = 0
    if progress is not None:
        progress(0, len(ids))
    for start in range(0, len(ids), batch):
        if deadline():
            report.complete = False
            break
        snapshot = _load(ids[start : start + batch], period)
        for request in snapshot.requests:
            if deadline():
                report.complete = False
                break
            report.findings.extend(_audit_request(request, snapshot, lookups, report))
            done += 1
            if progress is not None:
                progress(done, len(ids))
    everything = chat_room_id is None and since is None and until is None and request_ids is None
    if everything:
        for s in _read(audit_repo.orphan_settlements):
            report.findings.append(
                Finding("settlement_without_release", s["payment_request_id"], detail=f"settlement {s['id']}")
            )
    report.findings.extend(
        _job_failures(set(ids), all_items=chat_room_id is None and request_ids is None, report=report)
    )
    report.findings.sort(key=lambda f: (f.payment_request_id or 0, f.payment_id or 0, f.check))
    report.seconds = round(time.monotonic() - started, 3)
    report.checked = dict(report.checked)
    return report


def _job_failures(request_ids: set[int], *, all_items: bool, report: AuditReport) -> list[Finding]:
    """Every item a scheduled job set aside is a finding (someone must look at its error). An audit of all rooms
    (any time window: the scheduled audit looks at a window) reports them all; an audit of a room or of given
    requests, those of its requests (a request set aside, or one of its orders or refunds)."""
    out = []
    for row in _read(audit_repo.job_failures):
        rid = row["payment_request_id"]
        request_id = None if rid is None else int(rid)
        if not all_items and request_id not in request_ids:
            continue
        report.checked["job_failures"] += 1
        out.append(
            Finding(
                "job_failure",
                request_id,
                expected=f"{row['job']} done",
                actual=f"{row['item_kind']} {row['item_id']} set aside ({row['attempts']} attempts)",
                detail=f"{row['error']} (since {row['first_failed_at']}, next attempt {row['next_attempt_at']})",
            )
        )
    return out


def _audit_request(request: Row, snap: _Snapshot, toss: _Toss, report: AuditReport) -> list[Finding]:
    rid = int(request["id"])
    shares = snap.shares.get(rid, [])
    ledger = snap.ledger.get(rid, [])
    settlements = snap.settlements.get(rid, [])
    events = snap.events.get(rid, [])
    report.checked["requests"] += 1
    report.checked["payments"] += len(shares)
    report.checked["ledger_entries"] += len(ledger)
    report.checked["settlements"] += len(settlements)
    report.checked["funding_notices"] += len(events)
    out: list[Finding] = []
    out.extend(_request_state(request, shares, snap))
    out.extend(_funding_notices(request, events))
    out.extend(_ledger_checks(request, shares, snap))
    out.extend(_released_in_full(request, shares, ledger))
    out.extend(_settlement_checks(request, settlements, ledger, toss))
    toss_held: dict[int, int | None] = {}
    for share in shares:
        pid = int(share["id"])
        charges = snap.charges.get(pid, [])
        orders = snap.orders.get(pid, [])
        cancels = snap.cancels.get(pid, [])
        report.checked["charges"] += len(charges)
        report.checked["orders"] += len(orders)
        report.checked["cancels"] += len(cancels)
        out.extend(_share_checks(request, share, charges))
        out.extend(_closed_holding(request, share, charges, cancels))
        out.extend(_refund_rows(share, charges, cancels))
        out.extend(_stale_checks(share, charges, orders, cancels))
        found, toss_held[pid] = _toss_checks(share, charges, orders, cancels, toss)
        out.extend(found)
    out.extend(_funding_at_toss(request, shares, toss_held, toss))
    return out


# --- intent: the request and its participants -------------------------------------------------------------------


def _current(shares: list[Row]) -> list[Row]:
    return [s for s in shares if s["status"] != PaymentStatus.REMOVED]


def _holding(charges: list[Row]) -> int:
    """What a share's charges hold or released (amount - refunded of each held or released charge)."""
    return sum(_balance(c) for c in charges if c["status"] in _HOLDING)


def _held(charges: list[Row]) -> int:
    return sum(_balance(c) for c in charges if c["status"] == ChargeStatus.HELD)


def _fully_held(share: Row, charges: list[Row]) -> bool:
    return share["status"] == PaymentStatus.COMPLETED and _held(charges) == int(share["amount"])


def _request_state(request: Row, shares: list[Row], snap: _Snapshot) -> list[Finding]:
    rid, status = int(request["id"]), request["status"]

    def finding(expected: str, actual: str, detail: str, share: Row | None = None) -> Finding:
        return Finding(
            "request_state",
            rid,
            share["id"] if share else None,
            share["order_id"] if share else None,
            share["payment_key"] if share else None,
            expected,
            actual,
            detail,
        )

    out = []
    if status not in _KNOWN_STATUSES:
        out.append(
            finding("a known request status", str(status), f"statuses of shares: {[s['status'] for s in shares]}")
        )
    current = _current(shares)
    if int(request["participant_count"]) != len(current):
        out.append(
            finding(
                f"participant_count {len(current)}",
                f"participant_count {request['participant_count']}",
                f"current participants of a {status} request ({len(shares) - len(current)} removed)",
            )
        )
    if status in OPEN:
        short = [s for s in current if not _fully_held(s, snap.charges.get(int(s["id"]), []))]
        funded = bool(current) and not short
        if status == RequestStatus.COMPLETED and not current:
            out.append(finding("every current share held in full", "no participant", "a completed request"))
        for s in short if status == RequestStatus.COMPLETED else []:
            held = _held(snap.charges.get(int(s["id"]), []))
            out.append(
                finding(
                    "every current share held in full",
                    f"{s['status']}, holds {held} of {s['amount']}",
                    "a current participant of a completed request",
                    s,
                )
            )
        # Past its deadline a request is never funded (it waits for the run that expires it and refunds it).
        if status == RequestStatus.PENDING and funded and not request.get("overdue"):
            out.append(finding("completed", "pending", "every current participant holds their share in full"))
        for s in shares:
            if s["status"] == PaymentStatus.RELEASED:
                out.append(finding("not released", "released", f"a share of an open ({status}) request", s))
    elif status == RequestStatus.RELEASED:
        for s in current:
            if s["status"] != PaymentStatus.RELEASED:
                out.append(finding("released", str(s["status"]), "a current share of a released request", s))
    else:
        for s in shares:
            if s["status"] == PaymentStatus.RELEASED:
                out.append(finding("not released", "released", f"a share of a {status} request", s))
    return out


def _funding_notices(request: Row, events: list[Row]) -> list[Finding]:
    """Funding notices alternate Funded / Unfunded from Funded, one Funded per round, and end with Funded exactly
    while the request is funded (completed) or was released funded."""
    rid, status = int(request["id"]), str(request["status"])
    types = [str(e["event_type"]) for e in events]
    rounds = int(request["funding_round"])
    problems = []
    expected = ["EscrowFunded" if i % 2 == 0 else "EscrowUnfunded" for i in range(len(types))]
    if types != expected:
        problems.append("they do not alternate EscrowFunded / EscrowUnfunded from EscrowFunded")
    funded_notices = types.count("EscrowFunded")
    if funded_notices != rounds:
        problems.append(f"{funded_notices} EscrowFunded for funding_round {rounds}")
    for kind in ("EscrowFunded", "EscrowUnfunded"):
        keys = [str(e["dedupe_key"]) for e in events if e["event_type"] == kind]
        for n, key in enumerate(keys, start=1):
            if key.count(":") == 2 and key != f"{kind}:{rid}:{n}":  # the round's own key (older keys had 3 parts)
                problems.append(f"{kind} number {n} is keyed {key}")
    funded_now = status in (RequestStatus.COMPLETED, RequestStatus.RELEASED)
    ends_funded = bool(types) and types[-1] == "EscrowFunded"
    if ends_funded != funded_now:
        problems.append(
            f"the last notice says {'funded' if ends_funded else 'not funded'}, the request is {status}"
            if types
            else f"no notice, the request is {status}"
        )
    if not problems:
        return []
    return [
        Finding(
            "funding_notice",
            rid,
            expected="Funded/Unfunded alternating, ending " + ("Funded" if funded_now else "not funded"),
            actual=" ".join(t.removeprefix("Escrow") for t in types) or "none",
            detail="; ".join(problems),
        )
    ]


def _closed_holding(request: Row, share: Row, charges: list[Row], cancels: list[Row]) -> list[Finding]:
    """A cancelled or expired request, and a removed participant, hold nothing once no refund of it is open (in
    flight, or waiting for the payer's refund account: needs_account is open, never a finding) or owed by the
    schedule (refused for now, with a next attempt)."""
    removed = share["status"] == PaymentStatus.REMOVED
    if not removed and request["status"] in _NOT_CLOSED:
        return []
    holding = [c for c in charges if c["status"] == ChargeStatus.HELD and _balance(c) > 0]
    if not holding:
        return []
    pending = [
        c
        for c in cancels
        if c["status"] in CANCEL_OPEN or (c["status"] == CancelStatus.FAILED and c["next_attempt_at"] is not None)
    ]
    if pending:
        return []
    why = "a removed participant" if removed else f"a share of a {request['status']} request"
    return [
        Finding(
            "closed_holding",
            share["payment_request_id"],
            share["id"],
            c["order_id"],
            c["payment_key"],
            "refunded (nothing held)",
            f"charge {c['status']}, holds {_balance(c)}",
            f"{why}; no refund in flight or owed",
        )
        for c in holding
    ]


def _refund_rows(share: Row, charges: list[Row], cancels: list[Row]) -> list[Finding]:
    """Nobody is refunded more than asked; a refund the schedule owes never ends failed silently."""
    out = []
    by_key = {c["payment_key"]: c for c in charges}
    for c in cancels:

        def finding(check: str, expected: str, actual: str, detail: str, c: Row = c) -> Finding:
            return Finding(
                check, share["payment_request_id"], share["id"], None, c["payment_key"], expected, actual, detail
            )

        asked = c["requested_amount"]
        if c["status"] == CancelStatus.DONE and asked is not None and int(c["cancel_amount"] or 0) > int(asked):
            out.append(
                finding(
                    "over_refunded",
                    f"at most {asked}",
                    f"refunded {c['cancel_amount']}",
                    f"refund {c['id']} ({c['request_key'][:24]}): transaction {c['transaction_key']}",
                )
            )
        owed = not str(c["request_key"]).startswith(_NOT_OWED_PREFIXES)
        charge = by_key.get(c["payment_key"])
        still_holds = charge is not None and charge["status"] == ChargeStatus.HELD and _balance(charge) > 0
        if owed and c["status"] == CancelStatus.FAILED and c["next_attempt_at"] is None and still_holds:
            assert charge is not None
            out.append(
                finding(
                    "refund_abandoned",
                    "refunded, or asked again later",
                    f"failed {c['toss_code'] or ''}".rstrip(),
                    f"refund {c['id']} ({str(c['request_key']).split(':')[0]}) has no next attempt; "
                    f"the charge still holds {_balance(charge)}",
                )
            )
    return out


# --- shares: their columns and status against their charges ----------------------------------------------------


def _share_checks(request: Row, share: Row, charges: list[Row]) -> list[Finding]:
    def finding(check: str, expected: str, actual: str, detail: str) -> Finding:
        return Finding(
            check,
            share["payment_request_id"],
            share["id"],
            share["order_id"],
            share["payment_key"],
            expected,
            actual,
            detail,
        )

    out = []
    amount, status = int(share["amount"]), share["status"]
    if amount != int(request["amount"]):
        out.append(finding("amount", f"owes {request['amount']}", f"owes {amount}", "the request's amount"))
    counted = [c for c in charges if c["status"] in _COUNTED]
    paid = sum(int(c["amount"]) for c in counted)
    refunded = sum(int(c["refunded_amount"]) for c in counted)
    if (int(share["paid_amount"]), int(share["refunded_amount"])) != (paid, refunded):
        out.append(
            finding(
                "share_amounts",
                f"paid {paid}, refunded {refunded}",
                f"paid {share['paid_amount']}, refunded {share['refunded_amount']}",
                f"sums over {len(counted)} held, released and refunded charges",
            )
        )
    holding = _holding(charges)
    if holding > amount:
        out.append(
            finding("over_held", f"at most {amount}", f"holds {holding}", f"{len(counted)} charges (status {status})")
        )
    held = _held(charges)
    if status == PaymentStatus.RELEASED:
        if held:
            out.append(finding("share_status", "every charge released", f"{held} still held", "a released share"))
    elif status not in CONFIRMING and status != PaymentStatus.REMOVED:
        if held >= amount:
            want: tuple[str, ...] = (PaymentStatus.COMPLETED,)
        elif held > 0:
            want = (PaymentStatus.PARTIALLY_REFUNDED,)
        elif paid > 0:
            want = (PaymentStatus.PENDING, PaymentStatus.FAILED, PaymentStatus.REFUNDED)
        else:
            want = (PaymentStatus.PENDING, PaymentStatus.FAILED)
        if status not in want:
            out.append(finding("share_status", "/".join(want), str(status), f"holds {held} of {amount}"))
    return out


# --- the ledger -------------------------------------------------------------------------------------------------


def _ledger_checks(request: Row, shares: list[Row], snap: _Snapshot) -> list[Finding]:
    rid = int(request["id"])
    ledger = snap.ledger.get(rid, [])
    out: list[Finding] = []
    by_payment: dict[int | None, list[Row]] = defaultdict(list)
    for e in ledger:
        by_payment[e["payment_id"]].append(e)
    unbalanced = []
    total_held = total_awaiting = 0
    for share in shares:
        pid = int(share["id"])
        entries = by_payment.get(pid, [])
        charges = snap.charges.get(pid, [])
        orders = snap.orders.get(pid, [])
        held = _held(charges)
        pending_keys = {
            o["payment_key"] for o in orders if o["status"] == OrderStatus.REFUND_PENDING and o["payment_key"]
        }
        awaiting = sum(
            int(e["amount"]) for e in entries if e["entry_type"] == "charge" and e["reference"] in pending_keys
        )
        total_held += held
        total_awaiting += awaiting
        charge, refund = _sum(entries, "charge"), _sum(entries, "refund")
        release, reversal = _sum(entries, "release"), _sum(entries, "reversal")
        if charge != refund + release + reversal + held + awaiting:
            unbalanced.append(
                f"#{pid}: charge {charge} != refund {refund} + release {release} + reversal {reversal} + held {held} "
                f"+ awaiting {awaiting}"
            )
        out.extend(_share_ledger(share, entries, charges, orders, snap.cancels.get(pid, [])))
    charge, refund = _sum(ledger, "charge"), _sum(ledger, "refund")
    release, reversal = _sum(ledger, "release"), _sum(ledger, "reversal")
    ids = {int(s["id"]) for s in shares}
    strays = [e for e in ledger if e["payment_id"] is None or int(e["payment_id"]) not in ids]
    if charge != refund + release + reversal + total_held + total_awaiting or unbalanced or strays:
        details = list(unbalanced)
        if strays:
            details.append(f"{len(strays)} entries of no share of this request")
        out.append(
            Finding(
                "ledger_identity",
                rid,
                expected=f"charge {charge} = refund+release+reversal+held+awaiting",
                actual=(
                    f"refund {refund} + release {release} + reversal {reversal} + held {total_held} + awaiting "
                    f"{total_awaiting} = {refund + release + reversal + total_held + total_awaiting}"
                ),
                detail="; ".join(details),
            )
        )
    return out


def _share_ledger(
    share: Row, entries: list[Row], charges: list[Row], orders: list[Row], cancels: list[Row]
) -> list[Finding]:
    def finding(check: str, expected: str, actual: str, detail: str, key: str | None = None) -> Finding:
        return Finding(
            check,
            share["payment_request_id"],
            share["id"],
            share["order_id"],
            key or share["payment_key"],
            expected,
            actual,
            detail,
        )

    out = []
    charge_entries: dict[str, int] = defaultdict(int)
    refund_entries: dict[str, int] = defaultdict(int)
    for e in entries:
        if e["entry_type"] == "charge":  # a deposit made again after a reversal is `<paymentKey>:deposit-<n>`
            charge_entries[str(e["reference"]).split(":deposit-")[0]] += int(e["amount"])
        elif e["entry_type"] == "reversal":  # `reversal:<paymentKey>:<transaction>`: Toss took a deposit back
            charge_entries[str(e["reference"]).split(":")[1]] -= int(e["amount"])
        elif e["entry_type"] == "refund":
            refund_entries[e["reference"]] += int(e["amount"])
    for c in charges:
        key = c["payment_key"]
        if c["status"] in _COUNTED and charge_entries.get(key, 0) != int(c["amount"]):
            out.append(
                finding(
                    "ledger_charge",
                    f"charge {c['amount']}",
                    f"charge {charge_entries.get(key, 0)}",
                    f"the charge entry of a {c['status']} charge",
                    key,
                )
            )
        done = [r for r in cancels if r["payment_key"] == key and r["status"] == CancelStatus.DONE]
        cancelled = sum(int(r["cancel_amount"] or 0) for r in done)
        recorded = sum(refund_entries.get(r["transaction_key"], 0) for r in done if r["transaction_key"])
        if not cancelled == recorded == int(c["refunded_amount"]):
            missing = [
                str(r["id"])
                for r in done
                if refund_entries.get(r["transaction_key"], 0) != int(r["cancel_amount"] or 0)
            ]
            out.append(
                finding(
                    "ledger_refund",
                    f"refunded {c['refunded_amount']}",
                    f"done refunds {cancelled}, refund entries {recorded}",
                    "refunded_amount vs done refund rows vs their refund entries"
                    + (f" (rows without their entry: {', '.join(missing)})" if missing else ""),
                    key,
                )
            )
    known = {c["payment_key"] for c in charges} | {o["payment_key"] for o in orders if o["payment_key"]}
    unknown = sorted(k for k in charge_entries if k not in known)
    if unknown:
        out.append(
            finding(
                "ledger_charge",
                "charge entries of the share's charges and orders",
                f"{len(unknown)} other",
                "paymentKeys: " + ", ".join(unknown),
            )
        )
    releases = [e for e in entries if e["entry_type"] == "release"]
    released = sum(int(e["amount"]) for e in releases)
    own = all(e["reference"] == f"release:{share['id']}" for e in releases)
    if share["status"] == PaymentStatus.RELEASED:
        want = sum(_balance(c) for c in charges if c["status"] == ChargeStatus.RELEASED)
        if released != want or not own or len(releases) != 1:
            out.append(
                finding(
                    "ledger_release",
                    f"one release of {want}",
                    f"{len(releases)} entries, {released}",
                    "what the released charges hold",
                )
            )
    elif releases:
        out.append(finding("ledger_release", "no release entry", f"release {released}", f"share is {share['status']}"))
    return out


# --- settlements and payouts --------------------------------------------------------------------------------


def _released_in_full(request: Row, shares: list[Row], ledger: list[Row]) -> list[Finding]:
    rid = int(request["id"])
    out = []
    for s in shares:
        own = [e for e in ledger if e["entry_type"] == "release" and e["payment_id"] == s["id"]]
        total = sum(int(e["amount"]) for e in own)
        if s["status"] == PaymentStatus.REMOVED:
            if own:
                out.append(
                    Finding(
                        "released_in_full",
                        rid,
                        s["id"],
                        s["order_id"],
                        s["payment_key"],
                        "nothing released",
                        f"released {total}",
                        "a removed participant",
                    )
                )
        elif request["status"] == RequestStatus.RELEASED and (len(own) != 1 or total != int(request["amount"])):
            out.append(
                Finding(
                    "released_in_full",
                    rid,
                    s["id"],
                    s["order_id"],
                    s["payment_key"],
                    f"released {request['amount']} once",
                    f"released {total} in {len(own)} entries",
                    f"a current share of a released request ({s['status']})",
                )
            )
    return out


def _settlement_checks(request: Row, settlements: list[Row], ledger: list[Row], toss: _Toss) -> list[Finding]:
    rid, status = int(request["id"]), request["status"]
    if status != RequestStatus.RELEASED:
        return [
            Finding("settlement_without_release", rid, expected="no settlement", actual=f"request {status}")
            for _ in settlements
        ]
    if len(settlements) != 1:
        return [Finding("settlement", rid, expected="1 settlement", actual=f"{len(settlements)} settlements")]
    s = settlements[0]
    out = []
    gross = _sum(ledger, "release")
    fee = platform_fee(s["gross_amount"], s["fee_bps"])
    if s["gross_amount"] != gross:
        out.append(
            Finding(
                "settlement",
                rid,
                expected=f"gross {gross}",
                actual=f"gross {s['gross_amount']}",
                detail="gross = sum of release entries",
            )
        )
    if s["platform_fee"] != fee:
        out.append(
            Finding(
                "settlement",
                rid,
                expected=f"fee {fee}",
                actual=f"fee {s['platform_fee']}",
                detail=f"fee = floor(gross x {s['fee_bps']} bps)",
            )
        )
    if s["net_amount"] != s["gross_amount"] - s["platform_fee"]:
        out.append(
            Finding(
                "settlement",
                rid,
                expected=f"net {s['gross_amount'] - s['platform_fee']}",
                actual=f"net {s['net_amount']}",
                detail="net = gross - fee",
            )
        )
    payout_status = s["payout_status"]
    if payout_status == "not_needed" and s["net_amount"] > 0:
        out.append(
            Finding("settlement", rid, expected="a payout", actual="not_needed", detail=f"net {s['net_amount']}")
        )
    if payout_status == "failed":
        out.append(
            Finding(
                "payout_failed",
                rid,
                expected="payout completed",
                actual="failed",
                detail=f"{s['payout_error_code']}: the store is owed {s['net_amount']}",
            )
        )
    # A scheduled payout that says what it waits for (Toss's payout balance, the store's seller, a retry after a
    # refusal) is not stale: it has its own alarms (PayoutsWaitingForBalance, PayoutsRefused).
    waits = s["payout_waiting_for"] not in (None, "schedule")
    if payout_status == "scheduled" and s["stale"] and not s["payout_error_code"] and not waits:
        out.append(
            Finding(
                "stale_payout",
                rid,
                expected="payout requested",
                actual="scheduled",
                detail="never sent and older than the period",
            )
        )
    if payout_status == "requesting" and s["lease_over"] and s["stale"]:
        out.append(
            Finding(
                "stale_payout",
                rid,
                expected="payout answered",
                actual="requesting",
                detail="no answer and the lease ran out longer than the period ago",
            )
        )
    if s["payout_id"]:
        out.extend(_payout_vs_toss(rid, s, toss))
    return out


_PAYOUT_FINAL = {"completed": "COMPLETED", "failed": "FAILED"}


def _payout_vs_toss(rid: int, s: Row, toss: _Toss) -> list[Finding]:
    try:
        payout = toss.payout(s["payout_id"])
    except _LookupFailed as exc:
        return [Finding("toss_lookup", rid, expected="payout", actual="no answer", detail=str(exc)[:200])]
    if payout is None:
        return [Finding("payout", rid, expected=f"payout {s['payout_id']}", actual="not found at Toss")]
    out = []
    value = (payout.get("amount") or {}).get("value")
    if value is None or int(value) != s["net_amount"]:
        out.append(
            Finding(
                "payout",
                rid,
                expected=f"amount {s['net_amount']}",
                actual=f"amount {value}",
                detail=f"payout {s['payout_id']} vs settlement net",
            )
        )
    if payout.get("refPayoutId") != s["ref_payout_id"]:
        out.append(
            Finding("payout", rid, expected=f"ref {s['ref_payout_id']}", actual=f"ref {payout.get('refPayoutId')}")
        )
    toss_status = str(payout.get("status") or "")
    ours = s["payout_status"]
    if ours in _PAYOUT_FINAL and toss_status != _PAYOUT_FINAL[ours]:
        out.append(Finding("payout", rid, expected=_PAYOUT_FINAL[ours], actual=toss_status, detail=f"ours {ours}"))
    elif ours not in _PAYOUT_FINAL and toss_status in ("COMPLETED", "FAILED") and s["stale"]:
        out.append(
            Finding(
                "payout",
                rid,
                expected=f"{toss_status.lower()} (as Toss)",
                actual=ours,
                detail="Toss's final payout status not applied within the period",
            )
        )
    return out


# --- stale items ----------------------------------------------------------------------------------------------


def _stale_checks(share: Row, charges: list[Row], orders: list[Row], cancels: list[Row]) -> list[Finding]:
    rid, pid = share["payment_request_id"], share["id"]
    # An order whose virtual account waits for the payer's deposit is in flight for as long as the payer takes.
    waiting = {c["order_id"] for c in charges if c["status"] == ChargeStatus.WAITING_FOR_DEPOSIT}
    out = []
    if share["status"] in CONFIRMING and share["stale"] and share["order_id"] not in waiting:
        out.append(
            Finding(
                "stale_payment",
                rid,
                pid,
                share["order_id"],
                share["payment_key"],
                "settled",
                share["status"],
                f"unchanged since {share['updated_at']}",
            )
        )
    for o in orders:
        if o["status"] in ORDER_IN_FLIGHT and o["stale"] and o["order_id"] not in waiting:
            out.append(
                Finding(
                    "stale_order",
                    rid,
                    pid,
                    o["order_id"],
                    o["payment_key"],
                    "settled",
                    o["status"],
                    f"unchanged since {o['updated_at']}",
                )
            )
        if o["status"] == OrderStatus.REFUND_PENDING and o["stale"]:
            out.append(
                Finding(
                    "stale_refund_pending",
                    rid,
                    pid,
                    o["order_id"],
                    o["payment_key"],
                    "refunded",
                    "refund_pending",
                    f"a charge we must not keep ({o['failure_code']}), unchanged since {o['updated_at']}",
                )
            )
    for c in cancels:
        if c["status"] in CANCEL_IN_FLIGHT and c["stale"]:
            out.append(
                Finding(
                    "stale_cancel",
                    rid,
                    pid,
                    None,
                    c["payment_key"],
                    "done or failed",
                    c["status"],
                    f"refund {c['id']} unchanged since {c['updated_at']}",
                )
            )
        if c["status"] == CancelStatus.FAILED and c["retry_overdue"]:
            out.append(
                Finding(
                    "stale_refund_retry",
                    rid,
                    pid,
                    None,
                    c["payment_key"],
                    "asked again",
                    f"failed {c['toss_code'] or ''}".rstrip(),
                    f"refund {c['id']}: attempt {c['attempt'] + 1} was due at {c['next_attempt_at']}",
                )
            )
    return out


# --- checks against Toss ----------------------------------------------------------------------------------


def _settling(cancels: list[Row], payment_key: str) -> bool:
    """A refund of this charge is in flight and younger than the period: Toss may be ahead of our rows."""
    return any(c["payment_key"] == payment_key and c["status"] in CANCEL_IN_FLIGHT and not c["stale"] for c in cancels)


def _expected_toss_statuses(charge: Row) -> tuple[str, ...]:
    status, refunded = charge["status"], int(charge["refunded_amount"])
    if status in _HOLDING:
        return ("DONE",) if refunded == 0 else ("PARTIAL_CANCELED",)
    if status == ChargeStatus.REFUNDED:
        return ("CANCELED", "PARTIAL_CANCELED")
    return ("WAITING_FOR_DEPOSIT",)


def _charge_vs_toss(charge: Row, payment: Payment | None, cancels: list[Row]) -> list[Finding]:
    def finding(check: str, expected: str, actual: str, detail: str) -> Finding:
        return Finding(
            check,
            charge["payment_request_id"],
            charge["payment_id"],
            charge["order_id"],
            charge["payment_key"],
            expected,
            actual,
            detail,
        )

    status = charge["status"]
    if payment is None:
        return [finding("toss_payment", f"{status} at Toss", "not found", "Toss has no payment with this paymentKey")]
    out = []
    if payment.total_amount != int(charge["amount"]) and status != ChargeStatus.CANCELLED:
        out.append(
            finding("toss_payment", f"total {charge['amount']}", f"total {payment.total_amount}", "charged amount")
        )
    if payment.order_id != charge["order_id"]:
        out.append(
            finding(
                "toss_payment", f"orderId {charge['order_id']}", f"orderId {payment.order_id}", "paymentKey's order"
            )
        )
    if _settling(cancels, charge["payment_key"]):
        return out  # a refund in flight: Toss may be ahead of us until it is recorded
    if status == ChargeStatus.CANCELLED:
        if _holds_money(payment):
            out.append(
                finding(
                    "toss_payment", "nothing held", f"{payment.status} balance {payment.balance_amount}", "cancelled"
                )
            )
        return out
    statuses = _expected_toss_statuses(charge)
    if payment.status not in statuses:
        out.append(finding("toss_payment", "/".join(statuses), payment.status, f"our charge is {status}"))
    if status in _COUNTED and payment.balance_amount != _balance(charge):
        out.append(
            finding(
                "toss_payment",
                f"balance {_balance(charge)}",
                f"balance {payment.balance_amount}",
                f"amount {charge['amount']} - refunded {charge['refunded_amount']} (ours), "
                f"refunded {payment.refunded_amount} (Toss)",
            )
        )
    if status in _COUNTED:
        out.extend(_refunds_vs_toss(charge, payment, cancels, finding))
    return out


def _refunds_vs_toss(
    charge: Row, payment: Payment, cancels: list[Row], finding: Callable[[str, str, str, str], Finding]
) -> list[Finding]:
    """Each refund transaction Toss lists for the charge is on exactly one done row of it, with Toss's amount; no done
    row of the charge is for a transaction Toss does not list."""
    at_toss = {
        c.transaction_key: c.cancel_amount for c in payment.cancels or [] if (c.cancel_status or "DONE") == "DONE"
    }
    rows = [r for r in cancels if r["payment_key"] == charge["payment_key"] and r["status"] == CancelStatus.DONE]
    ours = {r["transaction_key"]: int(r["cancel_amount"] or 0) for r in rows}
    problems = []
    missing = [k for k in at_toss if k not in ours]
    if missing:
        problems.append(f"not recorded: {', '.join(f'{k} ({at_toss[k]})' for k in missing)}")
    unknown = [str(r["id"]) for r in rows if r["transaction_key"] not in at_toss]
    if unknown:
        problems.append(f"rows for no refund at Toss: {', '.join(unknown)}")
    if len(ours) != len(rows):
        problems.append("a transaction recorded on more than one row")
    wrong = [f"{k} ({ours[k]} vs {v})" for k, v in at_toss.items() if k in ours and ours[k] != v]
    if wrong:
        problems.append(f"amounts differ: {', '.join(wrong)}")
    if not problems:
        return []
    return [
        finding(
            "toss_refund",
            f"refunds {sum(at_toss.values())} in {len(at_toss)} at Toss",
            f"{sum(ours.values())} on {len(rows)} done rows",
            "; ".join(problems),
        )
    ]


def _order_vs_toss(order: Row, charge: Row | None, share: Row, payment: Payment | None) -> list[Finding]:
    def finding(check: str, expected: str, actual: str, detail: str) -> Finding:
        return Finding(
            check,
            share["payment_request_id"],
            share["id"],
            order["order_id"],
            order["payment_key"] or (payment.payment_key if payment else None),
            expected,
            actual,
            detail,
        )

    status = order["status"]
    toss_state = "not found" if payment is None else f"{payment.status} balance {payment.balance_amount}"
    if status == OrderStatus.DONE:
        out = []
        if payment is None or payment.status not in (*TOSS_HOLDING, "CANCELED"):
            out.append(finding("toss_order", "approved at Toss", toss_state, "an order we hold as done"))
        if charge is None or charge["payment_key"] != order["payment_key"]:
            out.append(
                finding(
                    "toss_order",
                    "the order of a charge",
                    "no charge" if charge is None else f"charge {charge['payment_key']}",
                    "a done order funds its share through a charge",
                )
            )
        return out
    if status == OrderStatus.REFUNDED:
        if payment is None or payment.status not in ("CANCELED", "PARTIAL_CANCELED") or payment.balance_amount:
            return [finding("toss_order", "CANCELED balance 0", toss_state, "an unexpected charge we refunded")]
        return []
    if status == OrderStatus.REFUND_PENDING:
        if payment is None:
            return [finding("toss_order", "charged at Toss", toss_state, "a charge we recorded as to refund")]
        return []
    # failed / superseded / issued, or in flight for too long: Toss must not hold money for it, unless that money is
    # a charge of the share (a deposit recorded while the order waited: the charge's own checks cover it).
    charged = charge is not None and payment is not None and charge["payment_key"] == payment.payment_key
    if _holds_money(payment) and (status not in ORDER_IN_FLIGHT or order["stale"]) and not charged:
        assert payment is not None
        return [
            finding(
                "charged_not_held",
                "no money held at Toss",
                toss_state,
                f"Toss holds {payment.balance_amount} for an order we hold as {status}",
            )
        ]
    return []


def _lookup_failed(share: Row, what: str, order_id: str | None, key: str | None, exc: Exception) -> Finding:
    return Finding(
        "toss_lookup", share["payment_request_id"], share["id"], order_id, key, what, "no answer", str(exc)[:200]
    )


def _toss_checks(
    share: Row, charges: list[Row], orders: list[Row], cancels: list[Row], toss: _Toss
) -> tuple[list[Finding], int | None]:
    """The share's charges, refunds and orders against Toss. Returns the findings and what the share's held charges
    hold at Toss (None when Toss could not be asked, or a refund of the share is settling)."""
    out: list[Finding] = []
    period = toss.period
    toss_held: int | None = 0
    for charge in charges:
        key = charge["payment_key"]
        try:
            payment = toss.payment(key)
            found = _charge_vs_toss(charge, payment, cancels)
            if found:  # look again, both sides fresh: it may have moved while we looked
                fresh = _read(audit_repo.charge, key, period)
                fresh_cancels = _read(audit_repo.cancels_of_charge, key, period)
                payment = toss.payment(key, fresh=True)
                found = _charge_vs_toss(fresh, payment, fresh_cancels) if fresh is not None else []
            out.extend(found)
        except _LookupFailed as exc:
            out.append(_lookup_failed(share, "Toss payment", charge["order_id"], key, exc))
            toss_held = None
            continue
        if _settling(cancels, key):
            toss_held = None
        elif charge["status"] == ChargeStatus.HELD and toss_held is not None:
            toss_held += _held_at_toss(payment)
    by_order = {c["order_id"]: c for c in charges}
    at_toss: dict[str, tuple[Row, Payment]] = {}
    for order in orders:
        try:
            payment = toss.of_order(order)
            found = _order_vs_toss(order, by_order.get(order["order_id"]), share, payment)
            if found:
                fresh_order = _read(audit_repo.order, order["order_id"], period)
                if fresh_order is None:
                    found = []
                else:
                    fresh_charge = _read(audit_repo.charge_for_order, order["order_id"], period)
                    payment = toss.of_order(fresh_order, fresh=True)
                    found = _order_vs_toss(fresh_order, fresh_charge, share, payment)
            out.extend(found)
        except _LookupFailed as exc:
            out.append(_lookup_failed(share, "Toss payment", order["order_id"], order["payment_key"], exc))
            continue
        if payment is not None:
            at_toss[payment.payment_key] = (order, payment)
    out.extend(_double_charge(share, at_toss, toss))
    return out, toss_held


def _holding_at_toss(at_toss: dict[str, tuple[Row, Payment]]) -> list[str]:
    """The share's orders that hold money at Toss (one being settled right now, in flight or to refund and younger
    than the period, is not a second charge)."""
    return [
        f"{o['order_id']} ({o['status']}, balance {p.balance_amount})"
        for o, p in at_toss.values()
        if _holds_money(p) and not (o["status"] in ORDER_TO_RECONCILE and not o["stale"])
    ]


def _double_charge(share: Row, at_toss: dict[str, tuple[Row, Payment]], toss: _Toss) -> list[Finding]:
    def total(found: dict[str, tuple[Row, Payment]]) -> int:
        return sum(
            p.balance_amount
            for o, p in found.values()
            if _holds_money(p) and not (o["status"] in ORDER_TO_RECONCILE and not o["stale"])
        )

    amount = int(share["amount"])
    if total(at_toss) <= amount:
        return []
    fresh: dict[str, tuple[Row, Payment]] = {}  # both sides again: an order may have been refunded meanwhile
    try:
        for order in _read(audit_repo.orders_of_share, int(share["id"]), toss.period):
            payment = toss.of_order(order, fresh=True)
            if payment is not None:
                fresh[payment.payment_key] = (order, payment)
    except _LookupFailed:
        fresh = at_toss
    holding = total(fresh)
    if holding <= amount:
        return []
    return [
        Finding(
            "double_charge",
            share["payment_request_id"],
            share["id"],
            share["order_id"],
            share["payment_key"],
            f"at most {amount} held at Toss",
            f"{holding} in {len(_holding_at_toss(fresh))} orders",
            "; ".join(_holding_at_toss(fresh)),
        )
    ]


def _funding_at_toss(request: Row, shares: list[Row], toss_held: dict[int, int | None], toss: _Toss) -> list[Finding]:
    """A completed request: Toss holds every current participant's share in full (what their held charges hold)."""
    if request["status"] != RequestStatus.COMPLETED:
        return []
    out: list[Finding] = []
    for share in _current(shares):
        held = toss_held.get(int(share["id"]))
        if held is None or held == int(share["amount"]):
            continue
        # Fresh, both sides: the request may have been unfunded, or a charge refunded or added, meanwhile.
        fresh_request = _read(audit_repo.request, int(request["id"]))
        if fresh_request is None or fresh_request["status"] != RequestStatus.COMPLETED:
            return out
        charges = _read(audit_repo.charges_of_share, int(share["id"]), toss.period)
        cancels = [r for c in charges for r in _read(audit_repo.cancels_of_charge, c["payment_key"], toss.period)]
        if any(_settling(cancels, c["payment_key"]) for c in charges):
            continue  # a refund in flight: the request unfunds once it is recorded
        try:
            payments = [toss.payment(c["payment_key"], fresh=True) for c in charges if c["status"] == ChargeStatus.HELD]
        except _LookupFailed:
            continue  # reported as toss_lookup by the charge's own check
        held = sum(_held_at_toss(p) for p in payments)
        if held != int(share["amount"]):
            out.append(
                Finding(
                    "funding_at_toss",
                    request["id"],
                    share["id"],
                    share["order_id"],
                    share["payment_key"],
                    f"{share['amount']} held at Toss",
                    f"{held} held at Toss",
                    "a current participant of a completed request",
                )
            )
    return out


# --- command line -----------------------------------------------------------------------------------------


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m escrow.audit", description="Audit our ledger against Toss.")
    parser.add_argument("--room", type=int, help="only this chat room's requests")
    parser.add_argument("--since", type=_when, help="requests created at or after (ISO 8601; UTC when no offset)")
    parser.add_argument("--until", type=_when, help="requests created before (ISO 8601)")
    parser.add_argument("--period", type=int, help="reconciliation period in seconds (default 2 x RECONCILE_AFTER)")
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.database_url:
        import os

        from escrow.config import reset_settings

        os.environ["DATABASE_URL"] = args.database_url
        reset_settings()
    report = audit(
        chat_room_id=args.room, since=args.since, until=args.until, reconciliation_period_seconds=args.period
    )
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2, default=str))
    else:
        if report.findings:
            print(report.table())
            print()
            print("findings by check: " + ", ".join(f"{k} {v}" for k, v in report.by_check().items()))
        print(report.summary())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
