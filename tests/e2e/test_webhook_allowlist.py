"""The optional allowlist of Toss's webhook addresses (TOSS_WEBHOOK_ALLOWED_IPS), through API Gateway events whose
requestContext.http.sourceIp is the sender: another address is refused with 403 before the body is read, logged as
metadata only and counted; no allowlist accepts every sender."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from escrow.webhook_source import TOSS_DOCUMENTED_SOURCES
from tests.support.events import Context, http_event
from tests.support.functions import load_function

pytestmark = pytest.mark.e2e

WEBHOOK = "/api/v1/payment/webhook"
ALLOWLIST = ",".join(TOSS_DOCUMENTED_SOURCES) + ",10.0.0.0/8"


def rows(sql: Any, query: str, *args: Any) -> list[dict[str, Any]]:
    with sql.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


@pytest.fixture()
def allowlist(api: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from escrow.config import reset_settings

    monkeypatch.setenv("TOSS_WEBHOOK_ALLOWED_IPS", ALLOWLIST)
    reset_settings()
    yield
    monkeypatch.delenv("TOSS_WEBHOOK_ALLOWED_IPS")
    reset_settings()


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The metrics the functions add (their EMF output is Powertools' business)."""
    from escrow.observability import metrics

    names: list[str] = []
    add = metrics.add_metric

    def spy(name: str, *args: Any, **kwargs: Any) -> None:
        names.append(name)
        add(name, *args, **kwargs)

    monkeypatch.setattr(metrics, "add_metric", spy)
    return names


def deliver(body: bytes, source_ip: str, transmission_id: str) -> tuple[int, dict[str, Any]]:
    event = http_event(
        "POST",
        WEBHOOK,
        raw_body=body.decode(),
        headers={"tosspayments-webhook-transmission-id": transmission_id},
    )
    event["requestContext"]["http"]["sourceIp"] = source_ip
    result = load_function("webhook").lambda_handler(event, Context())
    return result["statusCode"], json.loads(result["body"])


def paid(as_user: Any, toss: Any, make_room: Any) -> dict[str, Any]:
    """A payment of ours, and the PAYMENT_STATUS_CHANGED Toss would send about it."""
    room = make_room(1)
    r = as_user(room.owner).post(
        "/api/v1/payment/request",
        {"chat_room_id": room.chat_room_id, "store_id": room.store_id, "amount": 12000, "message": "예약금"},
    )
    assert r.status_code == 201, r.text
    payer = room.members[0]
    order = as_user(payer).post("/api/v1/payment/prepare", {"chat_room_id": room.chat_room_id}).json()
    key = toss.widget(order["orderId"], order["amount"])
    body = {
        "chat_room_id": room.chat_room_id,
        "amount": order["amount"],
        "paymentKey": key,
        "orderId": order["orderId"],
    }
    assert as_user(payer).post("/api/v1/payment/confirm", body).status_code == 200
    return {
        "eventType": "PAYMENT_STATUS_CHANGED",
        "createdAt": "2026-01-01T00:00:00.000000",
        "data": {"paymentKey": key, "orderId": order["orderId"], "status": "DONE"},
    }


def test_a_delivery_from_outside_the_allowlist_is_refused_and_kept_as_metadata_only(
    allowlist, as_user, toss, make_room, sql, counted
):
    body = json.dumps(paid(as_user, toss, make_room)).encode()
    key = json.loads(body)["data"]["paymentKey"]
    lookups = len(toss.calls(f"/v1/payments/{key}", "GET"))
    tid = "whtrans_" + uuid.uuid4().hex

    status, answer = deliver(body, "198.51.100.7", tid)

    assert status == 403, answer
    assert answer["error"]["code"] == "WEBHOOK_SOURCE_NOT_ALLOWED"
    logged = rows(
        sql,
        "SELECT raw_body, body_bytes, body_sha256, event_type, subject, verification, outcome "
        "FROM payment_webhooks WHERE transmission_id = %s",
        tid,
    )
    assert len(logged) == 1
    row = logged[0]
    assert (row["verification"], row["outcome"]) == ("source_not_allowed", "rejected")
    assert row["raw_body"] is None and row["event_type"] is None and row["subject"] is None  # never parsed
    assert (row["body_bytes"], row["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert "WebhooksRejected" in counted
    assert len(toss.calls(f"/v1/payments/{key}", "GET")) == lookups  # Toss is not asked about it
    assert not rows(sql, "SELECT dedupe_key FROM webhook_receipts WHERE dedupe_key LIKE %s", f"%{tid}%")


@pytest.mark.parametrize("source", [TOSS_DOCUMENTED_SOURCES[0], "10.20.30.40", f"::ffff:{TOSS_DOCUMENTED_SOURCES[1]}"])
def test_a_delivery_from_an_allowed_address_is_processed(allowlist, as_user, toss, make_room, sql, source):
    body = json.dumps(paid(as_user, toss, make_room)).encode()
    tid = "whtrans_" + uuid.uuid4().hex

    status, answer = deliver(body, source, tid)

    assert status == 200, answer
    assert answer["status"] in ("processed", "duplicate")  # the sandbox's own delivery of the event may come first
    logged = rows(sql, "SELECT verification FROM payment_webhooks WHERE transmission_id = %s", tid)
    assert [r["verification"] for r in logged] in (["fetched"], ["skipped"])


def test_without_an_allowlist_every_sender_is_heard(api, as_user, toss, make_room, sql):
    body = json.dumps(paid(as_user, toss, make_room)).encode()
    tid = "whtrans_" + uuid.uuid4().hex

    status, answer = deliver(body, "198.51.100.7", tid)

    assert status == 200, answer
    logged = rows(sql, "SELECT verification FROM payment_webhooks WHERE transmission_id = %s", tid)
    assert [r["verification"] for r in logged] in (["fetched"], ["skipped"])
