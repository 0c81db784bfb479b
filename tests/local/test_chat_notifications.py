"""Chat notifications: the template's rule and API destination, and the local bus that plays them.

The publisher is the layer's own EventBridgePublisher (jobs.publish_outbox uses it) with boto3 pointed at the local
bus, as the local runner does; the chat service is a local HTTP receiver."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import pytest

from local.eventbus import LocalEventBus, api_destination_rules, matches
from local.template import DEFAULT_TEMPLATE, load_yaml
from tests.support.receiver import Answer, Receiver, start_receiver

NOTIFIED = {
    "EscrowFunded",
    "EscrowUnfunded",
    "EscrowReleased",
    "PaymentRefunded",
    "PaymentRequestCancelled",
    "RequestExpired",
    "RefundAccountNeeded",
}


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
    return value


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.stop()


def start_bus(receiver: Receiver, *, retries: int | None = None, **options: Any) -> LocalEventBus:
    rules = api_destination_rules(receiver.url, api_key="chat-key-123")
    if retries is not None:
        rules = [
            dataclasses.replace(r, retry=dataclasses.replace(r.retry, maximum_retry_attempts=retries)) for r in rules
        ]
    return LocalEventBus(rules, retry_base=options.pop("retry_base", 0.02), **options).start()


def publish(bus: LocalEventBus, *events: tuple[int, str, dict[str, Any]]) -> set[int]:
    """Outbox rows through the layer's EventBridge publisher, boto3 talking to the local bus."""
    from escrow.services.jobs import EventBridgePublisher

    client = boto3.client(
        "events",
        endpoint_url=bus.url,
        region_name="ap-northeast-2",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    rows = [
        {
            "id": outbox_id,
            "event_type": kind,
            "payload": json.dumps(payload, ensure_ascii=False),
            "created_at": datetime(2026, 1, 2, 3, 4, 5, 678000),
        }
        for outbox_id, kind, payload in events
    ]
    return EventBridgePublisher("escrow-local", client=client).publish(rows)


FUNDED = {
    "payment_request_id": 7,
    "chat_room_id": 123,
    "store_id": "store_123",
    "amount_per_participant": 15000,
    "participant_count": 2,
    "total_amount": 30000,
}


def test_the_template_sends_the_room_events_to_an_api_destination_with_retries_and_a_dlq() -> None:
    template = load_yaml(DEFAULT_TEMPLATE)
    resources = template["Resources"]
    rule = resources["ChatNotificationsRule"]
    assert rule["Condition"] == "HasChatWebhook"  # nothing is created while ChatWebhookUrl is empty
    assert template["Parameters"]["ChatWebhookUrl"]["Default"] == ""
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["escrow.payments"] and set(pattern["detail-type"]) == NOTIFIED
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["ChatApiDestination", "Arn"]}
    assert "InputTransformer" not in target and "Input" not in target  # the body is the event as is
    assert set(target["RetryPolicy"]) == {"MaximumRetryAttempts", "MaximumEventAgeInSeconds"}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["ChatNotificationsDeadLetterQueue", "Arn"]}
    connection = resources["ChatWebhookConnection"]["Properties"]
    assert connection["AuthorizationType"] == "API_KEY"
    assert "resolve:secretsmanager" in connection["AuthParameters"]["ApiKeyAuthParameters"]["ApiKeyValue"]["Fn::Sub"]
    alarm = resources["ChatNotificationsDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ChatNotificationsDeadLetterQueue", "QueueName"]}
    for name in (
        "ChatWebhookConnection",
        "ChatApiDestination",
        "ChatNotificationsRole",
        "ChatNotificationsDeadLetterQueue",
    ):
        assert resources[name]["Condition"] == "HasChatWebhook"

    (local_rule,) = api_destination_rules("http://127.0.0.1:9/chat", api_key="k")
    assert (local_rule.endpoint, local_rule.http_method, local_rule.api_key_header) == (
        "http://127.0.0.1:9/chat",
        "POST",
        "x-api-key",
    )
    assert (local_rule.retry.maximum_retry_attempts, local_rule.retry.maximum_event_age_seconds) == (185, 86400)


def test_a_published_event_reaches_the_chat_service_as_the_event_itself(receiver: Receiver) -> None:
    bus = start_bus(receiver)
    try:
        accepted = publish(bus, (41, "EscrowFunded", FUNDED), (42, "PayoutCompleted", {"payment_request_id": 7}))
        assert accepted == {41, 42}
        (request,) = eventually(lambda: list(receiver.requests))
    finally:
        bus.stop()
    body = request["body"]
    assert (body["version"], body["source"], body["detail-type"]) == ("0", "escrow.payments", "EscrowFunded")
    assert set(body) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    assert body["detail"] == {
        "outbox_id": 41,
        "event_type": "EscrowFunded",
        "occurred_at": "2026-01-02 03:04:05.678000",
        **FUNDED,
    }
    headers = request["headers"]
    assert headers["x-api-key"] == "chat-key-123"
    assert headers["user-agent"] == "Amazon/EventBridge/ApiDestinations"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert [e["detail-type"] for e in bus.events] == ["EscrowFunded", "PayoutCompleted"]  # both on the bus
    assert len(receiver.requests) == 1  # PayoutCompleted is not a chat notification


def test_429_5xx_and_timeouts_are_retried_until_delivered_once(receiver: Receiver) -> None:
    # (a 1 s timeout and a 2.5 s answer: a loaded machine answers the others well within the timeout)
    receiver.script = [Answer(503), Answer(429), Answer(200, delay=2.5), Answer(200)]
    bus = start_bus(receiver, timeout=1.0)
    try:
        publish(bus, (51, "EscrowReleased", {"payment_request_id": 8, "chat_room_id": 124, "net_amount": 29100}))
        eventually(lambda: any(d["outcome"] == "delivered" for d in bus.deliveries))
    finally:
        bus.stop()
    assert [d.get("status", d.get("error")) for d in bus.deliveries] == [503, 429, "TIMEOUT", 200]
    assert len({r["body"]["id"] for r in receiver.requests}) == 1  # the same event each time
    assert list(bus.dead_letters) == []


def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.script = [Answer(429, headers={"Retry-After": "0.5"})]
    bus = start_bus(receiver)
    try:
        publish(bus, (61, "PaymentRefunded", {"payment_request_id": 9, "chat_room_id": 125, "refunded_amount": 1}))
        eventually(lambda: len(receiver.requests) == 2)
    finally:
        bus.stop()
    first, second = receiver.requests
    assert second["at"] - first["at"] >= 0.45


def test_a_4xx_is_not_retried_and_goes_to_the_dead_letter_queue(receiver: Receiver, tmp_path) -> None:
    receiver.script = [Answer(400)]
    dlq = tmp_path / "dlq.jsonl"
    bus = start_bus(receiver, dlq_path=dlq)
    try:
        publish(bus, (71, "RequestExpired", {"payment_request_id": 10, "chat_room_id": 126, "refund_amount": 0}))
        (letter,) = eventually(lambda: list(bus.dead_letters))
    finally:
        bus.stop()
    assert len(receiver.requests) == 1
    assert letter["body"]["detail"]["outbox_id"] == 71
    assert letter["attributes"]["ERROR_CODE"] == "HTTP_400"
    assert (letter["attributes"]["RETRY_ATTEMPTS"], letter["attributes"]["EXHAUSTED_RETRY_CONDITION"]) == ("0", "")
    assert letter["attributes"]["RULE_ARN"].endswith(":rule/ChatNotificationsRule")
    assert json.loads(dlq.read_text().splitlines()[0]) == letter


def test_retries_stop_at_the_retry_policy_then_the_dead_letter_queue(receiver: Receiver) -> None:
    receiver.script = [Answer(500)] * 5
    bus = start_bus(receiver, retries=2)
    try:
        publish(bus, (81, "PaymentRequestCancelled", {"payment_request_id": 11, "chat_room_id": 127}))
        (letter,) = eventually(lambda: list(bus.dead_letters))
    finally:
        bus.stop()
    assert len(receiver.requests) == 3  # the first attempt and 2 retries
    assert (letter["attributes"]["RETRY_ATTEMPTS"], letter["attributes"]["EXHAUSTED_RETRY_CONDITION"]) == (
        "2",
        "MaximumRetryAttempts",
    )


def test_the_local_bus_matches_exact_values_and_refuses_patterns_it_cannot_play() -> None:
    event = {"source": "escrow.payments", "detail-type": "EscrowFunded", "detail": {"chat_room_id": 1}}
    assert matches({"source": ["escrow.payments"], "detail-type": ["EscrowFunded", "X"]}, event)
    assert not matches({"detail-type": ["PayoutCompleted"]}, event)
    assert matches({"detail": {"chat_room_id": [1]}}, event)
    with pytest.raises(ValueError, match="not supported"):
        matches({"detail": {"chat_room_id": [{"numeric": [">", 0]}]}}, event)


def test_put_events_answers_like_eventbridge_for_a_bad_entry(receiver: Receiver) -> None:
    bus = start_bus(receiver)
    try:
        client = boto3.client(
            "events",
            endpoint_url=bus.url,
            region_name="ap-northeast-2",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        answer = client.put_events(
            Entries=[{"Source": "escrow.payments", "DetailType": "EscrowFunded", "Detail": "not json"}]
        )
    finally:
        bus.stop()
    assert answer["FailedEntryCount"] == 1 and "ErrorCode" in answer["Entries"][0]
