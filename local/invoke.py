"""Invoke one function once with an event file, what ``sam local invoke -e`` does, without Docker.

    PYTHONPATH=layers/common:. python -m local.invoke RequestFunction events/request_create.json
    PYTHONPATH=layers/common:. python -m local.invoke request events/status.json --user user_2
    PYTHONPATH=layers/common:. python -m local.invoke webhook events/webhook_payout_changed.json --fresh
    echo '{"source": "escrow.schedule", "jobs": "all"}' | python -m local.invoke release -

The function is named by logical id or short name (request, confirm, cancel, release, webhook). The result
JSON goes to stdout; everything the handler logs or prints goes to stderr. A handler exception prints the
Lambda error object (errorMessage, errorType, stackTrace) and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from local.api import clf_time, new_request_id
from local.functions import FunctionRuntime
from local.jwt import mint_token
from local.template import DEFAULT_ENV_FILE, apply_environment, load_template


def read_event(source: str | None) -> Any:
    if source is None:
        return {}
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return json.loads(text) if text.strip() else {}


def with_user(event: Any, user_id: str, admin: bool, env_file: str | Path | None) -> Any:
    """Replace the event's authorization header with a freshly minted local token."""
    if not isinstance(event, dict) or "requestContext" not in event:
        print("--user ignored: the event is not an HTTP API event", file=sys.stderr)
        return event
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "authorization"}
    headers["authorization"] = "Bearer " + mint_token(user_id, admin=admin, env_file=env_file)
    return {**event, "headers": headers}


def refresh_event(event: Any, security_key: str) -> Any:
    """New request id and time; for a Toss webhook also a current transmission time and, where the event has a
    signature, a new one (HMAC-SHA256 of ``body:time`` with the security key, hex-decoded and as ASCII)."""
    if not isinstance(event, dict) or "requestContext" not in event:
        return event
    event = json.loads(json.dumps(event))
    now = time.time()
    event["requestContext"].update(requestId=new_request_id(), time=clf_time(now), timeEpoch=int(now * 1000))
    headers = event.get("headers") or {}
    if "tosspayments-webhook-transmission-time" in headers:
        sent = datetime.now(timezone(timedelta(hours=9))).isoformat(timespec="seconds")
        headers["tosspayments-webhook-transmission-time"] = sent
        if "tosspayments-webhook-signature" in headers and security_key:
            body = event.get("body") or ""
            raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
            message = raw + b":" + sent.encode()
            keys = [security_key.encode()]
            with contextlib.suppress(ValueError):
                keys.insert(0, bytes.fromhex(security_key))
            signatures = [base64.b64encode(hmac.new(k, message, hashlib.sha256).digest()).decode() for k in keys]
            headers["tosspayments-webhook-signature"] = ",".join(f"v1:{sig}" for sig in signatures)
    return event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("function", help="logical id (RequestFunction) or short name (request)")
    parser.add_argument("event", nargs="?", help="event JSON file, '-' for stdin (default: {})")
    parser.add_argument("--user", help="replace the authorization header with a local token for this user")
    parser.add_argument("--admin", action="store_true", help="with --user: the token carries the admin role")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="current request time; Toss webhooks get a current transmission time and a new signature",
    )
    parser.add_argument("--env-vars", default=str(DEFAULT_ENV_FILE), help="env-vars file (default local/env.json)")
    parser.add_argument("--template", default=None, help="SAM template (default template.yaml)")
    parser.add_argument("--functions-dir", default=None, help="folder holding <name>/app.py (default: CodeUri)")
    parser.add_argument("--pretty", action="store_true", help="indent the result JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    template = load_template(args.template, env_file=args.env_vars, functions_dir=args.functions_dir)
    try:
        spec = template.function(args.function)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    event = read_event(args.event)
    if args.user:
        event = with_user(event, args.user, args.admin, args.env_vars)
    if args.fresh:
        event = refresh_event(event, spec.environment.get("TOSS_SECURITY_KEY", ""))
    apply_environment(spec.environment)
    runtime = FunctionRuntime(template)

    stdout = sys.stdout
    try:
        # Powertools Logger and Metrics write to stdout; keep stdout for the result alone.
        with contextlib.redirect_stdout(sys.stderr):
            result = runtime.invoke(spec.logical_id, event)
    except Exception as exc:  # noqa: BLE001 - reported like Lambda does
        error = {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "requestId": "",
            "stackTrace": [line.rstrip("\n") for line in traceback.format_tb(exc.__traceback__)],
        }
        print(json.dumps(error, ensure_ascii=False), file=stdout)
        return 1
    print(json.dumps(result, ensure_ascii=False, indent=2 if args.pretty else None, default=str), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
