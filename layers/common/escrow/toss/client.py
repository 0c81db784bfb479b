"""HTTP client for the Toss Payments Core API: Basic auth, an Idempotency-Key on every POST, timeouts,
typed answers and typed errors."""

from __future__ import annotations

import base64
import copy
import json
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from escrow.observability import logger, subsegment
from escrow.toss.errors import TossApiError, TossConnectionError, TossNotSent, TossTimeout

if TYPE_CHECKING:
    import requests

    from escrow.deadline import Deadline
    from escrow.toss.models import Payment

_MAX_IDEMPOTENCY_KEY = 300


class _Usage:
    calls = 0  # Toss calls made by a client and its deadline-bound views (the benchmark reads it)


class TossClient:
    """Toss's HTTP API. `within(deadline)` is the same client (its connection pool, its counter) with each call's
    timeouts cut to the invocation's deadline (escrow.deadline); a call the deadline leaves too little time for is not
    started (`TossNotSent`)."""

    deadline: Deadline | None = None

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 20.0,
        payout_read_timeout: float = 60.0,
        security_key: str = "",
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{secret_key}:".encode()).decode()
        self.timeout = (connect_timeout, read_timeout)
        self.payout_read_timeout = payout_read_timeout
        self.security_key = security_key
        self._usage = _Usage()
        import requests  # only functions that call Toss pay for importing it
        from requests.adapters import HTTPAdapter

        self._requests = requests
        if session is None:
            session = requests.Session()
            # No transparent retries: a retried POST without our decision could double an operation.
            session.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=4))
            session.mount("https://", HTTPAdapter(max_retries=0, pool_maxsize=4))
        self._session = session

    def __repr__(self) -> str:
        return f"TossClient(base_url={self.base_url!r})"

    @property
    def calls(self) -> int:
        """Toss calls made by this client and its deadline-bound views."""
        return self._usage.calls

    def within(self, deadline: Deadline | None) -> TossClient:
        """This client, its calls bounded by `deadline` (itself when there is none)."""
        if deadline is None:
            return self
        view = copy.copy(self)
        view.deadline = deadline
        return view

    def _timeouts(self, method: str, path: str, read: float) -> tuple[float, float]:
        """(connect, read) of a call starting now: the configured ones, cut to the deadline's budget."""
        if self.deadline is None:
            return self.timeout[0], read
        bounded = self.deadline.call_timeouts(self.timeout[0], read)
        if bounded is None:
            logger.warning(
                "Toss call not started: too little time left",
                extra={"toss_path": path, "toss_method": method, "remaining_s": round(self.deadline.remaining(), 2)},
            )
            raise TossNotSent(f"{method} {path} not sent: the invocation's time is nearly up")
        return bounded

    # --- Core API v1 -------------------------------------------------------------------------------------

    def confirm(self, payment_key: str, order_id: str, amount: int, *, idempotency_key: str) -> Payment:
        body = {"paymentKey": payment_key, "orderId": order_id, "amount": amount}
        return _payment(self._request("POST", "/v1/payments/confirm", body, idempotency_key))

    def get_payment(self, payment_key: str, *, read_timeout: float | None = None) -> Payment:
        path = f"/v1/payments/{quote(payment_key, safe='')}"
        return _payment(self._request("GET", path, read_timeout=read_timeout))

    def get_payment_by_order(self, order_id: str, *, read_timeout: float | None = None) -> Payment:
        path = f"/v1/payments/orders/{quote(order_id, safe='')}"
        return _payment(self._request("GET", path, read_timeout=read_timeout))

    def cancel(
        self,
        payment_key: str,
        reason: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        refundable_amount: int | None = None,
    ) -> Payment:
        body: dict[str, Any] = {"cancelReason": reason}
        if amount is not None:
            body["cancelAmount"] = amount
        if refundable_amount is not None:
            body["refundableAmount"] = refundable_amount
        path = f"/v1/payments/{quote(payment_key, safe='')}/cancel"
        return _payment(self._request("POST", path, body, idempotency_key))

    # --- payouts v2 (ENCRYPTION security mode) ---------------------------------------------------------

    def register_seller(self, seller: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        return _entity(self._encrypted("POST", "/v2/sellers", seller, idempotency_key))

    def update_seller(self, seller_id: str, changes: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """`POST /v2/sellers/{sellerId}`: only the fields that change (docs/toss-behaviours.md)."""
        path = f"/v2/sellers/{quote(seller_id, safe='')}"
        return _entity(self._encrypted("POST", path, changes, idempotency_key))

    def get_seller(self, seller_id: str) -> dict[str, Any]:
        return _entity(self._encrypted("GET", f"/v2/sellers/{quote(seller_id, safe='')}"))

    def list_sellers(self) -> list[dict[str, Any]]:
        """`GET /v2/sellers` (its paging parameters are UNCONFIRMED: the first page only)."""
        return _items(self._encrypted("GET", "/v2/sellers"))

    def request_payouts(self, items: list[dict[str, Any]], *, idempotency_key: str) -> list[dict[str, Any]]:
        """One call for up to 100 payout items (Toss takes a JSON array). The answer's entityBody is read as
        `{"items": [...]}` ([3P]) or a bare list (UNCONFIRMED which one Toss sends)."""
        return _items(self._encrypted("POST", "/v2/payouts", items, idempotency_key))

    def get_payout(self, payout_id: str) -> dict[str, Any]:
        return _entity(self._encrypted("GET", f"/v2/payouts/{quote(payout_id, safe='')}"))

    def list_payouts(self) -> list[dict[str, Any]]:
        """`GET /v2/payouts`: how a payout whose id we never learnt is found by its refPayoutId (its query and
        paging parameters are UNCONFIRMED: the first page only)."""
        return _items(self._encrypted("GET", "/v2/payouts"))

    def get_balances(self) -> dict[str, int]:
        """`GET /v2/balances`: {"available": availableAmount.value, "pending": pendingAmount.value} in KRW."""
        entity = _entity(self._encrypted("GET", "/v2/balances"))
        amounts: dict[str, int] = {}
        for name, field in (("available", "availableAmount"), ("pending", "pendingAmount")):
            value = entity.get(field)
            value = value.get("value") if isinstance(value, dict) else value
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise TossApiError(200, "UNREADABLE_RESPONSE", f"{field} is not an amount", answered=False)
            amounts[name] = int(value)
        return amounts

    def _encrypted(self, method: str, path: str, body: Any = None, idempotency_key: str | None = None) -> Any:
        """A v2 call: the body goes out as a JWE, the answer (success or error) comes back as one. Returns the
        answer's entityBody (a dict, a list, or None)."""
        from escrow.toss import jwe

        if not self.security_key:
            raise TossApiError(
                0, "SECURITY_KEY_MISSING", "no Toss security key is configured for payouts", answered=False
            )
        headers = self._headers(idempotency_key)
        headers["TossPayments-api-security-mode"] = "ENCRYPTION"
        data = None
        if body is not None:
            headers["Content-Type"] = "text/plain"
            data = jwe.encrypt(json.dumps(body, ensure_ascii=False), self.security_key)
        if method == "POST" and idempotency_key is None:
            raise ValueError("every Toss POST carries an Idempotency-Key")
        timeout = self._timeouts(method, path, self.payout_read_timeout)
        self._usage.calls += 1
        with subsegment(f"toss {method} v2"):
            try:
                response = self._session.request(
                    method, self.base_url + path, data=data, headers=headers, timeout=timeout
                )
            except self._requests.ConnectTimeout as exc:
                raise TossConnectionError(f"could not connect to Toss: {type(exc).__name__}") from exc
            except (self._requests.Timeout, self._requests.ConnectionError) as exc:
                raise TossTimeout(f"Toss did not answer {method} {path} in time") from exc
        text = response.text.strip()
        try:
            plain = text if text.startswith(("{", "[")) else jwe.decrypt(text, self.security_key)
            payload = json.loads(plain)
        except (ValueError, jwe.JweError) as exc:
            # Not Toss's answer as far as we can tell (a proxy's page, a body we cannot decrypt): nothing bound a
            # key that we know of, so the operation's outcome is unknown and a retry reuses the key.
            raise TossApiError(
                response.status_code, "UNREADABLE_RESPONSE", f"could not read Toss's answer: {exc}", answered=False
            ) from exc
        error = _v2_error(payload)
        if error is not None or not 200 <= response.status_code < 300:
            code, message = error or (None, None)
            logger.info(
                "toss error",
                extra={
                    "toss_path": path,
                    "toss_method": method,
                    "toss_status": response.status_code,
                    "toss_code": code,
                },
            )
            if code is None:
                # An error status whose body names no code: Toss's answer, but we cannot tell what it says.
                raise TossApiError(response.status_code, "UNREADABLE_RESPONSE", "Toss answered without an error code")
            raise TossApiError(response.status_code, code, message or "payout call failed")
        return payload.get("entityBody") if isinstance(payload, dict) and "entityBody" in payload else payload

    # --- transport ---------------------------------------------------------------------------------------

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > _MAX_IDEMPOTENCY_KEY:
                raise ValueError("an Idempotency-Key must be 1-300 characters")
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | list[Any] | None = None,
        idempotency_key: str | None = None,
        *,
        read_timeout: float | None = None,
    ) -> dict[str, Any]:
        if method == "POST" and idempotency_key is None:
            raise ValueError("every Toss POST carries an Idempotency-Key")
        timeout = self._timeouts(method, path, read_timeout or self.timeout[1])
        self._usage.calls += 1
        with subsegment(f"toss {method} {path.split('/')[2] if path.count('/') > 1 else path}"):
            try:
                response = self._session.request(
                    method, self.base_url + path, json=body, headers=self._headers(idempotency_key), timeout=timeout
                )
            except self._requests.ConnectTimeout as exc:
                raise TossConnectionError(f"could not connect to Toss: {type(exc).__name__}") from exc
            except self._requests.Timeout as exc:
                raise TossTimeout(f"Toss did not answer {method} {path} in time") from exc
            except self._requests.ConnectionError as exc:
                # Refused before sending is safe; a reset after sending is not. We cannot tell them apart
                # reliably, so a broken connection is treated as "may have happened".
                raise TossTimeout(f"connection to Toss broke during {method} {path}") from exc
        return self._parse(method, path, response)

    @staticmethod
    def _parse(method: str, path: str, response: Any) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if 200 <= response.status_code < 300 and isinstance(data, dict):
            return data
        code = "UNKNOWN_ERROR"
        message = f"unexpected answer from Toss ({response.status_code})"
        if isinstance(data, dict):
            nested = data.get("error")
            error: dict[str, Any] = nested if isinstance(nested, dict) else data
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        logger.info(
            "toss error",
            extra={"toss_path": path, "toss_method": method, "toss_status": response.status_code, "toss_code": code},
        )
        raise TossApiError(response.status_code, code, message)


def _v2_error(payload: Any) -> tuple[str, str] | None:
    """The error of a v2 answer: `{"error": {code, message}}` (the v2 envelope) or a bare `{code, message}` (the v1
    shape, which a v2 endpoint may answer too); None when the answer carries no error."""
    if not isinstance(payload, dict):
        return None
    nested = payload.get("error")
    source = nested if isinstance(nested, dict) else payload if "code" in payload else None
    if source is None or not source.get("code"):
        return None
    return str(source["code"]), str(source.get("message") or "")


def _entity(body: Any) -> dict[str, Any]:
    """A v2 entityBody that must be one object (a seller, a payout, a balance)."""
    if isinstance(body, dict):
        return body
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return body[0]
    raise TossApiError(200, "UNREADABLE_RESPONSE", "Toss answered without the expected object", answered=False)


def _items(body: Any) -> list[dict[str, Any]]:
    """A v2 entityBody that lists objects: `{"items": [...]}`, a bare list, or one object."""
    found = body.get("items", [body]) if isinstance(body, dict) else body
    if not isinstance(found, list):
        return []
    return [dict(item) for item in found if isinstance(item, dict)]


def _payment(data: dict[str, Any]) -> Payment:
    from escrow.toss.models import Payment

    return Payment.from_api(data)


_local = threading.local()


def get_toss_client(deadline: Deadline | None = None) -> TossClient:
    """One client (and HTTP connection pool) per container/thread, created on first use; with a deadline, its view
    whose calls are bounded by it (`TossClient.within`)."""
    from escrow.config import get_settings, settings_generation, toss_keys

    client = getattr(_local, "client", None)
    if client is None or getattr(_local, "generation", None) != settings_generation():
        settings = get_settings()
        keys = toss_keys()
        client = TossClient(
            settings.toss_api_base,
            keys.secret_key,
            connect_timeout=settings.toss_connect_timeout,
            read_timeout=settings.toss_read_timeout,
            payout_read_timeout=settings.toss_payout_read_timeout,
            security_key=keys.security_key,
        )
        _local.client = client
        _local.generation = settings_generation()
    return client.within(deadline)


def reset_toss_client() -> None:
    _local.client = None
