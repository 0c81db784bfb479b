"""Warm latency per endpoint: p50/p99 of the real handlers (API Gateway 2.0 events, in-process) at 1 and 16
concurrent callers, against a fresh MariaDB database and the Toss sandbox (in this process, no added latency),
next to a baseline of the same SQL statements run with raw pymysql.

    python -m bench latency [--samples 300] [--callers 1,16]

Callers are threads, each with its own warm database connection (the layer keeps one per thread, as one per Lambda
container). Every endpoint call gets an object of its own in the state it needs (a room without a request, a share
with an issued order and an authenticated Toss payment, a funded room, ...), seeded beforehand with bulk SQL.

Baseline: while the handlers run, every statement they send through `escrow.db` is recorded with its arguments and
its BEGIN/COMMIT (or autocommit) boundaries. A clone of the seeded database (same schema, same rows) is made before
the run; right after each measured call, the same caller replays that call's statements on the clone with a raw
pymysql connection of its own (default cursor), in the same transactions, so every statement meets the same rows in
the same state (an id a replayed INSERT gets differently is carried into the statements after it), under the same
concurrency and the same moment's load as the call it is compared with. What the replay leaves out is the layer:
event parsing and routing, JWT, pydantic, the connection check at the start of an invocation, dict rows, JSON,
logging and metrics.

Toss: confirm, cancel, release (payout) and webhook (payment lookup) call the sandbox over HTTP. That time is
measured around each HTTP call and subtracted from the endpoint's time for the comparison ("layer"), so the ratio
compares like with like; p50/p99 are the whole call, Toss included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.jobs_scale import (
    MYSQL,
    ROOT,
    Room,
    Seeder,
    configure,
    connect,
    create_database,
    drop_database,
    quiet,
    start_sandbox,
)

ENDPOINTS = ("request create", "status", "prepare", "confirm", "cancel", "release", "webhook")
WARMUP_PER_CALLER = 3

# ------------------------------------------------------------------------------------- recording statements

_tl = threading.local()


def _unit() -> list[Any] | None:
    stack = getattr(_tl, "stack", None)
    return stack[-1][1] if stack else None


def install_recorder() -> None:
    """Record (sql, args, lastrowid) per transaction / autocommit block, and the time spent in HTTP calls, for
    the calls made inside `recording()`. Costs a list append per statement."""
    import requests

    from escrow import db

    run, many = db.Tx._run, db.Tx.executemany
    transaction, reader = db.transaction, db.reader

    def _run(self: Any, sql: str, args: Any) -> int:
        n = run(self, sql, args)
        unit = _unit()
        if unit is not None:
            unit.append((sql, args, self._cur.lastrowid, False))
        return n

    def _many(self: Any, sql: str, rows: Any) -> int:
        n = many(self, sql, rows)
        unit = _unit()
        if unit is not None:
            unit.append((sql, rows, self._cur.lastrowid, True))
        return n

    def recorded(kind: str, original: Callable[[], Any]) -> Callable[[], Any]:
        @contextlib.contextmanager
        def wrapper() -> Iterator[Any]:
            units = getattr(_tl, "units", None)
            if units is None:
                with original() as tx:
                    yield tx
                return
            unit: tuple[str, list[Any]] = (kind, [])
            units.append(unit)
            _tl.stack.append(unit)
            try:
                with original() as tx:
                    yield tx
            finally:
                _tl.stack.pop()

        return wrapper

    db.Tx._run = _run  # type: ignore[method-assign]
    db.Tx.executemany = _many  # type: ignore[method-assign]
    db.transaction = recorded("tx", transaction)  # type: ignore[assignment]
    db.reader = recorded("auto", reader)  # type: ignore[assignment]

    session_request = requests.Session.request

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_tl, "units", None) is None:
            return session_request(self, *args, **kwargs)
        started = time.perf_counter()
        try:
            return session_request(self, *args, **kwargs)
        finally:
            _tl.toss += time.perf_counter() - started

    requests.Session.request = timed  # type: ignore[method-assign]


@contextlib.contextmanager
def recording() -> Iterator[list[Any]]:
    units: list[Any] = []
    _tl.units, _tl.stack, _tl.toss = units, [], 0.0
    try:
        yield units
    finally:
        _tl.units = None


def replay(conn: Any, units: list[Any], ids: dict[int, int]) -> int:
    """The recorded statements on a raw connection (autocommit), each transaction between BEGIN and COMMIT.
    A transaction chosen as a deadlock victim is run again; returns how many times that happened."""
    from pymysql.err import OperationalError

    retries = 0
    with conn.cursor() as cur:
        for kind, statements in units:
            for attempt in range(5):
                try:
                    if kind == "tx":
                        conn.begin()
                    for sql, args, lastrowid, many in statements:
                        if ids:
                            args = _remap(args, ids)
                        if many:
                            cur.executemany(sql, args)
                        else:
                            cur.execute(sql, args)
                        cur.fetchall()
                        if lastrowid and cur.lastrowid and cur.lastrowid != lastrowid:
                            ids[lastrowid] = cur.lastrowid
                    if kind == "tx":
                        conn.commit()
                    break
                except OperationalError as exc:
                    if exc.args[0] not in (1213, 1205) or attempt == 4:
                        raise
                    conn.rollback()
                    retries += 1
    return retries


def _remap(value: Any, ids: dict[int, int]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return ids.get(value, value)
    if isinstance(value, tuple | list):
        return type(value)(_remap(v, ids) for v in value)
    if isinstance(value, dict):
        return {k: _remap(v, ids) for k, v in value.items()}
    return value


def clone_database(source: str, url: str) -> None:
    """Copy every row of the source database into a freshly migrated one; both start new ids at 10^9, so an id a
    statement inserts is never mistaken for an amount or a count, and one seeded before is the same in both."""
    target = url.rsplit("/", 1)[1]
    conn = connect(f"{MYSQL}/{source}")
    with conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        cur.execute(
            "SELECT TABLE_NAME AS t, GROUP_CONCAT(CONCAT('`', COLUMN_NAME, '`') ORDER BY ORDINAL_POSITION) AS cols "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND EXTRA NOT LIKE '%%GENERATED%%' "
            "AND TABLE_NAME NOT LIKE '%%yoyo%%' GROUP BY TABLE_NAME",
            (source,),
        )
        tables = cur.fetchall()
        cur.execute("SET SESSION group_concat_max_len = 65536")
        for row in tables:
            cur.execute(f"INSERT INTO `{target}`.`{row['t']}` ({row['cols']}) SELECT {row['cols']} FROM `{row['t']}`")
        cur.execute(
            "SELECT TABLE_NAME AS t FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "AND EXTRA LIKE '%%auto_increment%%'",
            (source,),
        )
        for row in cur.fetchall():
            for schema in (source, target):
                cur.execute(f"ALTER TABLE `{schema}`.`{row['t']}` AUTO_INCREMENT = 1000000000")
    conn.close()


# ------------------------------------------------------------------------------------- callers


@dataclass
class Sample:
    caller: int
    seconds: float
    toss: float
    status: int
    base: float | None  # the same statements replayed with raw pymysql (None: a deadlock victim, ran again)


@dataclass
class Callers:
    """N long-lived threads (warm containers); a wave gives each of the first c its own list of calls."""

    size: int
    _queues: list[queue.Queue[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            q: queue.Queue[Any] = queue.Queue()
            self._queues.append(q)
            threading.Thread(target=self._run, args=(i, q), daemon=True, name=f"caller-{i}").start()

    def _run(self, index: int, q: queue.Queue[Any]) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            fn, barrier, done = job
            barrier.wait()
            try:
                done.put((index, fn(index)))
            except BaseException as exc:  # noqa: BLE001 - reported by the wave
                done.put((index, exc))

    def wave(self, c: int, fn: Callable[[int], Any]) -> list[Any]:
        barrier = threading.Barrier(c)
        done: queue.Queue[Any] = queue.Queue()
        for i in range(c):
            self._queues[i].put((fn, barrier, done))
        results: list[Any] = [None] * c
        for _ in range(c):
            index, result = done.get()
            if isinstance(result, BaseException):
                raise result
            results[index] = result
        return results

    def stop(self) -> None:
        for q in self._queues:
            q.put(None)


# ------------------------------------------------------------------------------------- objects and events


def _events(kind: str, rooms: list[Room], sb: Any) -> list[tuple[str, dict[str, Any], int]]:
    """(function, API Gateway event, expected status) for one call per room."""
    from tests.support.events import http_event

    out = []
    for room in rooms:
        first = room.shares[0]
        if kind == "request create":
            body = {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "message": "예약금"}
            out.append(("request", http_event("POST", "/api/v1/payment/request", user=room.owner, body=body), 201))
        elif kind == "status":
            path = f"/api/v1/payment/status/{room.chat_room_id}"
            event = http_event(
                "GET",
                path,
                user=first.payer_id,
                route="/api/v1/payment/status/{chatRoomId}",
                path_parameters={"chatRoomId": str(room.chat_room_id)},
            )
            out.append(("request", event, 200))
        elif kind == "prepare":
            body = {"chat_room_id": room.chat_room_id}
            out.append(("confirm", http_event("POST", "/api/v1/payment/prepare", user=first.payer_id, body=body), 200))
        elif kind == "confirm":
            body = {
                "chat_room_id": room.chat_room_id,
                "amount": 15000,
                "paymentKey": first.payment_key,
                "orderId": first.order_id,
            }
            out.append(("confirm", http_event("POST", "/api/v1/payment/confirm", user=first.payer_id, body=body), 200))
        elif kind == "cancel":
            body = {"paymentKey": first.payment_key, "cancelReason": "개인 사정으로 취소"}
            out.append(("cancel", http_event("POST", "/api/v1/payment/cancel", user=first.payer_id, body=body), 200))
        elif kind == "release":
            body = {"chat_room_id": room.chat_room_id}
            out.append(("release", http_event("POST", "/api/v1/payment/release", user=room.owner, body=body), 200))
        elif kind == "webhook":
            record = sb.state.payments[first.payment_key]
            raw = json.dumps(
                {
                    "eventType": "PAYMENT_STATUS_CHANGED",
                    "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"),
                    "data": sb.core.payments.to_json(record),
                },
                ensure_ascii=False,
            )
            headers = {
                "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}",
                "tosspayments-webhook-transmission-time": datetime.now(UTC).isoformat(timespec="seconds"),
                "tosspayments-webhook-transmission-retried-count": "0",
            }
            out.append(("webhook", http_event("POST", "/api/v1/payment/webhook", raw_body=raw, headers=headers), 200))
    return out


def seed_objects(seeder: Seeder, kind: str, n: int, stores: dict[str, str]) -> list[Room]:
    two = ["pending", "pending"]
    if kind == "request create":
        return seeder.rooms(n, stores=[stores["plain"]], request_status=None, shares=lambda k: two)
    if kind in ("status", "prepare"):
        return seeder.rooms(n, stores=[stores["plain"]], request_status="pending", shares=lambda k: two)
    if kind == "confirm":  # the other participant has paid: this confirm completes the request
        return seeder.rooms(n, stores=[stores["plain"]], request_status="pending", shares=lambda k: ["issued", "paid"])
    # cancel, release, webhook: a funded room (release pays the store's APPROVED seller)
    return seeder.rooms(n, stores=[stores["payable"]], request_status="completed", shares=lambda k: ["paid", "paid"])


# ------------------------------------------------------------------------------------- measuring


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Row:
    endpoint: str
    callers: int
    n: int
    p50: float
    p99: float
    toss_p50: float
    layer_p50: float
    base_p50: float
    failures: int

    @property
    def ratio(self) -> float:
        return self.layer_p50 / self.base_p50 if self.base_p50 else float("nan")


def measure(
    kind: str,
    callers: int,
    events: list[tuple[str, dict[str, Any], int]],
    pool: Callers,
    clone_conns: list[Any],
) -> Row:
    """Each caller makes its calls one after another; right after each measured call it replays that call's
    statements on the clone (paired, so a busy moment of the machine weighs on both alike)."""
    from tests.support.events import Context
    from tests.support.functions import load_function

    per: list[list[tuple[str, dict[str, Any], int]]] = [events[i::callers] for i in range(callers)]
    context = Context()

    def call(index: int) -> list[Sample]:
        samples = []
        ids: dict[int, int] = {}
        for i, (fn, event, expected) in enumerate(per[index]):
            handler = load_function(fn).lambda_handler
            with recording() as units:
                started = time.perf_counter()
                result = handler(event, context)
                seconds = time.perf_counter() - started
                toss = _tl.toss
            if i < WARMUP_PER_CALLER:
                continue  # its objects are not used again: no need to replay it on the clone
            status = result["statusCode"] if result["statusCode"] == expected else -result["statusCode"]
            started = time.perf_counter()
            retried = replay(clone_conns[index], units, ids)
            base = None if retried else time.perf_counter() - started
            samples.append(Sample(index, seconds, toss, status, base))
        return samples

    with quiet():
        results = pool.wave(callers, call)
    samples = [s for per_caller in results for s in per_caller]
    good = [s for s in samples if s.status > 0]
    baseline = [s.base for s in samples if s.base is not None]
    if len(baseline) < len(samples):
        print(
            f"  ! {kind} x{callers}: {len(samples) - len(baseline)} baseline replays were deadlock victims and ran "
            "again (left out of the baseline)",
            file=sys.stderr,
        )
    if len(good) < len(samples):
        codes = sorted({-s.status for s in samples if s.status < 0})
        print(f"  ! {kind} x{callers}: {len(samples) - len(good)} calls answered {codes}", file=sys.stderr)
    seconds = [s.seconds for s in good]
    return Row(
        kind,
        callers,
        len(good),
        statistics.median(seconds) * 1000,
        _pct(seconds, 0.99) * 1000,
        statistics.median(s.toss for s in good) * 1000,
        statistics.median(s.seconds - s.toss for s in good) * 1000,
        statistics.median(baseline) * 1000,
        len(samples) - len(good),
    )


def run(samples: int = 300, callers: tuple[int, ...] = (1, 16), endpoints: tuple[str, ...] = ENDPOINTS) -> list[Row]:
    import logging

    logging.getLogger("toss_sandbox").setLevel(logging.ERROR)
    sb = start_sandbox()
    main_name, url = create_database("latency")
    clone_name, clone_url = create_database("latency_replay")
    try:
        configure(url, sb.url, RECONCILE_AFTER_SECONDS="60")
        seeder = Seeder(url, sb)
        stores = {"plain": f"bench_plain_{uuid.uuid4().hex[:6]}", "payable": f"bench_paid_{uuid.uuid4().hex[:6]}"}
        seeder.store(stores["plain"], seller_status=None)
        seeder.store(stores["payable"])
        plan: dict[tuple[str, int], list[tuple[str, dict[str, Any], int]]] = {}
        started = time.monotonic()
        for kind in endpoints:
            for c in callers:
                n = samples + WARMUP_PER_CALLER * c
                rooms = seed_objects(seeder, kind, n, stores)
                plan[(kind, c)] = _events(kind, rooms, sb)
        seeder.close()
        clone_database(main_name, clone_url)
        print(f"seeded {sum(len(v) for v in plan.values())} objects and cloned in {time.monotonic() - started:.1f} s")
        install_recorder()
        from tests.support.functions import load_function

        for fn in ("request", "confirm", "cancel", "release", "webhook"):
            load_function(fn)
        pool = Callers(max(callers))
        clone_conns = [connect(clone_url, dict_rows=False) for _ in range(max(callers))]
        rows = []
        try:
            for kind in endpoints:
                for c in callers:
                    rows.append(measure(kind, c, plan[(kind, c)], pool, clone_conns))
        finally:
            pool.stop()
            for conn in clone_conns:
                conn.close()
        return rows
    finally:
        sb.stop()
        from escrow import db

        db.close()
        drop_database(main_name)
        drop_database(clone_name)


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    head = (
        f"{'endpoint':15} {'callers':>7} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'Toss p50':>9} {'layer p50':>10} "
        f"{'baseline p50':>13} {'ratio':>6}"
    )
    print(head, file=out)
    for r in rows:
        flag = "" if r.ratio <= 1.5 else "  > 1.5x"
        print(
            f"{r.endpoint:15} {r.callers:>7} {r.n:>5} {r.p50:>8.2f} {r.p99:>8.2f} {r.toss_p50:>9.2f} "
            f"{r.layer_p50:>10.2f} {r.base_p50:>13.2f} {r.ratio:>5.2f}x{flag}",
            file=out,
        )
    print(
        "p50/p99: the whole handler call; Toss p50: time inside HTTP calls to the sandbox; layer p50: call minus its "
        "Toss time;\nbaseline p50: the same statements, transactions and commits with raw pymysql on a clone of the "
        "database; ratio: layer p50 / baseline p50 (target <= 1.5x, reported, not asserted).\n"
        "16 callers are 16 threads of one Python process sharing the GIL (and the in-process sandbox) on "
        f"{os.cpu_count()} CPUs; 16 Lambda containers would not queue behind each other's Python work.",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="measured calls per endpoint and concurrency")
    parser.add_argument("--callers", default="1,16", help="concurrent callers, comma separated")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma separated, of: " + ", ".join(ENDPOINTS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    callers = tuple(int(c) for c in args.callers.split(","))
    endpoints = tuple(e.strip() for e in args.endpoints.split(","))
    print(
        f"warm latency, in-process handlers with API Gateway 2.0 events; MariaDB on 127.0.0.1, Toss sandbox in "
        f"process (no added latency); {args.samples} measured calls per row after {WARMUP_PER_CALLER} warm-up calls "
        "per caller",
        flush=True,
    )
    rows = run(args.samples, callers, endpoints)
    print_table(rows)
    global LAST_ROWS
    LAST_ROWS = rows
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows], indent=2))
    return 0


LAST_ROWS: list[Row] = []

if __name__ == "__main__":
    sys.path[:0] = [str(ROOT / "layers/common"), str(ROOT)]
    sys.exit(main())
