"""Webhooks as Toss sends them: payloads, headers, HMAC signatures, retries, delivery log.

Sources: [DOC https://docs.tosspayments.com/reference/using-api/webhook-events] (headers, payloads, signature),
[DOC https://docs.tosspayments.com/guides/v2/webhook] (event types, 200 within 10 s, 7 retries over ~4 days,
manual "다시 시도"), [TC https://techchat.tosspayments.com/m/1308725417263497257] (signature message),
[TC https://techchat.tosspayments.com/m/1126366632416116797] (retries).

* Every delivery carries ``tosspayments-webhook-transmission-time`` (ISO-8601 with offset),
  ``tosspayments-webhook-transmission-retried-count`` (0, 1, ...) and ``tosspayments-webhook-transmission-id``
  (``whtrans_...``, the same for all attempts of one delivery). Whether a retry carries a new transmission
  time is UNCONFIRMED: ``webhook_retry_same_headers`` (default True) repeats the first attempt's time and
  signature on every retry (only the retried-count changes); False stamps and signs each attempt anew.
* Events are sent only for the types in ``webhook_event_types`` (registered in the developer center); sends
  through the ``/sandbox/webhooks/send`` control ignore it.
* Only ``payout.changed`` and ``seller.changed`` carry ``tosspayments-webhook-signature``:
  ``v1:<base64 HMAC of a fake rotated-out key>,v1:<base64 HMAC of the security key>``, where the MAC is
  HMAC-SHA256 over ``{raw body}:{transmission-time}``. The HMAC key is the security key hex-decoded
  (``hex``, default) or its 64 ASCII characters (``ascii``), per ``webhook_hmac_encoding``.
* Only an HTTP 200 answer counts as delivered. Anything else (other status, connection error, no answer
  within ``webhook_timeout_seconds``) is retried after ``webhook_retry_delays[n]`` seconds with
  retried-count n+1; after the last delay the delivery is ``failed``.

All sending happens on one background thread, in order of due time; the store lock is never held while a
receiver is being called.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import http.client
import json
import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .clock import iso, webhook_created_at
from .errors import TossError
from .settings import API_VERSION
from .store import PaymentRecord, WebhookAttempt, WebhookDelivery

if TYPE_CHECKING:
    from .core import SandboxCore

log = logging.getLogger("toss_sandbox.webhooks")

H_TIME = "tosspayments-webhook-transmission-time"
H_RETRIED = "tosspayments-webhook-transmission-retried-count"
H_ID = "tosspayments-webhook-transmission-id"
H_SIGNATURE = "tosspayments-webhook-signature"

SIGNED_EVENTS = ("payout.changed", "seller.changed")
PAYMENT_EVENTS = ("PAYMENT_STATUS_CHANGED", "DEPOSIT_CALLBACK")


def hmac_key(security_key_hex: str, encoding: str = "hex") -> bytes:
    if encoding == "hex":
        return bytes.fromhex(security_key_hex)
    if encoding == "ascii":
        return security_key_hex.encode("ascii")
    raise ValueError("encoding must be 'hex' or 'ascii'")


def sign_webhook(body: bytes, transmission_time: str, security_key_hex: str, encoding: str = "hex") -> str:
    """One signature value as Toss puts it in the header: ``v1:<base64(HMAC-SHA256(key, body:time))>``."""
    message = body + b":" + transmission_time.encode("utf-8")
    mac = hmac.new(hmac_key(security_key_hex, encoding), message, hashlib.sha256).digest()
    return "v1:" + base64.b64encode(mac).decode("ascii")


def rotated_out_key(security_key_hex: str) -> str:
    """A fake previous security key (64 hex chars) for the second ``v1:`` value of the header."""
    return hashlib.sha256(b"toss-sandbox-rotated-out:" + security_key_hex.encode()).hexdigest()


def signature_header(body: bytes, transmission_time: str, security_key_hex: str, encoding: str = "hex") -> str:
    """The full header value: the rotated-out key's signature first, then the current key's."""
    old = sign_webhook(body, transmission_time, rotated_out_key(security_key_hex), encoding)
    current = sign_webhook(body, transmission_time, security_key_hex, encoding)
    return f"{old},{current}"


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebhookService:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, WebhookDelivery, int]] = []
        self._seq = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="toss-sandbox-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def clear_queue(self) -> None:
        with self._cond:
            self._heap.clear()

    # ------------------------------------------------------------------ events
    def payment_status_changed(self, payment: dict[str, Any], now: datetime) -> WebhookDelivery | None:
        """PAYMENT_STATUS_CHANGED for DONE, ABORTED, EXPIRED, CANCELED, PARTIAL_CANCELED."""
        body = {"eventType": "PAYMENT_STATUS_CHANGED", "createdAt": webhook_created_at(now), "data": payment}
        return self._enqueue_new("PAYMENT_STATUS_CHANGED", dumps(body), signed=False)

    def deposit_callback(self, p: PaymentRecord, now: datetime) -> WebhookDelivery | None:
        """DEPOSIT_CALLBACK: flat body, no eventType, no paymentKey."""
        return self._enqueue_new("DEPOSIT_CALLBACK", self._deposit_body(p, now, None), signed=False)

    def _entity_event(self, event_type: str, entity_type: str, entity: dict[str, Any], now: datetime) -> bytes:
        return dumps(
            {
                "eventType": event_type,
                "createdAt": iso(now),
                "version": API_VERSION,
                "eventId": self.core.ids.event_id(),
                "entityType": entity_type,
                "entityBody": entity,
            }
        )

    def payout_changed(self, payout: dict[str, Any], now: datetime, *, forged: bool = False) -> WebhookDelivery | None:
        body = self._entity_event("payout.changed", "payout", payout, now)
        return self._enqueue_new("payout.changed", body, signed=True, forged=forged)

    def seller_changed(self, seller: dict[str, Any], now: datetime, *, forged: bool = False) -> WebhookDelivery | None:
        body = self._entity_event("seller.changed", "seller", seller, now)
        return self._enqueue_new("seller.changed", body, signed=True, forged=forged)

    # ------------------------------------------------------------------ control: send on demand
    def send_on_demand(self, request: dict[str, Any]) -> WebhookDelivery:
        """``POST /sandbox/webhooks/send``: (re)send an event now, optionally forged or as a verbatim replay."""
        core = self.core
        url = request.get("url") or core.settings.webhook_url
        if not url:
            raise TossError("INVALID_REQUEST", "no webhook_url configured and no url given")
        replay_id = request.get("replay_transmission_id")
        if replay_id:
            return self._replay(str(replay_id), url if request.get("url") else None)
        event_type = request.get("eventType")
        forge = bool(request.get("forge", False))
        now = core.clock.now()
        with core.store.lock:
            if event_type in PAYMENT_EVENTS:
                p = core.store.payments.get(str(request.get("paymentKey")))
                if p is None:
                    raise TossError("NOT_FOUND_PAYMENT")
                if event_type == "DEPOSIT_CALLBACK":
                    secret = "ps_FORGED" + core.ids.digits(12) if forge else None
                    body_bytes = self._deposit_body(p, now, secret)
                    return self._enqueue_to(url, event_type, body_bytes, signed=False, forged=forge)
                payment = core.payments.render(p)
                if forge:
                    # A fabricated "it is paid" claim: receivers must re-fetch and see the real state.
                    payment = dict(payment, status="DONE", approvedAt=payment["approvedAt"] or iso(now))
                body_bytes = dumps({"eventType": event_type, "createdAt": webhook_created_at(now), "data": payment})
                return self._enqueue_to(url, event_type, body_bytes, signed=False, forged=forge)
            if event_type == "payout.changed":
                payout = core.store.payouts.get(str(request.get("payoutId")))
                if payout is None:
                    raise TossError("NOT_FOUND_PAYOUT")
                body_bytes = self._entity_event(event_type, "payout", core.payouts.payout_json(payout), now)
                return self._enqueue_to(url, event_type, body_bytes, signed=True, forged=forge)
            if event_type == "seller.changed":
                seller = core.store.sellers.get(str(request.get("sellerId")))
                if seller is None:
                    raise TossError("NOT_FOUND_SELLER")
                body_bytes = self._entity_event(event_type, "seller", core.payouts.seller_json(seller), now)
                return self._enqueue_to(url, event_type, body_bytes, signed=True, forged=forge)
        raise TossError("INVALID_REQUEST", f"unsupported eventType {event_type!r}")

    def _deposit_body(self, p: PaymentRecord, now: datetime, secret: str | None) -> bytes:
        return dumps(
            {
                "createdAt": webhook_created_at(now),
                "secret": secret if secret is not None else p.secret,
                "status": p.status,
                "transactionKey": p.last_transaction_key,
                "orderId": p.order_id,
            }
        )

    def _replay(self, transmission_id: str, url: str | None) -> WebhookDelivery:
        core = self.core
        with core.store.lock:
            original = core.store.webhook(transmission_id)
            if original is None:
                raise TossError("NOT_FOUND", f"no delivery {transmission_id}")
            if not original.attempts:
                raise TossError("INVALID_REQUEST", "the delivery has not been attempted yet")
            replay = WebhookDelivery(
                transmission_id=original.transmission_id,
                event_type=original.event_type,
                url=url or original.url,
                body=original.body,
                signed=original.signed,
                forged=original.forged,
                created_at=iso(core.clock.now()),
                replay_of=original.transmission_id,
                fixed_headers=dict(original.attempts[0].headers),
                generation=core.store.generation,
            )
            core.store.webhooks.append(replay)
        self._schedule(replay, 0, 0.0)
        return replay

    # ------------------------------------------------------------------ queue
    def _enqueue_to(self, url: str, event_type: str, body: bytes, *, signed: bool, forged: bool) -> WebhookDelivery:
        delivery = self._enqueue_new(event_type, body, signed=signed, forged=forged, url=url)
        assert delivery is not None  # a URL was given
        return delivery

    def _enqueue_new(
        self,
        event_type: str,
        body: bytes,
        *,
        signed: bool,
        forged: bool = False,
        url: str | None = None,
    ) -> WebhookDelivery | None:
        core = self.core
        target = url or core.settings.webhook_url
        if not target:
            return None
        if url is None and event_type not in core.settings.webhook_event_types:
            return None  # not registered in the developer center
        delivery = WebhookDelivery(
            transmission_id=core.ids.transmission_id(),
            event_type=event_type,
            url=target,
            body=body,
            signed=signed,
            forged=forged,
            created_at=iso(core.clock.now()),
        )
        with core.store.lock:
            delivery.generation = core.store.generation
            core.store.webhooks.append(delivery)
        self._schedule(delivery, 0, 0.0)
        return delivery

    def _schedule(self, delivery: WebhookDelivery, retried_count: int, delay: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, delivery, retried_count))
            self._cond.notify_all()

    def _next_job(self) -> tuple[WebhookDelivery, int] | None:
        with self._cond:
            while not self._stopping:
                if self._heap:
                    due = self._heap[0][0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        _, _, delivery, retried = heapq.heappop(self._heap)
                        return delivery, retried
                    self._cond.wait(timeout=wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            delivery, retried = job
            try:
                self._attempt(delivery, retried)
            except Exception:  # never let one delivery kill the sender thread
                log.exception("webhook delivery %s crashed", delivery.transmission_id)

    # ------------------------------------------------------------------ one attempt
    def _headers(self, delivery: WebhookDelivery, retried: int) -> dict[str, str]:
        if delivery.fixed_headers is not None:
            return dict(delivery.fixed_headers)
        settings = self.core.settings
        if retried > 0 and delivery.attempts and settings.webhook_retry_same_headers:
            headers = dict(delivery.attempts[0].headers)
            headers[H_RETRIED] = str(retried)
            return headers
        transmission_time = iso(self.core.clock.now())
        headers = {
            "Content-Type": "application/json",
            H_TIME: transmission_time,
            H_RETRIED: str(retried),
            H_ID: delivery.transmission_id,
        }
        if delivery.signed:
            key = settings.security_key
            if delivery.forged:
                key = hashlib.sha256(b"toss-sandbox-forged:" + key.encode()).hexdigest()
            headers[H_SIGNATURE] = signature_header(
                delivery.body, transmission_time, key, settings.webhook_hmac_encoding
            )
        return headers

    def _attempt(self, delivery: WebhookDelivery, retried: int) -> None:
        core = self.core
        with core.store.lock:
            if delivery.generation != core.store.generation or delivery.state != "pending":
                return  # the store was reset or the delivery was finished meanwhile
            headers = self._headers(delivery, retried)
            timeout = core.settings.webhook_timeout_seconds
            delays = list(core.settings.webhook_retry_delays)
        started = time.monotonic()
        started_at = iso(core.clock.now())
        status, error = post(delivery.url, delivery.body, headers, timeout)
        attempt = WebhookAttempt(
            retried_count=retried,
            transmission_time=headers.get(H_TIME, ""),
            started_at=started_at,
            status=status,
            error=error,
            duration_ms=int((time.monotonic() - started) * 1000),
            headers=headers,
        )
        retry_in: float | None = None
        with core.store.lock:
            delivery.attempts.append(attempt)
            if status == 200:
                delivery.state = "delivered"
            elif delivery.fixed_headers is None and retried < len(delays):
                retry_in = delays[retried]
            else:
                delivery.state = "failed"
        if core.settings.verbose:
            log.info(
                "webhook %s %s try %d -> %s %s",
                delivery.event_type,
                delivery.transmission_id,
                retried,
                status,
                error or "",
            )
        if retry_in is not None:
            self._schedule(delivery, retried + 1, retry_in)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """POST without following redirects; returns (status, error)."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    host = parts.hostname or "127.0.0.1"
    connection = connection_class(host, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, None
    except TimeoutError:
        return None, "timeout"
    except OSError as exc:
        return None, f"{exc.__class__.__name__}: {exc}"
    except http.client.HTTPException as exc:
        return None, f"{exc.__class__.__name__}: {exc}"
    finally:
        connection.close()
