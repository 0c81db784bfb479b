"""Scheduled work fanned out: the same seed as `bench.jobs_scale` (requests due for release, overdue ones of which a
share in `--paid-fraction` was paid and must be refunded through Toss), worked off by the planner (the scheduled run
with a jobs queue, `escrow.services.fanout`) and W JobsWorkerFunction processes on the local queue (`local.fanout`),
for each W of `--workers`:

    python -m bench jobs --requests 2000 --workers 1,4,8 [--latency-ms 20] [--toss-rate 0] [--kill 3]

The planner runs in this process (as the scheduled run would, one plan after the other: each waits until the queue is
worked off, instead of the 5 minutes between scheduled runs), the sandbox too (its HTTP server's threads). Measured per
W: the wall time from the first plan until nothing is left to do (released, expired, refunded, paid out), the Toss
calls and their rate (mean over the drain, and the busiest second), and each worker's peak RSS (VmHWM).

`--kill K`: with the largest W, SIGKILL a worker K times while it holds an expiry or refund chunk with a refund asked
at Toss and not answered; its chunk is delivered again to another worker, and the plans after it ask Toss about what
the dead worker left unanswered. Then the same checks (nothing lost, nothing doubled: our rows, the ledger and the
sandbox) and `escrow.audit`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.jobs_scale import (
    AcceptingPublisher,
    _calls,
    _delta,
    backlog,
    check_outcome,
    configure,
    connect,
    create_database,
    drop_database,
    in_flight,
    quiet,
    run_audit,
    seed,
)


@dataclass
class FanOutRun:
    workers: int
    wall: float = 0.0
    plans: int = 0
    messages: int = 0
    deliveries: int = 0
    dead: int = 0
    toss_calls: dict[str, int] = field(default_factory=dict)
    busiest_second: int = 0
    peak_rss_mib: list[float] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    audit: str = ""

    @property
    def calls(self) -> int:
        return sum(self.toss_calls.values())


def _sampler(sb: Any, stop: threading.Event, peak: list[int]) -> None:
    last = sum(_calls(sb).values())
    while not stop.wait(1.0):
        now = sum(_calls(sb).values())
        peak[0] = max(peak[0], now - last)
        last = now


def _killer(pool: Any, url: str, kills: int, out: list[dict[str, Any]], stop: threading.Event) -> None:
    """SIGKILL a worker holding an expiry or refund chunk while a refund is asked and not answered, `kills` times."""
    conn = connect(url)
    rng = random.Random(7)  # which worker dies: the same each run
    try:
        while len(out) < kills and not stop.is_set():
            time.sleep(0.005)
            flight = in_flight(conn)
            if not flight["refunds_unanswered"]:
                continue
            holders = [
                w
                for w in pool.workers
                if w.holding and any('"job":"expire"' in m.body or '"job":"refunds"' in m.body for m in w.holding)
            ]
            if not holders:
                continue
            victim = rng.choice(holders)
            job = "expire" if '"job":"expire"' in victim.holding[0].body else "refunds"
            victim.kill()
            out.append({"worker": victim.index, "job": job, "at_s": time.monotonic(), **flight})
            time.sleep(1.0)
    finally:
        conn.close()


def drain(url: str, sb: Any, workers: int, args: argparse.Namespace, kills: int = 0) -> FanOutRun:
    from escrow import db
    from escrow.services import jobs
    from local.fanout import WorkerPool

    run = FanOutRun(workers)
    extra = {"RECONCILE_AFTER_SECONDS": "0" if kills else "60"}
    if kills:
        # A refund the dead worker asked and never heard of is asked again once older than the time its own worker
        # could still spend on it (2 x (connect + read) + 5 s): short timeouts keep that wait at 11 s.
        extra.update(TOSS_CONNECT_TIMEOUT="1", TOSS_READ_TIMEOUT="2")
    if args.toss_rate:
        extra["TOSS_CALLS_PER_SECOND"] = str(args.toss_rate)
    configure(url, sb.url, **extra)
    conn = connect(url)
    before = _calls(sb)
    stop = threading.Event()
    peak = [0]
    sampler = threading.Thread(target=_sampler, args=(sb, stop, peak), daemon=True)
    publisher = AcceptingPublisher()
    # The workers' logs (JSON lines at WARNING and above); BENCH_WORKER_LOG=file keeps them.
    devnull = open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "a")
    started = time.monotonic()
    try:
        with WorkerPool(
            workers,
            env={"POWERTOOLS_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING")},
            stderr=devnull,
            timeout_s=900,
        ) as pool:
            killer = None
            if kills:
                killer = threading.Thread(
                    target=_killer, args=(pool, url, kills, run.kills, stop), name="killer", daemon=True
                )
                killer.start()
            sampler.start()
            while run.plans < 500:
                with quiet():
                    report = jobs.run_scheduled(queue=pool.queue, publisher=publisher)  # type: ignore[arg-type]
                run.plans += 1
                run.messages += int(report.get("plan", {}).get("messages", 0))
                pool.queue.join()
                left = backlog(conn, datetime.now(UTC))
                if not any(v for k, v in left.items() if k != "events"):
                    break
                if not report.get("plan", {}).get("messages"):
                    time.sleep(1.0)  # only refunds in flight left: wait until they may be asked about again
            run.wall = time.monotonic() - started
            stop.set()
            if killer is not None:
                killer.join(5)
            run.deliveries = pool.queue.deliveries
            run.dead = len(pool.queue.dead)
            run.peak_rss_mib = [round(w.peak_rss_kib / 1024, 1) for w in pool.workers]
            run.restarts = sum(w.restarts for w in pool.workers)
    finally:
        stop.set()
        devnull.close()
        conn.close()
        db.close()
    for k in run.kills:
        k["at_s"] = round(k["at_s"] - started, 1)
    run.toss_calls = _delta(_calls(sb), before)
    run.busiest_second = peak[0]
    return run


def bench(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    from bench.jobs_scale import start_sandbox

    counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    total = args.due + args.expiring
    print(
        f"scheduled jobs fanned out: {args.due} requests due for release ({args.participants} paid shares each), "
        f"{args.expiring} overdue ({args.paid_fraction:.0%} with one paid share to refund), {args.stores} stores; "
        f"Toss sandbox latency {args.latency_ms:g} ms per call; planner in this process, workers "
        f"{', '.join(map(str, counts))} (processes on the local jobs queue, chunks of "
        f"{os.environ.get('JOBS_CHUNK_SIZE', '50')}); Toss pacing per worker: "
        f"{f'{args.toss_rate:g} calls/s' if args.toss_rate else 'none'}",
        flush=True,
    )
    sb = start_sandbox(args.latency_ms)
    runs: list[FanOutRun] = []
    ok = True
    try:
        plan = [(w, 0) for w in counts] + ([(max(counts), args.kill)] if args.kill else [])
        for workers, kills in plan:
            sb.core.reset()
            sb.core.faults.update({"latency_ms": 0})
            name, url = create_database("fanout")
            try:
                keys, seeded = seed(url, sb, args)
                sb.core.faults.update({"latency_ms": args.latency_ms})
                # The sandbox's HTTP server reports the connections a kill resets (socketserver, to stderr).
                with contextlib.redirect_stderr(io.StringIO()):
                    run = drain(url, sb, workers, args, kills)
                run.checks = check_outcome(url, sb, due=args.due, expiring_paid_keys=keys, expiring=args.expiring)
                if kills:
                    run.audit = run_audit(url, sb)
            finally:
                if os.environ.get("BENCH_KEEP_DATABASE"):
                    print(f"(database kept: {name})")
                else:
                    drop_database(name)
            runs.append(run)
            ok = ok and all(c[1] for c in run.checks) and (not kills or ", 0 findings" in run.audit.splitlines()[0])
            title = f"{workers} worker{'s' if workers > 1 else ''}" + (f", {kills} killed mid-chunk" if kills else "")
            print(f"\n{title} (seeded in {seeded:.1f} s)")
            print(f"  wall time to drain              {run.wall:.1f} s ({total / run.wall:.0f} requests/s)")
            print(
                f"  plans / messages / deliveries   {run.plans} / {run.messages} / {run.deliveries} "
                f"(dead-lettered {run.dead}, workers restarted {run.restarts})"
            )
            print(
                f"  Toss calls                      {run.calls} ({run.calls / run.wall:.0f}/s mean, busiest second "
                f"{run.busiest_second}): " + ", ".join(f"{k} {v}" for k, v in sorted(run.toss_calls.items()))
            )
            print(f"  peak RSS per worker (VmHWM)     {', '.join(f'{m:.0f}' for m in run.peak_rss_mib)} MiB")
            for k in run.kills:
                print(
                    f"  killed worker {k['worker']} at {k['at_s']} s holding a {k['job']} chunk "
                    f"({k['refunds_unanswered']} refunds asked and not answered)"
                )
            for name_, good, detail in run.checks:
                print(f"  {'ok  ' if good else 'FAIL'} {name_}: {detail}")
            if run.audit:
                print(f"  escrow.audit: {run.audit}")
    finally:
        sb.stop()
    figures = {
        "fanout": [
            {
                "workers": r.workers,
                "killed": len(r.kills),
                "wall_s": round(r.wall, 1),
                "plans": r.plans,
                "messages": r.messages,
                "deliveries": r.deliveries,
                "dead": r.dead,
                "toss_calls": r.toss_calls,
                "toss_calls_per_s": round(r.calls / r.wall, 1) if r.wall else None,
                "busiest_second": r.busiest_second,
                "peak_rss_mib": r.peak_rss_mib,
                "checks_ok": all(c[1] for c in r.checks),
                "audit": r.audit.splitlines()[0] if r.audit else None,
            }
            for r in runs
        ]
    }
    return (0 if ok else 1), figures
