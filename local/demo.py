"""The reference chat client's server side: local only, never deployed (nothing here is in functions/ or the template).

Inside the local API (``make run``), under /demo/:

* ``GET /demo/...``: the static client in ``local/demo/`` (plain HTML and JavaScript, no build step, no CDN).
* ``GET /demo/config.json``: what the page needs to know about this stack (DemoConfig): where the API is, how a user
  gets a token, and which payment window to open (the Toss sandbox's ``/sandbox/checkout``, or Toss's own widget
  with a real client key). ``DEMO_PAYMENT_WINDOW`` (``sandbox`` | ``toss``) and ``TOSS_CLIENT_KEY`` choose.
* ``POST /demo/token`` ``{"user_id": "user_2"}``: a local token for that user (what the chat app's login gives a
  real client). Local only: the deployed API has no such route.
* ``POST /demo/chat``: a stand-in for the chat service's notification endpoint; the local EventBridge bus delivers
  the room events here (``make run`` without ``CHAT_WEBHOOK_URL``), as EventBridge would to the chat service.
* ``GET /demo/feed?chat_room_id=123``: those notifications as the room's chat feed ("모두 결제했어요", ...).

Against a deployed stack (Toss test mode), the same files are served by ``python -m local.demo --api URL
--client-key test_gck_...``: a small server on 127.0.0.1 that serves the client and its config.json (payment window
``toss``) and passes ``/api/v1/...`` on to the deployed API, so the page and the API share an origin and the API
needs no CORS. Tokens then come from ``--token-cmd`` (a command that prints a JWT for the user id given as its last
argument, as ``make smoke`` takes), or are pasted into the page.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import shlex
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from local import REPO_ROOT

STATIC_DIR = REPO_ROOT / "local" / "demo"
PREFIX = "/demo"
# Toss's public test client key (API individual key, docs/toss-behaviours.md). The sandbox window needs no key; Toss's
# widget needs a *widget* client key (test_gck_...) paired with the stack's widget secret key (test_gsk_...).
DEFAULT_CLIENT_KEY = "test_ck_D5GePWvyJnrK0W0k6q8gLzN97Eoq"
TOSS_SDK_URL = "https://js.tosspayments.com/v2/standard"  # Toss's browser SDK v2 (TossPayments(clientKey))
PAYMENT_WINDOWS = ("sandbox", "toss")
FEED_LIMIT = 200
# The API's user id pattern (escrow.models.ID_PATTERN), less a leading "-": a token command must never take a user id
# for an option (python -m local.jwt --admin).
USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@][A-Za-z0-9_.:@-]{0,63}$")

# What the chat service would post into the room for each event: the message, and a shorter one for a body that
# lacks a field the message names.
FEED_TEXT = {
    "EscrowFunded": ("모두 결제했어요. 예약금 {total_amount:,}원이 안전하게 보관되고 있어요.", "모두 결제했어요."),
    "EscrowUnfunded": ("환불이 있어 아직 모두 결제하지 않았어요.", "환불이 있어 아직 모두 결제하지 않았어요."),
    "EscrowReleased": ("예약금이 가게로 정산되었어요 ({net_amount:,}원).", "예약금이 가게로 정산되었어요."),
    "PaymentRefunded": ("{payer_id}님에게 {refunded_amount:,}원이 환불되었어요.", "환불되었어요."),
    "PaymentRequestCancelled": (
        "방장이 예약금 요청을 취소했어요. 결제한 금액은 모두 환불돼요.",
        "방장이 예약금 요청을 취소했어요.",
    ),
    "RequestExpired": (
        "기한 안에 모두 결제하지 않아 요청이 만료되었어요. 결제한 금액은 환불돼요.",
        "요청이 만료되었어요.",
    ),
    "RefundAccountNeeded": (
        "{payer_id}님, 가상계좌로 입금한 {refund_amount:,}원을 돌려받을 계좌를 알려주세요.",
        "가상계좌 환불을 받을 계좌를 알려주세요.",
    ),
}

Answer = tuple[int, list[tuple[str, str]], bytes]


def _json(status: int, body: Any) -> Answer:
    return status, [("content-type", "application/json; charset=utf-8")], json.dumps(body, ensure_ascii=False).encode()


# EscrowUnfunded corrects an earlier "모두 결제했어요"; what to say depends on why (its detail's `reason`).
UNFUNDED_TEXT = {
    "participant_added": "참여자가 추가되어 아직 모두 결제하지 않았어요.",
    "participant_removed": "참여자가 제외되어 예약금 합계가 바뀌었어요.",
}


def feed_text(event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    kind = str(event.get("detail-type"))
    if kind == "EscrowUnfunded" and detail.get("reason") in UNFUNDED_TEXT:
        return UNFUNDED_TEXT[detail["reason"]]
    if kind not in FEED_TEXT:
        return kind
    message, short = FEED_TEXT[kind]
    try:
        return message.format(**detail)
    except (KeyError, ValueError):
        return short


@dataclass(frozen=True)
class DemoConfig:
    """The page's config.json. Field names are the page's contract (local/demo/api.js reads them)."""

    payment_window: str = "sandbox"  # "sandbox": the Toss sandbox's /sandbox/checkout; "toss": Toss's widget
    toss_client_key: str = DEFAULT_CLIENT_KEY
    toss_sandbox: str = ""  # the sandbox's base URL (sandbox window only)
    toss_sdk_url: str = TOSS_SDK_URL  # loaded by the page only for the Toss widget
    api_base: str = ""  # where /api/v1/... is; "" = the page's own origin
    token_url: str | None = "/demo/token"  # noqa: S105 - a route, not a secret; None: the page asks for a JWT

    def __post_init__(self) -> None:
        if self.payment_window not in PAYMENT_WINDOWS:
            raise ValueError(f"payment_window must be one of {PAYMENT_WINDOWS}, not {self.payment_window!r}")

    @classmethod
    def from_environment(cls) -> DemoConfig:
        """The local stack's config, read at each request (the runner sets TOSS_API_BASE once the sandbox is up)."""
        return cls(
            payment_window=os.environ.get("DEMO_PAYMENT_WINDOW", "sandbox") or "sandbox",
            toss_client_key=os.environ.get("TOSS_CLIENT_KEY", DEFAULT_CLIENT_KEY) or DEFAULT_CLIENT_KEY,
            toss_sandbox=os.environ.get("TOSS_API_BASE", "").rstrip("/"),
        )


def mint_local_token(user_id: str) -> str:
    from local.jwt import mint_token

    return mint_token(user_id, ttl=8 * 3600)


class DemoSite:
    """The /demo routes. ``token`` mints a token for a user id (None: no token route); ``feed`` turns the chat
    notification stand-in and the feed on or off."""

    def __init__(
        self,
        static_dir: Path = STATIC_DIR,
        *,
        config: Callable[[], DemoConfig] = DemoConfig.from_environment,
        token: Callable[[str], str] | None = mint_local_token,
        feed: bool = True,
    ) -> None:
        self.static_dir = static_dir.resolve()
        self.config = config
        self.token = token
        self.feed = feed
        self._feed: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def handle(self, method: str, raw_path: str, raw_query: str, body: bytes | None) -> Answer | None:
        """The answer for a /demo path, or None when the path is not ours."""
        if raw_path != PREFIX and not raw_path.startswith(PREFIX + "/"):
            return None
        route = raw_path[len(PREFIX) :] or "/"
        method = method.upper()
        if method == "POST" and route == "/token" and self.token is not None:
            return self._token(body)
        if method == "POST" and route == "/chat" and self.feed:
            return self._notification(body)
        if method == "GET" and route == "/feed" and self.feed:
            return self._read_feed(raw_query)
        if method == "GET" and route == "/config.json":
            config = asdict(self.config())
            if self.token is None:
                config["token_url"] = None
            return _json(200, config)
        if method in ("GET", "HEAD"):
            return self._static(route)
        return _json(405, {"message": "Method Not Allowed"})

    # --- static files ------------------------------------------------------------------------------------

    def _static(self, route: str) -> Answer:
        if route == "/":
            route = "/index.html"
        file = (self.static_dir / route.lstrip("/")).resolve()
        if not file.is_relative_to(self.static_dir) or not file.is_file():
            return _json(404, {"message": "Not Found"})
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind == "application/javascript":
            kind += "; charset=utf-8"
        return 200, [("content-type", kind), ("cache-control", "no-store")], file.read_bytes()

    # --- local-only routes -------------------------------------------------------------------------------

    @staticmethod
    def _body(body: bytes | None) -> dict[str, Any]:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _token(self, body: bytes | None) -> Answer:
        assert self.token is not None
        user = self._body(body).get("user_id")
        if not isinstance(user, str) or not USER_ID_RE.match(user):
            return _json(
                422, {"error": {"code": "VALIDATION_ERROR", "message": "user_id: 1-64 of A-Z a-z 0-9 _ . : @ -"}}
            )
        try:
            token = self.token(user)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return _json(502, {"error": {"code": "TOKEN_UNAVAILABLE", "message": f"no token: {exc}"}})
        return _json(200, {"user_id": user, "token": token})

    def _notification(self, body: bytes | None) -> Answer:
        event = self._body(body)
        detail = event.get("detail")
        if not isinstance(detail, dict) or not isinstance(detail.get("chat_room_id"), int):
            return _json(400, {"message": "an EventBridge event whose detail has chat_room_id"})
        room = detail["chat_room_id"]
        entry = {
            "outbox_id": detail.get("outbox_id"),
            "type": event.get("detail-type"),
            "text": feed_text(event),
            "payment_request_id": detail.get("payment_request_id"),
            "time": event.get("time"),
        }
        with self._lock:
            feed = self._feed[room]
            if all(e["outbox_id"] != entry["outbox_id"] for e in feed):  # de-duplicate on outbox_id
                feed.append(entry)
                feed.sort(key=lambda e: e["outbox_id"] or 0)
                del feed[:-FEED_LIMIT]
        return _json(200, {"status": "received"})

    def _read_feed(self, raw_query: str) -> Answer:
        query = parse_qs(raw_query)
        try:
            room = int((query.get("chat_room_id") or [""])[0])
        except ValueError:
            return _json(422, {"error": {"code": "VALIDATION_ERROR", "message": "chat_room_id must be a number"}})
        with self._lock:
            return _json(200, {"chat_room_id": room, "items": list(self._feed.get(room, []))})


# --- the client against a deployed stack ---------------------------------------------------------------------


def command_token(command: str) -> Callable[[str], str]:
    """Tokens from a command that prints a JWT for the user id given as its last argument (no shell)."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("--token-cmd is empty")

    def mint(user_id: str) -> str:
        done = subprocess.run(  # noqa: S603 - the operator's own command; the user id matched USER_ID_RE
            [*argv, user_id], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise ValueError(f"the token command exited {done.returncode}")
        token = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if token.count(".") != 2:
            raise ValueError("the token command printed no JWT")
        return token

    return mint


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}


def make_handler(site: DemoSite, api: str) -> type[BaseHTTPRequestHandler]:
    import requests

    session = requests.Session()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"demo: {self.address_string()} {format % args}\n")

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            path, _, query = self.path.partition("?")
            if path in ("/", ""):
                self._send(302, [("location", f"{PREFIX}/")], b"")
                return
            if path.startswith("/api/"):
                self._proxy(body)
                return
            answer = site.handle(self.command, path, query, body)
            self._send(*(answer or _json(404, {"message": "Not Found"})))

        def _proxy(self, body: bytes | None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                answer = session.request(
                    self.command, api + self.path, headers=headers, data=body, timeout=35, allow_redirects=False
                )
            except requests.RequestException as exc:
                self._send(*_json(502, {"message": f"the API did not answer: {type(exc).__name__}"}))
                return
            self._send(answer.status_code, list(answer.headers.items()), answer.content)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve  # noqa: N815 - BaseHTTPRequestHandler's names

    return Handler


def make_server(
    api: str, config: DemoConfig, token: Callable[[str], str] | None, host: str = "127.0.0.1", port: int = 8080
) -> ThreadingHTTPServer:
    """The client's server for a deployed stack: static files, config.json, /api/ passed on to `api`."""
    site = DemoSite(config=lambda: config, token=token, feed=False)
    return ThreadingHTTPServer((host, port), make_handler(site, api.rstrip("/")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.demo",
        description="Serve the reference chat client against a deployed stack (Toss test mode, Toss's widget).",
    )
    parser.add_argument(
        "--api", required=True, help="the deployed API: https://<id>.execute-api.<region>.amazonaws.com"
    )
    parser.add_argument("--client-key", required=True, help="Toss widget client key (test_gck_...)")
    parser.add_argument("--window", choices=PAYMENT_WINDOWS, default="toss", help="payment window (default: toss)")
    parser.add_argument("--sandbox", default="", help="the Toss sandbox's URL, for --window sandbox")
    parser.add_argument("--token-cmd", default="", help="prints a JWT for the user id given as its last argument")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    config = DemoConfig(
        payment_window=args.window, toss_client_key=args.client_key, toss_sandbox=args.sandbox.rstrip("/")
    )
    token = command_token(args.token_cmd) if args.token_cmd else None
    server = make_server(args.api, config, token, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"reference chat client on http://{host}:{port}{PREFIX}/ (API {args.api}, window {args.window})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
