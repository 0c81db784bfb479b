"""The reference chat client's server side on the running local stack: what its pages call, in their order.
(The pages themselves are driven in a real browser by the browser test of issue 11 item 3, not yet written.)"""

from __future__ import annotations

import requests

from tests.ops.conftest import Rooms, Stack


def test_the_demo_is_served_and_its_payment_flow_works_through_the_local_api(stack: Stack, rooms: Rooms) -> None:
    page = requests.get(f"{stack.api}/demo/", timeout=10)
    assert page.status_code == 200 and "모임 예약금" in page.text

    room = rooms.new(1)
    rooms.open_request(room)
    payer = room.members[0]
    token = requests.post(f"{stack.api}/demo/token", json={"user_id": payer}, timeout=10).json()["token"]
    auth = {"authorization": f"Bearer {token}"}
    order = requests.post(
        f"{stack.api}/api/v1/payment/prepare", json={"chat_room_id": room.chat_room_id}, headers=auth, timeout=10
    ).json()
    window = requests.post(
        f"{stack.api}/demo/widget",
        json={"orderId": order["orderId"], "amount": order["amount"], "orderName": order["orderName"]},
        timeout=10,
    )
    assert window.status_code in (200, 201), window.text
    confirm = requests.post(
        f"{stack.api}/api/v1/payment/confirm",
        json={
            "chat_room_id": room.chat_room_id,
            "orderId": order["orderId"],
            "paymentKey": window.json()["paymentKey"],
            "amount": order["amount"],
            "payment_method": "card",
        },
        headers=auth,
        timeout=30,
    )
    assert confirm.status_code == 200, confirm.text
    assert confirm.json()["payment_status"] == "completed"
    status = requests.get(f"{stack.api}/api/v1/payment/status/{room.chat_room_id}", headers=auth, timeout=10).json()
    assert status["payment_request"]["status"] == "completed"
