"""Database connections under concurrency: N concurrent invocations never hold more than N connections, and warm
containers keep theirs (one each, reused) instead of opening more.

    python -m bench connections [--callers 1,4,16,32] [--waves 3] [--calls 5]

N caller threads (warm containers; the layer keeps one connection per thread) call the real handlers in-process
with API Gateway events: each call opens a request for a room, reads the room's status, or confirms a payment with
the Toss sandbox (a confirm holds its connection across the HTTP call). A sampler on its own connection (no default
database, so it does not count itself) reads `SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = <the
benchmark database>` every couple of milliseconds during each wave, and once after it, and keeps every connection
id it sees ("ever opened": the same connections are reused, none is replaced). Waves run from the smallest
N up with the same threads, so the threads of a wave include every thread that ever had a connection.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.jobs_scale import MYSQL, Seeder, configure, connect, create_database, drop_database, quiet, start_sandbox
from bench.latency import Callers, _events


class Sampler:
    """Counts the benchmark database's connections every `interval` seconds while running."""

    def __init__(self, database: str, interval: float = 0.002):
        self.database = database
        self.interval = interval
        self.conn = connect(f"{MYSQL}/mysql")  # no database in the URL would mean `escrow`
        self.samples = 0
        self.max = 0
        self.ids: set[int] = set()  # every connection id ever seen (the run's, not the wave's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (self.database,))
            ids = {int(row["ID"]) for row in cur.fetchall()}
        self.ids |= ids
        return len(ids)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.max = max(self.max, self.count())
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.max = self.samples = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Wave:
    callers: int
    wave: int
    calls: int
    max_during: int
    after: int
    samples: int
    seconds: float
    failures: int
    distinct_so_far: int


def run(ns: tuple[int, ...] = (1, 4, 16, 32), waves: int = 3, calls: int = 5) -> list[Wave]:
    import logging

    from tests.support.events import Context
    from tests.support.functions import load_function

    logging.getLogger("toss_sandbox").setLevel(logging.ERROR)
    sb = start_sandbox()
    name, url = create_database("connections")
    out: list[Wave] = []
    try:
        configure(url, sb.url, RECONCILE_AFTER_SECONDS="60")
        seeder = Seeder(url, sb)
        store = f"bench_conn_{uuid.uuid4().hex[:6]}"
        seeder.store(store, seller_status=None)
        total = sum(ns) * waves * calls
        fresh = seeder.rooms(total, stores=[store], request_status=None, shares=lambda k: ["pending", "pending"])
        paying = seeder.rooms(total, stores=[store], request_status="pending", shares=lambda k: ["issued", "paid"])
        seeder.close()
        creates = _events("request create", fresh, sb)
        statuses = _events("status", paying, sb)
        confirms = _events("confirm", paying, sb)
        for fn in ("request", "confirm"):
            load_function(fn)
        pool = Callers(max(ns))
        sampler = Sampler(name)
        context = Context()
        taken = 0
        try:
            for n in ns:
                for w in range(1, waves + 1):
                    per = []
                    for _ in range(n):
                        mine = []
                        for i in range(taken, taken + calls):
                            mine += [creates[i], statuses[i], confirms[i]]
                        taken += calls
                        per.append(mine)
                    failures = [0] * n

                    def call(index: int, per: list[Any] = per, failures: list[int] = failures) -> None:
                        for fn, event, expected in per[index]:
                            result = load_function(fn).lambda_handler(event, context)
                            failures[index] += result["statusCode"] != expected

                    started = time.monotonic()
                    with quiet(), sampler:
                        pool.wave(n, call)
                    seconds = time.monotonic() - started
                    out.append(
                        Wave(
                            n,
                            w,
                            n * calls * 3,
                            sampler.max,
                            sampler.count(),
                            sampler.samples,
                            seconds,
                            sum(failures),
                            len(sampler.ids),
                        )
                    )
        finally:
            pool.stop()
            sampler.close()
    finally:
        sb.stop()
        from escrow import db

        db.close()
        drop_database(name)
    return out


def print_table(waves: list[Wave], out: Any = sys.stdout) -> None:
    print(
        f"{'N callers':>9} {'wave':>4} {'calls':>5} {'samples':>7} {'max open during':>15} {'open after':>10} "
        f"{'ever opened':>11}  verdict",
        file=out,
    )
    by_n: dict[int, list[Wave]] = {}
    for w in waves:
        by_n.setdefault(w.callers, []).append(w)
        ok = w.max_during <= w.callers and w.after <= w.callers
        note = f"  ({w.failures} calls answered unexpectedly)" if w.failures else ""
        print(
            f"{w.callers:>9} {w.wave:>4} {w.calls:>5} {w.samples:>7} {w.max_during:>15} {w.after:>10} "
            f"{w.distinct_so_far:>11}  "
            f"{'<= N' if ok else 'MORE THAN N'}{note}",
            file=out,
        )
    for n, ws in by_n.items():
        afters = [w.after for w in ws]
        grows = any(b > a for a, b in itertools.pairwise(afters))
        print(
            f"N={n}: at most {max(w.max_during for w in ws)} connections during {len(ws)} waves; open after each wave "
            f"{afters}: {'grows' if grows else 'does not grow'} (kept per warm container and reused)",
            file=out,
        )
    if waves:
        print(
            f"connections ever opened over all {len(waves)} waves: {waves[-1].distinct_so_far} "
            f"(the largest N is {max(by_n)}: each caller thread opened one, once)",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", default="1,4,16,32", help="concurrent callers per wave, comma separated")
    parser.add_argument("--waves", type=int, default=3, help="waves per N")
    parser.add_argument("--calls", type=int, default=5, help="rounds of create + status + confirm per caller per wave")
    args = parser.parse_args(argv)
    ns = tuple(sorted(int(c) for c in args.callers.split(",")))
    print(
        "database connections: N caller threads (warm containers) call the handlers in-process; "
        "PROCESSLIST sampled every ~2 ms during each wave",
        flush=True,
    )
    waves = run(ns, args.waves, args.calls)
    print_table(waves)
    global LAST_WAVES
    LAST_WAVES = waves
    ok = all(w.max_during <= w.callers and w.after <= w.callers for w in waves)
    return 0 if ok else 1


LAST_WAVES: list[Wave] = []

if __name__ == "__main__":
    sys.exit(main())
