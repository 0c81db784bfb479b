"""Cold start including the first request: in a fresh interpreter, the function's module is imported and initialised
and one real first request is run through its handler (lazy imports would otherwise hide their cost in it). A bare
`import boto3` is measured the same way in the same run, and every row is given as a ratio to it. Median of N.

Which request each function's row times (none calls Toss; the happy paths that do would time Toss, not us):

- request: `GET /api/v1/payment/status/{id}` of a room with an open request (200: JWT, MariaDB, the answer);
- confirm: `POST /api/v1/payment/prepare` by a participant (200: validation, a transaction writing the order);
- cancel:  `POST /api/v1/payment/cancel` of a paymentKey we do not hold (404 PAYMENT_NOT_FOUND after the lookup);
- release: `POST /api/v1/payment/release` of a room not fully paid yet (409 REQUEST_NOT_FUNDED, locks taken);
- webhook: `POST /api/v1/payment/webhook` with an event type we ignore (200: the delivery is logged in MariaDB).

Modes: **local** (secrets in environment variables, as `make run`); **deployed** (APP_ENV=dev, the JWT, database
and Toss secrets from the AWS Parameters and Secrets Lambda Extension, played by local.secrets_extension in its own
process, backed by moto: the extension's first GetSecretValue calls, without network latency unless
`--secrets-latency-ms` adds some; the bench's MariaDB has no TLS, so the TLS handshake a deployed function makes
with RDS Proxy is not in the figures).
`--no-bytecode` adds local mode without precompiled bytecode (what an uncompiled layer costs on Lambda, where /opt is
read-only). `--instructions` also runs each probe once under valgrind's callgrind and gives its instruction count
and ratio: on a machine shared with other work, times move with the load, instruction counts do not. A second
table gives the import cost of Powertools' event handler, with and without bytecode.

The layer comes from the SAM build (`.aws-sam/build/CommonLayer/python`, with precompiled bytecode: `sam build`)
when it exists, else from the source tree (`--layer` names another).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MYSQL = os.environ.get("BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
ROOM, OWNER, PAYER = 424242, "bench_owner", "bench_payer"
SESSION_TOKEN = "bench-session-token"
DEPLOYED_JWT_KEY = "bench-deployed-jwt-key-0123456789abcdef"

LAST_FIGURES: dict[str, Any] = {}  # read by `python -m bench` for its summary


@dataclass(frozen=True)
class FirstRequest:
    function: str
    label: str
    method: str
    path: str
    body: dict[str, Any] | None
    user: str | None
    expect: int


FIRST_REQUESTS = (
    FirstRequest("request", "GET status", "GET", f"/api/v1/payment/status/{ROOM}", None, PAYER, 200),
    FirstRequest("confirm", "POST prepare", "POST", "/api/v1/payment/prepare", {"chat_room_id": ROOM}, PAYER, 200),
    FirstRequest(
        "cancel",
        "POST cancel (404)",
        "POST",
        "/api/v1/payment/cancel",
        {"paymentKey": "tgen_not_ours", "cancelReason": "bench"},
        PAYER,
        404,
    ),
    FirstRequest(
        "release", "POST release (409)", "POST", "/api/v1/payment/release", {"chat_room_id": ROOM}, OWNER, 409
    ),
    FirstRequest(
        "webhook", "POST webhook (ignored)", "POST", "/api/v1/payment/webhook", {"eventType": "BENCH_EVENT"}, None, 200
    ),
)

# In the child: everything before t0 is what the Lambda runtime has done before it imports the handler.
_PROBE_FUNCTION = """
import importlib.util, json, sys, time
event = json.loads(sys.argv[1])
class Context:
    function_name = "bench"; memory_limit_in_mb = 512; aws_request_id = "bench"
    invoked_function_arn = "arn:aws:lambda:ap-northeast-2:123456789012:function:bench"
    def get_remaining_time_in_millis(self): return 25000
t0 = time.perf_counter()
sys.path.insert(0, {fn_dir!r})
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t1 = time.perf_counter()
result = module.lambda_handler(event, Context())
t2 = time.perf_counter()
print(json.dumps({{"init": (t1 - t0) * 1000, "first": (t2 - t1) * 1000, "status": result["statusCode"],
                  "body": str(result.get("body"))[:300]}}))
"""
_PROBE_IMPORT = """
import json, time
t0 = time.perf_counter()
{body}
print(json.dumps({{"init": (time.perf_counter() - t0) * 1000, "first": 0.0, "status": 0, "body": ""}}))
"""
IMPORTS = {
    "Powertools Logger + Metrics (every function)": "from aws_lambda_powertools import Logger, Metrics",
    "+ APIGatewayHttpResolver": "from aws_lambda_powertools import Logger, Metrics\n"
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver",
    "+ request validation (pydantic)": "from aws_lambda_powertools import Logger, Metrics\n"
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver\n"
    "import aws_lambda_powertools.event_handler.middlewares.openapi_validation",
}


def _child(code: str, env: dict[str, str], *args: str, instructions: bool = False) -> dict[str, Any]:
    command = [sys.executable, "-c", code, *args]
    if instructions:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probe failed:\n{out.stderr[-3000:]}")
    sample = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    if instructions:
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise RuntimeError(f"callgrind printed no count:\n{out.stderr[-2000:]}")
        sample["instructions"] = int(found.group(1))
    return sample


def _event(req: FirstRequest, jwt_key: str) -> dict[str, Any]:
    from tests.support.events import http_event, token

    event = http_event(req.method, req.path, body=req.body)
    if req.user:
        event["headers"]["authorization"] = f"Bearer {token(req.user, secret=jwt_key)}"
    return event


def _median(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "init": statistics.median(s["init"] for s in samples),
        "first": statistics.median(s["first"] for s in samples),
        "total": statistics.median(s["init"] + s["first"] for s in samples),
    }


def sample_function(req: FirstRequest, env: dict[str, str], jwt_key: str, instructions: bool = False) -> dict[str, Any]:
    fn_dir = ROOT / "functions" / req.function
    code = _PROBE_FUNCTION.format(fn_dir=str(fn_dir), path=str(fn_dir / "app.py"))
    sample = _child(code, env, json.dumps(_event(req, jwt_key)), instructions=instructions)
    if sample["status"] != req.expect:
        raise RuntimeError(f"{req.function}: {req.label} answered {sample['status']}: {sample['body']}")
    return sample


def measure_mode(env: dict[str, str], runs: int, jwt_key: str) -> dict[str, Any]:
    """Rounds of: a bare import boto3, then each function's cold start; the rounds are interleaved so that whatever
    else the machine is doing weighs on both sides of a ratio alike. The first round warms the page cache."""
    boto: list[dict[str, Any]] = []
    functions: dict[str, list[dict[str, Any]]] = {req.function: [] for req in FIRST_REQUESTS}
    for round_ in range(runs + 1):
        b = _child(_PROBE_IMPORT.format(body="import boto3"), env)
        rows = {req.function: sample_function(req, env, jwt_key) for req in FIRST_REQUESTS}
        if round_ == 0:
            continue
        boto.append(b)
        for function, sample in rows.items():
            sample["ratio"] = (sample["init"] + sample["first"]) / b["init"]
            functions[function].append(sample)
    return {
        "boto3": statistics.median(b["init"] for b in boto),
        "functions": {
            f: {**_median(samples), "ratio": statistics.median(x["ratio"] for x in samples)}
            for f, samples in functions.items()
        },
    }


def count_instructions(env: dict[str, str], jwt_key: str) -> dict[str, Any]:
    """The same probes once each under callgrind: instructions executed, which whatever else the machine runs does
    not change (time spent waiting for MariaDB or the extension is not counted; their own work is not either). The
    interpreter's start and the probe's own lines (a probe importing nothing) are subtracted."""
    env = {**env, "PYTHONHASHSEED": "0"}
    base = _child(_PROBE_IMPORT.format(body="pass"), env, instructions=True)["instructions"]
    boto = _child(_PROBE_IMPORT.format(body="import boto3"), env, instructions=True)["instructions"] - base
    rows = {}
    for req in FIRST_REQUESTS:
        count = sample_function(req, env, jwt_key, instructions=True)["instructions"] - base
        rows[req.function] = {"instructions": count, "ratio": count / boto}
    return {"boto3": boto, "functions": rows}


def measure_import(body: str, env: dict[str, str], runs: int) -> float:
    code = _PROBE_IMPORT.format(body=body)
    return _median([_child(code, env) for _ in range(runs + 1)][1:])["total"]


def base_env(layer: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_", "LAMBDA_", "POWERTOOLS_"))}
    for name in ("DATABASE_URL", "DB_SECRET_ARN", "JWT_SECRET", "JWT_SECRET_ARN", "TOSS_SECRET_ARN", "APP_ENV"):
        env.pop(name, None)
    env.update(  # as template.yaml sets them
        {
            "PYTHONPATH": str(layer),
            "POWERTOOLS_SERVICE_NAME": "escrow",
            "POWERTOOLS_METRICS_NAMESPACE": "EscrowService",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
            "AWS_DEFAULT_REGION": "ap-northeast-2",
            "OUTBOX_PUBLISHER": "log",
            "TOSS_API_BASE": "http://127.0.0.1:9",  # never called by these requests
        }
    )
    return env


def no_bytecode(env: dict[str, str], prefix: str) -> dict[str, str]:
    # A pycache prefix that holds nothing: every module is compiled from source, and nothing is written back.
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": prefix}


@contextmanager
def bench_database() -> Any:
    """A fresh database with a room (owner + one participant) that has an open payment request."""
    from escrow.config import parse_database_url

    name = f"escrow_bench_cold_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL}/{name}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    subprocess.run(
        [sys.executable, "-m", "escrow.migrate", "--database-url", url], env=env, check=True, capture_output=True
    )
    import pymysql

    p = parse_database_url(url)
    conn = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password, database=p.database)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO stores (store_id, owner_id) VALUES ('bench_store', 'bench_store_owner')")
            cur.executemany(
                "INSERT INTO chat_room_members (chat_room_id, user_id, is_owner) VALUES (%s, %s, %s)",
                [(ROOM, OWNER, 1), (ROOM, PAYER, 0)],
            )
        conn.commit()
        _open_request(url)
        yield url
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def _open_request(url: str) -> None:
    """Through the real handler, in this process (which is not measured)."""
    from escrow.config import LOCAL_JWT_SECRET, reset_settings
    from tests.support.events import Context, http_event, token
    from tests.support.functions import load_function

    changes = {"DATABASE_URL": url, "APP_ENV": "local", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    previous = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    reset_settings()
    try:
        event = http_event(
            "POST", "/api/v1/payment/request", body={"chat_room_id": ROOM, "store_id": "bench_store", "amount": 15000}
        )
        event["headers"]["authorization"] = f"Bearer {token(OWNER, secret=LOCAL_JWT_SECRET)}"
        with contextlib.redirect_stdout(io.StringIO()):  # the handler's metrics line
            result = load_function("request").lambda_handler(event, Context())
        if result["statusCode"] != 201:
            raise RuntimeError(f"could not open the bench request: {result}")
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()


@contextmanager
def secrets_extension(url: str, latency_ms: float = 0.0) -> Any:
    """local.secrets_extension in its own process, holding the database, JWT and Toss secrets."""
    from escrow.config import parse_database_url

    p = parse_database_url(url)
    db = {"host": p.host, "port": p.port, "username": p.user, "password": p.password, "dbname": p.database}
    toss = {"secret_key": "test_sk_bench", "security_key": "ab" * 32}
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.setdefault(key, "testing")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.secrets_extension",
            "--token",
            SESSION_TOKEN,
            "--secret",
            f"escrow/db={json.dumps(db)}",
            "--secret",
            f"escrow/jwt={DEPLOYED_JWT_KEY}",
            "--secret",
            f"escrow/toss={json.dumps(toss)}",
            "--latency-ms",
            str(latency_ms),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        yield started["port"], started["arns"]
    finally:
        proc.terminate()
        proc.wait(10)


def deployed_env(env: dict[str, str], port: int, arns: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "APP_ENV": "dev",  # a deployed stage (no local defaults for keys)
        "DB_TLS": "disabled",  # the bench's MariaDB has no TLS; deployed, the TLS handshake comes on top
        "AWS_LAMBDA_FUNCTION_NAME": "bench",  # on Lambda: secrets from the extension
        "DB_SECRET_ARN": arns["escrow/db"],
        "JWT_SECRET_ARN": arns["escrow/jwt"],
        "TOSS_SECRET_ARN": arns["escrow/toss"],
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": str(port),
    }


def main(argv: list[str] | None = None) -> int:
    from escrow.config import LOCAL_JWT_SECRET

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--layer", type=Path, help="a built layer's python/ folder (default: the SAM build or source)")
    parser.add_argument("--no-bytecode", action="store_true", help="add local mode without precompiled bytecode")
    parser.add_argument(
        "--secrets-latency-ms",
        type=float,
        default=0.0,
        help="deployed mode: add this to each of the extension's answers (a Secrets Manager round trip; default 0)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each probe's instructions under valgrind's callgrind (repeatable on a busy machine)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    built = ROOT / ".aws-sam/build/CommonLayer/python"
    layer = args.layer or (built if built.exists() else ROOT / "layers/common")
    started = time.monotonic()
    print(
        f"cold start including the first request, median of {args.runs} fresh interpreters "
        f"(Python {sys.version.split()[0]}), layer: {layer}"
        + ("" if layer != ROOT / "layers/common" else " (source tree: run `sam build` for the layer's bytecode)"),
        flush=True,
    )
    env = base_env(layer)
    figures: dict[str, Any] = {"modes": {}, "imports": {}}
    with (
        bench_database() as url,
        secrets_extension(url, args.secrets_latency_ms) as (port, arns),
        tempfile.TemporaryDirectory() as empty,
    ):
        modes: dict[str, tuple[dict[str, str], str]] = {
            "local": ({**env, "APP_ENV": "local", "DATABASE_URL": url}, LOCAL_JWT_SECRET),
            "deployed": (deployed_env(env, port, arns), DEPLOYED_JWT_KEY),
        }
        if args.no_bytecode:
            modes["local, no bytecode"] = (no_bytecode(modes["local"][0], empty), LOCAL_JWT_SECRET)
        for mode, (mode_env, jwt_key) in modes.items():
            figures["modes"][mode] = measure_mode(mode_env, args.runs, jwt_key)
            if args.instructions and mode != "local, no bytecode":
                figures["modes"][mode]["instructions"] = count_instructions(mode_env, jwt_key)
        base = (
            _child(_PROBE_IMPORT.format(body="pass"), env, instructions=True)["instructions"]
            if args.instructions
            else 0
        )
        for label, body in IMPORTS.items():
            figures["imports"][label] = {
                "bytecode": measure_import(body, env, args.runs),
                "no bytecode": measure_import(body, no_bytecode(env, empty), args.runs),
            }
            if args.instructions:
                counted = _child(_PROBE_IMPORT.format(body=body), {**env, "PYTHONHASHSEED": "0"}, instructions=True)
                figures["imports"][label]["instructions"] = counted["instructions"] - base
    LAST_FIGURES.clear()
    LAST_FIGURES.update(figures)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print_tables(figures)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"({time.monotonic() - started:.0f} s; load average at the end {load} on {os.cpu_count()} CPUs)")
    return 0


def print_tables(figures: dict[str, Any]) -> None:
    labels = {req.function: f"{req.function}: {req.label}" for req in FIRST_REQUESTS}
    for mode, data in figures["modes"].items():
        boto = data["boto3"]
        print(f"\n{mode} mode: import + init, first request, total (medians), and the median of each round's ratio")
        counted = data.get("instructions")
        extra = f"{'instructions':>15}{'x boto3':>9}" if counted else ""
        print(f"  {'':34}{'init':>10}{'first req':>11}{'total':>10}{'x boto3':>9}{extra}")
        extra = f"{counted['boto3'] / 1e6:>13.0f} M{1:>8.2f}x" if counted else ""
        print(f"  {'bare import boto3':34}{boto:>7.1f} ms{'':>11}{boto:>7.1f} ms{1:>8.2f}x{extra}")
        worst = 0.0
        for function, row in data["functions"].items():
            ratio = row["ratio"]  # the median of each round's own ratio
            worst = max(worst, ratio)
            extra = ""
            if counted:
                c = counted["functions"][function]
                extra = f"{c['instructions'] / 1e6:>13.0f} M{c['ratio']:>8.2f}x"
            print(
                f"  {labels[function]:34}{row['init']:>7.1f} ms{row['first']:>8.1f} ms{row['total']:>7.1f} ms"
                f"{ratio:>8.2f}x{extra}"
            )
        print(f"  slowest function: {worst:.2f}x a bare import boto3 (time)", end="")
        if counted:
            print(f", {max(c['ratio'] for c in counted['functions'].values()):.2f}x (instructions)", end="")
        print()
    print("\nimport cost of Powertools' event handler (fresh interpreter, median):")
    counted = all("instructions" in row for row in figures["imports"].values())
    head = f"{'instructions':>15}" if counted else ""
    print(f"  {'':48}{'bytecode':>12}{'no bytecode':>14}{head}")
    previous: dict[str, float] | None = None
    for label, row in figures["imports"].items():
        extra = f"{row['instructions'] / 1e6:>13.0f} M" if counted else ""
        if previous is not None:
            more = (row["bytecode"] - previous["bytecode"], row["no bytecode"] - previous["no bytecode"])
            extra += f"   (+{more[0]:.1f} / +{more[1]:.1f} ms"
            extra += f", +{(row['instructions'] - previous['instructions']) / 1e6:.0f} M)" if counted else ")"
        print(f"  {label:48}{row['bytecode']:>9.1f} ms{row['no bytecode']:>11.1f} ms{extra}")
        previous = row


if __name__ == "__main__":
    sys.exit(main())
