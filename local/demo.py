"""The reference chat client's local side, served by the local API under /demo/ (never deployed).

* ``GET /demo/...``: the static client in ``local/demo/`` (plain HTML and JavaScript, no build step, no CDN).
* ``POST /demo/token`` ``{"user_id": "user_2"}``: a local token for that user (what the chat app's login gives a
  real client). Local only: the deployed API has no such route.
* ``GET /demo/config``: what the page needs to know about this stack (the Toss sandbox's URL, the client key).
* ``POST /demo/chat``: a stand-in for the chat service's notification endpoint. With ``CHAT_WEBHOOK_URL`` set to it,
  the local EventBridge bus delivers the room events here, as EventBridge would to the chat service.
* ``GET /demo/feed?chat_room_id=123``: those notifications as the room's chat feed ("모두 결제했어요", ...).
* ``POST /demo/widget``: until the sandbox serves its payment window, the page asks the sandbox for an
  authenticated payment through this (the sandbox's ``POST /sandbox/payments``), then goes to the success page with
  the query Toss's window would give it.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests

from local import REPO_ROOT
from local.jwt import mint_token

STATIC_DIR = REPO_ROOT / "local" / "demo"
PREFIX = "/demo"
# Toss's public test client key (docs/toss-behaviours.md); the sandbox accepts it, the real widget in test mode.
DEFAULT_CLIENT_KEY = "test_ck_D5GePWvyJnrK0W0k6q8gLzN97Eoq"
FEED_LIMIT = 200

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
}

Answer = tuple[int, list[tuple[str, str]], bytes]


def _json(status: int, body: Any) -> Answer:
    return status, [("content-type", "application/json; charset=utf-8")], json.dumps(body, ensure_ascii=False).encode()


def feed_text(event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    kind = str(event.get("detail-type"))
    if kind not in FEED_TEXT:
        return kind
    message, short = FEED_TEXT[kind]
    try:
        return message.format(**detail)
    except (KeyError, ValueError):
        return short


class DemoSite:
    def __init__(self, static_dir: Path = STATIC_DIR) -> None:
        self.static_dir = static_dir.resolve()
        self._feed: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def handle(self, method: str, raw_path: str, raw_query: str, body: bytes | None) -> Answer | None:
        """The answer for a /demo path, or None when the path is not ours."""
        if raw_path != PREFIX and not raw_path.startswith(PREFIX + "/"):
            return None
        route = raw_path[len(PREFIX) :] or "/"
        method = method.upper()
        if method == "POST" and route == "/token":
            return self._token(body)
        if method == "POST" and route == "/chat":
            return self._notification(body)
        if method == "POST" and route == "/widget":
            return self._widget(body)
        if method == "GET" and route == "/feed":
            return self._read_feed(raw_query)
        if method == "GET" and route == "/config":
            return _json(
                200,
                {
                    "toss_sandbox": os.environ.get("TOSS_API_BASE", ""),
                    "toss_client_key": os.environ.get("TOSS_CLIENT_KEY", DEFAULT_CLIENT_KEY),
                },
            )
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
        user = self._body(body).get("user_id")
        if not isinstance(user, str) or not 1 <= len(user) <= 64:
            return _json(422, {"error": {"code": "VALIDATION_ERROR", "message": "user_id (1-64 characters)"}})
        return _json(200, {"user_id": user, "token": mint_token(user, ttl=8 * 3600)})

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

    def _widget(self, body: bytes | None) -> Answer:
        data = self._body(body)
        sandbox = os.environ.get("TOSS_API_BASE", "")
        if not sandbox:
            return _json(503, {"message": "no Toss sandbox configured (TOSS_API_BASE)"})
        try:
            answer = requests.post(
                f"{sandbox.rstrip('/')}/sandbox/payments",
                json={
                    "orderId": data.get("orderId"),
                    "amount": data.get("amount"),
                    "orderName": data.get("orderName") or "예약금",
                    "method": "카드",
                },
                timeout=10,
            )
        except requests.RequestException as exc:
            return _json(502, {"message": f"the sandbox did not answer: {type(exc).__name__}"})
        return answer.status_code, [("content-type", "application/json; charset=utf-8")], answer.content
