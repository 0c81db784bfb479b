"""The reference chat client's local routes (local/demo.py): static files, the local-only token, the chat feed."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests

from escrow.config import LOCAL_JWT_SECRET
from local.demo import DemoConfig, DemoSite, command_token, feed_text, make_server
from tests.conftest import ROOT


def answer_json(answer):
    status, headers, body = answer
    return status, dict(headers), json.loads(body)


def test_the_client_is_served_as_static_files_and_nothing_outside_its_folder() -> None:
    site = DemoSite()
    status, headers, body = site.handle("GET", "/demo/", "", None)
    assert status == 200 and headers[0] == ("content-type", "text/html; charset=utf-8")
    assert "모임 예약금" in body.decode()
    for name in ("app.js", "api.js", "checkout.js", "success.html", "fail.html", "style.css"):
        assert site.handle("GET", f"/demo/{name}", "", None)[0] == 200, name
    assert site.handle("GET", "/demo/../demo.py", "", None)[0] == 404
    assert site.handle("GET", "/demo/%2e%2e/demo.py", "", None)[0] == 404
    assert site.handle("GET", "/demo/nope.html", "", None)[0] == 404
    assert site.handle("GET", "/api/v1/payment/status/1", "", None) is None  # not ours
    assert site.handle("GET", "/demonstration", "", None) is None
    assert site.handle("DELETE", "/demo/app.js", "", None)[0] == 405


def test_config_json_says_which_payment_window_and_where_the_sandbox_is(monkeypatch) -> None:
    monkeypatch.setenv("TOSS_API_BASE", "http://127.0.0.1:4999/")
    monkeypatch.delenv("DEMO_PAYMENT_WINDOW", raising=False)
    status, _, config = answer_json(DemoSite().handle("GET", "/demo/config.json", "", None))
    assert status == 200
    assert config == {
        "payment_window": "sandbox",
        "toss_client_key": "test_ck_D5GePWvyJnrK0W0k6q8gLzN97Eoq",
        "toss_sandbox": "http://127.0.0.1:4999",
        "toss_sdk_url": "https://js.tosspayments.com/v2/standard",
        "api_base": "",
        "token_url": "/demo/token",
    }
    monkeypatch.setenv("DEMO_PAYMENT_WINDOW", "toss")
    monkeypatch.setenv("TOSS_CLIENT_KEY", "test_gck_docs_Ovk5rk1EwkEbP0W43n07xlzm")
    config = answer_json(DemoSite().handle("GET", "/demo/config.json", "", None))[2]
    assert (config["payment_window"], config["toss_client_key"]) == ("toss", "test_gck_docs_Ovk5rk1EwkEbP0W43n07xlzm")
    # A site without a token route (the client against a deployed stack) says so, and has no /demo/token.
    site = DemoSite(token=None, feed=False)
    assert answer_json(site.handle("GET", "/demo/config.json", "", None))[2]["token_url"] is None
    assert site.handle("POST", "/demo/token", "", b'{"user_id": "user_2"}')[0] == 405
    assert site.handle("GET", "/demo/feed", "chat_room_id=1", None)[0] == 404


def test_an_unknown_payment_window_is_refused_at_once(monkeypatch) -> None:
    monkeypatch.setenv("DEMO_PAYMENT_WINDOW", "widget")
    with pytest.raises(ValueError, match="payment_window"):
        DemoSite().handle("GET", "/demo/config.json", "", None)


def test_the_local_token_route_mints_a_token_the_api_accepts() -> None:
    status, _, body = answer_json(DemoSite().handle("POST", "/demo/token", "", b'{"user_id": "user_2"}'))
    assert status == 200
    claims = jwt.decode(body["token"], LOCAL_JWT_SECRET, algorithms=["HS256"])
    assert (claims["user_id"], claims["sub"]) == ("user_2", "user_2")
    assert DemoSite().handle("POST", "/demo/token", "", b'{"user_id": ""}')[0] == 422
    assert DemoSite().handle("POST", "/demo/token", "", b"not json")[0] == 422
    assert DemoSite().handle("POST", "/demo/token", "", b'{"user_id": "a b"}')[0] == 422


def test_notifications_become_the_room_feed_once_each_in_event_order() -> None:
    site = DemoSite()
    released = {
        "detail-type": "EscrowReleased",
        "time": "2026-01-01T00:00:00Z",
        "detail": {"outbox_id": 9, "chat_room_id": 123, "payment_request_id": 1, "net_amount": 29100},
    }
    funded = {
        "detail-type": "EscrowFunded",
        "detail": {"outbox_id": 8, "chat_room_id": 123, "payment_request_id": 1, "total_amount": 30000},
    }
    for event in (released, funded, released):  # out of order, and a duplicate delivery
        assert site.handle("POST", "/demo/chat", "", json.dumps(event).encode())[0] == 200
    status, _, feed = answer_json(site.handle("GET", "/demo/feed", "chat_room_id=123", None))
    assert status == 200
    assert [(i["outbox_id"], i["type"]) for i in feed["items"]] == [(8, "EscrowFunded"), (9, "EscrowReleased")]
    assert feed["items"][0]["text"].startswith("모두 결제했어요") and "30,000원" in feed["items"][0]["text"]
    assert feed["items"][1]["text"] == "예약금이 가게로 정산되었어요 (29,100원)."
    assert answer_json(site.handle("GET", "/demo/feed", "chat_room_id=124", None))[2]["items"] == []
    assert site.handle("POST", "/demo/chat", "", b'{"detail": {}}')[0] == 400


def test_a_feed_text_missing_a_field_still_says_what_happened() -> None:
    assert feed_text({"detail-type": "EscrowFunded", "detail": {}}) == "모두 결제했어요."
    unfunded = {"detail-type": "EscrowUnfunded", "detail": {"reason": "participant_added"}}
    assert feed_text(unfunded) == "참여자가 추가되어 아직 모두 결제하지 않았어요."
    unfunded["detail"]["reason"] = "refund"
    assert feed_text(unfunded) == "환불이 있어 아직 모두 결제하지 않았어요."
    assert feed_text({"detail-type": "Other", "detail": {}}) == "Other"


class _Upstream(BaseHTTPRequestHandler):
    """Plays the deployed API: answers 404 with what it was asked (method, path, authorization, body)."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("authorization"),
                "body": self.rfile.read(length).decode() if length else None,
            }
        ).encode()
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def _serve(server) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def test_against_a_deployed_stack_the_client_is_served_with_the_api_passed_on_and_tokens_from_a_command() -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    api = _serve(upstream)
    mint = f"env PYTHONPATH={ROOT / 'layers' / 'common'}:{ROOT} {sys.executable} -m local.jwt"
    config = DemoConfig(payment_window="toss", toss_client_key="test_gck_docs_Ovk5rk1EwkEbP0W43n07xlzm")
    server = make_server(api, config, command_token(mint), port=0)
    demo = _serve(server)
    try:
        assert '<script src="checkout.js"></script>' in requests.get(f"{demo}/demo/", timeout=10).text
        got = requests.get(f"{demo}/demo/config.json", timeout=10).json()
        assert (got["payment_window"], got["toss_client_key"], got["token_url"]) == (
            "toss",
            "test_gck_docs_Ovk5rk1EwkEbP0W43n07xlzm",
            "/demo/token",
        )
        minted = requests.post(f"{demo}/demo/token", json={"user_id": "user_2"}, timeout=30).json()["token"]
        assert jwt.decode(minted, LOCAL_JWT_SECRET, algorithms=["HS256"])["user_id"] == "user_2"
        # /api/ goes to the deployed API as it is: method, path and query, the token, the body, the answer's status.
        passed = requests.post(
            f"{demo}/api/v1/payment/confirm?x=1",
            json={"amount": 1},
            headers={"authorization": "Bearer abc"},
            timeout=10,
        )
        assert passed.status_code == 404
        assert passed.json() == {
            "method": "POST",
            "path": "/api/v1/payment/confirm?x=1",
            "authorization": "Bearer abc",
            "body": '{"amount": 1}',
        }
        assert requests.get(f"{demo}/", allow_redirects=False, timeout=10).headers["location"] == "/demo/"
        assert requests.get(f"{demo}/demo/feed?chat_room_id=1", timeout=10).status_code == 404  # no feed there
    finally:
        server.shutdown()
        server.server_close()
        upstream.shutdown()
        upstream.server_close()


def test_a_token_command_that_fails_or_prints_no_jwt_is_a_clear_answer_not_a_token() -> None:
    for command in ("false", "echo not-a-token"):
        site = DemoSite(token=command_token(command), feed=False)
        status, _, body = answer_json(site.handle("POST", "/demo/token", "", b'{"user_id": "user_2"}'))
        assert status == 502 and body["error"]["code"] == "TOKEN_UNAVAILABLE", body
    # The user id reaches the command only when it is an id the API accepts, never as an option, never to a shell.
    site = DemoSite(token=command_token("python -m local.jwt"))
    for user in ("--admin", "-h", "$(id)", "a b"):
        assert site.handle("POST", "/demo/token", "", json.dumps({"user_id": user}).encode())[0] == 422, user
