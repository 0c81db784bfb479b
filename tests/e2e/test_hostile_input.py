"""Hostile input, end to end: forged and broken JWTs, malformed and malicious bodies on every POST route, forged,
stale and replayed webhooks, and the database disappearing in the middle of requests.

The rule everywhere: a clear answer (`{"error": {"code", "message"}}` with the right 4xx, or 503 when the database
is gone), nothing written that should not be, and what is accepted is stored exactly as sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from escrow.config import LOCAL_JWT_SECRET, parse_database_url
from tests.e2e.conftest import Client, eventually
from tests.e2e.test_money_out_and_back import funded_room, register_store, signed_headers
from tests.e2e.test_room_gets_paid import open_request, prepare
from tests.e2e.test_room_gets_paid import rows as _rows
from tests.support.events import token

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# Everything a request could write money state into; CHECKSUM TABLE sees inserts, updates and deletes alike.
MONEY_TABLES = (
    "payment_requests",
    "payments",
    "payment_orders",
    "payment_cancels",
    "ledger_entries",
    "outbox",
    "payment_settlements",
    "stores",
)

SQL_INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE payments; --",
    '" OR ""="',
    "1 OR 1=1",
    "x' UNION SELECT secret, payment_key FROM payments -- ",
    "%s %s %(amount)s",
    "\\'; SHUTDOWN; --",
    "1); DELETE FROM ledger_entries; --",
]
CONTROL_CHARACTERS = ["nul\x00byte", "\x1b[31mred", "carriage\rreturn", "del\x7f", "c1\x85next-line", "bell\x07"]
NOT_STRINGS: list[Any] = [1, 1.5, True, [], {}, ["a"], {"$ne": None}]
NOT_ROOM_IDS: list[Any] = [0, -1, 2**62 + 1, 2**64, 10**30, 1.5, 1.0, True, False, "1", "1 OR 1=1", [], {}]
NOT_AMOUNTS: list[Any] = [0, -1, -15000, 99, 10_000_001, 2**31, 2**63, 10**30, 15000.0, 1.5e4, 15000.5, True]
NOT_AMOUNTS += ["15000", "15000; DROP TABLE payments", [], {}]


# --- helpers -------------------------------------------------------------------------------------------------


def rows(sql, query: str, *args: Any) -> list[dict[str, Any]]:
    return list(_rows(sql, query, *args))


def fingerprint(sql) -> dict[str, int]:
    with sql.cursor() as cur:
        cur.execute("CHECKSUM TABLE " + ", ".join(MONEY_TABLES))
        return {r["Table"].rsplit(".", 1)[-1]: r["Checksum"] for r in cur.fetchall()}


def sandbox_stats(toss) -> dict[str, Any]:
    return dict(requests.get(f"{toss.url}/sandbox/stats", timeout=5).json())


def webhooks_settled(toss) -> None:
    """Wait until the sandbox has no webhook delivery in flight (they may write to our tables)."""
    eventually(lambda: sandbox_stats(toss)["webhooks"]["pending"] == 0, timeout=20)


def toss_posts(toss) -> int:
    return len(toss.calls(method="POST"))


def assert_error(
    r: requests.Response, status: int | tuple[int, ...], code: str | None = None, *, why: Any = ""
) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (why, r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error"}, (why, body)
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], (why, body)
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], (why, body)
    if code is not None:
        assert body["error"]["code"] == code, (why, body)


def post_raw(base: str, path: str, data: bytes | str, headers: dict[str, str]) -> requests.Response:
    return requests.post(base + path, data=data, headers=headers, timeout=30)


@dataclass
class Stage:
    """A room with an open request: member 0 has paid, member 1 has authenticated a widget payment (not confirmed)."""

    room: Any
    request_id: int
    paid_key: str
    paid_order: str
    open_key: str
    open_order: str


@pytest.fixture()
def stage(as_user, toss, make_room) -> Stage:
    room = make_room(2)
    request_id = open_request(as_user, room)
    paid = prepare(as_user, room, room.members[0])
    paid_key = toss.widget(paid["orderId"], paid["amount"])
    r = as_user(room.members[0]).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": paid_key, "orderId": paid["orderId"]},
    )
    assert r.status_code == 200, r.text
    pending = prepare(as_user, room, room.members[1])
    open_key = toss.widget(pending["orderId"], pending["amount"])
    return Stage(room, request_id, paid_key, paid["orderId"], open_key, pending["orderId"])


def store_body(store_id: str) -> dict[str, Any]:
    return {
        "store_id": store_id,
        "owner_id": f"owner_of_{store_id}",
        "bank_code": "88",
        "account_number": "110123456789",
        "holder_name": "홍길동",
        "business_type": "INDIVIDUAL",
        "email": "owner@example.com",
        "phone": "01012345678",
    }


def targets(s: Stage) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(method, path, the user the call is meant for, a body that user could legitimately send)."""
    room = s.room
    confirm = {
        "chat_room_id": room.chat_room_id,
        "amount": 15000,
        "paymentKey": s.open_key,
        "orderId": s.open_order,
        "payment_method": "card",
    }
    return [
        (
            "POST",
            "/api/v1/payment/request",
            room.owner,
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000},
        ),
        ("POST", "/api/v1/payment/prepare", room.members[1], {"chat_room_id": room.chat_room_id}),
        ("POST", "/api/v1/payment/initiate", room.members[1], confirm),
        ("POST", "/api/v1/payment/confirm", room.members[1], confirm),
        ("POST", "/api/v1/payment/cancel", room.members[0], {"paymentKey": s.paid_key, "cancelReason": "취소"}),
        ("POST", "/api/v1/payment/cancel", room.owner, {"chat_room_id": room.chat_room_id, "cancelReason": "취소"}),
        ("POST", "/api/v1/payment/release", room.owner, {"chat_room_id": room.chat_room_id}),
        ("POST", "/api/v1/admin/stores", "ops_admin", store_body(f"hostile_{uuid.uuid4().hex[:8]}")),
        ("GET", f"/api/v1/payment/status/{room.chat_room_id}", room.members[0], None),
    ]


# --- JWT ---------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_jwt(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand, so it can say things a JWT library refuses to produce (alg none, HMAC with a PEM)."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key is not None else b""
    return f"{signing_input}.{_b64url(signature)}"


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def hostile_tokens(user: str, rsa_key: Any) -> list[tuple[str, dict[str, str], str | None]]:
    """(what it is, the headers, the error code expected or None) for a caller pretending to be `user`."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    now = int(time.time())
    claims = {"user_id": user, "sub": user, "iat": now, "exp": now + 600, "role": "admin"}
    secret = LOCAL_JWT_SECRET
    public_pem = rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    good = jwt.encode(claims, secret, algorithm="HS256")
    head, _, sig = good.split(".")
    other_claims = _b64url(json.dumps({**claims, "user_id": "someone_else", "sub": "someone_else"}).encode())

    def hs(c: dict[str, Any], key: str | bytes = secret, alg: str = "HS256") -> dict[str, str]:
        return {"authorization": f"Bearer {jwt.encode(c, key, algorithm=alg)}"}

    def bearer(t: str) -> dict[str, str]:
        return {"authorization": f"Bearer {t}"}

    return [
        ("no Authorization header", {}, "AUTH_REQUIRED"),
        ("empty bearer", {"authorization": "Bearer "}, None),
        ("basic credentials", {"authorization": "Basic " + base64.b64encode(b"user:pass").decode()}, "INVALID_TOKEN"),
        ("a token without the scheme", {"authorization": good}, "INVALID_TOKEN"),
        ("not a JWT", bearer("not-a-jwt"), "INVALID_TOKEN"),
        ("three garbage segments", bearer("a.b.c"), "INVALID_TOKEN"),
        ("expired", hs({**claims, "iat": now - 7200, "exp": now - 3600}), "TOKEN_EXPIRED"),
        ("not valid yet (nbf in an hour)", hs({**claims, "nbf": now + 3600}), "INVALID_TOKEN"),
        ("issued in the future (iat in an hour)", hs({**claims, "iat": now + 3600}), "INVALID_TOKEN"),
        ("no exp", hs({k: v for k, v in claims.items() if k != "exp"}), "INVALID_TOKEN"),
        ("exp is not a number", hs({**claims, "exp": "tomorrow"}), "INVALID_TOKEN"),
        ("wrong key", hs(claims, "an-attacker-secret-that-is-long-enough-0123"), "INVALID_TOKEN"),
        ("alg none, no signature", bearer(handmade_jwt({"alg": "none", "typ": "JWT"}, claims, None)), "INVALID_TOKEN"),
        ("alg none, signed", bearer(handmade_jwt({"alg": "none"}, claims, secret.encode())), "INVALID_TOKEN"),
        ("HS512 with the right secret", hs(claims, alg="HS512"), "INVALID_TOKEN"),
        ("RS256", {"authorization": f"Bearer {jwt.encode(claims, rsa_key, algorithm='RS256')}"}, "INVALID_TOKEN"),
        (
            "HS256 keyed with an RSA public key",
            bearer(handmade_jwt({"alg": "HS256"}, claims, public_pem)),
            "INVALID_TOKEN",
        ),
        ("payload swapped under a valid signature", bearer(f"{head}.{other_claims}.{sig}"), "INVALID_TOKEN"),
        ("no user claim", hs({"iat": now, "exp": now + 600}), "INVALID_TOKEN"),
        ("user is an object", hs({**claims, "user_id": {"$ne": None}}), "INVALID_TOKEN"),
        ("user is a boolean", hs({**claims, "user_id": True}), "INVALID_TOKEN"),
        ("user is blank", hs({**claims, "user_id": "   "}), "INVALID_TOKEN"),
        ("user is too long", hs({**claims, "user_id": "u" * 65}), "INVALID_TOKEN"),
        ("user has a control character", hs({**claims, "user_id": user + "\x00"}), "INVALID_TOKEN"),
        ("user is a lone surrogate", hs({**claims, "user_id": "\ud800"}), "INVALID_TOKEN"),
    ]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 forgery, on purpose
def test_broken_and_forged_tokens_are_refused_with_401_and_nothing_happens(api, stage, toss, sql, rsa_key):
    webhooks_settled(toss)
    before, posts = fingerprint(sql), toss_posts(toss)
    for method, path, user, body in targets(stage):
        for name, headers, code in hostile_tokens(user, rsa_key):
            r = requests.request(
                method, api + path, json=body, headers={"content-type": "application/json", **headers}, timeout=30
            )
            assert_error(r, 401, code, why=(name, path))
            assert r.headers.get("www-authenticate") == "Bearer", (name, path)
    assert fingerprint(sql) == before
    assert toss_posts(toss) == posts  # Toss was never asked to do anything
    assert toss.payment(stage.open_key)["status"] == "IN_PROGRESS"  # the authenticated payment was not confirmed
    assert toss.payment(stage.paid_key)["balanceAmount"] == 15000  # the paid share was not refunded


def test_a_valid_token_of_the_wrong_person_is_refused_with_403_and_nothing_happens(api, stage, toss, sql):
    room = stage.room
    outsider, member = f"outsider_{uuid.uuid4().hex[:6]}", room.members[1]
    webhooks_settled(toss)
    before, posts = fingerprint(sql), toss_posts(toss)
    expected = {
        "/api/v1/payment/request": "NOT_ROOM_OWNER",
        "/api/v1/payment/prepare": "NOT_A_PARTICIPANT",
        "/api/v1/payment/initiate": "NOT_A_PARTICIPANT",
        "/api/v1/payment/confirm": "NOT_A_PARTICIPANT",
        "/api/v1/payment/release": "NOT_ROOM_OWNER",
        "/api/v1/admin/stores": "ADMIN_ONLY",
    }
    for method, path, _, body in targets(stage):
        r = requests.request(
            method, api + path, json=body, headers={"authorization": f"Bearer {token(outsider)}"}, timeout=30
        )
        code = expected.get(path) or ("NOT_ROOM_MEMBER" if method == "GET" else None)
        if path.endswith("/cancel"):
            code = "NOT_ALLOWED_TO_CANCEL" if "paymentKey" in body else "NOT_ROOM_OWNER"
        assert_error(r, 403, code, why=(outsider, path))

    # Members who are not the owner, and a payer reaching for someone else's share.
    as_member = Client(api, member)
    assert_error(as_member.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id}), 403, "NOT_ROOM_OWNER")
    assert_error(
        as_member.post("/api/v1/payment/cancel", {"chat_room_id": room.chat_room_id, "cancelReason": "x"}),
        403,
        "NOT_ROOM_OWNER",
    )
    assert_error(
        as_member.post("/api/v1/payment/cancel", {"paymentKey": stage.paid_key, "cancelReason": "x"}),
        403,
        "NOT_ALLOWED_TO_CANCEL",
    )
    assert_error(
        as_member.post(
            "/api/v1/payment/request",
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000},
        ),
        403,
        "NOT_ROOM_OWNER",
    )
    # Claims that only look like the admin role.
    for role_claims in (
        {"role": "Admin"},
        {"role": "admin "},
        {"role": ["user"]},
        {"role": {"admin": True}},
        {"roles": "admin"},
        {"role": "user,admin"},
    ):
        r = requests.post(
            f"{api}/api/v1/admin/stores",
            json=store_body(f"hostile_{uuid.uuid4().hex[:8]}"),
            headers={"authorization": f"Bearer {token('not_quite_admin', **role_claims)}"},
            timeout=30,
        )
        assert_error(r, 403, "ADMIN_ONLY", why=role_claims)
    assert fingerprint(sql) == before
    assert toss_posts(toss) == posts


# --- bodies --------------------------------------------------------------------------------------------------


def _variants(base: dict[str, Any], field: str, values: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{field}={v!r:.60}", {**base, field: v}) for v in values]


def _without(base: dict[str, Any], field: str) -> tuple[str, dict[str, Any]]:
    return (f"no {field}", {k: v for k, v in base.items() if k != field})


def _unknown_fields(base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    extra = [
        {"is_admin": True},
        {"payer_id": "someone_else"},
        {"__proto__": {"admin": True}},
        {"AMOUNT": 1},
        {"status": "completed"},
        {"user_id": "x' OR '1'='1"},
    ]
    return [(f"unknown field {next(iter(e))}", {**base, **e}) for e in extra]


def _strings(max_len: int, *, required: bool, pattern_free: bool = False) -> list[Any]:
    """Values a string field must refuse. SQL injection strings are included unless the field has no pattern."""
    values: list[Any] = [*NOT_STRINGS, *CONTROL_CHARACTERS, "x" * (max_len + 1)]
    if required:
        values.append(None)
    if not pattern_free:
        values += [*SQL_INJECTIONS, "", "가게", "tab\there", "space here", "emoji😀"]
    return values


def hostile_bodies(route: str, s: Stage) -> list[tuple[str, dict[str, Any]]]:
    room = s.room
    if route == "request":
        base: dict[str, Any] = {
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": 15000,
            "message": "예약금",
            "participant_ids": list(room.members),
        }
        too_early = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        return [
            *_variants(base, "chat_room_id", [*NOT_ROOM_IDS, None]),
            *_variants(base, "store_id", _strings(64, required=True)),
            *_variants(base, "amount", [*NOT_AMOUNTS, None]),
            *_variants(base, "message", [v for v in _strings(500, required=False, pattern_free=True)]),
            *_variants(
                base,
                "participant_ids",
                [[], "user_1", [1], [None], [room.members[0]] * 2, [f"u{i}" for i in range(101)], {"a": 1}]
                + [[v] for v in SQL_INJECTIONS + CONTROL_CHARACTERS],
            ),
            *_variants(
                base,
                "release_at",
                [
                    "tomorrow",
                    "2030-01-01T00:00:00",
                    too_early,
                    "2030-13-45T00:00:00+09:00",
                    [],
                    {},
                    "0001-01-01T00:00:00+14:00",
                    "9999-12-31T23:59:59-14:00",
                    "'; DROP TABLE payment_requests; --",
                ],
            ),
            *_variants(base, "expires_at", ["yesterday", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+09:00"]),
            _without(base, "chat_room_id"),
            _without(base, "store_id"),
            _without(base, "amount"),
            *_unknown_fields(base),
        ]
    if route == "prepare":
        base = {"chat_room_id": room.chat_room_id}
        return [
            *_variants(base, "chat_room_id", [*NOT_ROOM_IDS, None]),
            _without(base, "chat_room_id"),
            *_unknown_fields(base),
        ]
    if route in ("initiate", "confirm"):
        base = {
            "chat_room_id": room.chat_room_id,
            "amount": 15000,
            "paymentKey": s.open_key,
            "orderId": s.open_order,
            "payment_method": "card",
        }
        spaced_injections = [v for v in SQL_INJECTIONS if " " in v]  # the others are legal paymentKey characters
        return [
            *_variants(base, "chat_room_id", [*NOT_ROOM_IDS, None]),
            *_variants(base, "amount", [*NOT_AMOUNTS, None, 14999, 15001, 1]),  # right type, wrong amount
            *_variants(
                base,
                "paymentKey",
                [*NOT_STRINGS, *CONTROL_CHARACTERS, None, "", "k" * 201, "키", *spaced_injections, s.paid_key],
            ),  # someone else's paymentKey
            *_variants(base, "orderId", [*_strings(64, required=True), "short", s.paid_order]),
            *_variants(base, "payment_method", [*NOT_STRINGS, *CONTROL_CHARACTERS, "m" * 33]),
            _without(base, "paymentKey"),
            _without(base, "orderId"),
            _without(base, "amount"),
            *_unknown_fields(base),
        ]
    if route == "cancel":
        base = {"paymentKey": s.paid_key, "cancelReason": "예약 취소"}
        return [
            *_variants(base, "paymentKey", [*NOT_STRINGS, "", "k" * 201, *SQL_INJECTIONS, s.open_key]),
            *_variants(base, "cancelReason", [*NOT_STRINGS, *CONTROL_CHARACTERS, None, "", "r" * 201]),
            *_variants(base, "cancelAmount", [0, -1, 15001, 10_000_001, 1.5, 100.0, True, "100", [], {}]),
            ("paymentKey and chat_room_id", {**base, "chat_room_id": room.chat_room_id}),
            ("neither paymentKey nor chat_room_id", {"cancelReason": "예약 취소"}),
            *_variants({"chat_room_id": room.chat_room_id, "cancelReason": "x"}, "chat_room_id", NOT_ROOM_IDS),
            _without(base, "cancelReason"),
            *_unknown_fields(base),
        ]
    if route == "release":
        base = {"chat_room_id": room.chat_room_id}
        return [
            *_variants(base, "chat_room_id", [*NOT_ROOM_IDS, None]),
            _without(base, "chat_room_id"),
            *_unknown_fields(base),
        ]
    if route == "admin/stores":
        base = store_body(room.store_id)
        return [
            *_variants(base, "store_id", _strings(64, required=True)),
            *_variants(base, "owner_id", _strings(64, required=True)),
            *_variants(base, "bank_code", ["999", "4", 4, "04' OR '1'='1", None, "", "０４"]),
            *_variants(
                base,
                "account_number",
                ["12-34-56", "1" * 21, "12345", "abcdefgh", 110123456789, None, "１１０１２３４５６７８９"],
            ),
            *_variants(base, "holder_name", [*NOT_STRINGS, *CONTROL_CHARACTERS, "", "h" * 31, None]),
            *_variants(base, "business_type", ["ADMIN", "individual", "", 1, None]),
            *_variants(base, "email", ["a@b@c", "no-at-sign", "x" * 90 + "@example.com", "a @b.c", 1]),
            *_variants(base, "phone", ["010-1234-5678", "+821012345678", "0101234567890", 1012345678]),
            ("business without company details", {**base, "business_type": "CORPORATE"}),
            *_unknown_fields(base),
        ]
    raise AssertionError(route)


# Bodies that are not a JSON object at all, or that JSON parsers trip over.
RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "application/json"),
    ("whitespace", b"  \n ", "application/json"),
    ("truncated", b'{"chat_room_id": 1', "application/json"),
    ("trailing comma", b'{"chat_room_id": 1,}', "application/json"),
    ("null", b"null", "application/json"),
    ("array", b"[1, 2]", "application/json"),
    ("number", b"123", "application/json"),
    ("string", b'"text"', "application/json"),
    ("NaN", b'{"chat_room_id": NaN, "amount": NaN}', "application/json"),
    ("Infinity", b'{"chat_room_id": Infinity, "amount": -Infinity}', "application/json"),
    ("huge exponent", b'{"chat_room_id": 1e999999, "amount": 1e400}', "application/json"),
    ("5000-digit integer", b'{"chat_room_id": ' + b"9" * 5000 + b"}", "application/json"),
    ("deep nesting", b"[" * 30_000 + b"]" * 30_000, "application/json"),
    ("deep object nesting", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "application/json"),
    ("UTF-8 BOM", b"\xef\xbb\xbf{}", "application/json"),
    ("invalid UTF-8", b'{"message": "\xff\xfe\xfa"}', "application/octet-stream"),
    ("lone surrogate", b'{"chat_room_id": 1, "message": "\\ud800", "cancelReason": "\\udfff"}', "application/json"),
    ("lone surrogate key", b'{"\\ud800": 1}', "application/json"),
    (
        "lone surrogate paymentKey",
        b'{"paymentKey": "\\ud800", "chat_room_id": 1, "store_id": "\\udc00"}',
        "application/json",
    ),
    ("form encoded", b"chat_room_id=1&amount=15000", "application/x-www-form-urlencoded"),
    ("1 MB", json.dumps({"message": "a" * (1 << 20)}).encode(), "application/json"),
    ("1 MB of spaces", b" " * (1 << 20) + b"{}", "application/json"),
]

ROUTE_USER = {
    "request": lambda s: s.room.owner,
    "prepare": lambda s: s.room.members[1],
    "initiate": lambda s: s.room.members[1],
    "confirm": lambda s: s.room.members[1],
    "cancel": lambda s: s.room.members[0],
    "release": lambda s: s.room.owner,
    "admin/stores": lambda s: "ops_admin",
}


@pytest.mark.parametrize("route", list(ROUTE_USER))
def test_malformed_and_malicious_bodies_get_a_clear_4xx_and_write_nothing(route, api, stage, toss, sql):
    path = f"/api/v1/{route}" if route.startswith("admin") else f"/api/v1/payment/{route}"
    user = ROUTE_USER[route](stage)
    auth = {"authorization": f"Bearer {token(user, role='admin') if route.startswith('admin') else token(user)}"}
    webhooks_settled(toss)
    before, posts = fingerprint(sql), toss_posts(toss)
    for name, body in hostile_bodies(route, stage):
        r = requests.post(api + path, json=body, headers=auth, timeout=30)
        assert_error(r, (400, 404, 409, 413, 422), why=(route, name))
        assert r.status_code != 409 or r.json()["error"]["code"] in ("ORDER_ID_ALREADY_USED", "PAYMENT_KEY_IN_USE"), (
            name
        )
    for name, raw, content_type in RAW_BODIES:
        r = post_raw(api, path, raw, {**auth, "content-type": content_type})
        assert_error(r, 413 if name.startswith("1 MB") else (400, 422), why=(route, name))
        if name.startswith("1 MB"):
            assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert fingerprint(sql) == before, route
    assert toss_posts(toss) == posts, route


def test_hostile_path_parameters_are_a_clear_404(api, stage):
    client = Client(api, stage.room.members[0])
    for raw in (
        "0",
        "-1",
        "1.5",
        "1e3",
        "%20123",
        "123%20OR%201=1",
        "%00",
        "１２３",
        "99999999999999999999999",
        str(2**62 + 1),
        "0x10",
        "'%3B%20DROP%20TABLE%20payments%3B--",
    ):
        r = client.get(f"/api/v1/payment/status/{raw}")
        assert_error(r, 404, "INVALID_CHAT_ROOM_ID", why=raw)


# --- accepted strings are stored exactly as sent ---------------------------------------------------------------

ODD_TEXTS = [
    "'); DROP TABLE payment_requests; --",
    "Robert'); DROP TABLE students;-- 🎉",
    "%s %d %(amount)s {amount} $1 ? :name",
    "back\\slash \\' \\\" \\\\ \\0 \\n",
    "탭\t그리고\n줄바꿈",
    "emoji 👨‍👩‍👧‍👦 🇰🇷 ✅ 𝕏",
    "RTL \u202egnirts\u202c \u200f zero\u200bwidth \ufeff",
    '<script>alert(1)</script> &amp; "quotes"',
    "NULL",
    "   leading and trailing spaces   ",
]


def test_an_accepted_message_is_stored_and_shown_verbatim(as_user, make_room, sql):
    for text in [*ODD_TEXTS, "가" * 500]:
        room = make_room(1)
        r = as_user(room.owner).post(
            "/api/v1/payment/request",
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "message": text},
        )
        assert r.status_code == 201, (text, r.text)
        stored = rows(sql, "SELECT message FROM payment_requests WHERE id = %s", r.json()["payment_request_id"])
        assert stored[0]["message"] == text
        shown = as_user(room.members[0]).get(f"/api/v1/payment/status/{room.chat_room_id}").json()
        assert shown["payment_request"]["message"] == text


def test_an_accepted_cancel_reason_is_stored_and_sent_to_toss_verbatim(as_user, toss, make_room, sql):
    room, _, keys = funded_room(as_user, toss, make_room, n=1)
    payer = room.members[0]
    reasons = [*ODD_TEXTS[:6], "이" * 200]
    for reason in reasons:  # partial refunds of 100 KRW each, one per reason
        r = as_user(payer).post(
            "/api/v1/payment/cancel", {"paymentKey": keys[payer], "cancelReason": reason, "cancelAmount": 100}
        )
        assert r.status_code == 200, (reason, r.text)
    stored = rows(
        sql,
        "SELECT reason FROM payment_cancels WHERE payment_id = "
        "(SELECT id FROM payments WHERE payment_key = %s) ORDER BY id",
        keys[payer],
    )
    assert [row["reason"] for row in stored] == reasons
    sent = [c["body"]["cancelReason"] for c in toss.calls(f"/v1/payments/{keys[payer]}/cancel") if c["status"] == 200]
    assert sent == reasons
    assert toss.payment(keys[payer])["balanceAmount"] == 15000 - 100 * len(reasons)


def test_odd_but_legal_payment_fields_are_stored_verbatim(as_user, toss, make_room, sql):
    room = make_room(1)
    open_request(as_user, room)
    payer = room.members[0]
    # A paymentKey made of legal characters that Toss has never issued: Toss says no, the attempt is recorded as sent.
    order = prepare(as_user, room, payer)
    bogus = "'OR'1'='1';--"
    r = as_user(payer).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": bogus, "orderId": order["orderId"]},
    )
    assert_error(r, 402, "PAYMENT_DECLINED")
    failed = rows(sql, "SELECT payment_key, status FROM payment_orders WHERE order_id = %s", order["orderId"])
    assert failed == [{"payment_key": bogus, "status": "failed"}]
    assert rows(sql, "SELECT COUNT(*) AS n FROM ledger_entries WHERE reference = %s", bogus)[0]["n"] == 0

    # The payer then pays for real, with an odd payment_method label that is stored exactly.
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"])
    method = "card'; DROP TABLE x;--🎉"
    r = as_user(payer).post(
        "/api/v1/payment/initiate",
        {
            "chat_room_id": room.chat_room_id,
            "amount": 15000,
            "paymentKey": key,
            "orderId": order["orderId"],
            "payment_method": method,
        },
    )
    assert r.status_code == 200, r.text
    assert rows(sql, "SELECT method, status FROM payments WHERE payment_key = %s", key) == [
        {"method": method, "status": "completed"}
    ]


# --- webhooks --------------------------------------------------------------------------------------------------


def webhook_rows(sql, transmission_id: str) -> list[dict[str, Any]]:
    return list(
        rows(
            sql,
            "SELECT event_type, verification, outcome, detail FROM payment_webhooks WHERE transmission_id = %s "
            "ORDER BY id",
            transmission_id,
        )
    )


def finished_webhook_rows(sql, transmission_id: str) -> list[dict[str, Any]]:
    """The delivery's log rows once processing has finished (a row is written as 'received' first)."""
    return eventually(
        lambda: [w for w in webhook_rows(sql, transmission_id) if w["outcome"] != "received"] or None, timeout=15
    )


def seller_event(seller_id: str, ref: str, status: str, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "eventType": "seller.changed",
            "createdAt": datetime.now(UTC).isoformat(),
            "version": "2022-11-16",
            "eventId": event_id or f"evt_{uuid.uuid4().hex}",
            "entityType": "seller",
            "entityBody": {"id": seller_id, "refSellerId": ref, "status": status},
        }
    ).encode()


def test_signed_events_that_do_not_verify_are_logged_and_change_nothing(as_user, toss, make_room, sql, api):
    from toss_sandbox import DEFAULT_SECURITY_KEY, sign_webhook

    room = make_room(1)
    store = register_store(as_user, room)
    assert store["seller_status"] == "APPROVAL_REQUIRED"
    hook = f"{api}/api/v1/payment/webhook"
    body = seller_event(store["seller_id"], room.store_id, "APPROVED")

    def signed_at(when: datetime, **changes: str) -> dict[str, str]:
        headers = signed_headers(body, when=when)
        headers.update(changes)
        return headers

    now = datetime.now(UTC)
    fresh = signed_headers(body)
    sent_time = fresh["tosspayments-webhook-transmission-time"]
    other_body = seller_event(store["seller_id"], room.store_id, "APPROVED")
    variants = {
        "no signature": {k: v for k, v in fresh.items() if k != "tosspayments-webhook-signature"},
        "empty signature": {**fresh, "tosspayments-webhook-signature": ""},
        "wrong key": signed_headers(body, key="ab" * 32),
        "not base64": {**fresh, "tosspayments-webhook-signature": "v1:!!!not-base64!!!"},
        "unknown version": {
            **fresh,
            "tosspayments-webhook-signature": "v2:" + fresh["tosspayments-webhook-signature"].split(":", 1)[1],
        },
        "signature of another body": {
            **fresh,
            "tosspayments-webhook-signature": sign_webhook(other_body, sent_time, DEFAULT_SECURITY_KEY),
        },
        "key used as ASCII": {
            **fresh,
            "tosspayments-webhook-signature": sign_webhook(body, sent_time, DEFAULT_SECURITY_KEY, encoding="ascii"),
        },
        "time changed after signing": {
            **fresh,
            "tosspayments-webhook-transmission-time": (now + timedelta(seconds=1)).isoformat(timespec="seconds"),
        },
        "no transmission time": {k: v for k, v in fresh.items() if k != "tosspayments-webhook-transmission-time"},
        "nine days old (older than any retry of Toss's)": signed_at(now - timedelta(days=9)),
        "an hour in the future": signed_at(now + timedelta(hours=1)),
    }
    for name, headers in variants.items():
        headers = {**headers, "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}"}
        r = requests.post(hook, data=body, headers=headers, timeout=10)
        assert_error(r, 401, "WEBHOOK_NOT_VERIFIED", why=name)
        logged = webhook_rows(sql, headers["tosspayments-webhook-transmission-id"])
        assert [(w["event_type"], w["outcome"]) for w in logged] == [("seller.changed", "rejected")], name
        assert logged[0]["verification"] in ("bad_signature", "stale"), (name, logged)
    # A signed time that is not a time at all: the signature verifies, the freshness check refuses it.
    from toss_sandbox import sign_webhook as sign

    odd = {
        **fresh,
        "tosspayments-webhook-transmission-time": "yesterday",
        "tosspayments-webhook-signature": sign(body, "yesterday", DEFAULT_SECURITY_KEY),
        "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}",
    }
    assert_error(requests.post(hook, data=body, headers=odd, timeout=10), 401, "WEBHOOK_NOT_VERIFIED")

    # The sandbox forging one (signed with a key that is not ours).
    sent = toss.control("webhooks/send", {"eventType": "seller.changed", "sellerId": store["seller_id"], "forge": True})
    assert finished_webhook_rows(sql, sent["transmissionId"])[0]["outcome"] == "rejected"

    status = rows(sql, "SELECT seller_status FROM stores WHERE store_id = %s", room.store_id)
    assert status[0]["seller_status"] == "APPROVAL_REQUIRED"

    # The genuine delivery is processed once; its replays (same headers, or re-sent later) are recognised.
    assert requests.post(hook, data=body, headers=fresh, timeout=10).json() == {"status": "processed"}
    assert rows(sql, "SELECT seller_status FROM stores WHERE store_id = %s", room.store_id)[0]["seller_status"] == (
        "APPROVED"
    )
    replay = requests.post(hook, data=body, headers=fresh, timeout=10)
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    # Toss's own retry hours later, with the original transmission time (a resend from its dashboard): recognised,
    # never refused as stale (a 401 there would make Toss retry for days, and seller.changed has no polling).
    late = {
        **signed_at(now - timedelta(hours=3)),
        "tosspayments-webhook-transmission-id": fresh["tosspayments-webhook-transmission-id"],
    }
    late_answer = requests.post(hook, data=body, headers=late, timeout=10)
    assert late_answer.status_code == 200 and late_answer.json() == {"status": "duplicate"}, late_answer.text
    again = {**signed_headers(body), "tosspayments-webhook-transmission-id": f"whtrans_{uuid.uuid4().hex}"}
    replay = requests.post(hook, data=body, headers=again, timeout=10)  # same eventId, new transmission
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}


def test_payment_events_are_checked_with_toss_never_believed(as_user, toss, make_room, sql, api):
    hook = f"{api}/api/v1/payment/webhook"
    # A refunded share: a forged "it is DONE" claim must not bring it back.
    room, _request_id, keys = funded_room(as_user, toss, make_room, n=1)
    refunded_key = keys[room.members[0]]
    r = as_user(room.members[0]).post("/api/v1/payment/cancel", {"paymentKey": refunded_key, "cancelReason": "환불"})
    assert r.status_code == 200, r.text
    # A declined payment (ABORTED at Toss): a forged DONE must not complete it.
    room2 = make_room(1)
    open_request(as_user, room2)
    order2 = prepare(as_user, room2, room2.members[0])
    aborted_key = toss.widget(order2["orderId"], order2["amount"])
    toss.faults(failure_rate=1.0, paths=["/v1/payments/confirm"])  # a real decline: Toss marks the payment ABORTED
    r = as_user(room2.members[0]).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room2.chat_room_id, "amount": 15000, "paymentKey": aborted_key, "orderId": order2["orderId"]},
    )
    assert r.status_code == 402, r.text
    toss.clear_faults()
    webhooks_settled(toss)
    before = fingerprint(sql)

    for key in (refunded_key, aborted_key):
        sent = toss.control("webhooks/send", {"eventType": "PAYMENT_STATUS_CHANGED", "paymentKey": key, "forge": True})
        assert json.loads(sent["body"])["data"]["status"] == "DONE"  # the lie
        logged = finished_webhook_rows(sql, sent["transmissionId"])
        assert logged[0]["verification"] == "fetched", logged  # what counts is what Toss says when asked

    crafted = [
        # Not a payment of ours: not looked up at Toss, nothing kept, 200 (issue 7, finding 11).
        ("unknown paymentKey", {"data": {"paymentKey": "tgen_20260101000000FAKE1", "status": "DONE"}}, 200),
        (
            "orderId only, claims DONE",
            {"data": {"orderId": order2["orderId"], "status": "DONE", "totalAmount": 15000}},
            200,
        ),
        ("data is a string", {"data": "DONE"}, 401),
        ("data without keys", {"data": {"status": "DONE"}}, 401),
        ("paymentKey is a number", {"data": {"paymentKey": 12345, "status": "DONE"}}, 401),
        ("paymentKey with path tricks", {"data": {"paymentKey": "../../v2/payouts", "status": "DONE"}}, 401),
        ("SQL in the paymentKey", {"data": {"paymentKey": "' OR '1'='1", "status": "DONE"}}, 401),
    ]
    for name, data, status in crafted:
        transmission = f"whtrans_{uuid.uuid4().hex}"
        r = requests.post(
            hook,
            json={"eventType": "PAYMENT_STATUS_CHANGED", "createdAt": "2026-11-23T00:00:00.000000", **data},
            headers={"tosspayments-webhook-transmission-id": transmission},
            timeout=10,
        )
        assert r.status_code == status, (name, r.text)
        assert len(webhook_rows(sql, transmission)) == 1, name

    webhooks_settled(toss)
    assert fingerprint(sql) == before
    assert rows(sql, "SELECT status FROM payments WHERE payment_key = %s", refunded_key)[0]["status"] == "refunded"
    assert rows(sql, "SELECT status FROM payments WHERE order_id = %s", order2["orderId"])[0]["status"] == "failed"
    assert toss.payment(refunded_key)["status"] == "CANCELED" and toss.payment(aborted_key)["status"] == "ABORTED"


SHARE_OF_CHARGE = (
    "SELECT p.status FROM payments p JOIN payment_charges c ON c.payment_id = p.id WHERE c.payment_key = %s"
)


def test_deposit_callbacks_need_the_payments_secret_and_toss_to_agree(as_user, toss, make_room, sql, api):
    hook = f"{api}/api/v1/payment/webhook"
    room = make_room(1)
    request_id = open_request(as_user, room)
    payer = room.members[0]
    order = prepare(as_user, room, payer)
    key = toss.widget(order["orderId"], order["amount"], method="가상계좌")
    r = as_user(payer).post(
        "/api/v1/payment/initiate",
        {"chat_room_id": room.chat_room_id, "amount": 15000, "paymentKey": key, "orderId": order["orderId"]},
    )
    assert r.status_code == 200 and r.json()["payment_status"] == "in_progress", r.text
    secret = eventually(
        lambda: rows(sql, "SELECT secret FROM payment_charges WHERE payment_key = %s", key)[0]["secret"]
    )
    webhooks_settled(toss)
    before = fingerprint(sql)

    def callback(**fields: Any) -> requests.Response:
        body = {
            "createdAt": "2026-11-23T00:00:00.000000",
            "secret": secret,
            "status": "DONE",
            "transactionKey": f"tx_{uuid.uuid4().hex[:12]}",
            "orderId": order["orderId"],
            **fields,
        }
        return requests.post(hook, json=body, timeout=10)

    assert_error(callback(secret="ps_forged"), 401, "WEBHOOK_NOT_VERIFIED")
    assert_error(callback(secret=""), 401, "WEBHOOK_NOT_VERIFIED")
    assert_error(callback(secret=secret.upper() if secret != secret.upper() else secret.lower()), 401)
    assert_error(callback(secret=secret + "x"), 401)
    assert_error(callback(secret=12345), 401)
    assert_error(callback(orderId="' OR '1'='1"), 401)  # no such order: no secret to match
    # The right secret, but the body lies: Toss says the account is still waiting, so nothing changes.
    assert callback().status_code == 200
    sent = toss.control("webhooks/send", {"eventType": "DEPOSIT_CALLBACK", "paymentKey": key, "forge": True})
    logged = finished_webhook_rows(sql, sent["transmissionId"])
    assert (logged[0]["verification"], logged[0]["outcome"]) == ("secret_mismatch", "rejected")
    assert fingerprint(sql) == before
    assert rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "in_progress"

    # The real deposit: Toss's own callback completes it once; a replay of that delivery changes nothing more.
    toss.control(f"payments/{key}/deposit", {})
    eventually(lambda: rows(sql, SHARE_OF_CHARGE, key)[0]["status"] == "completed")
    deposit = eventually(
        lambda: [
            w
            for w in toss.webhooks()
            if w["eventType"] == "DEPOSIT_CALLBACK"
            and json.loads(w["body"])["orderId"] == order["orderId"]
            and json.loads(w["body"])["status"] == "DONE"
            and w["state"] == "delivered"
        ]
    )[0]
    toss.control("webhooks/send", {"replay_transmission_id": deposit["transmissionId"]})
    eventually(lambda: any(w["outcome"] == "duplicate" for w in webhook_rows(sql, deposit["transmissionId"])))
    charges = rows(
        sql, "SELECT amount FROM ledger_entries WHERE payment_request_id = %s AND entry_type = 'charge'", request_id
    )
    assert [c["amount"] for c in charges] == [15000]


def test_webhook_bodies_that_are_not_events_are_logged_and_refused(api, sql):
    hook = f"{api}/api/v1/payment/webhook"
    cases = [
        ("not JSON", b"eventType=PAYMENT_STATUS_CHANGED", 400),
        ("an array", b"[]", 400),
        ("deeply nested", b"[" * 30_000 + b"]" * 30_000, 413),  # larger than any Toss webhook
        ("deeply nested, small", b"[" * 10_000 + b"]" * 10_000, 400),
        ("lone surrogate", b'{"eventType": "\\ud800", "eventId": "\\udfff"}', 400),
        ("unknown event", json.dumps({"eventType": "DROP TABLE payments; --"}).encode(), 200),
        ("no event type", b"{}", 200),
    ]
    for name, body, status in cases:
        transmission = f"whtrans_{uuid.uuid4().hex}"
        r = requests.post(
            hook,
            data=body,
            headers={"content-type": "application/json", "tosspayments-webhook-transmission-id": transmission},
            timeout=10,
        )
        assert r.status_code == status, (name, r.text)
        if status != 200:
            assert_error(r, status, why=name)
        logged = webhook_rows(sql, transmission)
        assert len(logged) == 1 and logged[0]["outcome"] in ("rejected", "ignored"), (name, logged)
    r = requests.post(
        hook, data=b'{"a": "' + b"x" * (1 << 20) + b'"}', headers={"content-type": "application/json"}, timeout=10
    )
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


# --- the database goes away -------------------------------------------------------------------------------------


def _abort(sock: socket.socket) -> None:
    """Drop a connection the way a dead server or a firewall does. shutdown() first: a bare close() does not wake a
    thread blocked in recv() on Linux, and the connection would stay open (holding its transaction's locks)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a polite FIN
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()


class DbProxy:
    """A TCP forwarder between one API instance and MariaDB that the test can break.

    `cut_when(pattern)`: the connection that sends a statement containing `pattern` dies before MariaDB sees it (the
    server rolls back that connection's open transaction); `down_when(pattern)` does the same to every connection
    and refuses new ones until `up()`. `down()` / `hang()`: now, refusing or accepting-and-never-answering.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []
        self._mode = "up"  # up | refuse | hang
        self._trigger: tuple[bytes, str] | None = None
        self.triggered = threading.Event()
        threading.Thread(target=self._accept, name="db-proxy", daemon=True).start()

    # controls
    def cut_when(self, pattern: bytes) -> None:
        self._arm(pattern, "cut")

    def down_when(self, pattern: bytes) -> None:
        self._arm(pattern, "down")

    def cut_after(self, pattern: bytes) -> None:
        """The statement containing `pattern` reaches MariaDB (and is done), but its answer never comes back."""
        self._arm(pattern, "cut_after")

    def _arm(self, pattern: bytes, action: str) -> None:
        self.triggered.clear()
        with self._lock:
            self._trigger = (pattern, action)

    def down(self) -> None:
        with self._lock:
            self._mode = "refuse"
        self._kill_all()

    def hang(self) -> None:
        with self._lock:
            self._mode = "hang"
        self._kill_all()

    def up(self) -> None:
        with self._lock:
            self._mode, self._trigger = "up", None
            held, self._held = self._held, []
        for sock in held:
            _abort(sock)

    def close(self) -> None:
        self.down()
        self._listener.close()

    # plumbing
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "hang":
                    self._held.append(client)
            if mode == "refuse":
                _abort(client)
            if mode != "up":
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _abort(client)
                continue
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair, client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, server, client, False), daemon=True).start()

    def _pump(
        self, pair: tuple[socket.socket, socket.socket], src: socket.socket, dst: socket.socket, from_client: bool
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and self._fire(data, pair, dst):
                    return
                dst.sendall(data)
        except OSError:
            pass
        self._drop(pair)

    def _fire(self, data: bytes, pair: tuple[socket.socket, socket.socket], dst: socket.socket) -> bool:
        with self._lock:
            if self._trigger is None or self._trigger[0] not in data:
                return False
            action = self._trigger[1]
            self._trigger = None
            if action == "down":
                self._mode = "refuse"
        if action == "cut_after":
            dst.sendall(data)
            time.sleep(0.3)  # MariaDB has done it; its answer is dropped with the connection
            self._drop(pair)
        elif action == "down":
            self._kill_all()
        else:
            self._drop(pair)
        self.triggered.set()
        return True

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            _abort(sock)

    def _kill_all(self) -> None:
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            for sock in pair:
                _abort(sock)


@dataclass
class FragileApi:
    url: str
    proxy: DbProxy
    pid: int

    def client(self, user: str | None) -> Client:
        return Client(self.url, user)


@pytest.fixture(scope="module")
def fragile(api: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FragileApi]:
    """A second local API (its own process, 2 workers) whose database connections go through a DbProxy."""
    params = parse_database_url(database_url)
    proxy = DbProxy((params.host, params.port))
    log = tmp_path_factory.mktemp("fragile") / "api.log"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}",
        "DATABASE_URL": f"mysql://{params.user}:{params.password}@127.0.0.1:{proxy.port}/{params.database}",
        "DB_CONNECT_TIMEOUT": "1",
        "DB_READ_TIMEOUT": "2",
        "DB_WRITE_TIMEOUT": "2",
        "OUTBOX_PUBLISHER": "log",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local.api", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        found = eventually(lambda: re.search(r"local API on (http://[0-9.]+:[0-9]+)", log.read_text()), timeout=30)
        yield FragileApi(found.group(1), proxy, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proxy.close()


@pytest.fixture()
def no_webhooks(toss, api: str) -> Iterator[None]:
    """Toss's webhooks would repair what the test wants to look at; switch them off for the test."""
    toss.control("config", {"webhook_url": None})
    try:
        yield
    finally:
        toss.control("config", {"webhook_url": f"{api}/api/v1/payment/webhook"})


def _pay_through(fragile: FragileApi, toss, room, payer: str) -> tuple[requests.Response, dict[str, Any]]:
    r = fragile.client(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id})
    assert r.status_code == 200, r.text
    order = r.json()
    key = toss.widget(order["orderId"], order["amount"])
    body = {
        "chat_room_id": room.chat_room_id,
        "amount": order["amount"],
        "paymentKey": key,
        "orderId": order["orderId"],
    }
    return fragile.client(payer).post("/api/v1/payment/initiate", body), body


def _request_status(sql, request_id: int) -> str:
    return str(rows(sql, "SELECT status FROM payment_requests WHERE id = %s", request_id)[0]["status"])


def _ledger(sql, request_id: int) -> list[tuple[str, int]]:
    found = rows(
        sql, "SELECT entry_type, amount FROM ledger_entries WHERE payment_request_id = %s ORDER BY id", request_id
    )
    return [(e["entry_type"], e["amount"]) for e in found]


def test_the_database_dying_inside_a_transaction_leaves_all_or_nothing(fragile, toss, make_room, sql, no_webhooks):
    room = make_room(1)
    payer = room.members[0]
    owner = fragile.client(room.owner)
    open_body = {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000, "message": "예약금"}

    # Opening a request writes the request and its shares: the connection dies at the shares.
    fragile.proxy.cut_when(b"INSERT INTO payments")
    assert_error(owner.post("/api/v1/payment/request", open_body), 503, "DATABASE_UNAVAILABLE")
    assert fragile.proxy.triggered.is_set()
    assert rows(sql, "SELECT id FROM payment_requests WHERE chat_room_id = %s", room.chat_room_id) == []
    r = owner.post("/api/v1/payment/request", open_body)  # the same worker reconnects: no restart
    assert r.status_code == 201, r.text
    request_id = r.json()["payment_request_id"]

    # Confirm: Toss approves, then the connection dies while the charge is being recorded.
    fragile.proxy.cut_when(b"INSERT INTO ledger_entries")
    r, body = _pay_through(fragile, toss, room, payer)
    assert_error(r, 503, "DATABASE_UNAVAILABLE")
    assert toss.payment(body["paymentKey"])["status"] == "DONE"
    share = rows(sql, "SELECT status, paid_amount FROM payments WHERE payment_request_id = %s", request_id)
    assert share == [{"status": "in_progress", "paid_amount": 0}]  # recorded as sent, nothing more
    assert _ledger(sql, request_id) == []
    assert rows(sql, "SELECT id FROM outbox WHERE aggregate_id = %s", str(request_id)) == []
    r = fragile.client(payer).post("/api/v1/payment/initiate", body)  # the app retries: Toss replays, one charge
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    assert _ledger(sql, request_id) == [("charge", 15000)]
    assert _request_status(sql, request_id) == "completed"
    approvals = [
        c
        for c in toss.calls("/v1/payments/confirm")
        if c["body"]["orderId"] == body["orderId"] and c["status"] == 200 and not c["replayed"]
    ]
    assert len(approvals) == 1

    # Cancel: Toss refunds, then the connection dies while the refund is being recorded.
    cancel = {"paymentKey": body["paymentKey"], "cancelReason": "예약 취소"}
    fragile.proxy.cut_when(b"INSERT INTO ledger_entries")
    assert_error(fragile.client(payer).post("/api/v1/payment/cancel", cancel), 503, "DATABASE_UNAVAILABLE")
    assert toss.payment(body["paymentKey"])["balanceAmount"] == 0
    assert rows(sql, "SELECT status, refunded_amount FROM payments WHERE payment_request_id = %s", request_id) == [
        {"status": "completed", "refunded_amount": 0}
    ]
    assert _ledger(sql, request_id) == [("charge", 15000)]
    assert _request_status(sql, request_id) == "completed"
    r = fragile.client(payer).post("/api/v1/payment/cancel", cancel)  # asked again with the same key: no 2nd refund
    assert r.status_code == 200 and r.json()["refund_status"] == "refunded", r.text
    assert _ledger(sql, request_id) == [("charge", 15000), ("refund", 15000)]
    assert _request_status(sql, request_id) == "pending"
    refunds = [
        c for c in toss.calls(f"/v1/payments/{body['paymentKey']}/cancel") if c["status"] == 200 and not c["replayed"]
    ]
    assert len(refunds) == 1

    # Release: the connection dies while the settlement is written, after every share was marked released.
    room2 = make_room(1)
    r = fragile.client(room2.owner).post(
        "/api/v1/payment/request", {"chat_room_id": room2.chat_room_id, "store_id": room2.store_id, "amount": 15000}
    )
    request2 = r.json()["payment_request_id"]
    assert _pay_through(fragile, toss, room2, room2.members[0])[0].status_code == 200
    fragile.proxy.cut_when(b"INSERT INTO payment_settlements")
    release = {"chat_room_id": room2.chat_room_id}
    assert_error(fragile.client(room2.owner).post("/api/v1/payment/release", release), 503, "DATABASE_UNAVAILABLE")
    assert _request_status(sql, request2) == "completed"
    assert rows(sql, "SELECT status FROM payments WHERE payment_request_id = %s", request2) == [{"status": "completed"}]
    assert _ledger(sql, request2) == [("charge", 15000)]
    assert rows(sql, "SELECT id FROM payment_settlements WHERE payment_request_id = %s", request2) == []
    r = fragile.client(room2.owner).post("/api/v1/payment/release", release)
    assert r.status_code == 200, r.text
    assert _ledger(sql, request2) == [("charge", 15000), ("release", 15000)]
    assert len(rows(sql, "SELECT id FROM payment_settlements WHERE payment_request_id = %s", request2)) == 1


def test_an_unreachable_database_is_a_503_everywhere_and_recovery_needs_no_restart(
    fragile, toss, make_room, sql, no_webhooks
):
    room = make_room(2)
    first, second = room.members
    r = fragile.client(room.owner).post(
        "/api/v1/payment/request", {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000}
    )
    assert r.status_code == 201, r.text
    request_id = r.json()["payment_request_id"]
    paid, paid_body = _pay_through(fragile, toss, room, first)
    assert paid.status_code == 200, paid.text

    # The database goes away while the second payer's confirm is in flight (Toss has approved it) and stays away.
    fragile.proxy.down_when(b"INSERT INTO ledger_entries")
    r, body = _pay_through(fragile, toss, room, second)
    assert_error(r, 503, "DATABASE_UNAVAILABLE")
    assert toss.payment(body["paymentKey"])["status"] == "DONE"
    posts = toss_posts(toss)

    admin = {"authorization": f"Bearer {token('ops_admin', role='admin')}"}
    calls: list[tuple[str, str, str | None, Any, dict[str, str]]] = [
        ("GET", f"/api/v1/payment/status/{room.chat_room_id}", first, None, {}),
        (
            "POST",
            "/api/v1/payment/request",
            room.owner,
            {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000},
            {},
        ),
        ("POST", "/api/v1/payment/prepare", second, {"chat_room_id": room.chat_room_id}, {}),
        ("POST", "/api/v1/payment/initiate", second, body, {}),
        ("POST", "/api/v1/payment/cancel", first, {"paymentKey": paid_body["paymentKey"], "cancelReason": "x"}, {}),
        ("POST", "/api/v1/payment/release", room.owner, {"chat_room_id": room.chat_room_id}, {}),
        ("POST", "/api/v1/admin/stores", None, store_body(f"down_{uuid.uuid4().hex[:8]}"), admin),
        (
            "POST",
            "/api/v1/payment/webhook",
            None,
            {"eventType": "PAYMENT_STATUS_CHANGED", "data": {"paymentKey": body["paymentKey"]}},
            {},
        ),
    ]

    def every_route_is_503(mode: str, which: slice = slice(None)) -> None:
        for method, path, user, payload, extra in calls[which]:
            headers = {"authorization": f"Bearer {token(user)}"} if user else {}
            started = time.monotonic()
            r = requests.request(method, fragile.url + path, json=payload, headers={**headers, **extra}, timeout=30)
            assert_error(r, 503, "DATABASE_UNAVAILABLE", why=(mode, path))
            assert time.monotonic() - started < 10, (mode, path)  # a quick, clear answer, not a hung client

    every_route_is_503("refused")
    # Now the server accepts connections and never answers: the read timeout (2 s here) ends each attempt.
    fragile.proxy.hang()
    every_route_is_503("unanswered", slice(0, 8, 3))  # status, initiate, admin stores: each waits the timeout
    assert toss_posts(toss) == posts  # nothing was sent to Toss while we could not record it

    fragile.proxy.up()
    status = fragile.client(first).get(f"/api/v1/payment/status/{room.chat_room_id}")
    assert status.status_code == 200, status.text
    r = fragile.client(second).post("/api/v1/payment/initiate", body)
    assert r.status_code == 200 and r.json()["payment_status"] == "completed", r.text
    assert _request_status(sql, request_id) == "completed"
    assert sorted(_ledger(sql, request_id)) == [("charge", 15000), ("charge", 15000)]
    funded = rows(
        sql, "SELECT COUNT(*) AS n FROM outbox WHERE aggregate_id = %s AND event_type = 'EscrowFunded'", str(request_id)
    )
    assert funded[0]["n"] == 1
    assert os.path.exists(f"/proc/{fragile.pid}")  # the same process throughout


# --- issue 7, finding 8: a 503 after a commit never says that nothing changed --------------------------------


def test_a_release_whose_commit_answer_is_lost_says_so_and_the_retry_gets_the_first_outcome(
    fragile, toss, make_room, sql, no_webhooks
):
    room = make_room(1)
    owner = fragile.client(room.owner)
    r = owner.post(
        "/api/v1/payment/request", {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000}
    )
    request_id = r.json()["payment_request_id"]
    paid, _ = _pay_through(fragile, toss, room, room.members[0])
    assert paid.status_code == 200, paid.text
    fragile.proxy.cut_after(b"COMMIT")  # MariaDB commits; the answer to COMMIT never arrives
    r = owner.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    if r.status_code == 503:
        error = r.json()["error"]
        assert "nothing was changed" not in error["message"] and error.get("outcome") == "unknown", r.text
    else:
        assert r.status_code == 200, r.text
    assert _request_status(sql, request_id) == "released"
    retry = owner.post("/api/v1/payment/release", {"chat_room_id": room.chat_room_id})
    body = retry.json()
    if retry.status_code == 409:
        body = body["error"]
        assert body["code"] == "ALREADY_RELEASED"
    else:
        assert retry.status_code == 200, retry.text
    assert [p["amount"] for p in body["released_payments"]] == [15000]
    assert body["settlement"]["gross_amount"] == 15000


def test_a_room_cancel_whose_commit_answer_is_lost_is_answered_by_the_retry(fragile, toss, make_room, sql, no_webhooks):
    room = make_room(1)
    owner = fragile.client(room.owner)
    r = owner.post(
        "/api/v1/payment/request", {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 15000}
    )
    request_id = r.json()["payment_request_id"]
    paid, body = _pay_through(fragile, toss, room, room.members[0])
    assert paid.status_code == 200, paid.text
    fragile.proxy.cut_after(b"COMMIT")
    cancel = {"chat_room_id": room.chat_room_id, "cancelReason": "가게 사정"}
    r = owner.post("/api/v1/payment/cancel", cancel)
    if r.status_code == 503:
        assert "nothing was changed" not in r.json()["error"]["message"], r.text
    assert _request_status(sql, request_id) == "cancelled"
    retry = owner.post("/api/v1/payment/cancel", cancel)
    assert retry.status_code in (200, 202), retry.text
    assert retry.json()["payment_request_status"] == "cancelled"
    eventually(lambda: toss.payment(body["paymentKey"])["balanceAmount"] == 0 or None, timeout=20)
