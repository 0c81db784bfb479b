"""RequestFunction through API Gateway events, against real MariaDB."""

from __future__ import annotations

import json

import pytest

from tests.support.events import Context, http_event
from tests.support.functions import load_function

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture(scope="module")
def request_fn():
    return load_function("request")


def call(fn, method, path, **kw):
    result = fn.lambda_handler(http_event(method, path, **kw), Context())
    return result["statusCode"], json.loads(result["body"]) if result.get("body") else None


def test_owner_opens_a_request_and_every_participant_shows_pending(request_fn, make_room, sql):
    room = make_room(2)
    status, body = call(
        request_fn,
        "POST",
        "/api/v1/payment/request",
        user=room.owner,
        body={
            "chat_room_id": room.chat_room_id,
            "store_id": room.store_id,
            "amount": 15000,
            "message": "예약금 요청합니다.",
        },
    )
    assert status == 201
    assert body == {"payment_request_id": body["payment_request_id"], "status": "pending"}

    status, view = call(request_fn, "GET", f"/api/v1/payment/status/{room.chat_room_id}", user=room.members[0])
    assert status == 200
    assert view["payment_request"]["payment_request_id"] == body["payment_request_id"]
    assert view["payment_request"]["requester_id"] == room.owner
    assert view["payment_request"]["status"] == "pending"
    assert sorted(p["payer_id"] for p in view["payments"]) == sorted(room.members)
    assert {p["payment_status"] for p in view["payments"]} == {"pending"}
    assert {p["payment_amount"] for p in view["payments"]} == {15000}


def test_a_second_open_request_for_a_room_is_a_409(request_fn, make_room, sql):
    room = make_room(1)
    body = {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 10000}
    assert call(request_fn, "POST", "/api/v1/payment/request", user=room.owner, body=body)[0] == 201
    status, err = call(request_fn, "POST", "/api/v1/payment/request", user=room.owner, body=body)
    assert status == 409 and err["error"]["code"] == "OPEN_REQUEST_EXISTS"
    with sql.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM payment_requests WHERE chat_room_id = %s", (room.chat_room_id,))
        assert cur.fetchone()["n"] == 1


def test_only_the_owner_opens_a_request(request_fn, make_room):
    room = make_room(2)
    status, err = call(
        request_fn,
        "POST",
        "/api/v1/payment/request",
        user=room.members[0],
        body={"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 10000},
    )
    assert status == 403 and err["error"]["code"] == "NOT_ROOM_OWNER"


def test_status_is_for_members_only(request_fn, make_room):
    room = make_room(1)
    call(
        request_fn,
        "POST",
        "/api/v1/payment/request",
        user=room.owner,
        body={"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 10000},
    )
    status, err = call(request_fn, "GET", f"/api/v1/payment/status/{room.chat_room_id}", user="stranger")
    assert status == 403 and err["error"]["code"] == "NOT_ROOM_MEMBER"
