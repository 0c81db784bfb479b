"""The reference chat client's server side on the running local stack: what its pages call, in their order, over
plain HTTP (tests/browser drives the same pages in a real browser)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import requests

from tests.ops.conftest import Rooms, Stack


def test_the_demo_is_served_and_its_payment_flow_works_through_the_local_api(stack: Stack, rooms: Rooms) -> None:
    page = requests.get(f"{stack.api}/demo/", timeout=10)
    assert page.status_code == 200 and "모임 예약금" in page.text
    config = requests.get(f"{stack.api}/demo/config.json", timeout=10).json()
    assert (config["payment_window"], config["toss_sandbox"], config["token_url"]) == (
        "sandbox",
        stack.sandbox,
        "/demo/token",
    )

    room = rooms.new(1)
    rooms.open_request(room)
    payer = room.members[0]
    token = requests.post(f"{stack.api}/demo/token", json={"user_id": payer}, timeout=10).json()["token"]
    auth = {"authorization": f"Bearer {token}"}
    order = requests.post(
        f"{stack.api}/api/v1/payment/prepare", json={"chat_room_id": room.chat_room_id}, headers=auth, timeout=10
    ).json()
    # The payment window (checkout.js opens it with these fields; the payer presses 카드로 결제).
    window = {
        "orderId": order["orderId"],
        "amount": str(order["amount"]),
        "orderName": order["orderName"],
        "customerName": payer,
        "method": "CARD",
        "successUrl": f"{stack.api}/demo/success.html",
        "failUrl": f"{stack.api}/demo/fail.html",
    }
    opened = requests.get(f"{config['toss_sandbox']}/sandbox/checkout", params=window, timeout=10)
    assert opened.status_code == 200 and order["orderId"] in opened.text
    paid = requests.post(
        f"{config['toss_sandbox']}/sandbox/checkout",
        data={**window, "action": "card"},
        allow_redirects=False,
        timeout=10,
    )
    assert paid.status_code in (302, 303), paid.text
    redirect = urlsplit(paid.headers["location"])
    assert f"{redirect.scheme}://{redirect.netloc}{redirect.path}" == f"{stack.api}/demo/success.html"
    query = {k: v[0] for k, v in parse_qs(redirect.query).items()}
    assert (query["orderId"], query["amount"], query["paymentType"]) == (
        order["orderId"],
        str(order["amount"]),
        "NORMAL",
    )
    # success.html: the amount checked against the prepared order, then confirmed through our API.
    assert int(query["amount"]) == order["amount"]
    confirm = requests.post(
        f"{stack.api}/api/v1/payment/confirm",
        json={
            "chat_room_id": room.chat_room_id,
            "orderId": query["orderId"],
            "paymentKey": query["paymentKey"],
            "amount": int(query["amount"]),
        },
        headers=auth,
        timeout=30,
    )
    assert confirm.status_code == 200, confirm.text
    assert confirm.json()["payment_status"] == "completed"
    status = requests.get(f"{stack.api}/api/v1/payment/status/{room.chat_room_id}", headers=auth, timeout=10).json()
    assert status["payment_request"]["status"] == "completed"
