"""``python -m toss_sandbox --host 127.0.0.1 --port 4010 [--webhook-url URL] [--secret-key K ...] ...``"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from .server import start_sandbox
from .settings import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m toss_sandbox", description="Local Toss Payments sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4010)
    parser.add_argument("--webhook-url", default=None, help="where webhooks are POSTed (default: none)")
    parser.add_argument(
        "--secret-key",
        action="append",
        dest="secret_keys",
        help=f"accepted secret key (repeatable; default: {', '.join(DEFAULT_SECRET_KEYS)})",
    )
    parser.add_argument("--security-key", default=DEFAULT_SECURITY_KEY, help="64 hex chars (JWE and webhook HMAC)")
    parser.add_argument(
        "--webhook-retry-delays",
        default=None,
        help="comma-separated seconds between webhook retries (default: Toss's 1,4,16,64,256,1024,4096 minutes)",
    )
    parser.add_argument("--webhook-hmac-encoding", choices=("hex", "ascii"), default="hex")
    parser.add_argument("--webhook-timeout-seconds", type=float, default=10.0)
    parser.add_argument("--confirm-window-seconds", type=float, default=600.0)
    parser.add_argument("--available-balance", type=int, default=None, help="payout availableAmount at start (0)")
    parser.add_argument(
        "--settlement-delay-seconds",
        type=float,
        default=None,
        help="seconds from a sale's approval until it is availableAmount (default 2 days)",
    )
    parser.add_argument(
        "--idempotency-bind-5xx",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay 5xx answers for their Idempotency-Key like any answer (default: yes)",
    )
    parser.add_argument("--payout-auto-complete-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "security_key": args.security_key,
        "webhook_url": args.webhook_url,
        "webhook_hmac_encoding": args.webhook_hmac_encoding,
        "webhook_timeout_seconds": args.webhook_timeout_seconds,
        "confirm_window_seconds": args.confirm_window_seconds,
        "payout_auto_complete_seconds": args.payout_auto_complete_seconds,
        "seed": args.seed,
        "verbose": args.verbose,
    }
    if args.secret_keys:
        settings["secret_keys"] = args.secret_keys
    if args.webhook_retry_delays:
        settings["webhook_retry_delays"] = [float(x) for x in args.webhook_retry_delays.split(",") if x.strip()]
    if args.available_balance is not None:
        settings["available_balance"] = args.available_balance
    if args.settlement_delay_seconds is not None:
        settings["settlement_delay_seconds"] = args.settlement_delay_seconds
    if args.idempotency_bind_5xx is not None:
        settings["idempotency_bind_5xx"] = args.idempotency_bind_5xx
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sandbox = start_sandbox(host=args.host, port=args.port, **settings_from_args(args))
    print(f"Toss sandbox listening on {sandbox.url} (webhooks: {args.webhook_url or 'off'})", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
