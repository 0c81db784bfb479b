"""A local EventBridge bus with the template's API-destination rules: the chat service's notifications, locally.

Deployed, the outbox relay (`jobs.publish_outbox`, EventBridgePublisher) calls `events:PutEvents` on our bus, and the
rule `ChatNotificationsRule` (template.yaml) sends matching events to the chat service's HTTPS endpoint through an
API destination, with a retry policy and a dead-letter queue. Locally the same publisher code runs unchanged, with
boto3 pointed here (`AWS_ENDPOINT_URL_EVENTBRIDGE`); this server answers PutEvents, wraps each entry in the envelope
EventBridge gives it, matches the rules read from template.yaml and delivers the event, as is, to a local URL
(CHAT_WEBHOOK_URL). The body the chat service gets is therefore the same as deployed (docs/notifications.md).

Delivery follows EventBridge's documented behaviour for API destinations, as far as it is documented:

* POST with `Content-Type: application/json; charset=utf-8`, `User-Agent: Amazon/EventBridge/ApiDestinations`, and
  the connection's API key header (locally `CHAT_WEBHOOK_API_KEY`, when set);
* an answer must come within 5 seconds; a timeout, a broken connection, 429 and 5xx are retried with exponential
  back-off and jitter (EventBridge does not publish its schedule: here `retry_base` doubling up to `retry_cap`),
  never sooner than a `Retry-After` header asks; a negative Retry-After stops the retries;
* other answers (1xx, 3xx, 4xx but 429) are not retried;
* the rule target's RetryPolicy bounds the retries (MaximumRetryAttempts, MaximumEventAgeInSeconds); then the event
  goes to the dead-letter queue with the attributes EventBridge documents (RULE_ARN, TARGET_ARN, ERROR_CODE,
  ERROR_MESSAGE, EXHAUSTED_RETRY_CONDITION, RETRY_ATTEMPTS): logged, kept in `dead_letters`, and appended to a
  JSON-lines file when `dlq_path` is given.

Only what the project uses is implemented: PutEvents, and event patterns of exact values.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from local.template import DEFAULT_TEMPLATE, PSEUDO_PARAMETERS, Resolver, load_yaml

log = logging.getLogger("local.eventbus")

USER_AGENT = "Amazon/EventBridge/ApiDestinations"
DELIVERY_TIMEOUT_S = 5.0  # EventBridge gives an API destination 5 s to answer
RETRIED_STATUSES = frozenset({429}) | frozenset(range(500, 600))
KEPT = 1000  # events, delivery attempts and dead letters kept in memory for inspection


@dataclass(frozen=True)
class RetryPolicy:
    maximum_retry_attempts: int = 185  # EventBridge's defaults
    maximum_event_age_seconds: int = 86_400


@dataclass(frozen=True)
class ApiDestinationRule:
    """A rule on the bus whose target is an API destination, as the template declares it."""

    name: str
    event_pattern: dict[str, Any]
    endpoint: str
    http_method: str = "POST"
    retry: RetryPolicy = RetryPolicy()
    api_key_header: str | None = None
    api_key: str | None = None
    has_dead_letter_queue: bool = True

    @property
    def arn(self) -> str:
        return (
            f"arn:aws:events:{PSEUDO_PARAMETERS['AWS::Region']}:{PSEUDO_PARAMETERS['AWS::AccountId']}:rule/{self.name}"
        )

    @property
    def target_arn(self) -> str:
        region, account = PSEUDO_PARAMETERS["AWS::Region"], PSEUDO_PARAMETERS["AWS::AccountId"]
        return f"arn:aws:events:{region}:{account}:api-destination/{self.name}/local"


def api_destination_rules(
    endpoint: str,
    *,
    api_key: str | None = None,
    template_path: str | Path | None = None,
    parameters: Mapping[str, str] | None = None,
) -> list[ApiDestinationRule]:
    """The template's rules that target an API destination, with its InvocationEndpoint replaced by `endpoint`.

    The template's `ChatWebhookUrl` parameter is set to `endpoint`, so the resources conditional on it exist."""
    document = load_yaml(template_path or DEFAULT_TEMPLATE)
    values = {"ChatWebhookUrl": endpoint, **(parameters or {})}
    resolver = Resolver(document, values)
    resources: Mapping[str, Any] = document.get("Resources") or {}
    rules = []
    for name, resource in resources.items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Events::Rule":
            continue
        if resource.get("Condition") and not resolver.condition(resource["Condition"]):
            continue
        props = resource.get("Properties") or {}
        for target in props.get("Targets") or []:
            arn = target.get("Arn")
            destination_id = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
            destination = resources.get(destination_id) if destination_id else None
            if not destination or destination.get("Type") != "AWS::Events::ApiDestination":
                continue
            dest_props = resolver.resolve(destination.get("Properties") or {})
            retry = resolver.resolve(target.get("RetryPolicy") or {})
            header = None
            connection_ref = (destination.get("Properties") or {}).get("ConnectionArn")
            connection_id = connection_ref.get("Fn::GetAtt", [None])[0] if isinstance(connection_ref, dict) else None
            connection = resources.get(connection_id) if connection_id else None
            if connection:
                auth = resolver.resolve((connection.get("Properties") or {}).get("AuthParameters") or {})
                header = (auth.get("ApiKeyAuthParameters") or {}).get("ApiKeyName")
            rules.append(
                ApiDestinationRule(
                    name=name,
                    event_pattern=resolver.resolve(props.get("EventPattern") or {}),
                    endpoint=str(dest_props.get("InvocationEndpoint") or endpoint),
                    http_method=str(dest_props.get("HttpMethod") or "POST").upper(),
                    retry=RetryPolicy(
                        int(retry.get("MaximumRetryAttempts", 185)), int(retry.get("MaximumEventAgeInSeconds", 86_400))
                    ),
                    api_key_header=header,
                    api_key=api_key,
                    has_dead_letter_queue=bool(target.get("DeadLetterConfig")),
                )
            )
    return rules


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge pattern matching for exact values: every key of the pattern must match (lists are "any of")."""
    for key, expected in pattern.items():
        value = event.get(key)
        if isinstance(expected, Mapping):
            if not isinstance(value, Mapping) or not matches(expected, value):
                return False
            continue
        if not isinstance(expected, list):
            raise ValueError(f"event pattern value for {key!r} must be a list or an object")
        if any(isinstance(item, (dict, list)) for item in expected):
            raise ValueError(f"content filters ({key!r}) are not supported by the local bus")
        candidates = value if isinstance(value, list) else [value]
        if not any(c in expected for c in candidates):
            return False
    return True


def envelope(entry: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """The event EventBridge makes of one PutEvents entry (and sends, as is, to a target without a transformer)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": entry["DetailType"],
        "source": entry["Source"],
        "account": PSEUDO_PARAMETERS["AWS::AccountId"],
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": PSEUDO_PARAMETERS["AWS::Region"],
        "resources": list(entry.get("Resources") or []),
        "detail": json.loads(entry["Detail"]),
    }


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    rule: ApiDestinationRule = field(compare=False)
    event: dict[str, Any] = field(compare=False)
    first_try: float = field(compare=False, default=0.0)
    attempts: int = field(compare=False, default=0)


class LocalEventBus:
    """PutEvents in, API-destination deliveries out. `start()`, `url`, `stop()`; what happened is kept in `events`,
    `deliveries` (one record per HTTP attempt) and `dead_letters`."""

    def __init__(
        self,
        rules: list[ApiDestinationRule],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        timeout: float = DELIVERY_TIMEOUT_S,
        dlq_path: str | Path | None = None,
        workers: int = 4,
    ) -> None:
        self.rules = rules
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.timeout = timeout
        self.dlq_path = Path(dlq_path) if dlq_path else None
        # The latest of each (a long `make run` does not grow without bound); the log and the DLQ file keep all.
        self.events: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self._queue: list[_Delivery] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._session = requests.Session()
        bus = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status, answer = bus.handle(self.headers.get("x-amz-target", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/x-amz-json-1.1")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._threads = [threading.Thread(target=self._server.serve_forever, name="local-eventbus", daemon=True)]
        self._threads += [
            threading.Thread(target=self._deliver_loop, name=f"local-eventbus-delivery-{i}", daemon=True)
            for i in range(workers)
        ]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalEventBus:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)

    # --- PutEvents ---------------------------------------------------------------------------------------

    def handle(self, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if target != "AWSEvents.PutEvents":
            return 400, {"__type": "UnknownOperationException", "message": f"the local bus does not do {target!r}"}
        try:
            request = json.loads(body or b"{}")
            entries = request["Entries"]
        except (ValueError, KeyError, TypeError):
            return 400, {"__type": "ValidationException", "message": "Entries is required"}
        answers: list[dict[str, Any]] = []
        for entry in entries:
            try:
                event = envelope(entry)
            except (KeyError, TypeError, ValueError):
                answers.append({"ErrorCode": "MalformedDetail", "ErrorMessage": "Source, DetailType, Detail required"})
                continue
            answers.append({"EventId": event["id"]})
            self.put(event)
        failed = sum(1 for a in answers if "ErrorCode" in a)
        return 200, {"FailedEntryCount": failed, "Entries": answers}

    def put(self, event: dict[str, Any]) -> None:
        """An event on the bus: logged (as the log publisher did) and handed to every rule it matches."""
        self.events.append(event)
        log.info("EVENT %s %s", event["detail-type"], json.dumps(event["detail"], ensure_ascii=False))
        now = time.monotonic()
        for rule in self.rules:
            if matches(rule.event_pattern, event):
                self._schedule(_Delivery(due=now, seq=0, rule=rule, event=event, first_try=now))

    # --- delivery ----------------------------------------------------------------------------------------

    def _schedule(self, delivery: _Delivery) -> None:
        with self._cond:
            self._seq += 1
            delivery.seq = self._seq
            heapq.heappush(self._queue, delivery)
            self._cond.notify()

    def _next(self) -> _Delivery | None:
        with self._cond:
            while not self._stop.is_set():
                if self._queue:
                    wait = self._queue[0].due - time.monotonic()
                    if wait <= 0:
                        return heapq.heappop(self._queue)
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _deliver_loop(self) -> None:
        while (delivery := self._next()) is not None:
            self._attempt(delivery)

    def _attempt(self, d: _Delivery) -> None:
        rule = d.rule
        d.attempts += 1
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT, "Connection": "close"}
        if rule.api_key_header and rule.api_key:
            headers[rule.api_key_header] = rule.api_key
        record: dict[str, Any] = {"rule": rule.name, "event_id": d.event["id"], "attempt": d.attempts}
        retry_after: float | None = None
        try:
            answer = self._session.request(
                rule.http_method,
                rule.endpoint,
                data=json.dumps(d.event, ensure_ascii=False).encode("utf-8"),
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout:
            code, message, retried = "TIMEOUT", f"no answer within {self.timeout:g} s", True
        except requests.RequestException as exc:
            code, message, retried = "CONNECTION_ERROR", type(exc).__name__, True
        else:
            record["status"] = answer.status_code
            if 200 <= answer.status_code < 300:
                self.deliveries.append({**record, "outcome": "delivered"})
                log.info(
                    "chat notification %s delivered (%s, attempt %d)",
                    d.event["detail-type"],
                    d.event["detail"].get("outbox_id"),
                    d.attempts,
                )
                return
            code, message = f"HTTP_{answer.status_code}", answer.text[:200]
            retried = answer.status_code in RETRIED_STATUSES
            retry_after = _retry_after(answer.headers.get("retry-after"))
        self.deliveries.append({**record, "outcome": "failed", "error": code})
        if not retried:
            self._dead_letter(d, code, message, exhausted=None)
            return
        if retry_after is not None and retry_after < 0:
            self._dead_letter(d, code, message, exhausted="Retry-After")
            return
        if d.attempts > rule.retry.maximum_retry_attempts:
            self._dead_letter(d, code, message, exhausted="MaximumRetryAttempts")
            return
        delay = min(self.retry_cap, self.retry_base * 2 ** (d.attempts - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
        delay = max(delay, retry_after or 0.0)
        if time.monotonic() + delay - d.first_try > rule.retry.maximum_event_age_seconds:
            self._dead_letter(d, code, message, exhausted="MaximumEventAgeInSeconds")
            return
        log.warning(
            "chat notification %s not delivered (%s); retry %d in %.1f s",
            d.event["detail-type"],
            code,
            d.attempts,
            delay,
        )
        d.due = time.monotonic() + delay
        self._schedule(d)

    def _dead_letter(self, d: _Delivery, code: str, message: str, *, exhausted: str | None) -> None:
        letter = {
            "body": d.event,
            "attributes": {
                "RULE_ARN": d.rule.arn,
                "TARGET_ARN": d.rule.target_arn,
                "ERROR_CODE": code,
                "ERROR_MESSAGE": message,
                "EXHAUSTED_RETRY_CONDITION": exhausted or "",
                "RETRY_ATTEMPTS": str(d.attempts - 1),
            },
        }
        if not d.rule.has_dead_letter_queue:
            log.error("chat notification dropped (no dead-letter queue): %s", json.dumps(letter, ensure_ascii=False))
            return
        self.dead_letters.append(letter)
        log.error("chat notification sent to the dead-letter queue: %s", json.dumps(letter, ensure_ascii=False))
        if self.dlq_path:
            with self.dlq_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(letter, ensure_ascii=False) + "\n")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: treated as absent (the back-off applies)
