"""Scheduled jobs at scale: N requests due for release and N expiring ones (some of whose shares were paid and must
be refunded through Toss), worked off by `escrow.services.jobs.run_scheduled`, against MariaDB and the Toss sandbox
with a fixed latency per Toss call.

    python -m bench jobs [--due 10000] [--expiring 10000] [--paid-fraction 0.5] [--latency-ms 20] [--no-resume]
    python -m bench jobs --requests 2000 --workers 1,4,8 [--kill 3]   # fanned out: bench/jobs_fanout.py

The rows are seeded with bulk SQL (the rows the services would have written: requests, shares, orders, charge
entries, EscrowFunded events already published, stores with an APPROVED seller) and the sandbox gets a DONE payment
for every paid share, made in-process. The jobs run in a subprocess that plays one warm ReleaseFunction container:
one `run_scheduled` per scheduled invocation, each with a 15-minute remaining-time clock, until nothing is left to
do; its memory figures are its own, not the sandbox's: tracemalloc's peak (Python allocations), the peak RSS of its
own address space (VmHWM), and ru_maxrss (which on Linux also carries the RSS the parent had when it forked the
worker, so it is at least the bench process's size).

Resumability: the same seed again, the worker SIGKILLed once the database shows about half of the requests done,
then a new worker started as the next scheduled run would be (its clock 5 minutes later, so the leases of what the
dead one had claimed have run out) until done. Both outcomes are checked: one settlement per released request,
release entries == released shares, one refund per paid share of an expired request (our rows, the ledger and the
sandbox), one payout per settlement at Toss, nothing left behind; then `escrow.audit` when it exists.

This module also holds what the other benchmarks share: a fresh database, the sandbox, quiet logs, bulk seeding.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MYSQL = os.environ.get("BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
LAMBDA_MS = 900_000  # the release function's timeout: 15 minutes
AMOUNT = 15000

for _path in (str(ROOT / "layers/common"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


# ============================================================================ shared by the benchmarks


def _params(url: str) -> Any:
    from escrow.config import parse_database_url

    return parse_database_url(url)


def connect(url: str, *, dict_rows: bool = True) -> Any:
    """A raw pymysql connection (autocommit), for seeding, checks and baselines."""
    import pymysql

    p = _params(url)
    return pymysql.connect(
        host=p.host,
        port=p.port,
        user=p.user,
        password=p.password,
        database=p.database or None,
        charset="utf8mb4",
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor,
    )


def create_database(tag: str) -> tuple[str, str]:
    """A fresh database migrated by the real command (`python -m escrow.migrate --database-url`)."""
    name = f"escrow_bench_{tag}_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL}/{name}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    subprocess.run(
        [sys.executable, "-m", "escrow.migrate", "--database-url", url],
        env=env,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return name, url


def drop_database(name: str) -> None:
    # Connected to the server's own `mysql` schema: a URL without a database means `escrow` (escrow.config), which a
    # machine that never ran `make run` does not have.
    conn = connect(f"{MYSQL}/mysql")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def configure(database_url: str, toss_url: str, **extra: str) -> None:
    """The environment the template gives every function, pointed at this database and this sandbox."""
    from toss_sandbox import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY

    os.environ.update(
        {
            "APP_ENV": "local",
            "DATABASE_URL": database_url,
            "TOSS_API_BASE": toss_url,
            "TOSS_SECRET_KEY": DEFAULT_SECRET_KEYS[0],
            "TOSS_SECURITY_KEY": DEFAULT_SECURITY_KEY,
            "POWERTOOLS_SERVICE_NAME": "escrow",
            "POWERTOOLS_LOG_LEVEL": "INFO",  # as deployed (template default); written to /dev/null, see quiet()
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "EscrowBench",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
            "OUTBOX_PUBLISHER": "log",
            "AWS_DEFAULT_REGION": "ap-northeast-2",
            **extra,
        }
    )
    os.environ.pop("JWT_SECRET", None)  # local: the built-in development secret (tests/support/events.token)
    from escrow.config import reset_settings

    reset_settings()


_DEVNULL = open(os.devnull, "w")  # for the life of the process


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Logs and EMF metrics are still formatted (their cost is part of every invocation) but go to /dev/null."""
    import logging

    from escrow.observability import logger

    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(_DEVNULL)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        try:
            with contextlib.redirect_stdout(_DEVNULL):
                yield
        finally:
            for h, s in zip(handlers, streams, strict=True):
                h.setStream(s)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    mariadb = "unknown"
    with contextlib.suppress(Exception):
        conn = connect(f"{MYSQL}/mysql")
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION() AS v")
            mariadb = str(cur.fetchone()["v"])
        conn.close()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "mariadb": mariadb,
        "os": platform.platform(terse=True),
    }


def start_sandbox(latency_ms: float = 0) -> Any:
    """The sandbox in this process, without its time-driven sweep: every 50 ms it walks every payment and payout
    it holds (confirm-window expiry, scheduled payouts), which with tens of thousands of them takes this process's
    GIL and a good part of a CPU. Nothing the benchmarks do depends on it."""
    from toss_sandbox import start_sandbox as start

    # Toss's balances as they are: the payout job sends only what GET /v2/balances covers. The seeded paid shares
    # were charged long before they fell due, so their sales have settled (Seeder._sandbox_payment).
    sb = start(host="127.0.0.1", port=0)
    sb.core.tick = lambda: None
    if latency_ms:
        sb.core.faults.update({"latency_ms": latency_ms})
    return sb


@dataclass
class Share:
    payment_id: int
    payer_id: str
    state: str  # pending | issued (order issued, the widget done: awaiting confirm) | paid
    order_id: str | None = None
    payment_key: str | None = None


@dataclass
class Room:
    chat_room_id: int
    request_id: int | None
    owner: str
    store_id: str
    shares: list[Share] = field(default_factory=list)


class Seeder:
    """Bulk rows, as the services would have written them, and the sandbox's matching payments (in-process)."""

    def __init__(self, url: str, sandbox: Any, *, amount: int = AMOUNT):
        self.conn = connect(url, dict_rows=False)
        self.sb = sandbox
        self.amount = amount
        self._room = int(time.time()) % 10**6 * 10**6

    def close(self) -> None:
        self.conn.close()

    def _next_id(self, table: str) -> int:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
            return int(cur.fetchone()[0])

    def _insert(self, sql: str, rows: Sequence[Sequence[Any]], chunk: int = 2000) -> None:
        with self.conn.cursor() as cur:
            for i in range(0, len(rows), chunk):
                cur.executemany(sql, rows[i : i + chunk])

    def store(self, store_id: str, *, seller_status: str | None = "APPROVED") -> str | None:
        """A store; with a seller registered at the sandbox (and set to seller_status) unless None."""
        seller_id = None
        if seller_status is not None:
            seller = self.sb.core.payouts.register_seller(
                {
                    "refSellerId": store_id[:20],
                    "businessType": "INDIVIDUAL",
                    "individual": {"name": "홍길동", "email": "owner@example.com", "phone": "01012345678"},
                    "account": {"bankCode": "088", "accountNumber": "110123456789", "holderName": "홍길동"},
                }
            )
            seller_id = seller["id"]
            if seller_status != seller["status"]:
                self.sb.core.payouts.set_seller_status(seller_id, {"status": seller_status})
        self._insert(
            "INSERT INTO stores (store_id, owner_id, name, bank_code, account_number, holder_name, business_type, "
            "toss_seller_id, seller_status, registered_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    store_id,
                    f"owner_of_{store_id}",
                    "벤치 가게",
                    "88",
                    "110123456789" if seller_id else None,
                    "홍길동" if seller_id else None,
                    "INDIVIDUAL" if seller_id else None,
                    seller_id,
                    seller_status,
                    "bench" if seller_id else None,
                )
            ],
        )
        return seller_id

    def _sandbox_payment(self, order_id: str, *, paid: bool) -> Any:
        """What the widget and confirm leave at the sandbox (toss_sandbox.payments), made directly: fast."""
        from toss_sandbox.payments import CARD
        from toss_sandbox.store import PaymentRecord

        core = self.sb.core
        now = core.clock.now()
        with core.store.lock:
            key = core.ids.payment_key(now)
            while key in core.store.payments:
                key = core.ids.payment_key(now)
            record = PaymentRecord(
                payment_key=key,
                order_id=order_id,
                order_name="예약금",
                total_amount=self.amount,
                balance_amount=self.amount,
                method=CARD,
                status="IN_PROGRESS",
                requested_at=now,
                secret=core.ids.payment_secret(),
            )
            if paid:
                record.status = "DONE"
                record.approved_at = now
                record.approve_no = core.ids.approve_no()
                record.last_transaction_key = core.ids.transaction_key()
                core.store.approved_payment_keys.add(key)
                # Charged long before its request fell due: Toss's settlement cycle has passed, the sale is available.
                settled = now - timedelta(seconds=core.settings.settlement_delay_seconds + 1)
                core.balances.record_sale(key, self.amount, settled)
            core.store.payments[key] = record
            core.store.payment_by_order[order_id] = key
        return record

    def rooms(
        self,
        n: int,
        *,
        stores: Sequence[str],
        request_status: str | None,
        shares: Callable[[int], Sequence[str]],
        release_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> list[Room]:
        """n rooms (members: an owner and the payers). request_status None: no request yet; else one request
        with the given status whose share i of room k is in state shares(k)[i]."""
        now = datetime.now(UTC).replace(tzinfo=None)
        request_id = self._next_id("payment_requests")
        payment_id = self._next_id("payments")
        members, requests, payments, orders, ledger, outbox, charges = [], [], [], [], [], [], []
        known_rooms = []
        rooms = []
        first_render = True
        for k in range(n):
            self._room += 1
            room_id = self._room
            states = list(shares(k))
            owner = f"o{room_id}"
            store_id = stores[k % len(stores)]
            room = Room(room_id, request_id if request_status else None, owner, store_id)
            members.append((room_id, owner, 1))
            known_rooms.append((room_id, owner))
            for i, state in enumerate(states):
                payer = f"u{room_id}_{i}"
                members.append((room_id, payer, 0))
                room.shares.append(Share(payment_id, payer, state))
                payment_id += 1
            rooms.append(room)
            if request_status is None:
                continue
            requests.append(
                (
                    request_id,
                    room_id,
                    store_id,
                    owner,
                    self.amount,
                    "예약금 요청",
                    request_status,
                    len(states),
                    release_at,
                    expires_at,
                    now if request_status == "completed" else None,
                )
            )
            for share in room.shares:
                order_id = f"esc{request_id}-b{share.payment_id}"
                if share.state == "pending":
                    payments.append(_unpaid(share, request_id, self.amount, None))
                    continue
                record = self._sandbox_payment(order_id, paid=share.state == "paid")
                share.order_id, share.payment_key = order_id, record.payment_key
                if share.state == "issued":
                    payments.append(_unpaid(share, request_id, self.amount, order_id))
                    orders.append((order_id, share.payment_id, share.payer_id, self.amount, "issued", None))
                    continue
                payment_json = self.sb.core.payments.render(record) if first_render else None
                first_render = False  # the first one is checked against Toss's schema, the rest rendered alike
                payment_json = payment_json or self.sb.core.payments.to_json(record)
                payments.append(
                    (
                        share.payment_id,
                        request_id,
                        share.payer_id,
                        self.amount,
                        "completed",
                        order_id,
                        record.payment_key,
                        "card",
                        "카드",
                        "DONE",
                        now,
                        self.amount,
                        0,
                        record.secret,
                        json.dumps(payment_json, ensure_ascii=False),
                    )
                )
                orders.append((order_id, share.payment_id, share.payer_id, self.amount, "done", record.payment_key))
                charges.append(
                    (record.payment_key, order_id, share.payment_id, request_id, self.amount, "held", "DONE", now)
                )
                ledger.append(
                    (request_id, share.payment_id, "charge", self.amount, record.payment_key, share.payer_id, "confirm")
                )
            if request_status == "completed":
                outbox.append(
                    (
                        "EscrowFunded",
                        str(request_id),
                        f"EscrowFunded:{request_id}:1",
                        json.dumps({"payment_request_id": request_id, "chat_room_id": room_id}),
                        now,
                    )
                )
            request_id += 1
        self._insert(
            "INSERT INTO chat_rooms (chat_room_id, owner_id, updated_by) VALUES (%s, %s, 'chat-service')", known_rooms
        )
        self._insert("INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s)", members)
        self._insert(
            "INSERT INTO payment_requests (id, chat_room_id, store_id, requester_id, amount, message, status, "
            "participant_count, funding_round, release_at, expires_at, completed_at) VALUES (%s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s)",
            [(*r[:8], 1 if r[6] == "completed" else 0, *r[8:]) for r in requests],
        )
        self._insert(
            "INSERT INTO payments (id, payment_request_id, payer_id, amount, status, order_id, payment_key, method, "
            "toss_method, toss_status, approved_at, paid_amount, refunded_amount, secret, last_toss_response) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            payments,
            chunk=500,
        )
        self._insert(
            "INSERT INTO payment_orders (order_id, payment_id, payer_id, amount, status, payment_key) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            orders,
        )
        self._insert(
            "INSERT INTO payment_charges (payment_key, order_id, payment_id, payment_request_id, amount, status, "
            "toss_status, approved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            charges,
            chunk=500,
        )
        self._insert(
            "INSERT INTO ledger_entries (payment_request_id, payment_id, entry_type, amount, reference, actor, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            ledger,
        )
        self._insert(
            "INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload, published_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            outbox,
        )
        return rooms


def _unpaid(share: Share, request_id: int, amount: int, order_id: str | None) -> tuple[Any, ...]:
    """A payments row of a share not paid (yet): pending, with the prepared order when there is one."""
    return (share.payment_id, request_id, share.payer_id, amount, "pending", order_id, *(None,) * 5, 0, 0, None, None)


# ============================================================================ the jobs benchmark


class AcceptingPublisher:
    """EventBridge stand-in for the benchmark: takes every event (the AWS call itself is not measured)."""

    def publish(self, rows: list[dict[str, Any]]) -> set[int]:
        return {row["id"] for row in rows}


def backlog(conn: Any, now: datetime) -> dict[str, int]:
    at = now.astimezone(UTC).replace(tzinfo=None)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT COUNT(*) FROM payment_requests WHERE status = 'completed' AND release_at <= %s) AS due, "
            "(SELECT COUNT(*) FROM payment_requests WHERE status = 'pending' AND expires_at <= %s) AS expiring, "
            "(SELECT COUNT(*) FROM payment_cancels WHERE status IN ('requested', 'unknown')) AS refunds, "
            "(SELECT COUNT(*) FROM payment_settlements WHERE payout_status IN ('scheduled', 'requesting')) AS payouts, "
            "(SELECT COUNT(*) FROM outbox WHERE published_at IS NULL) AS events",
            (at, at),
        )
        row = cur.fetchone()
    return {k: int(v) for k, v in row.items()}


def in_flight(conn: Any) -> dict[str, int]:
    """What a dead worker can leave half done: payouts claimed and not answered, refunds asked and not answered."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT COUNT(*) FROM payment_settlements WHERE payout_status = 'requesting') "
            "AS payouts_requesting, (SELECT COUNT(*) FROM payment_cancels WHERE status IN ('requested', 'unknown')) "
            "AS refunds_unanswered"
        )
        return {k: int(v) for k, v in cur.fetchone().items()}


def progress(conn: Any) -> int:
    """Requests done (released or expired)."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM payment_requests WHERE status IN ('released', 'expired')")
        return int(cur.fetchone()["n"])


def worker(args: argparse.Namespace) -> int:
    """One warm ReleaseFunction container: scheduled invocations one after another until nothing is left."""
    import resource
    import tracemalloc

    configure(args.database_url, args.toss_url, RECONCILE_AFTER_SECONDS=str(args.reconcile_after))
    if args.trace_memory:
        tracemalloc.start()
    from escrow.services import jobs
    from escrow.services import payouts as payout_service
    from escrow.services import release as release_service
    from escrow.services import stores as store_service

    steps: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    # Where the time goes, step by step (run_scheduled looks these up on their modules when it runs them).
    for module, name, label in (
        (jobs, "reconcile_payments", "reconcile_payments"),
        (jobs, "reconcile_cancels", "reconcile_cancels"),
        (jobs, "expire_overdue", "expire"),
        (release_service, "release_due", "release"),
        (store_service, "register_due_sellers", "sellers"),
        (payout_service, "payouts_due", "payouts"),
        (jobs, "publish_outbox", "publish"),
    ):
        setattr(module, name, timed(label, getattr(module, name)))
    offset = timedelta(seconds=args.clock_offset)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    conn = connect(args.database_url)
    publisher = AcceptingPublisher()
    out = sys.stdout
    for run in range(1, args.max_runs + 1):
        started = time.monotonic()

        def remaining_ms(started: float = started) -> int:
            return int(LAMBDA_MS - (time.monotonic() - started) * 1000)

        with quiet():
            report = jobs.run_scheduled(remaining_ms=remaining_ms, publisher=publisher, now=clock)  # type: ignore[arg-type]
        left = backlog(conn, clock())
        out.write(
            json.dumps(
                {
                    "run": run,
                    "seconds": time.monotonic() - started,
                    "report": report,
                    "left": left,
                    "steps": steps,
                    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    "hwm_kib": _peak_rss_kib(),
                }
            )
        )
        out.write("\n")
        out.flush()
        if not any(v for k, v in left.items() if k != "events"):
            break
    peak = tracemalloc.get_traced_memory()[1] if args.trace_memory else None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.write(
        json.dumps({"final": True, "tracemalloc_peak": peak, "maxrss_kib": usage.ru_maxrss, "hwm_kib": _peak_rss_kib()})
        + "\n"
    )
    out.flush()
    return 0


def _peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM of its address space), in KiB; ru_maxrss where /proc is missing."""
    import resource

    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@dataclass
class Phase:
    runs: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0
    killed_at: dict[str, Any] | None = None
    toss_calls: dict[str, int] = field(default_factory=dict)


def _spawn(url: str, sb: Any, *, trace_memory: bool, clock_offset: int = 0, reconcile_after: int = 60) -> Any:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    command = [
        sys.executable,
        "-m",
        "bench.jobs_scale",
        "--worker",
        "--database-url",
        url,
        "--toss-url",
        sb.url,
        "--clock-offset",
        str(clock_offset),
        "--reconcile-after",
        str(reconcile_after),
    ]
    if trace_memory:
        command.append("--trace-memory")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _read(proc: Any, phase: Phase, on_line: Callable[[], None] | None = None) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        data = json.loads(line)
        if data.get("final"):
            phase.final = data
        else:
            phase.runs.append(data)
        if on_line:
            on_line()


def _calls(sb: Any) -> dict[str, int]:
    return dict(sb.state.stats()["callsByPath"])


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def run_to_completion(
    url: str, sb: Any, *, trace_memory: bool, clock_offset: int = 0, reconcile_after: int = 60
) -> Phase:
    phase = Phase()
    before = _calls(sb)
    started = time.monotonic()
    proc = _spawn(url, sb, trace_memory=trace_memory, clock_offset=clock_offset, reconcile_after=reconcile_after)
    _read(proc, phase)
    proc.wait()
    phase.wall = time.monotonic() - started
    phase.toss_calls = _delta(_calls(sb), before)
    if proc.returncode != 0:
        raise RuntimeError(f"the jobs worker failed (exit {proc.returncode})")
    return phase


def run_and_kill(url: str, sb: Any, total: int, fraction: float = 0.5) -> Phase:
    """Start the worker and SIGKILL it once the database shows `fraction` of the requests done: 10 ms after the first
    moment after that when a payout batch is claimed (so the request is at Toss and its answer is lost), else, after
    15 s, when a refund is asked and unanswered, else after 30 s whatever it is doing; so that the next run has
    something half done to take over."""
    phase = Phase()
    conn = connect(url)
    started = time.monotonic()
    proc = _spawn(url, sb, trace_memory=False)
    reader = threading.Thread(target=_read, args=(proc, phase), daemon=True)
    reader.start()
    half: float | None = None
    try:
        while proc.poll() is None:
            if half is None:
                if progress(conn) >= total * fraction:
                    half = time.monotonic()
                time.sleep(0.02)
                continue
            waited = time.monotonic() - half
            flight = in_flight(conn)
            if flight["payouts_requesting"] or (waited > 15 and flight["refunds_unanswered"]) or waited > 30:
                if flight["payouts_requesting"]:
                    time.sleep(0.010)  # the batch is on its way: Toss (20 ms latency) takes it, its answer is lost
                done = progress(conn)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                phase.killed_at = {
                    "requests_done": done,
                    "of": total,
                    "seconds": time.monotonic() - started,
                    **in_flight(conn),
                }
                break
            time.sleep(0.002)
    finally:
        conn.close()
    reader.join(5)
    phase.wall = time.monotonic() - started
    return phase


def check_outcome(
    url: str, sb: Any, *, due: int, expiring_paid_keys: set[str], expiring: int
) -> list[tuple[str, bool, str]]:
    """Nothing done twice, nothing missed: our rows, the ledger and what the sandbox holds."""
    conn = connect(url)
    checks: list[tuple[str, bool, str]] = []

    def one(sql: str, *args: Any) -> dict[str, Any]:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return dict(cur.fetchone())

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append((name, ok, detail))

    r = one(
        "SELECT SUM(status = 'released') AS released, SUM(status = 'expired') AS expired, "
        "SUM(status IN ('pending', 'completed')) AS open FROM payment_requests"
    )
    add("every due request released", int(r["released"] or 0) == due, f"{r['released']} of {due}")
    add("every overdue request expired", int(r["expired"] or 0) == expiring, f"{r['expired']} of {expiring}")
    s = one(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT payment_request_id) AS requests, "
        "SUM(payout_status IN ('in_progress', 'requested', 'completed')) AS paid_out, "
        "SUM(payout_status NOT IN ('in_progress', 'requested', 'completed')) AS other FROM payment_settlements"
    )
    add(
        "one settlement per released request",
        int(s["n"]) == int(s["requests"]) == int(r["released"] or 0),
        f"{s['n']} settlements for {s['requests']} requests",
    )
    ledger = one(
        "SELECT (SELECT COUNT(*) FROM ledger_entries WHERE entry_type = 'release') AS entries, "
        "(SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE entry_type = 'release') AS amount, "
        "(SELECT COUNT(*) FROM payments WHERE status = 'released') AS shares, "
        "(SELECT COALESCE(SUM(paid_amount - refunded_amount), 0) FROM payments WHERE status = 'released') AS held, "
        "(SELECT COALESCE(SUM(gross_amount), 0) FROM payment_settlements) AS gross"
    )
    add(
        "release entries == released shares",
        int(ledger["entries"]) == int(ledger["shares"]) and int(ledger["amount"]) == int(ledger["held"]),
        f"{ledger['entries']} entries / {ledger['shares']} shares, {ledger['amount']} KRW / {ledger['held']} KRW",
    )
    add("settlements' gross == release entries", int(ledger["gross"]) == int(ledger["amount"]), f"{ledger['gross']}")
    refunds = one(
        "SELECT (SELECT COUNT(*) FROM payment_cancels WHERE status = 'done') AS done, "
        "(SELECT COUNT(DISTINCT payment_id) FROM payment_cancels WHERE status = 'done') AS shares, "
        "(SELECT COUNT(*) FROM payment_cancels WHERE status <> 'done') AS other, "
        "(SELECT COUNT(*) FROM ledger_entries WHERE entry_type = 'refund') AS entries, "
        "(SELECT COUNT(DISTINCT payment_id) FROM ledger_entries WHERE entry_type = 'refund') AS entry_shares, "
        "(SELECT COUNT(*) FROM payments WHERE status = 'refunded') AS refunded"
    )
    n_paid = len(expiring_paid_keys)
    add(
        "one refund per paid share of an expired request (our rows)",
        int(refunds["done"]) == int(refunds["shares"]) == int(refunds["refunded"]) == n_paid
        and int(refunds["other"]) == 0,
        f"{refunds['done']} done cancels, {refunds['shares']} shares, {refunds['other']} not done, of {n_paid}",
    )
    add(
        "one refund entry per refunded share (ledger)",
        int(refunds["entries"]) == int(refunds["entry_shares"]) == n_paid,
        f"{refunds['entries']} entries for {refunds['entry_shares']} shares",
    )
    with sb.core.store.lock:
        cancels = [len(sb.state.payments[k].cancels) for k in expiring_paid_keys]
        payouts = list(sb.state.payouts.values())
        calls = [
            c
            for c in sb.state.calls
            if c.method == "POST" and c.path == "/v2/payouts" and c.response_status == 200 and not c.replayed
        ]
    add(
        "one cancel per paid share at Toss (sandbox)",
        cancels.count(1) == n_paid,
        f"{cancels.count(1)} with one cancel, {sum(1 for c in cancels if c > 1)} with more, {cancels.count(0)} none",
    )
    with conn.cursor() as cur:
        cur.execute("SELECT ref_payout_id, payout_id, net_amount FROM payment_settlements")
        settlements = {row["ref_payout_id"]: row for row in cur.fetchall()}
    refs = [p.ref_payout_id for p in payouts]
    sent_refs = [item["refPayoutId"] for c in calls for item in (c.decrypted_body or [])]
    matched = sum(
        1
        for p in payouts
        if p.ref_payout_id in settlements
        and settlements[p.ref_payout_id]["payout_id"] == p.id
        and settlements[p.ref_payout_id]["net_amount"] == p.amount
    )
    add(
        "one payout per settlement at Toss (sandbox)",
        len(refs) == len(set(refs)) == len(settlements) == matched and len(sent_refs) == len(set(sent_refs)),
        f"{len(refs)} payouts, {len(set(refs))} refPayoutIds, {len(settlements)} settlements, {matched} matching "
        f"id and amount; items created by POST /v2/payouts: {len(sent_refs)} ({len(set(sent_refs))} distinct)",
    )
    add("nothing left in flight", int(s["other"] or 0) == 0, f"{s['other']} settlements not paid out")
    conn.close()
    return checks


def run_audit(url: str, sb: Any) -> str:
    """`escrow.audit` over everything (read-only, Toss GETs at zero latency), when the module exists."""
    import importlib.util

    if importlib.util.find_spec("escrow.audit") is None:
        return "escrow.audit not present: the checks above stand in for it"
    configure(url, sb.url, RECONCILE_AFTER_SECONDS="60")
    latency = sb.core.faults.snapshot().latency_ms
    sb.core.faults.update({"latency_ms": 0})
    try:
        from escrow import db
        from escrow.audit import audit

        with quiet():
            report = audit(reconciliation_period_seconds=3600)
        db.close()
    finally:
        sb.core.faults.update({"latency_ms": latency})
    text = report.summary()
    if report.findings:
        text += "\n" + report.table()
    return f"{text} ({report.seconds:.1f} s)"


def seed(url: str, sb: Any, args: argparse.Namespace) -> tuple[set[str], float]:
    """The due and the overdue requests; returns the paymentKeys of the overdue requests' paid shares."""
    started = time.monotonic()
    seeder = Seeder(url, sb)
    stores = [f"bench_store_{i:03d}" for i in range(args.stores)]
    for store_id in stores:
        seeder.store(store_id)
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    n = args.participants
    seeder.rooms(args.due, stores=stores, request_status="completed", shares=lambda k: ["paid"] * n, release_at=past)
    every = max(1, round(1 / args.paid_fraction)) if args.paid_fraction > 0 else 0

    def expiring_shares(k: int) -> list[str]:
        paid = every and k % every == 0
        return ["paid" if paid and i == 0 else "pending" for i in range(n)]

    rooms = seeder.rooms(
        args.expiring, stores=stores, request_status="pending", shares=expiring_shares, expires_at=past
    )
    seeder.close()
    keys = {s.payment_key for r in rooms for s in r.shares if s.state == "paid" and s.payment_key}
    return keys, time.monotonic() - started


def _show_unexpected(stderr: str) -> None:
    blocks = [b for b in stderr.split("-" * 40) if b.strip()]
    for block in blocks:
        if not any(e in block for e in ("ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError")):
            print(block, file=sys.stderr)


def _table(phase: Phase, items: int | None) -> list[str]:
    wall = phase.wall
    runs = phase.runs
    longest = max((r["seconds"] for r in runs), default=0.0)
    work = sum(r["seconds"] for r in runs)
    lines = [
        f"  scheduled runs (invocations)   {len(runs)}",
        f"  wall time                      {wall:.1f} s (sum of runs {work:.1f} s, "
        f"longest run {longest:.1f} s of 900 s)",
        f"  items per second               {items / work:.0f} (requests released + expired, over the runs' time)"
        if work and items
        else "",
        "  Toss calls                     "
        + ", ".join(f"{k} {v}" for k, v in sorted(phase.toss_calls.items(), key=lambda kv: -kv[1])),
    ]
    if runs and runs[-1].get("steps"):
        steps = runs[-1]["steps"]
        lines.append(
            "  time per job, all runs         "
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(steps.items(), key=lambda kv: -kv[1]))
        )
    if phase.final:
        peak = phase.final.get("tracemalloc_peak")
        first = runs[0].get("hwm_kib", 0) / 1024 if runs else 0
        lines.append(
            f"  memory                         peak RSS {phase.final['hwm_kib'] / 1024:.0f} MiB "
            f"(VmHWM; {first:.0f} MiB after the first run)"
            + (f", tracemalloc peak {peak / 1024 / 1024:.1f} MiB" if peak else "")
            + f"; ru_maxrss {phase.final['maxrss_kib'] / 1024:.0f} MiB (with the parent's RSS at fork)"
        )
    return [line for line in lines if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--due", type=int, default=10_000, help="requests due for release")
    parser.add_argument("--expiring", type=int, default=10_000, help="pending requests past their deadline")
    parser.add_argument("--paid-fraction", type=float, default=0.5, help="expiring requests with one paid share")
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--stores", type=int, default=50, help="stores (APPROVED sellers) the requests book")
    parser.add_argument("--latency-ms", type=float, default=20, help="sandbox latency per Toss call")
    parser.add_argument("--no-resume", action="store_true", help="skip the kill-and-resume run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--requests", type=int, help="requests due for release and as many overdue (sets --due and --expiring)"
    )
    parser.add_argument(
        "--workers",
        help="fan out (bench.jobs_fanout): the planner and this many worker processes, e.g. 1,4,8 (one run each)",
    )
    parser.add_argument("--kill", type=int, default=0, help="with --workers: also a run killing workers this often")
    parser.add_argument("--toss-rate", type=float, default=0, help="with --workers: Toss calls per second per worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--toss-url", help=argparse.SUPPRESS)
    parser.add_argument("--clock-offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reconcile-after", type=int, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--trace-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-runs", type=int, default=500, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests is not None:
        args.due = args.expiring = args.requests
    if args.worker:
        return worker(args)
    if args.workers:
        from bench import jobs_fanout

        code, figures = jobs_fanout.bench(args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        global LAST_FIGURES
        LAST_FIGURES = figures
        return code
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("toss_sandbox").setLevel(logging.ERROR)
    total = args.due + args.expiring
    print(
        f"scheduled jobs at scale: {args.due} requests due for release ({args.participants} paid shares each), "
        f"{args.expiring} overdue ({args.paid_fraction:.0%} with one paid share to refund), {args.stores} stores; "
        f"Toss sandbox latency {args.latency_ms:g} ms per call; one run_scheduled per scheduled invocation "
        "(15-minute clock each), in a worker process (a warm container)",
        flush=True,
    )
    sb = start_sandbox(args.latency_ms)
    figures: dict[str, Any] = {}
    ok = True
    try:
        name, url = create_database("jobs")
        try:
            sb.core.faults.update({"latency_ms": 0})
            keys, seeded = seed(url, sb, args)
            sb.core.faults.update({"latency_ms": args.latency_ms})
            print(f"seeded in {seeded:.1f} s", flush=True)
            phase = run_to_completion(url, sb, trace_memory=False)
            checks = check_outcome(url, sb, due=args.due, expiring_paid_keys=keys, expiring=args.expiring)
            left = phase.runs[-1]["left"] if phase.runs else {}
        finally:
            drop_database(name)
        work = sum(r["seconds"] for r in phase.runs)
        print("\nrun to completion")
        for line in _table(phase, total):
            print(line)
        events_left = left.get("events", 0)
        print(
            f"  outbox events still to publish {events_left} (publish takes 500 per run: "
            f"{-(-events_left // 500)} more runs)"
        )
        one_run = work < (LAMBDA_MS - 60_000) / 1000
        print(
            f"  within one 15-minute run       {'yes' if one_run else 'NO'}: the work takes {work:.0f} s against "
            f"{(LAMBDA_MS - 60_000) / 1000:.0f} s (15 min less the 60 s reserve) = "
            f"{work / ((LAMBDA_MS - 60_000) / 1000):.0%} of one run; but run_scheduled stops each job at its "
            f"batch limit (expire 200, release 1000, payouts 1000, publish 500), so it took {len(phase.runs)} "
            f"scheduled runs, {len(phase.runs) * 5} min at rate(5 min)"
        )
        for name_, good, detail in checks:
            ok = ok and good
            print(f"  {'ok  ' if good else 'FAIL'} {name_}: {detail}")
        figures["jobs"] = {
            "due": args.due,
            "expiring": args.expiring,
            "runs": len(phase.runs),
            "wall_s": round(phase.wall, 1),
            "work_s": round(work, 1),
            "longest_run_s": round(max(r["seconds"] for r in phase.runs), 1),
            "items_per_s": round(total / work) if work else None,
            "toss_calls": phase.toss_calls,
            "maxrss_mib": round(phase.final.get("maxrss_kib", 0) / 1024),
            "peak_rss_mib": round(phase.final.get("hwm_kib", 0) / 1024),
            "checks_ok": all(c[1] for c in checks),
        }

        if not args.no_resume:
            sb.core.reset()
            sb.core.faults.update({"latency_ms": 0})
            name, url = create_database("jobs_resume")
            try:
                keys, _ = seed(url, sb, args)
                sb.core.faults.update({"latency_ms": args.latency_ms})
                before = _calls(sb)
                # The sandbox's HTTP server reports the connection the kill resets (socketserver prints it to
                # stderr): expected here, so only anything else is shown.
                errors = io.StringIO()
                with contextlib.redirect_stderr(errors):
                    killed = run_and_kill(url, sb, total)
                _show_unexpected(errors.getvalue())
                # The next scheduled run, 5 minutes later: leases taken by the dead worker have run out, and its
                # refunds left without an answer are stale for reconcile_cancels.
                resumed = run_to_completion(url, sb, trace_memory=True, clock_offset=300, reconcile_after=0)
                calls = _delta(_calls(sb), before)
                replays = sb.state.stats()["idempotentReplays"]
                checks = check_outcome(url, sb, due=args.due, expiring_paid_keys=keys, expiring=args.expiring)
                audit_text = run_audit(url, sb)
            finally:
                drop_database(name)
            print("\nkilled half way, then resumed")
            k = killed.killed_at or {}
            print(
                f"  SIGKILL after {k.get('seconds', 0):.1f} s at {k.get('requests_done')} of {total} requests done "
                f"({len(killed.runs)} runs finished before it); left in flight: {k.get('payouts_requesting')} "
                f"payouts claimed (requesting), {k.get('refunds_unanswered')} refunds asked and not answered"
            )
            print("  resumed as the next scheduled run would be (clock +5 min), tracemalloc on, to completion:")
            for line in _table(resumed, None):
                print(line)
            print(
                "  Toss calls, both workers       "
                + ", ".join(f"{k_} {v}" for k_, v in sorted(calls.items()))
                + f"; answered from Toss's idempotency record (same key again): {replays}"
            )
            for name_, good, detail in checks:
                ok = ok and good
                print(f"  {'ok  ' if good else 'FAIL'} {name_}: {detail}")
            print(f"  escrow.audit: {audit_text}")
            figures["resume"] = {
                "killed_at": k,
                "resumed_runs": len(resumed.runs),
                "resumed_wall_s": round(resumed.wall, 1),
                "tracemalloc_peak_mib": round((resumed.final.get("tracemalloc_peak") or 0) / 1024 / 1024, 1),
                "maxrss_mib": round(resumed.final.get("maxrss_kib", 0) / 1024),
                "peak_rss_mib": round(resumed.final.get("hwm_kib", 0) / 1024),
                "checks_ok": all(c[1] for c in checks),
                "audit": audit_text.splitlines()[0],
            }
    finally:
        sb.stop()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    global LAST_FIGURES
    LAST_FIGURES = figures
    return 0 if ok else 1


LAST_FIGURES: dict[str, Any] = {}

if __name__ == "__main__":
    sys.exit(main())
