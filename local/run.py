"""The whole stack on one machine: ``PYTHONPATH=layers/common:. python -m local.run``.

1. applies the migrations (``python -m escrow.migrate``), 2. seeds demo data (``python -m escrow.seed_demo``),
3. starts the Toss sandbox (127.0.0.1:4010, webhooks to the local API), 4. starts the local HTTP API
(127.0.0.1:3000), 5. starts the scheduler (ReleaseFunction with events/schedule.json), then runs until
Ctrl-C or SIGTERM. Needs a MySQL/MariaDB at DATABASE_URL (default mysql://root:@127.0.0.1:3306/escrow).

The outbox is published to a local EventBridge bus (local/eventbus.py) that delivers the chat service's
notifications, as the template's rule and API destination do when deployed, to CHAT_WEBHOOK_URL (or
--chat-webhook-url), else to the reference chat client's feed (/demo/chat on the local API); --no-chat prints the
events to the log only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from local import REPO_ROOT
from local.template import DEFAULT_ENV_FILE, load_template

log = logging.getLogger("local.run")

WEBHOOK_PATH = "/api/v1/payment/webhook"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_environment(function_env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The environment for the migration and seed commands: the functions' settings, the process wins."""
    env = {**function_env, **os.environ, **overrides}
    layer = str(REPO_ROOT / "layers" / "common")
    parts = [layer, str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def run_step(title: str, module: str, env: dict[str, str]) -> bool:
    print(f"==> {title}: python -m {module}", flush=True)
    try:
        command = [sys.executable, "-m", module]  # our own modules, run with this interpreter
        completed = subprocess.run(  # noqa: S603
            command, env=env, cwd=REPO_ROOT, check=False, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        print(f"    {module} did not finish within 300 s", file=sys.stderr)
        return False
    for line in completed.stdout.splitlines():
        print(f"    {line}")
    if completed.returncode != 0:
        print(f"    {module} failed (exit {completed.returncode}):", file=sys.stderr)
        for line in (completed.stderr or "").strip().splitlines()[-30:]:
            print(f"    {line}", file=sys.stderr)
        return False
    return True


def start_chat_notifications(host: str, url: str, dlq: str | None) -> Any:
    """The local EventBridge bus with the template's notification rule, delivering to `url`."""
    from local.eventbus import LocalEventBus, api_destination_rules

    rules = api_destination_rules(url, api_key=os.environ.get("CHAT_WEBHOOK_API_KEY") or None)
    if not rules:
        raise OSError("template.yaml has no rule with an API destination target (ChatNotificationsRule)")
    return LocalEventBus(rules, host=host, dlq_path=dlq).start()


def eventbridge_overrides(bus_url: str) -> dict[str, str]:
    """Point the layer's EventBridge publisher (boto3) at the local bus; boto3 signs, so it needs some keys."""
    env = {"OUTBOX_PUBLISHER": "eventbridge", "AWS_ENDPOINT_URL_EVENTBRIDGE": bus_url}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        env.update({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"})
    return env


def banner(api_url: str, toss_url: str | None, schedule_interval: float, workers: int) -> str:
    lines = [
        "",
        "Escrow local stack is up (Ctrl-C to stop)",
        f"  API            {api_url}   ({workers} workers = warm Lambda containers)",
        f"  OpenAPI        {api_url}/openapi.json, Swagger UI {api_url}/swagger"
        if (REPO_ROOT / "openapi.json").exists()
        else None,
        f"  Chat client    {api_url}/demo/  (reference client; the room's notifications feed)",
        f"  Toss sandbox   {toss_url}"
        if toss_url
        else "  Toss sandbox   not started (--no-sandbox): TOSS_API_BASE=" + os.environ.get("TOSS_API_BASE", "?"),
        f"  Webhooks       {api_url}{WEBHOOK_PATH}",
        f"  Scheduler      ReleaseFunction every {schedule_interval:g} s"
        if schedule_interval > 0
        else "  Scheduler      off",
        "",
        "  Token:   TOKEN=$(PYTHONPATH=layers/common:. python -m local.jwt user_2)   (--admin for admin routes)",
        f'  Try:     curl -s -H "Authorization: Bearer $TOKEN" {api_url}/api/v1/payment/status/123',
        "  Invoke:  PYTHONPATH=layers/common:. python -m local.invoke request events/status.json --user user_2",
        "  Walkthrough: README.md, section on running locally",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


LOCAL_SETTLEMENT_SECONDS = 60.0  # the local sandbox's settlement cycle (Toss's is days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=3000)
    parser.add_argument("--toss-port", type=int, default=4010)
    parser.add_argument("--no-sandbox", action="store_true", help="use TOSS_API_BASE instead of starting one")
    parser.add_argument("--schedule-interval", type=float, default=60.0, help="seconds; 0 turns it off")
    parser.add_argument(
        "--settlement-seconds",
        type=float,
        default=LOCAL_SETTLEMENT_SECONDS,
        help="the sandbox's settlement cycle: a confirmed sale becomes available for payouts this long after it "
        "(Toss's is days; `POST /sandbox/clock` moves the sandbox's clock on instead)",
    )
    parser.add_argument("--workers", type=int, default=8, help="worker threads (warm containers)")
    parser.add_argument(
        "--jobs-workers",
        type=int,
        default=0,
        help="fan the scheduled work out: the scheduled run plans onto an in-process jobs queue worked off by this "
        "many JobsWorkerFunction processes (local.fanout); 0 = the scheduled run does every job itself",
    )
    parser.add_argument("--skip-migrations", action="store_true")
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--env-vars", default=str(DEFAULT_ENV_FILE))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--chat-webhook-url",
        default=os.environ.get("CHAT_WEBHOOK_URL", ""),
        help="deliver the chat notifications here (default: CHAT_WEBHOOK_URL, else the reference client's feed, "
        "/demo/chat on the local API)",
    )
    parser.add_argument(
        "--no-chat", action="store_true", help="no local bus: events are only printed to the log (as before)"
    )
    parser.add_argument("--chat-dlq", default=None, help="append undelivered notifications to this JSON-lines file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    api_port = args.api_port or free_port(args.host)
    toss_port = args.toss_port or free_port(args.host)
    api_url = f"http://{args.host}:{api_port}"
    overrides: dict[str, str] = {}
    if not args.no_sandbox:
        overrides["TOSS_API_BASE"] = f"http://{args.host}:{toss_port}"

    template = load_template(env_file=args.env_vars)
    merged_env, _ = template.merged_environment()
    env = child_environment(merged_env, overrides)

    if not args.skip_migrations and not run_step("migrations", "escrow.migrate", env):
        return 1
    if not args.skip_seed and not run_step("demo data", "escrow.seed_demo", env):
        return 1

    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        print(f"\nsignal {signum}: stopping", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    sandbox: Any = None
    api: Any = None
    scheduler: Any = None
    bus: Any = None
    jobs_pool: Any = None
    try:
        if not args.no_chat:
            chat_url = args.chat_webhook_url or f"{api_url}/demo/chat"
            bus = start_chat_notifications(args.host, chat_url, args.chat_dlq)
            overrides.update(eventbridge_overrides(bus.url))
            print(f"==> local event bus on {bus.url} (chat notifications to {chat_url})", flush=True)
        if not args.no_sandbox:
            try:
                from toss_sandbox import start_sandbox
            except ImportError as exc:
                print(f"cannot import toss_sandbox.start_sandbox ({exc}); use --no-sandbox", file=sys.stderr)
                return 1
            # Toss's balances as they are (payouts wait until the sales they pay have settled), with the settlement
            # cycle compressed so that a walkthrough sees its payout within minutes.
            sandbox = start_sandbox(
                args.host,
                toss_port,
                webhook_url=api_url + WEBHOOK_PATH,
                settlement_delay_seconds=args.settlement_seconds,
            )
            overrides["TOSS_API_BASE"] = str(getattr(sandbox, "url", overrides["TOSS_API_BASE"])).rstrip("/")
            print(f"==> Toss sandbox on {overrides['TOSS_API_BASE']}", flush=True)

        from local.api import start_local_api
        from local.scheduler import start_scheduler

        api = start_local_api(args.host, api_port, args.workers, env=overrides, env_file=args.env_vars)
        print(f"==> local API on {api.url}", flush=True)
        if args.jobs_workers > 0:
            from escrow.services import fanout
            from local.fanout import WorkerPool

            jobs_pool = WorkerPool(args.jobs_workers, env=child_environment(merged_env, overrides)).__enter__()
            fanout.use_queue(jobs_pool.queue)  # the in-process ReleaseFunction's scheduled run plans onto it
            print(f"==> jobs queue in process, {args.jobs_workers} JobsWorkerFunction processes", flush=True)
        if args.schedule_interval > 0:
            scheduler = start_scheduler(api.api.runtime, args.schedule_interval)
        print(
            banner(api.url, overrides.get("TOSS_API_BASE") if sandbox else None, args.schedule_interval, args.workers),
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        parts = (("scheduler", scheduler), ("jobs workers", jobs_pool), ("local API", api), ("Toss sandbox", sandbox))
        for name, part in (*parts, ("event bus", bus)):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - keep shutting the rest down
                print(f"stopping the {name} failed: {exc}", file=sys.stderr)
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
