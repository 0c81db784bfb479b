"""The scheduled jobs (EventBridge Scheduler -> ReleaseFunction). Each is bounded (a batch limit and the Lambda's
remaining time) and safe to run twice at once: every item is re-checked under its row locks before it changes.

`audit` (the ledger audit, `escrow.audit`) is read-only and is not part of "all": it makes one Toss GET per order
and per payout of every request of the last AUDIT_WINDOW, which is too much for the 5-minute run. Schedule it on
its own, e.g. hourly with the input `{"source": "escrow.schedule", "jobs": ["audit"]}`; its findings are logged one
by one ("audit finding") and counted in the metric AuditFindings (alarm on > 0).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from escrow import db
from escrow.clock import db_time, utcnow
from escrow.config import get_settings
from escrow.errors import AppError
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import clock as clock_repo
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.services import fanout, isolation
from escrow.services import payments as payment_service
from escrow.services import payouts as payout_service
from escrow.services import refunds as refund_service
from escrow.services import release as release_service
from escrow.services import stores as store_service
from escrow.services import webhooks as webhook_service
from escrow.states import CancelStatus, RequestStatus
from escrow.toss import TossError
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

RECONCILE_AFTER_SECONDS = 60  # a confirm or cancel older than this with no outcome is looked up
BATCH = 200
AUDIT_WINDOW = timedelta(days=35)  # the scheduled audit looks at requests opened this long ago or later


def expire_overdue(
    limit: int = BATCH,
    *,
    now: Callable[[], datetime] = utcnow,
    toss: TossPort | None = None,
    deadline: Callable[[], bool] = lambda: False,
    only: Sequence[int] | None = None,
) -> dict[str, int]:
    """Expire pending requests past their deadline and refund what their shares hold. `only`: among these requests
    (a planner's chunk): each is overdue and pending again now or skipped, and re-checked under its lock."""
    with db.reader() as tx:
        due = requests_repo.due_for_expiry(tx, db_time(now()), limit, only)
    waiting = isolation.waiting("expire", "request", due, now())
    retried = isolation.set_aside_before("expire", "request", [i for i in due if str(i) not in waiting])
    expired = refunds = failed = 0
    for request_id in due:
        if deadline():
            break
        if str(request_id) in waiting:
            continue
        try:
            targets = _expire_one(request_id, now())
        except Exception as exc:
            if isolation.infrastructure(exc):
                raise
            isolation.set_aside("expire", "request", request_id, exc)
            failed += 1
            continue
        isolation.cleared("expire", "request", [request_id], retried)
        if targets is None:
            continue
        expired += 1
        refunds += len(refund_service.refund_queued(targets, toss=toss))
    return {"expired": expired, "refunds_started": refunds, "failed": failed}


def _expire_one(request_id: int, at: datetime) -> list[dict[str, Any]] | None:
    """Close one overdue request as expired and queue the refunds of what it holds (None: not pending any more)."""
    with db.transaction() as tx:
        request = requests_repo.lock(tx, request_id)
        if request is None or request["status"] != RequestStatus.PENDING:
            return None
        requests_repo.set_status(
            tx,
            request["id"],
            request["status"],
            RequestStatus.EXPIRED,
            closed_at=db_time(at),
            closed_by="schedule",
            close_reason="deadline passed before every participant paid",
        )
        targets = refund_service.queue_refunds(
            tx, request["id"], actor="schedule", reason="기한 내 전원 결제되지 않아 자동 환불", tag="expiry"
        )
        outbox_repo.add(
            tx,
            event_type="RequestExpired",
            aggregate_id=request["id"],
            dedupe_key=f"RequestExpired:{request['id']}",
            payload={
                "payment_request_id": request["id"],
                "chat_room_id": request["chat_room_id"],
                "store_id": request["store_id"],
                "amount_per_participant": request["amount"],
                "participant_count": request["participant_count"],
                "refund_amount": sum(t["remaining"] for t in targets),
            },
        )
        return targets


def reconcile_payments(
    limit: int = BATCH,
    *,
    toss: TossPort | None = None,
    older_than: int | None = None,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Settle orders left in_progress / unknown (look them up by orderId) and cancel charges we must not keep."""
    older_than = get_settings().reconcile_after_seconds if older_than is None else older_than
    with db.reader() as tx:
        orders = payments_repo.orders_to_reconcile(tx, older_than, limit)
    toss = toss or get_toss_client()
    settled = unresolved = 0
    for order in orders:
        if deadline():
            break
        try:
            outcome = payment_service.reconcile_order(order, toss=toss)
        except (TossError, AppError) as exc:
            if isolation.infrastructure(exc):
                raise
            logger.warning("order not settled yet", extra={"order_id": order["order_id"], "error": str(exc)})
            unresolved += 1
            continue
        except Exception as exc:  # noqa: BLE001 - set the order aside; reconcile the others
            isolation.set_aside("reconcile_payments", "order", order["order_id"], exc)
            unresolved += 1
            continue
        settled += outcome not in ("pending",)
    return {"orders_checked": len(orders), "orders_settled": settled, "orders_unresolved": unresolved}


def reconcile_cancels(
    limit: int = BATCH,
    *,
    toss: TossPort | None = None,
    older_than: int | None = None,
    deadline: Callable[[], bool] = lambda: False,
    only: Sequence[int] | None = None,
) -> dict[str, int]:
    """Refunds whose answer was lost, or that were queued and not sent: ask Toss again with the same key. Refunds
    the schedule owes (a cancelled or expired request, a removed participant) that Toss refused for a reason that
    passes: ask again once their back-off has run out, with a new key.

    A `requested` refund younger than the time its own worker may still spend on it (two Toss calls: the cancel and
    the lookup after no answer) is left to that worker, whatever `older_than` says: two workers on one refund at once
    can leave a refund that happened marked failed (see _claim_cancel).

    `only`: among these refunds (a planner's chunk); each is re-read and claimed as above."""
    rows = refunds_due(limit, older_than=older_than, only=only)
    done = failed = skipped = 0
    for c in rows:
        if deadline():
            break
        if not _claim_cancel(c):
            skipped += 1
            continue
        try:
            if c["status"] == CancelStatus.FAILED:
                refund_service.retry_refused(c["id"])
            outcome = refund_service.send_refund(c["id"], toss=toss)
        except AppError as exc:
            if isolation.infrastructure(exc):
                raise
            logger.warning("refund still not settled", extra={"cancel_id": c["id"], "error_code": exc.code})
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - set the refund aside; retry the others
            isolation.set_aside("reconcile_cancels", "refund", c["id"], exc)
            failed += 1
            continue
        if outcome.status == "done":
            done += 1
        else:
            failed += 1
    return {"refunds_retried": done, "refunds_unresolved": failed, "refunds_taken_by_another_run": skipped}


def refunds_due(
    limit: int, *, older_than: int | None = None, only: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """The refunds reconcile_cancels would ask Toss about now (see there), oldest first."""
    settings = get_settings()
    older_than = settings.reconcile_after_seconds if older_than is None else older_than
    in_flight = 2 * (settings.toss_connect_timeout + settings.toss_read_timeout) + 5
    with db.reader() as tx:
        stale = cancels_repo.stale(tx, older_than, limit, only)
        clock = clock_repo.database_now(tx)
    return [
        c
        for c in stale
        if not (c["status"] == CancelStatus.REQUESTED and (clock - c["updated_at"]).total_seconds() < in_flight)
    ]


def _claim_cancel(cancel: dict[str, Any]) -> bool:
    """Take one refund for this run, unless another run (two scheduled runs may overlap) took it since we read it.

    Two workers asking Toss about one refund at once is not harmless: the loser's lookup may fail after the winner
    recorded the refund, and refunds._after_unknown_cancel then marks the recorded (done) refund unknown, after
    which it ends as failed although Toss, the ledger and the payment say it happened."""
    with db.transaction() as tx:
        return cancels_repo.claim(tx, cancel["id"], cancel["updated_at"])


class EventBridgePublisher:
    """Publishes outbox rows to the EventBridge bus (boto3 is imported only when the schedule publishes)."""

    def __init__(self, bus_name: str, client: Any = None):
        self.bus_name = bus_name
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("events")
        return self._client

    def publish(self, rows: list[dict[str, Any]]) -> set[int]:
        entries = [
            {
                "Source": "escrow.payments",
                "DetailType": row["event_type"],
                "Detail": json.dumps(
                    {
                        "outbox_id": row["id"],
                        "event_type": row["event_type"],
                        "occurred_at": str(row["created_at"]),
                        **json.loads(row["payload"]),
                    },
                    ensure_ascii=False,
                ),
                "EventBusName": self.bus_name,
            }
            for row in rows
        ]
        result = self.client().put_events(Entries=entries)
        return {
            row["id"]
            for row, answer in zip(rows, result.get("Entries", []), strict=False)
            if answer.get("EventId") and not answer.get("ErrorCode")
        }


class LogPublisher:
    """For the local runner: prints each event to the log instead of calling AWS."""

    def publish(self, rows: list[dict[str, Any]]) -> set[int]:
        for row in rows:
            logger.info(f"EVENT {row['event_type']} {row['payload']}", extra={"outbox_id": row["id"]})
        return {row["id"] for row in rows}


def default_publisher() -> EventBridgePublisher | LogPublisher:
    settings = get_settings()
    return LogPublisher() if settings.outbox_publisher == "log" else EventBridgePublisher(settings.event_bus_name)


def publish_outbox(
    limit: int = 500,
    *,
    publisher: EventBridgePublisher | LogPublisher | None = None,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Send unpublished events, 10 at a time (put_events' limit). Rows are claimed skipping those another run holds
    (`outbox_repo.claim_unpublished`), so two runs at once take different rows, and each is marked published once."""
    publisher = publisher or default_publisher()
    published = failed = 0
    while published + failed < limit and not deadline():
        with db.transaction() as tx:
            rows = outbox_repo.claim_unpublished(tx, 10)
            if not rows:
                break
            try:
                sent = publisher.publish(rows)
            except Exception as exc:  # noqa: BLE001 - any AWS failure: keep the rows for the next run
                sent = set()
                logger.warning("outbox publish failed", extra={"error": str(exc)[:200]})
            for row in rows:
                if row["id"] in sent:
                    outbox_repo.mark_published(tx, row["id"])
                    logger.info("event published", extra={"event_type": row["event_type"], "outbox_id": row["id"]})
                else:
                    outbox_repo.mark_not_accepted(tx, row["id"])
            published += len(sent)
            failed += len(rows) - len(sent)
        if failed:
            break
    return {"events_published": published, "events_failed": failed}


def audit_ledger(
    *,
    toss: TossPort | None = None,
    now: Callable[[], datetime] = utcnow,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """The ledger audit (read-only) over the last AUDIT_WINDOW: every finding is logged and counted."""
    from escrow.audit import audit  # only the audit run needs it

    report = audit(since=now() - AUDIT_WINDOW, toss=toss, deadline=deadline)
    for finding in report.findings:
        logger.warning("audit finding", extra={"finding": finding.to_dict()})
    count("AuditFindings", len(report.findings))
    logger.info(report.summary(), extra={"audit_checked": report.checked})
    return {
        "requests_audited": report.checked.get("requests", 0),
        "payments_audited": report.checked.get("payments", 0),
        "audit_findings": len(report.findings),
        "audit_complete": int(report.complete),
    }


DEFAULT_JOBS = (
    "reconcile_payments",
    "reconcile_cancels",
    "expire",
    "release",
    "sellers",  # before payouts: a store registered since the last run can be paid out in this one
    "payouts",
    "publish",
    "webhook_retention",
)
OPTIONAL_JOBS = ("audit",)  # only when asked for by name


# What counts as progress per job: postponed or unresolved items do not, so a pass that only meets those ends the run.
PROGRESS: dict[str, tuple[str, ...]] = {
    "expire": ("expired",),
    "release": ("released",),
    "sellers": ("seller_calls",),
    "payouts": ("payouts_requested", "payout_calls"),
    "publish": ("events_published",),
    "webhook_retention": ("webhooks_deleted",),
    "reconcile_payments": ("orders_settled",),
    "reconcile_cancels": ("refunds_retried",),
}
MAX_PASSES = 500
# Figures that are a state at the end of the run, not a sum over its passes.
GAUGES = frozenset({"payouts_waiting_for_balance"})


def run_scheduled(
    *,
    remaining_ms: Callable[[], int] = lambda: 900_000,
    toss: TossPort | None = None,
    publisher: EventBridgePublisher | LogPublisher | None = None,
    jobs: str | list[str] = "all",
    now: Callable[[], datetime] = utcnow,
    queue: fanout.Queue | None = None,
) -> dict[str, Any]:
    """One scheduled run: every job, in an order that lets later ones publish what earlier ones did.

    With a jobs queue (`queue`, or JOBS_QUEUE_URL) the run plans instead of doing the jobs whose work grows with the
    number of due items (fanout.PLANNED_JOBS: it enqueues their items in chunks for JobsWorkerFunction) and does the
    others itself; without one it does everything, as a fallback and for local runs.

    `now` is the clock of the jobs that compare times in Python (expiry, release, payout leases); the reconciliation
    jobs compare with the database's clock."""
    started = time.monotonic()

    def out_of_time() -> bool:
        return remaining_ms() < 60_000  # keep a minute for the last item and the answer

    wanted = list(DEFAULT_JOBS) if jobs == "all" else list(jobs)
    report: dict[str, Any] = {}
    planned = [name for name in wanted if name in fanout.PLANNED_JOBS]
    queue = queue if queue is not None or not planned else fanout.configured_queue()
    if queue is not None and planned:
        for name in wanted:
            if name not in DEFAULT_JOBS and name not in OPTIONAL_JOBS:
                raise ValueError(f"unknown job {name!r}")
        report["plan"] = fanout.plan(wanted, queue=queue, toss=toss, now=now)
        wanted = [name for name in wanted if name not in fanout.PLANNED_JOBS]
    budget = payout_service.Budget()  # Toss's payout balance, read once per run (when a payout is due)
    steps: dict[str, Callable[[], dict[str, int]]] = {
        "reconcile_payments": lambda: reconcile_payments(toss=toss, deadline=out_of_time),
        "reconcile_cancels": lambda: reconcile_cancels(toss=toss, deadline=out_of_time),
        "expire": lambda: expire_overdue(toss=toss, now=now, deadline=out_of_time),
        "release": lambda: release_service.release_due(BATCH * 5, toss=toss, now=now, deadline=out_of_time),
        "sellers": lambda: store_service.register_due_sellers(toss=toss, now=now, deadline=out_of_time),
        "payouts": lambda: payout_service.payouts_due(
            BATCH * 5, toss=toss, now=now, deadline=out_of_time, budget=budget
        ),
        "publish": lambda: publish_outbox(publisher=publisher, deadline=out_of_time),
        "webhook_retention": lambda: {"webhooks_deleted": webhook_service.retention(now())},
        "audit": lambda: audit_ledger(toss=toss, now=now, deadline=out_of_time),
    }
    for name in wanted:
        if name not in steps:
            raise ValueError(f"unknown job {name!r}")
    # Each job takes one bounded batch per pass; passes repeat while any job made progress and time is left, so a
    # backlog (10,000 due releases, say) drains within one 15-minute run instead of one batch per 5-minute run.
    totals: dict[str, Counter[str]] = {name: Counter() for name in wanted}
    passes = 0
    while True:
        passes += 1
        progressed = False
        for name in wanted:
            result = steps[name]()
            totals[name].update({k: v for k, v in result.items() if isinstance(v, int | float) and k not in GAUGES})
            for key in GAUGES & result.keys():
                totals[name][key] = result[key]  # the last pass's value
            progressed |= any(result.get(key) for key in PROGRESS.get(name, ()))
        if not progressed or out_of_time() or passes >= MAX_PASSES:
            break
    report.update({name: dict(counter) for name, counter in totals.items()})
    if "payouts" in totals:
        # A gauge-like count per run: how many released payouts wait for Toss's payout balance (alarmed when it
        # stays above 0 for longer than a settlement cycle).
        count("PayoutsWaitingForBalance", totals["payouts"]["payouts_waiting_for_balance"])
    elif "payouts_waiting_for_balance" in report.get("plan", {}):
        count("PayoutsWaitingForBalance", report["plan"]["payouts_waiting_for_balance"])
    report["passes"] = passes
    report["seconds"] = round(time.monotonic() - started, 3)
    return report
