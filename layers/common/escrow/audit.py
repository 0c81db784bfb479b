"""Ledger audit: our ledger and state against Toss's own record, read-only.

    python -m escrow.audit [--room N] [--since ISO] [--until ISO] [--period SECONDS] [--json]

Exit code 1 when there is any finding, 0 otherwise. The audit never writes: it reads the database inside one
consistent snapshot per batch of requests (so the ledger identities hold exactly for a consistent state, whatever
runs at the same time) and asks Toss with GET calls only (`TossClient.get_payment`, `get_payment_by_order`,
`get_payout`). A disagreement with Toss is checked a second time against a fresh read of our row and of Toss
before it is reported, so a payment that moves while the audit runs is not reported.

Checks (the `check` of a finding):

- `toss_payment`: every share we hold as completed, partially_refunded, released or refunded matches Toss by
  paymentKey: status (DONE for completed and unrefunded released, PARTIAL_CANCELED for partially_refunded and a
  partly refunded released share, CANCELED or PARTIAL_CANCELED with balance 0 for refunded), balanceAmount ==
  paid_amount - refunded_amount, totalAmount == paid_amount, the same orderId.
- `toss_order`: every order we hold as done, refunded or refund_pending is known to Toss; a done order is the
  share's live attempt; a refunded order has balance 0 at Toss.
- `charged_not_held`: an order we consider failed, superseded, issued (or in flight for longer than the
  reconciliation period) holds money at Toss (DONE or PARTIAL_CANCELED with a balance).
- `double_charge`: two orders of one share hold money at Toss.
- `amount`: a paid share's paid_amount is not the request's amount.
- `ledger_identity`: per request, sum(charge) == sum(refund) + sum(release) + held + awaiting_refund, where
  held = sum(paid_amount - refunded_amount) over shares in completed/partially_refunded, and awaiting_refund is
  the charge of every order in refund_pending (a charge we must not keep, recorded and not refunded yet; zero
  once the schedule has run). The detail names the shares that do not balance.
- `ledger_charge`, `ledger_release`, `ledger_refund`: the entries behind a share's columns: a charge entry for
  its paymentKey of paid_amount; a release entry of paid_amount - refunded_amount exactly when it is released;
  refunded_amount == the done cancels' amounts == the refund entries of those cancel transactions.
- `settlement`: a released request has exactly one settlement, gross == sum of its release entries,
  fee == floor(gross * fee_bps / 10000), net == gross - fee; `settlement_without_release` for the others.
- `payout`: a settlement's payout at Toss (when it has one) has amount == net and its refPayoutId, and its status
  agrees with ours; `payout_failed`: a payout that failed (the store is owed money and nothing retries it).
- `stale_payment`, `stale_order`, `stale_cancel`, `stale_refund_pending`, `stale_payout`: a payment or order
  in_progress/unknown, an order in refund_pending, a cancel requested/unknown, a payout never sent or with an
  expired lease, older than the reconciliation period (default 2 x RECONCILE_AFTER_SECONDS).
- `request_state`: a completed request has every share held (and as many shares as participants); a pending
  request has not (every participant paid: it should be completed) and has none released; a released request has
  every share released; a cancelled or expired request holds nothing (every held share refunded).
- `toss_lookup`: Toss did not answer a lookup (after retries), so the item could not be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
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
    CONFIRMING,
    HELD,
    ORDER_IN_FLIGHT,
    ORDER_TO_RECONCILE,
    PAID,
    PaymentStatus,
)
from escrow.toss import TossApiError, TossError

if TYPE_CHECKING:
    from escrow.toss.client import TossClient
    from escrow.toss.models import Payment

TOSS_HOLDING = ("DONE", "PARTIAL_CANCELED")  # statuses under which Toss can still hold a balance
NOT_FOUND_CODES = ("NOT_FOUND_PAYMENT", "NOT_FOUND_PAYMENT_SESSION", "NOT_FOUND_PAYOUT")
BATCH = 200  # requests per database snapshot
_LOOKUP_ATTEMPTS = 3


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

    def __init__(self, client: TossClient, report: AuditReport, period: int):
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

    def payout(self, payout_id: str) -> dict[str, Any] | None:
        self.report.checked["toss_lookups"] += 1
        found = self._get(self.client.get_payout, payout_id)
        return dict(found) if found is not None else None


# --- the database snapshot -------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    requests: list[dict[str, Any]]
    shares: dict[int, list[dict[str, Any]]]  # request id -> shares
    orders: dict[int, list[dict[str, Any]]]  # payment id -> orders
    ledger: dict[int, list[dict[str, Any]]]  # request id -> entries
    cancels: dict[int, list[dict[str, Any]]]  # payment id -> cancels
    settlements: dict[int, list[dict[str, Any]]]  # request id -> settlements


def _request_ids(chat_room_id: int | None, since: datetime | None, until: datetime | None) -> list[int]:
    with db.reader() as tx:
        return audit_repo.request_ids(tx, chat_room_id=chat_room_id, since=db_time(since), until=db_time(until))


def _group(rows: Iterable[dict[str, Any]], key: str) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[int(row[key])].append(row)
    return grouped


def _load(request_ids: list[int], period: int) -> _Snapshot:
    """Everything about these requests, read in one transaction: one consistent snapshot (REPEATABLE READ)."""
    with db.transaction() as tx:
        requests = audit_repo.requests(tx, request_ids)
        shares = audit_repo.shares(tx, request_ids, period)
        orders = audit_repo.orders(tx, request_ids, period)
        ledger = audit_repo.ledger_entries(tx, request_ids)
        cancels = audit_repo.cancels(tx, request_ids, period)
        settlements = audit_repo.settlements(tx, request_ids, period)
    return _Snapshot(
        requests=requests,
        shares=_group(shares, "payment_request_id"),
        orders=_group(orders, "payment_id"),
        ledger=_group(ledger, "payment_request_id"),
        cancels=_group(cancels, "payment_id"),
        settlements=_group(settlements, "payment_request_id"),
    )


def _orphan_settlements() -> list[dict[str, Any]]:
    with db.reader() as tx:
        return audit_repo.orphan_settlements(tx)


def _fresh_share(payment_id: int) -> dict[str, Any] | None:
    with db.reader() as tx:
        return audit_repo.share(tx, payment_id)


def _fresh_order(order_id: str, period: int) -> dict[str, Any] | None:
    with db.reader() as tx:
        return audit_repo.order_with_share(tx, order_id, period)


# --- checks against Toss ----------------------------------------------------------------------------------


def _expected_toss_statuses(share: dict[str, Any]) -> tuple[str, ...]:
    status, refunded = share["status"], share["refunded_amount"]
    if status == "completed":
        return ("DONE",) if refunded == 0 else ("PARTIAL_CANCELED",)
    if status == "partially_refunded":
        return ("PARTIAL_CANCELED",)
    if status == "released":
        return ("DONE",) if refunded == 0 else ("PARTIAL_CANCELED",)
    return ("CANCELED", "PARTIAL_CANCELED")  # refunded


def _share_vs_toss(share: dict[str, Any], payment: Payment | None) -> list[Finding]:
    def finding(expected: str, actual: str, detail: str) -> Finding:
        return Finding(
            "toss_payment",
            share["payment_request_id"],
            share["id"],
            share["order_id"],
            share["payment_key"],
            expected,
            actual,
            detail,
        )

    balance = share["paid_amount"] - share["refunded_amount"]
    if payment is None:
        return [finding(f"{share['status']} at Toss", "not found", "Toss has no payment with this paymentKey")]
    out = []
    statuses = _expected_toss_statuses(share)
    if payment.status not in statuses:
        out.append(finding("/".join(statuses), payment.status, f"our share is {share['status']}"))
    if payment.balance_amount != balance:
        out.append(
            finding(
                f"balance {balance}",
                f"balance {payment.balance_amount}",
                f"paid {share['paid_amount']} - refunded {share['refunded_amount']} (ours), "
                f"cancelled {payment.refunded_amount} (Toss)",
            )
        )
    if payment.total_amount != share["paid_amount"]:
        out.append(finding(f"total {share['paid_amount']}", f"total {payment.total_amount}", "charged amount"))
    if payment.order_id != share["order_id"]:
        out.append(finding(f"orderId {share['order_id']}", f"orderId {payment.order_id}", "paymentKey's order"))
    return out


def _holds_money(payment: Payment | None) -> bool:
    return payment is not None and payment.status in TOSS_HOLDING and payment.balance_amount > 0


def _order_vs_toss(order: dict[str, Any], share: dict[str, Any], payment: Payment | None) -> list[Finding]:
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
    if status == "done":
        out = []
        if payment is None or payment.status not in (*TOSS_HOLDING, "CANCELED"):
            out.append(finding("toss_order", "approved at Toss", toss_state, "an order we hold as done"))
        live = share["order_id"] == order["order_id"] and share["payment_key"] == order["payment_key"]
        if not live or share["status"] not in PAID:
            out.append(
                finding(
                    "toss_order",
                    "the share's live paid attempt",
                    f"share {share['status']} on order {share['order_id']}",
                    "a done order that is not the share's paid attempt",
                )
            )
        return out
    if status == "refunded":
        if payment is None or payment.status not in ("CANCELED", "PARTIAL_CANCELED") or payment.balance_amount:
            return [finding("toss_order", "CANCELED balance 0", toss_state, "an unexpected charge we refunded")]
        return []
    if status == "refund_pending":
        out = []
        if payment is None:
            out.append(finding("toss_order", "charged at Toss", toss_state, "a charge we recorded as to refund"))
        if order["stale"]:
            out.append(
                finding("stale_refund_pending", "refunded", f"refund_pending ({toss_state})", "older than the period")
            )
        return out
    # failed / superseded / issued, or in flight for too long: Toss must not hold money for it.
    if _holds_money(payment) and (status not in ORDER_IN_FLIGHT or order["stale"]):
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


# --- the audit --------------------------------------------------------------------------------------------


def audit(
    *,
    chat_room_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    toss: TossClient | None = None,
    reconciliation_period_seconds: int | None = None,
    deadline: Callable[[], bool] = lambda: False,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Compare our ledger with Toss (GET calls only) for the requests of a room and/or created in [since, until).

    `progress(done, total)` is called with the number of requests checked so far (once with 0 before the first,
    then after each request): about 2 minutes for 20,000 requests, so a console can show how far it is."""
    started = time.monotonic()
    period = (
        get_settings().reconcile_after_seconds * 2
        if reconciliation_period_seconds is None
        else int(reconciliation_period_seconds)
    )
    report = AuditReport()
    for name in ("requests", "payments", "orders", "cancels", "settlements", "ledger_entries", "toss_lookups"):
        report.checked[name] = 0
    if toss is None:
        from escrow.toss.client import get_toss_client

        toss = get_toss_client()
    lookups = _Toss(toss, report, period)
    request_ids = _request_ids(chat_room_id, since, until)
    done = 0
    if progress is not None:
        progress(0, len(request_ids))
    for start in range(0, len(request_ids), batch):
        if deadline():
            report.complete = False
            break
        snapshot = _load(request_ids[start : start + batch], period)
        for request in snapshot.requests:
            if deadline():
                report.complete = False
                break
            report.findings.extend(_audit_request(request, snapshot, lookups, report))
            done += 1
            if progress is not None:
                progress(done, len(request_ids))
    if chat_room_id is None and since is None and until is None:
        for s in _orphan_settlements():
            report.findings.append(
                Finding("settlement_without_release", s["payment_request_id"], detail=f"settlement {s['id']}")
            )
    report.findings.sort(key=lambda f: (f.payment_request_id or 0, f.payment_id or 0, f.check))
    report.seconds = round(time.monotonic() - started, 3)
    report.checked = dict(report.checked)
    return report


def _audit_request(request: dict[str, Any], snap: _Snapshot, toss: _Toss, report: AuditReport) -> list[Finding]:
    rid = int(request["id"])
    shares = snap.shares.get(rid, [])
    ledger = snap.ledger.get(rid, [])
    settlements = snap.settlements.get(rid, [])
    report.checked["requests"] += 1
    report.checked["payments"] += len(shares)
    report.checked["ledger_entries"] += len(ledger)
    report.checked["settlements"] += len(settlements)
    out: list[Finding] = []
    out.extend(_request_state(request, shares))
    out.extend(_ledger_checks(request, shares, snap))
    out.extend(_settlement_checks(request, settlements, ledger, toss))
    for share in shares:
        orders = snap.orders.get(share["id"], [])
        cancels = snap.cancels.get(share["id"], [])
        report.checked["orders"] += len(orders)
        report.checked["cancels"] += len(cancels)
        out.extend(_stale_checks(share, orders, cancels))
        found, foreign = _toss_checks(share, orders, toss)
        out.extend(found)
        entries = [e for e in ledger if e["payment_id"] == share["id"]]
        out.extend(_refund_records(share, entries, cancels, foreign))
    return out


def _request_state(request: dict[str, Any], shares: list[dict[str, Any]]) -> list[Finding]:
    rid, status = int(request["id"]), request["status"]
    statuses = [s["status"] for s in shares]

    def finding(expected: str, actual: str, detail: str, share: dict[str, Any] | None = None) -> Finding:
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
    if len(shares) != request["participant_count"]:
        out.append(finding(f"{request['participant_count']} shares", f"{len(shares)} shares", f"request {status}"))
    for share in shares:
        s = share["status"]
        if status == "completed" and s not in HELD:
            out.append(finding("held (completed/partially_refunded)", s, "a completed request's share", share))
        elif status == "released" and s != "released":
            out.append(finding("released", s, "a released request's share", share))
        elif status == "pending" and s == "released":
            out.append(finding("not released", s, "a pending request's share", share))
        elif status in ("cancelled", "expired") and s in HELD | {PaymentStatus.RELEASED}:
            out.append(finding("refunded (nothing held)", s, f"a share of a {status} request", share))
    funded = bool(shares) and len(shares) == request["participant_count"] and all(s in HELD for s in statuses)
    if status == "pending" and funded:
        out.append(finding("completed (every share is held)", "pending", "every participant has paid"))
    if status not in ("pending", "completed", "released", "cancelled", "expired"):
        out.append(finding("a known request status", status, f"statuses of shares: {statuses}"))
    return out


def _sum(entries: Iterable[dict[str, Any]], entry_type: str) -> int:
    return sum(int(e["amount"]) for e in entries if e["entry_type"] == entry_type)


def _ledger_checks(request: dict[str, Any], shares: list[dict[str, Any]], snap: _Snapshot) -> list[Finding]:
    rid = int(request["id"])
    ledger = snap.ledger.get(rid, [])
    out: list[Finding] = []
    by_payment: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for e in ledger:
        by_payment[e["payment_id"]].append(e)
    charges = {e["reference"]: e for e in ledger if e["entry_type"] == "charge"}

    def awaiting_refund(payment_id: int) -> int:
        return sum(
            int(charges[o["payment_key"]]["amount"])
            for o in snap.orders.get(payment_id, [])
            if o["status"] == "refund_pending" and o["payment_key"] in charges
        )

    unbalanced = []
    total_held = total_awaiting = 0
    for share in shares:
        pid = int(share["id"])
        entries = by_payment.get(pid, [])
        held = share["paid_amount"] - share["refunded_amount"] if share["status"] in HELD else 0
        waiting = awaiting_refund(pid)
        total_held += held
        total_awaiting += waiting
        charge, refund, release = _sum(entries, "charge"), _sum(entries, "refund"), _sum(entries, "release")
        if charge != refund + release + held + waiting:
            unbalanced.append(
                f"#{pid}: charge {charge} != refund {refund} + release {release} + held {held} + awaiting {waiting}"
            )
        out.extend(_share_ledger(share, entries, int(request["amount"])))
    charge, refund, release = _sum(ledger, "charge"), _sum(ledger, "refund"), _sum(ledger, "release")
    strays = [e for e in ledger if e["payment_id"] not in {s["id"] for s in shares}]
    if charge != refund + release + total_held + total_awaiting or unbalanced or strays:
        detail = "; ".join(unbalanced) or "entries without a share of this request"
        out.append(
            Finding(
                "ledger_identity",
                rid,
                expected=f"charge {charge} = refund+release+held+awaiting",
                actual=(
                    f"refund {refund} + release {release} + held {total_held} + awaiting {total_awaiting} "
                    f"= {refund + release + total_held + total_awaiting}"
                ),
                detail=detail,
            )
        )
    return out


def _share_ledger(share: dict[str, Any], entries: list[dict[str, Any]], request_amount: int) -> list[Finding]:
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
    status = share["status"]
    if status in PAID:
        charge = [e for e in entries if e["entry_type"] == "charge" and e["reference"] == share["payment_key"]]
        amount = sum(int(e["amount"]) for e in charge)
        if amount != share["paid_amount"]:
            out.append(finding("ledger_charge", f"charge {share['paid_amount']}", f"charge {amount}", "entry missing"))
        if share["paid_amount"] != request_amount:
            out.append(finding("amount", f"paid {request_amount}", f"paid {share['paid_amount']}", "share's amount"))
    release = [e for e in entries if e["entry_type"] == "release" and e["reference"] == f"release:{share['id']}"]
    released = sum(int(e["amount"]) for e in release)
    if status == "released":
        want = share["paid_amount"] - share["refunded_amount"]
        if released != want:
            out.append(finding("ledger_release", f"release {want}", f"release {released}", "a released share"))
    elif release:
        out.append(finding("ledger_release", "no release entry", f"release {released}", f"share is {status}"))
    return out


def _refund_records(
    share: dict[str, Any], entries: list[dict[str, Any]], cancels: list[dict[str, Any]], foreign: set[str]
) -> list[Finding]:
    """refunded_amount == the share's done cancels == their refund entries. Cancels of the share's other charges
    (an unexpected charge refunded automatically: Toss lists them under another paymentKey, or under the live one
    of a share that holds nothing) are not refunds of the share's money and are left out."""
    done = [c for c in cancels if c["status"] == "done" and c["transaction_key"] not in foreign]
    cancelled = sum(int(c["cancel_amount"] or 0) for c in done)
    keys = {c["transaction_key"] for c in done}
    refunds = sum(int(e["amount"]) for e in entries if e["entry_type"] == "refund" and e["reference"] in keys)
    if cancelled == refunds == share["refunded_amount"]:
        return []
    return [
        Finding(
            "ledger_refund",
            share["payment_request_id"],
            share["id"],
            share["order_id"],
            share["payment_key"],
            f"refunded {share['refunded_amount']}",
            f"cancels {cancelled}, refund entries {refunds}",
            "refunded_amount vs done cancels vs refund entries",
        )
    ]


def _settlement_checks(
    request: dict[str, Any], settlements: list[dict[str, Any]], ledger: list[dict[str, Any]], toss: _Toss
) -> list[Finding]:
    rid, status = int(request["id"]), request["status"]
    if status != "released":
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
    if payout_status == "scheduled" and s["stale"] and not s["payout_error_code"]:
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


def _payout_vs_toss(rid: int, s: dict[str, Any], toss: _Toss) -> list[Finding]:
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


def _stale_checks(share: dict[str, Any], orders: list[dict[str, Any]], cancels: list[dict[str, Any]]) -> list[Finding]:
    rid, pid = share["payment_request_id"], share["id"]
    out = []
    if share["status"] in CONFIRMING and share["stale"]:
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
        if o["status"] in ORDER_IN_FLIGHT and o["stale"]:
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
    for c in cancels:
        if c["status"] in CANCEL_IN_FLIGHT and c["stale"]:
            out.append(
                Finding(
                    "stale_cancel",
                    rid,
                    pid,
                    share["order_id"],
                    share["payment_key"],
                    "done or failed",
                    c["status"],
                    f"cancel {c['id']} unchanged since {c['updated_at']}",
                )
            )
    return out


def _toss_checks(share: dict[str, Any], orders: list[dict[str, Any]], toss: _Toss) -> tuple[list[Finding], set[str]]:
    """The share and each of its orders against Toss. Also returns the transaction keys of cancels that are not
    refunds of the share's held money (cancels of its other charges)."""
    out: list[Finding] = []
    foreign: set[str] = set()
    rid, pid = share["payment_request_id"], share["id"]
    if share["status"] in PAID and share["payment_key"]:
        try:
            found = _share_vs_toss(share, toss.payment(share["payment_key"]))
            if found:  # look again, both sides fresh: it may have moved while we looked
                fresh = _fresh_share(pid)
                if fresh is not None and fresh["status"] in PAID:
                    found = _share_vs_toss(fresh, toss.payment(fresh["payment_key"], fresh=True))
                elif fresh is not None:
                    found = []
            out.extend(found)
        except _LookupFailed as exc:
            out.append(
                Finding(
                    "toss_lookup",
                    rid,
                    pid,
                    share["order_id"],
                    share["payment_key"],
                    "Toss payment",
                    "no answer",
                    str(exc)[:200],
                )
            )
    holding = []
    for order in orders:
        try:
            payment = toss.payment(order["payment_key"]) if order["payment_key"] else toss.order(order["order_id"])
            found = _order_vs_toss(order, share, payment)
            if found:
                fresh_order = _fresh_order(order["order_id"], toss.period)
                if fresh_order is not None:
                    fresh_share = {
                        **share,
                        "order_id": fresh_order["live_order_id"],
                        "payment_key": fresh_order["live_payment_key"],
                        "status": fresh_order["share_status"],
                    }
                    payment = (
                        toss.payment(fresh_order["payment_key"], fresh=True)
                        if fresh_order["payment_key"]
                        else toss.order(order["order_id"], fresh=True)
                    )
                    found = _order_vs_toss(fresh_order, fresh_share, payment)
            out.extend(found)
        except _LookupFailed as exc:
            out.append(
                Finding(
                    "toss_lookup",
                    rid,
                    pid,
                    order["order_id"],
                    order["payment_key"],
                    "Toss payment",
                    "no answer",
                    str(exc)[:200],
                )
            )
            continue
        settling = order["status"] in ORDER_TO_RECONCILE and not order["stale"]
        held_here = share["status"] in PAID and order["order_id"] == share["order_id"]
        if payment is not None and not held_here:
            foreign.update(c.transaction_key for c in payment.cancels or [])
        if _holds_money(payment) and not settling:  # a charge being settled right now is not a second charge
            assert payment is not None
            holding.append(f"{order['order_id']} ({order['status']}, balance {payment.balance_amount})")
    if len(holding) > 1:
        out.append(
            Finding(
                "double_charge",
                rid,
                pid,
                share["order_id"],
                share["payment_key"],
                "at most one order holding money",
                f"{len(holding)} orders",
                "; ".join(holding),
            )
        )
    return out, foreign


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
