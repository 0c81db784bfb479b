"""HTTP glue shared by the handlers: a small router for API Gateway HTTP API (payload 2.0) events, body parsing,
authentication and the one error model.

A hand-written router rather than Powertools' resolver: importing `aws_lambda_powertools.event_handler` pulls in
every resolver Powertools has (AppSync, Bedrock, asyncio, ...), about 170 ms of every cold start here, for the
three or four routes a function has.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from escrow import db
from escrow.errors import AppError, BadRequest, PayloadTooLarge, ValidationFailed
from escrow.observability import logger

if TYPE_CHECKING:
    from pydantic import BaseModel

    from escrow.auth import Principal

MAX_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound="BaseModel")
Handler = Callable[..., dict[str, Any]]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Request:
        http = (event.get("requestContext") or {}).get("http") or {}
        raw = event.get("body") or ""
        try:
            data = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode("utf-8")
        except (ValueError, TypeError) as exc:
            raise BadRequest("the body could not be decoded", code="INVALID_JSON") from exc
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        return cls(
            str(http.get("method") or "GET").upper(),
            str(event.get("rawPath") or http.get("path") or "/"),
            headers,
            data,
            dict(event.get("pathParameters") or {}),
            event,
        )


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json; charset=utf-8", **(headers or {})},
        "body": json.dumps(body, ensure_ascii=False, default=str),
        "isBase64Encoded": False,
    }


def error_response(error: AppError) -> dict[str, Any]:
    headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
    return json_response(error.status, error.body(), headers)


class Router:
    """Routes `METHOD /path/{param}` to functions taking a Request (and the path parameters by name)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, template: str) -> Callable[[Handler], Handler]:
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

        def register(fn: Handler) -> Handler:
            self._routes.append((method.upper(), pattern, fn))
            return fn

        return register

    def post(self, template: str) -> Callable[[Handler], Handler]:
        return self.route("POST", template)

    def get(self, template: str) -> Callable[[Handler], Handler]:
        return self.route("GET", template)

    def resolve(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        db.new_invocation()
        try:
            request = Request.from_event(event)
            allowed = False
            for method, pattern, fn in self._routes:
                match = pattern.match(request.path)
                if match is None:
                    continue
                allowed = True
                if method == request.method:
                    request.path_params = {**request.path_params, **match.groupdict()}
                    return fn(request, **match.groupdict())
            if allowed:
                return json_response(405, {"error": {"code": "METHOD_NOT_ALLOWED", "message": "method not allowed"}})
            return json_response(404, {"error": {"code": "ROUTE_NOT_FOUND", "message": "no such route"}})
        except AppError as exc:
            (logger.warning if exc.status >= 500 else logger.info)(
                "request refused", extra={"error_code": exc.code, "status": exc.status}
            )
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a clear 500, never a stack trace
            if db.is_connection_error(exc):
                db.close()
                return error_response(db.unavailable())
            logger.exception("unhandled error")
            return json_response(500, {"error": {"code": "INTERNAL_ERROR", "message": "an internal error occurred"}})


def raw_body(request: Request) -> bytes:
    if len(request.body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return request.body


def parse_body(request: Request, model: type[M]) -> M:
    from pydantic import ValidationError

    data = raw_body(request)
    if not data.strip():
        raise BadRequest("a JSON body is required", code="INVALID_JSON")
    try:
        payload = json.loads(data)
        # A lone surrogate ("\ud800") is legal JSON but not encodable as UTF-8: refuse it here rather than fail
        # with a 500 when MySQL or the response encoder meets it (UnicodeEncodeError is a ValueError).
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deeper than the parser goes
        raise BadRequest("the body is not valid JSON", code="INVALID_JSON") from exc
    if not isinstance(payload, dict):
        raise ValidationFailed("the body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed("the request body is not valid", details=details) from exc


def current_principal(request: Request) -> Principal:
    from escrow.auth import authenticate

    principal = authenticate(request.headers)
    logger.append_keys(user_id=principal.user_id)
    return principal
