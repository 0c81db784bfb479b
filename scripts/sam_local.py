"""Run the functions in real Lambda containers: every file in events/ through ``sam local invoke`` and the README
walkthrough through ``sam local start-api``, then print what each call answered.

    make sam-local                               (= .venv/bin/python scripts/sam_local.py)
    .venv/bin/python scripts/sam_local.py --serve [--port 3000]

Setup (idempotent; each step says why it is needed):
  1. scripts/sam-local-engine.sh up: Debian's docker.io, a dockerd of our own, and the Lambda Python 3.11 base
     image built locally (no registry is reachable here); prints DOCKER_HOST and the docker0 gateway address.
  2. The MySQL user and database named in local/env.docker.json's DATABASE_URL, created afresh for each run, then
     migrated and seeded with the README's demo room (``python -m escrow.migrate``, ``python -m escrow.seed_demo``).
     Containers cannot log in as root without a password; this user can, from the forwarder below only.
  3. A forwarder (socat) from the docker0 gateway to MariaDB: MariaDB listens on 127.0.0.1 only, and a container's
     127.0.0.1 is its own. The Toss sandbox is started bound to the gateway address itself.
  4. ``sam build`` (the layer with its precompiled bytecode, as deployed).

Then two phases, each on a freshly migrated and seeded database and a fresh sandbox:
  - invoke: each event file through ``sam local invoke <LogicalId>``; the function is the one whose route (or
    schedule) in template.yaml matches the event. Events get a fresh JWT for the user who would send them, fresh
    webhook signatures, and the ids that earlier steps created (an initiate confirms the order prepared before),
    in an order that makes each answer meaningful. The Toss sandbox plays the payment widget and Toss's side.
  - start-api: the README walkthrough over HTTP against ``sam local start-api``; the sandbox sends its real
    webhooks to that API, and each delivery's answer is checked too.

Every call has an expected status and, where it matters, expected fields (the state reached, the money settled:
30,000 KRW gross, 900 fee, 29,100 net); any other answer makes the run exit 1. The table lists function, event,
expected and actual status, the wall time of the call and (for invoke) the duration Lambda's emulator reported.
Cleanup: start-api is stopped, Lambda containers this run left are removed (label sam.cli.container.type=lambda),
the forwarder and the sandbox are stopped. dockerd keeps running for the next run (engine script ``down`` stops it).

The local flags (skip_pull_image, add_host, warm_containers, env_vars) come from samconfig.toml; the run passes
only an env-vars file derived from local/env.docker.json with the ports actually used.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import jwt
import pymysql
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("SAM_LOCAL_HOME", Path.home() / ".cache" / "escrow-sam-local"))
SAM_VENV = Path(os.environ.get("SAM_VENV", Path.home() / ".cache" / "escrow-sam-venv"))
ENV_FILE = ROOT / "local" / "env.docker.json"
EVENTS = ROOT / "events"
BUILT_TEMPLATE = ROOT / ".aws-sam" / "build" / "template.yaml"
# MariaDB as the machine's administrator reaches it (the README's default: root without a password).
MYSQL_ADMIN_URL = os.environ.get("SAM_LOCAL_MYSQL_ADMIN_URL", "mysql://root:@127.0.0.1:3306")
KST = timezone(timedelta(hours=9))
WEBHOOK_PATH = "/api/v1/payment/webhook"
INVOKE_TIMEOUT = 180  # seconds for one `sam local invoke` (the first one also builds SAM's image)


def say(message: str) -> None:
    print(f"sam-local: {message}", file=sys.stderr, flush=True)


class Failed(Exception):
    """The run cannot go on (setup failed, or an answer that later steps depend on was wrong)."""


# --- processes --------------------------------------------------------------------------------------------------


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    log: Path | None = None,
) -> str:
    """Run a command of ours to completion and return its stdout. With `log`, its stdout and stderr go there (and
    the end of it is shown when it fails); without, its stderr goes to ours."""
    done = subprocess.run(  # noqa: S603 - our own commands, no shell
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if log else None,
        text=True,
        timeout=timeout,
        check=False,
    )
    if log is not None:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(command)}\n{done.stdout}\n")
    if check and done.returncode != 0:
        where = f" (log {log}):\n" + "\n".join(done.stdout.splitlines()[-30:]) if log else ""
        raise Failed(f"{' '.join(command[:4])} ... exited {done.returncode}{where}")
    return done.stdout


@dataclass
class Background:
    """A process this run started; stopped by its own pid, never by name."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            say(f"{self.name} (pid {self.process.pid}) ignored SIGTERM for {grace:g} s; killing it")
            self.process.kill()
            self.process.wait(10)


PIDS = HOME / "pids.json"  # the background processes of the current run, by pid and command line


def start_background(name: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> Background:
    handle = log.open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own commands, no shell
        command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    handle.close()
    started = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    started[str(process.pid)] = command
    PIDS.write_text(json.dumps(started))
    return Background(name, process, log)


def stop_leftovers() -> None:
    """A run that was killed (SIGKILL) could not stop its forwarder or sandbox: stop them now, by the pids it
    recorded, and only when the process with that pid still runs the recorded command."""
    if not PIDS.exists():
        return
    for pid, command in json.loads(PIDS.read_text()).items():
        try:
            running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if [part.decode(errors="replace") for part in running] == command:
            say(f"stopping pid {pid} left by an earlier run: {' '.join(command)[:100]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
    PIDS.unlink()


def interrupted(_signum: int, _frame: Any) -> None:
    """SIGTERM (a CI job cancelled) ends the run through the same cleanup as Ctrl-C."""
    raise KeyboardInterrupt


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, preferred: int | None = None) -> int:
    if preferred and port_is_free(host, preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], timeout: float, process: Background | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.process.poll() is not None:
            tail = process.log.read_text(errors="replace").splitlines()[-20:]
            raise Failed(f"{process.name} exited ({process.process.returncode}) before {what}:\n" + "\n".join(tail))
        time.sleep(0.2)
    raise Failed(f"{what}: not within {timeout:g} s")


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- the template, the env file, tokens and signatures -----------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """Reads template.yaml's CloudFormation tags (!Ref, !Sub, ...) as plain values; only Events are read."""


_CfnLoader.add_multi_constructor("!", lambda loader, _suffix, node: None)


def function_for(template: dict[str, Any], event: dict[str, Any]) -> str:
    """The logical id of the function template.yaml routes this event to (HTTP route, or the schedule's source)."""
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for spec in ((resource.get("Properties") or {}).get("Events") or {}).values():
            props = spec.get("Properties") or {}
            if spec.get("Type") == "HttpApi" and "routeKey" in event:
                if f"{str(props.get('Method')).upper()} {props.get('Path')}" == event["routeKey"]:
                    return str(logical_id)
            elif spec.get("Type") in ("ScheduleV2", "Schedule") and "routeKey" not in event:
                scheduled = json.loads(props.get("Input") or "{}")
                if scheduled.get("source") == event.get("source"):
                    return str(logical_id)
            elif spec.get("Type") == "EventBridgeRule" and "detail-type" in event:
                # The rule's pattern names the detail-type (its source is a parameter: the chat service's).
                if event["detail-type"] in ((props.get("Pattern") or {}).get("detail-type") or []):
                    return str(logical_id)
    raise Failed(f"no function in template.yaml takes {event.get('routeKey') or event.get('source')!r}")


@dataclass
class Settings:
    """local/env.docker.json, with where things are this run."""

    values: dict[str, str]
    db_user: str
    db_password: str
    db_name: str
    db_port: int
    toss_port: int

    @classmethod
    def load(cls) -> Settings:
        values = json.loads(ENV_FILE.read_text(encoding="utf-8"))["Parameters"]
        db = urlparse(values["DATABASE_URL"])
        toss = urlparse(values["TOSS_API_BASE"])
        if not (db.username and db.path.strip("/")):
            raise Failed(f"{ENV_FILE.name}: DATABASE_URL needs a user and a database")
        return cls(
            values=values,
            db_user=unquote(db.username),
            db_password=unquote(db.password or ""),
            db_name=db.path.strip("/"),
            db_port=db.port or 3306,
            toss_port=toss.port or 80,
        )

    def write(self, path: Path, db_port: int, toss_port: int) -> None:
        """The env-vars file for this run: the same settings, with the forwarder's and the sandbox's ports."""
        values = dict(self.values)
        user, password = quote(self.db_user, safe=""), quote(self.db_password, safe="")
        values["DATABASE_URL"] = f"mysql://{user}:{password}@host.docker.internal:{db_port}/{self.db_name}"
        values["TOSS_API_BASE"] = f"http://host.docker.internal:{toss_port}"
        path.write_text(json.dumps({"Parameters": values}, indent=2), encoding="utf-8")

    def token(self, user_id: str, *, admin: bool = False) -> str:
        """A token the functions accept (HS256 with JWT_SECRET; the user in sub and user_id; admin by role)."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "user_id": user_id, "iat": now, "exp": now + 900}
        if admin:
            claims[self.values.get("ADMIN_ROLE_CLAIM") or "role"] = self.values.get("ADMIN_ROLE") or "admin"
        for claim, name in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")):
            if self.values.get(name):
                claims[claim] = self.values[name]
        return jwt.encode(claims, self.values["JWT_SECRET"], algorithm="HS256")

    def sign_webhook(self, body: str, sent: str) -> str:
        """Toss's payout.changed / seller.changed signature: HMAC-SHA256 of `{body}:{transmission time}`."""
        key_text = self.values["TOSS_SECURITY_KEY"]
        encoding = self.values.get("TOSS_WEBHOOK_HMAC_KEY_ENCODING") or "hex"
        key = bytes.fromhex(key_text) if encoding == "hex" else key_text.encode()
        digest = hmac.new(key, body.encode() + b":" + sent.encode(), hashlib.sha256).digest()
        return "v1:" + base64.b64encode(digest).decode()


# --- MySQL, the forwarder, the sandbox, SAM ---------------------------------------------------------------------


def admin_connection() -> pymysql.connections.Connection[Any]:
    url = urlparse(MYSQL_ADMIN_URL)
    return pymysql.connect(
        host=url.hostname or "127.0.0.1",
        port=url.port or 3306,
        user=unquote(url.username or "root"),
        password=unquote(url.password or ""),
        autocommit=True,
    )


def fresh_database(settings: Settings, log: Path) -> None:
    """Drop and create the run's own database, (re)create its user, migrate and seed it with the demo room."""
    name, user = settings.db_name, settings.db_user
    if name == "escrow" or not re.fullmatch(r"[A-Za-z0-9_]+", name) or not re.fullmatch(r"[A-Za-z0-9_]+", user):
        raise Failed(f"{ENV_FILE.name}: use a database and user of its own (plain names, not 'escrow')")
    connection = admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            # The forwarder connects from loopback, which MariaDB names 'localhost' or '127.0.0.1'. The user gets
            # this database only, and no host beyond this machine.
            for host in ("localhost", "127.0.0.1"):
                cursor.execute(f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY %s", (settings.db_password,))
                cursor.execute(f"ALTER USER '{user}'@'{host}' IDENTIFIED BY %s", (settings.db_password,))
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'{host}'")
    finally:
        connection.close()
    admin = urlparse(MYSQL_ADMIN_URL)
    user_q, password_q = quote(user, safe=""), quote(settings.db_password, safe="")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}",
        # As the new user, over TCP, as the containers will log in (through the forwarder).
        "DATABASE_URL": f"mysql://{user_q}:{password_q}@{admin.hostname}:{admin.port or 3306}/{name}",
    }
    run([sys.executable, "-m", "escrow.migrate"], env=env, timeout=300, log=log)
    run([sys.executable, "-m", "escrow.seed_demo"], env=env, timeout=120, log=log)


def start_forwarder(gateway: int | str, port: int, logs: Path) -> Background:
    admin = urlparse(MYSQL_ADMIN_URL)
    target = f"TCP:{admin.hostname or '127.0.0.1'}:{admin.port or 3306}"
    # bind=<gateway>: reachable from containers (docker0) and from nothing beyond this machine.
    # fork: one child per connection (every container opens its own); reuseaddr: a rerun can bind at once.
    command = ["socat", f"TCP-LISTEN:{port},bind={gateway},fork,reuseaddr", target]
    forwarder = start_background("MySQL forwarder", command, logs / "forwarder.log")
    wait_until(f"the forwarder on {gateway}:{port}", lambda: accepts(str(gateway), port), 10, forwarder)
    return forwarder


class Sandbox:
    """The Toss sandbox (python -m toss_sandbox), bound to the docker0 gateway so containers reach it."""

    def __init__(self, host: str, port: int, logs: Path, webhook_url: str | None, tag: str) -> None:
        self.url = f"http://{host}:{port}"
        command = [sys.executable, "-m", "toss_sandbox", "--host", host, "--port", str(port), "--seed", "7"]
        # Toss's settlement cycle (days) compressed: a released payout is sent once its sales have settled.
        command += ["--settlement-delay-seconds", "1"]
        if webhook_url:
            # Retries a few seconds apart instead of Toss's minutes: the run waits for every delivery's outcome.
            command += ["--webhook-url", webhook_url, "--webhook-retry-delays", "2,4"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = start_background("Toss sandbox", command, logs / f"sandbox-{tag}.log", env=env)
        wait_until(f"the sandbox on {self.url}", lambda: accepts(host, port), 20, self.process)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = requests.request(method, self.url + path, json=body, timeout=30)
        if answer.status_code != 200:
            raise Failed(f"sandbox {method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json()

    def pay(self, order_id: str, amount: int) -> str:
        """The payer pays in the Toss widget: the sandbox authenticates the payment and gives its paymentKey."""
        return str(self.call("POST", "/sandbox/payments", {"orderId": order_id, "amount": amount})["paymentKey"])

    def settle_sales(self) -> None:
        """Wait for the settlement cycle: every sale so far is in the available payout balance."""
        wait_until(
            "the sales to settle",
            lambda: all(s["state"] == "available" for s in self.call("GET", "/sandbox/sales")["items"]),
            20,
            self.process,
        )

    def stop(self) -> None:
        self.process.stop()


def sam_environment(docker_host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        DOCKER_HOST=docker_host,
        SAM_CLI_TELEMETRY="0",
        AWS_DEFAULT_REGION="ap-northeast-2",
        AWS_REGION="ap-northeast-2",
        # SAM hands the caller's AWS credentials to the containers; these runs must never carry real ones.
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",  # noqa: S106 - a placeholder, not a secret
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    return env


def sam_cli(log: Path) -> Path:
    """The SAM CLI in its own virtual environment (it pins its own pydantic and boto3), as scripts/sam-check.sh
    installs it."""
    sam = SAM_VENV / "bin" / "sam"
    if not sam.exists():
        say(f"installing the AWS SAM CLI into {SAM_VENV} (one time, about 1-2 min)")
        run([sys.executable, "-m", "venv", str(SAM_VENV)], log=log)
        pip = [str(SAM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run([*pip, "--upgrade", "pip"], log=log)
        run([*pip, "aws-sam-cli"], timeout=900, log=log)
    return sam


def lambda_containers(docker_host: str) -> set[str]:
    docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"
    out = run(
        [docker, "-H", docker_host, "ps", "-aq", "--filter", "label=sam.cli.container.type=lambda"],
        check=False,
        timeout=30,
    )
    return set(out.split())


def remove_containers(docker_host: str, ids: set[str]) -> None:
    if ids:
        docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"
        run([docker, "-H", docker_host, "rm", "-f", *sorted(ids)], check=False, timeout=60)


# --- the calls and the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    function: str
    event: str
    expected: str
    got: str
    ms: float
    lambda_ms: str = ""
    note: str = ""
    unmet: str = ""  # a field of the answer that is not what it must be

    @property
    def ok(self) -> bool:
        return self.got == self.expected and not self.unmet


@dataclass
class Answer:
    status: str  # the HTTP status code, "ok" for a non-HTTP result, "error" when the function raised
    body: Any
    ms: float
    lambda_ms: str = ""
    log: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        mark = "ok " if row.ok else "BAD"
        says = f"{row.note} {'(UNEXPECTED ' + row.unmet + ')' if row.unmet else ''}"
        say(f"{mark} {row.phase:9} {row.function:16} {row.event:36} {row.got:>5} (expected {row.expected}) {says}")

    def table(self) -> str:
        head = ("#", "phase", "function", "event", "expected", "status", "ms", "lambda ms", "note")
        lines = [
            (
                str(i),
                r.phase,
                r.function,
                r.event,
                r.expected,
                r.got,
                f"{r.ms:.0f}",
                r.lambda_ms,
                f"UNEXPECTED: {r.unmet}" if r.unmet else r.note,
            )
            for i, r in enumerate(self.rows, 1)
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
        right = {0, 4, 5, 6, 7}

        def fmt(cells: tuple[str, ...]) -> str:
            padded = (
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            return "  ".join(padded).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(head), rule, *(fmt(line) for line in lines)])


def body_of(result: Any) -> Any:
    if isinstance(result, dict) and isinstance(result.get("body"), str):
        with contextlib.suppress(ValueError):
            return json.loads(result["body"])
    return result if not isinstance(result, dict) else result.get("body", result)


def unmet(body: Any, want: dict[str, Any] | None) -> str:
    """The first field of the answer (a dotted path) that differs from what the step must produce, else ''."""
    for path, value in (want or {}).items():
        actual: Any = body
        for part in path.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if actual != value:
            return f"{path} is {actual!r}, not {value!r}"
    return ""


def note(body: Any) -> str:
    """What the answer says, in a few words (the error code, the state reached, the ids made)."""
    if not isinstance(body, dict):
        return str(body)[:80] if body else ""
    error = body.get("error")
    if isinstance(error, dict) and error.get("code"):
        return str(error["code"])
    if isinstance(body.get("payment_request"), dict):
        request = body["payment_request"]
        paid = f"request {request.get('status')}, paid {request.get('paid_count')}/{len(body.get('payments') or [])}"
        settlement = body.get("settlement")
        return paid + (f", payout {settlement.get('payout_status')}" if isinstance(settlement, dict) else "")
    if isinstance(body.get("settlement"), dict):
        s = body["settlement"]
        released = len(body.get("released_payments") or [])
        money = f"fee {s.get('platform_fee')}, net {s.get('net_amount')}"
        return f"{released} released, {money}, payout {s.get('payout_status')}"
    for job, keys in (  # a scheduled run's report
        ("publish", ("events_published", "events_failed")),
        ("sellers", ("sellers_registered", "seller_calls")),
        ("payouts", ("payouts_requested", "payout_calls")),
    ):
        if isinstance(body.get(job), dict):
            return ", ".join(f"{k} {body[job].get(k)}" for k in keys)
    if "orderId" in body and "payment_status" not in body:
        return f"orderId {body['orderId']}, {body.get('amount')} KRW"
    for key in ("payment_status", "refund_status", "status", "registration_status", "seller_status"):
        if isinstance(body.get(key), str):
            return f"{key} {body[key]}"
    return ""


class Invoker:
    """`sam local invoke` with prepared events; the flags not given here come from samconfig.toml."""

    def __init__(self, sam: Path, env: dict[str, str], env_file: Path, events_dir: Path, template: dict[str, Any]):
        self.sam, self.env, self.env_file, self.events_dir, self.template = sam, env, env_file, events_dir, template
        self.count = 0

    def __call__(self, event_file: str, event: dict[str, Any]) -> tuple[str, Answer]:
        logical_id = function_for(self.template, event)
        self.count += 1
        path = self.events_dir / f"{self.count:02d}-{event_file}"
        path.write_text(json.dumps(event, ensure_ascii=False, indent=2), encoding="utf-8")
        # No --template: SAM then takes .aws-sam/build/template.yaml and reads samconfig.toml from the project
        # (with --template it looks for samconfig.toml beside the given template, in .aws-sam/build).
        command = [str(self.sam), "local", "invoke", logical_id, "--event", str(path), "--env-vars", str(self.env_file)]
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - the SAM CLI, no shell
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=INVOKE_TIMEOUT, check=False
        )
        ms = (time.monotonic() - started) * 1000
        log = done.stderr
        (self.events_dir / f"{self.count:02d}-{event_file}.log").write_text(log + done.stdout, encoding="utf-8")
        duration = re.findall(r"REPORT RequestId: \S+\s+(?:Init Duration: [\d.]+ ms\s+)?Duration: ([\d.]+) ms", log)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        result: Any = None
        if lines:
            with contextlib.suppress(ValueError):
                result = json.loads(lines[-1])
        if done.returncode != 0 or result is None:
            status = f"exit{done.returncode}" if done.returncode else "none"
            return logical_id, Answer(status, done.stdout[-500:], ms, log=log)
        if isinstance(result, dict) and "errorType" in result:
            return logical_id, Answer("error", result, ms, duration[-1] if duration else "", log)
        if isinstance(result, dict) and "statusCode" in result:
            status = str(result["statusCode"])
            return logical_id, Answer(status, body_of(result), ms, f"{float(duration[-1]):.0f}" if duration else "")
        return logical_id, Answer("ok", result, ms, f"{float(duration[-1]):.0f}" if duration else "")


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


def refreshed(event: dict[str, Any], *, token: str | None = None, body: Any = None) -> dict[str, Any]:
    """The event as it would arrive now: a new request id and time, a fresh token, and the given body."""
    event = json.loads(json.dumps(event))
    now = time.time()
    context = event.get("requestContext")
    if isinstance(context, dict):
        context["requestId"] = uuid.uuid4().hex[:16]
        context["timeEpoch"] = int(now * 1000)
        context["time"] = datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    headers = event.setdefault("headers", {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        event["isBase64Encoded"] = False
        headers["content-length"] = str(len(event["body"].encode()))
    return event


def event_body(event: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.get("body") or "{}")
    return body


def kst_now() -> str:
    return datetime.now(KST).isoformat(timespec="seconds")


# --- phase 1: every event through sam local invoke ----------------------------------------------------------------


def invoke_phase(invoke: Invoker, settings: Settings, sandbox: Sandbox, report: Report) -> None:
    used: set[str] = set()

    def step(event_file: str, expected: str, event: dict[str, Any], want: dict[str, Any] | None = None) -> Any:
        used.add(event_file)
        function, answer = invoke(event_file, event)
        row = Row("invoke", function, event_file, expected, answer.status, answer.ms, answer.lambda_ms)
        row.note = note(answer.body)
        row.unmet = unmet(answer.body, want) if answer.status == expected else ""
        report.add(row)
        if not row.ok:
            tail = "\n".join(answer.log.splitlines()[-15:])
            raise Failed(f"{event_file}: {answer.status} {row.unmet}, expected {expected}: {answer.body!r}\n{tail}")
        return answer.body

    owner, admin = settings.token("user_1"), settings.token("ops", admin=True)
    payer2, payer3 = settings.token("user_2"), settings.token("user_3")

    def scheduled(jobs: list[str]) -> None:
        """A run of the schedule's jobs, as EventBridge Scheduler invokes the release function."""
        event = load_event("schedule.json")
        event.update(jobs=jobs, scheduled_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        step("schedule.json", "ok", event)

    # Round 1: the store's payout account (answered at once; the schedule's sellers job registers it with Toss), a
    # request, both participants pay, release (the decision), the payout (the schedule's), completed.
    step(
        "store_register.json",
        "202",
        refreshed(load_event("store_register.json"), token=admin),
        {"registration_status": "pending"},
    )
    scheduled(["sellers"])
    store = step(
        "store_get.json",
        "200",
        refreshed(load_event("store_get.json"), token=admin),
        {"registration_status": "registered", "seller_status": "APPROVAL_REQUIRED"},
    )
    seller_id = store["seller_id"]
    sandbox.call("POST", f"/sandbox/sellers/{seller_id}/status", {"status": "APPROVED"})  # KYC done at Toss
    pending, paid = {"status": "pending"}, {"payment_status": "completed"}
    created = step("request_create.json", "201", refreshed(load_event("request_create.json"), token=owner), pending)
    request_id = created["payment_request_id"]
    step(
        "status.json",
        "200",
        refreshed(load_event("status.json"), token=payer2),
        {"payment_request.status": "pending", "payment_request.paid_count": 0},
    )

    prepared = step("prepare.json", "200", refreshed(load_event("prepare.json"), token=payer2), {"amount": 15000})
    key2 = sandbox.pay(prepared["orderId"], prepared["amount"])
    initiate = load_event("initiate.json")
    body = {**event_body(initiate), "orderId": prepared["orderId"], "paymentKey": key2}
    step("initiate.json", "200", refreshed(initiate, token=payer2, body=body), paid)

    confirm = load_event("confirm.json")  # user_3 pays with an orderId of the client's own (bound on first use)
    body = event_body(confirm)
    key3 = sandbox.pay(body["orderId"], body["amount"])
    step("confirm.json", "200", refreshed(confirm, token=payer3, body={**body, "paymentKey": key3}), paid)

    hook = load_event("webhook_payment_status_changed.json")  # unsigned: a trigger to fetch the payment from Toss
    payload = event_body(hook)
    payload["data"].update(paymentKey=key3, orderId=body["orderId"])
    hook = refreshed(hook, body=payload)
    hook["headers"].update(
        {
            "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}",
            "tosspayments-webhook-transmission-time": kst_now(),
        }
    )
    step("webhook_payment_status_changed.json", "200", hook, {"status": "processed"})

    # Both shares of 15,000 KRW, a 3% platform fee (PLATFORM_FEE_BPS 300), the net paid out to the store.
    money = {"settlement.gross_amount": 30000, "settlement.platform_fee": 900, "settlement.net_amount": 29100}
    step(
        "release.json",
        "200",
        refreshed(load_event("release.json"), token=owner),
        {**money, "settlement.payout_status": "scheduled"},
    )
    sandbox.settle_sales()  # Toss's settlement cycle: the card sales become the available payout balance
    scheduled(["payouts"])
    settlement = step(
        "status.json",
        "200",
        refreshed(load_event("status.json"), token=payer2),
        {"payment_request.status": "released", "settlement.payout_status": "in_progress"},
    )["settlement"]
    sandbox.call("POST", f"/sandbox/payouts/{settlement['payout_id']}/complete", {"status": "COMPLETED"})

    hook = load_event("webhook_payout_changed.json")  # signed: the signature is made for this body and time
    payload = event_body(hook)
    payload["eventId"] = f"evt_{uuid.uuid4().hex}"
    payload["createdAt"] = kst_now()
    payload["entityBody"].update(
        id=settlement["payout_id"],
        refPayoutId=settlement["ref_payout_id"],
        destination=seller_id,
        payoutDate=datetime.now(KST).date().isoformat(),
        amount={"currency": "KRW", "value": float(settlement["net_amount"])},
        status="COMPLETED",
        metadata={"payment_request_id": str(request_id)},
    )
    hook = refreshed(hook, body=payload)
    sent = kst_now()
    hook["headers"].update(
        {
            "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}",
            "tosspayments-webhook-transmission-time": sent,
            "tosspayments-webhook-signature": settings.sign_webhook(hook["body"], sent),
        }
    )
    step("webhook_payout_changed.json", "200", hook, {"status": "processed"})

    schedule = load_event("schedule.json")
    schedule["scheduled_time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    step("schedule.json", "ok", schedule)

    # Round 2: a new request in the same room (the released one no longer holds it); user_2 pays, asks for the
    # money back, and the owner cancels the whole request.
    step("request_create.json", "201", refreshed(load_event("request_create.json"), token=owner), pending)
    prepared = step("prepare.json", "200", refreshed(load_event("prepare.json"), token=payer2), {"amount": 15000})
    key2 = sandbox.pay(prepared["orderId"], prepared["amount"])
    initiate = load_event("initiate.json")
    body = {**event_body(initiate), "orderId": prepared["orderId"], "paymentKey": key2}
    step("initiate.json", "200", refreshed(initiate, token=payer2, body=body), paid)
    cancel = load_event("cancel.json")
    body = {**event_body(cancel), "paymentKey": key2}
    step("cancel.json", "200", refreshed(cancel, token=payer2, body=body), {"refund_status": "refunded"})
    # The chat service sends the room's membership (a service token, then its event); the owner takes user_3 out of
    # the request (nothing paid: nothing to refund) and adds them back.
    step(
        "room_members_put.json",
        "200",
        refreshed(load_event("room_members_put.json"), token=admin),
        {"applied": True, "owner_id": "user_1"},
    )
    step("membership_changed.json", "ok", load_event("membership_changed.json"), {"applied": True})
    step(
        "participant_remove.json",
        "200",
        refreshed(load_event("participant_remove.json"), token=owner),
        {"payment_status": "removed", "refund_status": "not_needed"},
    )
    step(
        "participant_add.json",
        "201",
        refreshed(load_event("participant_add.json"), token=owner),
        {"payment_status": "pending"},
    )
    step(
        "cancel_room.json",
        "200",
        refreshed(load_event("cancel_room.json"), token=owner),
        {"success": True, "payment_request_status": "cancelled"},
    )

    missing = sorted(p.name for p in EVENTS.glob("*.json") if p.name not in used)
    if missing:
        raise Failed(f"events/ has files this run does not know how to use: {', '.join(missing)}")


# --- phase 2: the README walkthrough through sam local start-api -------------------------------------------------


def api_phase(
    api: str, settings: Settings, sandbox: Sandbox, template: dict[str, Any], report: Report, invoke: Invoker
) -> None:
    def call(
        method: str,
        path: str,
        user: str,
        expected: str,
        body: Any = None,
        want: dict[str, Any] | None = None,
        *,
        admin: bool = False,
    ) -> Any:
        route = f"{method} {path}"
        for param in re.findall(r"/(\d+)(?=/|$)", path):
            route = route.replace(f"/{param}", "/{chatRoomId}")
        route = re.sub(r"^GET /api/v1/admin/stores/[^/]+$", "GET /api/v1/admin/stores/{storeId}", route)
        function = function_for(template, {"routeKey": route})
        headers = {"authorization": f"Bearer {settings.token(user, admin=admin)}"}
        started = time.monotonic()
        answer = requests.request(method, api + path, json=body, headers=headers, timeout=60)
        ms = (time.monotonic() - started) * 1000
        try:
            payload: Any = answer.json()
        except ValueError:
            payload = answer.text[:200]
        got = str(answer.status_code)
        row = Row("start-api", function, f"{method} {path} ({user})", expected, got, ms, note=note(payload))
        row.unmet = unmet(payload, want) if got == expected else ""
        report.add(row)
        if not row.ok:
            raise Failed(f"{method} {path}: {got} {row.unmet}, expected {expected}: {payload!r}")
        return payload

    store = {
        "store_id": "store_123",
        "owner_id": "store_owner_1",
        "bank_code": "88",
        "account_number": "1234567890123",
        "holder_name": "홍길동",
        "business_type": "INDIVIDUAL",
        "email": "owner@example.com",
        "phone": "01012345678",
    }

    def scheduled(jobs: list[str]) -> None:
        """The schedule's run of these jobs (the release function, invoked as EventBridge Scheduler does)."""
        event = load_event("schedule.json")
        event.update(jobs=jobs, scheduled_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        function, answer = invoke("schedule.json", event)
        row = Row("invoke", function, f"schedule.json {jobs}", "ok", answer.status, answer.ms, answer.lambda_ms)
        row.note = note(answer.body)
        report.add(row)
        if not row.ok:
            raise Failed(f"schedule {jobs}: {answer.status}: {answer.body!r}")

    call("POST", "/api/v1/admin/stores", "ops", "202", store, {"registration_status": "pending"}, admin=True)
    scheduled(["sellers"])
    registered = {"registration_status": "registered", "seller_status": "APPROVAL_REQUIRED"}
    seller = call("GET", "/api/v1/admin/stores/store_123", "ops", "200", want=registered, admin=True)["seller_id"]
    request = {"chat_room_id": 123, "store_id": "store_123", "amount": 15000, "message": "예약금 요청합니다."}
    call("POST", "/api/v1/payment/request", "user_1", "201", request, {"status": "pending"})
    status = "/api/v1/payment/status/123"
    call("GET", status, "user_3", "200", want={"payment_request.status": "pending", "payment_request.paid_count": 0})
    keys = {}
    for payer in ("user_2", "user_3"):
        order = call("POST", "/api/v1/payment/prepare", payer, "200", {"chat_room_id": 123}, {"amount": 15000})
        keys[payer] = sandbox.pay(order["orderId"], order["amount"])
        pay = {"chat_room_id": 123, "amount": order["amount"], "paymentKey": keys[payer], "orderId": order["orderId"]}
        pay["payment_method"] = "card"
        call("POST", "/api/v1/payment/initiate", payer, "200", pay, {"payment_status": "completed"})
    call("GET", status, "user_3", "200", want={"payment_request.status": "completed", "payment_request.paid_count": 2})
    sandbox.call("POST", f"/sandbox/sellers/{seller}/status", {"status": "APPROVED"})  # sends seller.changed
    money = {"settlement.gross_amount": 30000, "settlement.platform_fee": 900, "settlement.net_amount": 29100}
    release = {"chat_room_id": 123}
    call(
        "POST", "/api/v1/payment/release", "user_1", "200", release, {**money, "settlement.payout_status": "scheduled"}
    )
    sandbox.settle_sales()
    scheduled(["payouts"])
    paid = {"payment_request.status": "released", "settlement.payout_status": "in_progress"}
    payout_id = call("GET", status, "user_3", "200", want=paid)["settlement"]["payout_id"]
    sandbox.call("POST", f"/sandbox/payouts/{payout_id}/complete", {"status": "COMPLETED"})
    # Released money is not refunded any more: the README's cancel, after release, is refused.
    cancel = {"paymentKey": keys["user_2"], "cancelReason": "예약 취소되었습니다."}
    call("POST", "/api/v1/payment/cancel", "user_2", "409", cancel, {"error.code": "ALREADY_RELEASED"})

    # Every webhook the sandbox sent (payments DONE, seller.changed, payout.changed) must have been answered 200.
    webhook_function = function_for(template, {"routeKey": f"POST {WEBHOOK_PATH}"})
    deadline = time.monotonic() + 60
    while True:
        deliveries = sandbox.call("GET", "/sandbox/webhooks")["items"]
        if all(d["state"] != "pending" for d in deliveries) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected_types = {"PAYMENT_STATUS_CHANGED", "seller.changed", "payout.changed"}
    for delivery in deliveries:
        attempts = delivery.get("attempts") or []
        last = attempts[-1] if attempts else {}
        row = Row(
            "start-api",
            webhook_function,
            f"{delivery['eventType']} from the sandbox",
            "200",
            str(last.get("status") or delivery["state"]),
            float(last.get("durationMs") or 0),
            note=f"{delivery['state']} after {len(attempts)} attempt(s)",
        )
        report.add(row)
    seen = {d["eventType"] for d in deliveries}
    if not expected_types <= seen:
        raise Failed(f"the sandbox sent no {', '.join(sorted(expected_types - seen))} webhook")


# --- the run ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One run at a time on this machine: runs share the engine, the database user and the ports."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another sam-local run holds {lock_path}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def engine() -> tuple[str, str]:
    out = run(["bash", str(ROOT / "scripts" / "sam-local-engine.sh"), "up"], timeout=900)
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return found["DOCKER_HOST"], found["DOCKER_GATEWAY"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/sam_local.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="set up, then keep start-api running (Ctrl-C stops)")
    parser.add_argument("--port", type=int, default=3000, help="start-api port with --serve (default 3000)")
    parser.add_argument("--skip-build", action="store_true", help="use the existing .aws-sam/build")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    report = Report()
    timings: dict[str, float] = {}
    failure = ""
    with exclusive(HOME / "run.lock"):
        stop_leftovers()
        logs = HOME / "run"
        shutil.rmtree(logs, ignore_errors=True)
        (logs / "events").mkdir(parents=True)
        stack: list[Any] = []
        docker_host = ""
        before: set[str] = set()
        try:
            mark = time.monotonic()
            docker_host, gateway = engine()
            before = lambda_containers(docker_host)
            settings = Settings.load()
            sam = sam_cli(logs / "setup.log")
            sam_env = sam_environment(docker_host)
            fresh_database(settings, logs / "setup.log")
            db_port = free_port(gateway, settings.db_port)
            toss_port = free_port(gateway, settings.toss_port)
            stack.append(start_forwarder(gateway, db_port, logs))
            env_file = logs / "env.json"
            settings.write(env_file, db_port, toss_port)
            say(
                f"engine {docker_host}; containers reach MariaDB at {gateway}:{db_port} (socat) and the sandbox at "
                f"{gateway}:{toss_port}; database {settings.db_name} as {settings.db_user}"
            )
            if not args.skip_build:
                say("sam build")
                run([str(sam), "build"], env=sam_env, timeout=900, log=logs / "setup.log")
            template = yaml.load(BUILT_TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506
            timings["setup"] = time.monotonic() - mark

            if args.serve:
                return serve(args.port, sam, sam_env, env_file, gateway, toss_port, logs, stack)

            mark = time.monotonic()
            sandbox = Sandbox(gateway, toss_port, logs, None, "invoke")
            stack.append(sandbox)
            invoker = Invoker(sam, sam_env, env_file, logs / "events", template)
            invoke_phase(invoker, settings, sandbox, report)
            sandbox.stop()
            timings["invoke"] = time.monotonic() - mark

            mark = time.monotonic()
            fresh_database(settings, logs / "setup.log")
            api_port = free_port("127.0.0.1")
            api = f"http://127.0.0.1:{api_port}"
            sandbox = Sandbox(gateway, toss_port, logs, api + WEBHOOK_PATH, "api")
            stack.append(sandbox)
            command = [str(sam), "local", "start-api", "--env-vars", str(env_file)]
            command += ["--host", "127.0.0.1", "--port", str(api_port)]
            start_api = start_background("sam local start-api", command, logs / "start-api.log", env=sam_env)
            stack.append(start_api)
            wait_until(f"start-api on {api}", lambda: accepts("127.0.0.1", api_port), 90, start_api)
            api_phase(api, settings, sandbox, template, report, invoker)
            timings["start-api"] = time.monotonic() - mark
        except Failed as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        finally:
            for part in reversed(stack):
                with contextlib.suppress(Exception):
                    part.stop()
            if docker_host:
                remove_containers(docker_host, lambda_containers(docker_host) - before)
            PIDS.unlink(missing_ok=True)

    total = time.monotonic() - started
    print(report.table())
    bad = [r for r in report.rows if not r.ok]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    verdict = "passed" if not failure and not bad else "FAILED"
    good = len(report.rows) - len(bad)
    print(f"sam-local {verdict}: {good} of {len(report.rows)} calls answered as expected in {total:.0f} s ({phases})")
    if failure:
        print(f"sam-local: stopped early: {failure}")
    print(f"sam-local: logs, and the events as they were sent: {logs}")
    return 0 if verdict == "passed" else 1


def serve(
    port: int,
    sam: Path,
    sam_env: dict[str, str],
    env_file: Path,
    gateway: str,
    toss_port: int,
    logs: Path,
    stack: list[Any],
) -> int:
    """start-api in the foreground on the demo data, with the sandbox sending its webhooks to it."""
    api = f"http://127.0.0.1:{port}"
    sandbox = Sandbox(gateway, toss_port, logs, api + WEBHOOK_PATH, "serve")
    stack.append(sandbox)
    print(f"API {api} (sam local start-api)   SANDBOX {sandbox.url}   Ctrl-C stops both", flush=True)
    command = [str(sam), "local", "start-api", "--env-vars", str(env_file), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=sam_env)  # noqa: S603 - the SAM CLI, no shell
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        return 0


if __name__ == "__main__":
    sys.exit(main())
