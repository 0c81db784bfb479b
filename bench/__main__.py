"""`python -m bench [cold|latency|jobs|connections|all|counts] [options of that benchmark]` (`make bench` = all).

Benchmarks print figures; none asserts a target. `all` runs the four with defaults that finish in a few minutes
(cold start first; the jobs benchmark at 2,000 + 2,000 requests instead of its own default 10,000 + 10,000) and ends
with one summary table and the machine it ran on. Each sub-command takes its own options, e.g.
`python -m bench jobs --due 10000 --expiring 10000`, `python -m bench jobs --requests 2000 --workers 1,4,8 --kill 3`
(the scheduled work fanned out to worker processes, bench/jobs_fanout.py), `python -m bench latency --samples 500`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "layers/common"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

COMMANDS = ("cold", "latency", "jobs", "connections", "all", "counts")
ALL_JOBS_ARGS = ["--due", "2000", "--expiring", "2000", "--stores", "20"]


def _cold(argv: list[str]) -> tuple[int, dict[str, Any]]:
    """bench.cold_start's own tables, and its figures for the summary."""
    from bench import cold_start

    code = cold_start.main(argv)
    return code, dict(cold_start.LAST_FIGURES)


def _section(title: str) -> None:
    print(f"\n{'=' * 20} {title} {'=' * max(0, 78 - len(title))}", flush=True)


def run_all(argv: list[str]) -> int:
    from bench import connections, jobs_scale, latency

    started = time.monotonic()
    codes: dict[str, int] = {}
    _section("cold start (python -m bench cold)")
    codes["cold"], cold = _cold(["--runs", "5", *argv])
    _section("warm latency (python -m bench latency)")
    codes["latency"] = latency.main([])
    _section("scheduled jobs at scale (python -m bench jobs " + " ".join(ALL_JOBS_ARGS) + ")")
    codes["jobs"] = jobs_scale.main(ALL_JOBS_ARGS)
    _section("database connections (python -m bench connections)")
    codes["connections"] = connections.main([])
    summary(cold, latency.LAST_ROWS, jobs_scale.LAST_FIGURES, connections.LAST_WAVES, time.monotonic() - started)
    return max(codes.values())


def summary(cold: dict[str, Any], rows: list[Any], jobs: dict[str, Any], waves: list[Any], seconds: float) -> None:
    from bench.jobs_scale import machine

    m = machine()
    _section("summary")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, Python {m['python']}, MariaDB {m['mariadb']}, "
        f"{m['os']}; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    lines: list[tuple[str, str, str]] = []
    for mode, data in (cold.get("modes") or {}).items():
        name, slowest = max(data["functions"].items(), key=lambda kv: kv[1]["total"])
        lines.append(
            (
                "cold start",
                f"{mode}: slowest function incl. first request",
                f"{slowest['total']:.0f} ms ({name}) = {slowest['total'] / data['boto3']:.2f}x a bare import boto3 "
                f"({data['boto3']:.0f} ms)",
            )
        )
    for r in rows:
        lines.append(
            (
                "latency",
                f"{r.endpoint}, {r.callers} caller{'s' if r.callers > 1 else ''}",
                f"p50 {r.p50:.1f} ms, p99 {r.p99:.1f} ms, layer {r.layer_p50:.1f} ms vs SQL baseline "
                f"{r.base_p50:.1f} ms = {r.ratio:.2f}x",
            )
        )
    if jobs.get("jobs"):
        j = jobs["jobs"]
        lines.append(
            (
                "jobs",
                f"{j['due']} due + {j['expiring']} overdue, 20 ms Toss",
                f"{j['runs']} scheduled runs, {j['work_s']} s of work (longest run {j['longest_run_s']} s), "
                f"{j['items_per_s']} requests/s",
            )
        )
        lines.append(("jobs", "Toss calls", ", ".join(f"{k} {v}" for k, v in j["toss_calls"].items())))
        lines.append(
            (
                "jobs",
                "memory (worker process)",
                f"peak RSS {j['peak_rss_mib']} MiB (VmHWM), "
                f"ru_maxrss {j['maxrss_mib']} MiB (with the parent's at fork)",
            )
        )
        lines.append(("jobs", "outcome checks", "all ok" if j["checks_ok"] else "FAILED"))
    if jobs.get("resume"):
        r_ = jobs["resume"]
        k = r_["killed_at"]
        lines.append(
            (
                "jobs",
                "SIGKILL half way, then resumed",
                f"killed at {k.get('requests_done')}/{k.get('of')} requests, resumed in {r_['resumed_runs']} runs; "
                f"checks {'all ok' if r_['checks_ok'] else 'FAILED'}; audit: {r_['audit']}",
            )
        )
        lines.append(
            (
                "jobs",
                "memory (resumed worker)",
                f"tracemalloc peak {r_['tracemalloc_peak_mib']} MiB, peak RSS {r_['peak_rss_mib']} MiB (VmHWM), "
                f"ru_maxrss {r_['maxrss_mib']} MiB",
            )
        )
    by_n: dict[int, list[Any]] = {}
    for w in waves:
        by_n.setdefault(w.callers, []).append(w)
    for n, ws in by_n.items():
        lines.append(
            (
                "connections",
                f"N = {n} concurrent callers",
                f"max {max(w.max_during for w in ws)} open during {len(ws)} waves, after each {[w.after for w in ws]}",
            )
        )
    width = max(len(b) for _, b, _ in lines) if lines else 10
    for a, b, c in lines:
        print(f"{a:12} {b:{width}}  {c}")
    print(f"(all benchmarks: {seconds / 60:.1f} min)")


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else ("all", argv)
    if command == "all":
        return run_all(rest)
    if command == "cold":
        from bench import cold_start

        return cold_start.main(rest)
    if command == "latency":
        from bench import latency

        return latency.main(rest)
    if command == "jobs":
        from bench import jobs_scale

        return jobs_scale.main(rest)
    if command == "connections":
        from bench import connections

        return connections.main(rest)
    from bench import counts

    return counts.main()


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:2]):
        print(__doc__)
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
