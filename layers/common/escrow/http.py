"""HTTP glue shared by the handlers: Powertools' `APIGatewayHttpResolver` with request validation, and our one error
model `{"error": {"code", "message", ...}}` on every answer, Powertools' own refusals included.

`EscrowResolver` is `APIGatewayHttpResolver(enable_validation=True)` plus three things:

- before Powertools sees a request: the 64 KiB body limit (413) and, on resolvers whose routes all need a JWT, the
  bearer token (401). Powertools validates the body before any middleware runs; checking the token first means a
  caller without a valid token is never told anything about bodies, and nothing is parsed for them;
- one set of exception handlers: `AppError` (our codes), Powertools' validation errors (422 `VALIDATION_ERROR` with
  `details`, 400 `INVALID_JSON`, 404 for a bad path parameter), unknown routes (404/405), a lost database (503) and
  anything else (500 `INTERNAL_ERROR`, logged, never a stack trace);
- the invocation's `Deadline` (escrow.deadline), taken from the Lambda context when the request arrives: routes
  that call Toss hand `app.deadline` to their service, which bounds every Toss call by it;
- per-thread request state. Powertools keeps the current event on its `BaseRouter` class and the routing context on
  the resolver, which is right for Lambda (one invocation at a time per container) but not for the local runner,
  which serves a function from several threads (warm containers) in one process.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import OpenAPIRequestValidationMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from escrow import db
from escrow.config import get_settings
from escrow.deadline import Deadline
from escrow.errors import AppError, BadRequest, NotFound, PayloadTooLarge, ValidationFailed
from escrow.models import ERRORS, WEBHOOK_ERRORS, ErrorResponse
from escrow.observability import logger

if TYPE_CHECKING:
    from pydantic import BaseModel

    from escrow.auth import Principal

MAX_BODY_BYTES = 64 * 1024
JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]  # the OpenAPI security requirement of every JWT route

# A path parameter that does not validate names no resource: 404 with the parameter's own code.
PATH_PARAMETER_CODES = {"chatRoomId": ("INVALID_CHAT_ROOM_ID", "chatRoomId must be a positive integer")}

_dumps = partial(json.dumps, ensure_ascii=False, default=str)
# Pydantic's error types for a body that is absent or not an object at all (a model validator's own error on the
# whole body is a validation error with details, not one of these).
_NOT_AN_OBJECT = {"missing", "model_type", "model_attributes_type", "dict_type"}


def _strict_json(text: str) -> Any:
    """Powertools' JSON body deserializer: any failure is our 400 INVALID_JSON (Powertools would say 422)."""
    try:
        payload = json.loads(text)
        # A lone surrogate ("\ud800") is legal JSON but not encodable as UTF-8: refuse it here rather than fail
        # with a 500 when MySQL or the response encoder meets it (UnicodeEncodeError is a ValueError).
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deeper than the parser goes
        raise BadRequest("the body is not valid JSON", code="INVALID_JSON") from exc
    return payload


class _JsonBodies(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, with every body read as JSON whatever its content-type says (`curl -d` sends
    JSON as a form; the API has only ever taken JSON). Powertools would parse a form or multipart body instead, and
    a multipart content-type without a boundary made it raise a plain ValueError: a 500."""

    def __init__(self) -> None:  # (the parent's own __init__ sets nothing, and is untyped)
        pass

    def _get_body(self, app: Any) -> Any:
        return self._parse_json_data(app)


def error_response(error: AppError) -> Response[Any]:
    headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
    return Response(error.status, JSON, error.body(), headers)


def _internal_error() -> Response[Any]:
    return Response(500, JSON, {"error": {"code": "INTERNAL_ERROR", "message": "an internal error occurred"}})


class EscrowResolver(APIGatewayHttpResolver):
    """Powertools' HTTP API resolver with validation, our error model, and (``authenticated=True``) a JWT check
    before anything else. Route handlers read the caller from ``app.principal`` and the exact body bytes from
    ``app.raw_body``."""

    def __init__(self, *, authenticated: bool = True) -> None:
        self._local = threading.local()
        super().__init__(enable_validation=True, serializer=_dumps, json_body_deserializer=_strict_json)
        self._request_validation_middleware = _JsonBodies()
        self._authenticated = authenticated
        self._stacks_ready = False
        self._stacks_lock = threading.Lock()
        self.exception_handler(AppError)(self._app_error)
        self.exception_handler(RequestValidationError)(self._validation_error)
        self.exception_handler(NotFoundError)(self._no_route)
        self.exception_handler(Exception)(self._unexpected)

    # --- per-thread state (Powertools' own attributes, stored per thread) --------------------------------------

    @property  # type: ignore[override]
    def current_event(self) -> APIGatewayProxyEventV2:
        event: APIGatewayProxyEventV2 = self._local.event
        return event

    @current_event.setter
    def current_event(self, value: APIGatewayProxyEventV2) -> None:
        self._local.event = value

    @property
    def lambda_context(self) -> Any:
        return getattr(self._local, "lambda_context", None)

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        self._local.lambda_context = value

    @property
    def context(self) -> dict[str, Any]:
        if not hasattr(self._local, "context"):
            self._local.context = {}
        context: dict[str, Any] = self._local.context
        return context

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self._local.context = value

    @property
    def processed_stack_frames(self) -> list[str]:
        if not hasattr(self._local, "frames"):
            self._local.frames = []
        frames: list[str] = self._local.frames
        return frames

    @processed_stack_frames.setter
    def processed_stack_frames(self, value: list[str]) -> None:
        self._local.frames = value

    @property
    def principal(self) -> Principal:
        """The authenticated caller of the current request (resolvers with ``authenticated=True``)."""
        principal: Principal = self._local.principal
        return principal

    @property
    def deadline(self) -> Deadline:
        """When Lambda stops the current invocation, with the margin kept back to record an outcome
        (`DEADLINE_MARGIN_SECONDS`)."""
        deadline: Deadline = self._local.deadline
        return deadline

    @property
    def raw_body(self) -> bytes:
        """The request body exactly as the client sent it (at most MAX_BODY_BYTES)."""
        raw: bytes = self._local.raw_body
        return raw

    # --- resolution ----------------------------------------------------------------------------------------------

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        db.new_invocation()
        state = self._local
        state.principal = None
        self.lambda_context = context
        try:
            state.deadline = Deadline.from_context(context, margin=get_settings().deadline_margin_seconds)
            state.raw_body, event = _checked_body(event)
            if self._authenticated:
                from escrow.auth import authenticate  # jwt is imported by the first authenticated request

                state.principal = authenticate(
                    {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
                )
                logger.append_keys(user_id=state.principal.user_id)
            self.current_event = APIGatewayProxyEventV2(event, _strict_json)
            self._build_middleware_stacks()
            return super().resolve(event, context)
        except Exception as exc:  # noqa: BLE001 - before or outside Powertools' own handling: the same answers
            response = self._app_error(exc) if isinstance(exc, AppError) else self._unexpected(exc)
            return {
                "statusCode": response.status_code,
                "headers": dict(response.headers),
                "body": _dumps(response.body),
                "isBase64Encoded": False,
            }

    def _build_middleware_stacks(self) -> None:
        """Build every route's middleware stack once, under a lock. Powertools builds a route's stack on its first
        request; two threads doing that at once (the local runner's first concurrent requests) would wrap the stack
        twice, and the doubled stack calls the handler with the wrong arguments."""
        if self._stacks_ready:
            return
        with self._stacks_lock:
            if not self._stacks_ready:
                for route in (*self._static_routes, *self._dynamic_routes):
                    if not route._middleware_stack_built:
                        route._build_middleware_stack(router_middlewares=self._router_middlewares, app=self)
                self._stacks_ready = True

    # --- answers for failures ------------------------------------------------------------------------------------

    @staticmethod
    def _app_error(exc: AppError) -> Response[Any]:
        (logger.warning if exc.status >= 500 else logger.info)(
            "request refused", extra={"error_code": exc.code, "status": exc.status}
        )
        return error_response(exc)

    def _validation_error(self, exc: RequestValidationError) -> Response[Any]:
        errors = list(exc.errors())
        for err in errors:
            loc = tuple(err.get("loc") or ())
            if len(loc) >= 2 and loc[0] == "path":
                code, message = PATH_PARAMETER_CODES.get(str(loc[1]), ("NOT_FOUND", "no such resource"))
                return self._app_error(NotFound(message, code=code))
        if any(tuple(err.get("loc") or ()) == ("body",) and err.get("type") in _NOT_AN_OBJECT for err in errors):
            return self._app_error(self._whole_body_error())
        details = [
            {"field": ".".join(str(p) for p in tuple(err.get("loc") or ())[1:]) or "body", "message": err.get("msg")}
            for err in errors
        ]
        return self._app_error(ValidationFailed("the request body is not valid", details=details))

    def _whole_body_error(self) -> AppError:
        """The body as a whole did not validate: absent, not text, or JSON that is not an object."""
        raw = self.raw_body
        if not raw.strip():
            return BadRequest("a JSON body is required", code="INVALID_JSON")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadRequest("the body is not valid JSON (not UTF-8)", code="INVALID_JSON")
        return ValidationFailed("the body must be a JSON object")

    def _no_route(self, exc: NotFoundError) -> Response[Any]:
        path = self.current_event.path
        if any(route.rule.match(path) for route in (*self._static_routes, *self._dynamic_routes)):
            return Response(405, JSON, {"error": {"code": "METHOD_NOT_ALLOWED", "message": "method not allowed"}})
        return Response(404, JSON, {"error": {"code": "ROUTE_NOT_FOUND", "message": "no such route"}})

    @staticmethod
    def _unexpected(exc: Exception) -> Response[Any]:
        if db.is_connection_error(exc):
            db.close()
            return EscrowResolver._app_error(db.unavailable())
        logger.exception("unhandled error")  # the last line of defence: a clear 500, never a stack trace
        return _internal_error()


def _checked_body(event: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The body's bytes (413 past MAX_BODY_BYTES), and the event as Powertools should see it: the body as text, or
    no body when it is not UTF-8 (the JSON routes then answer 400; the webhook logs the bytes it was sent)."""
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise BadRequest("the body could not be decoded", code="INVALID_JSON") from exc
    else:
        data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if event.get("isBase64Encoded"):
        try:
            text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        event = {**event, "body": text, "isBase64Encoded": False}
    return data, event


def documented(
    status: int,
    model: type[BaseModel],
    errors: tuple[int, ...],
    *,
    description: str = "success",
    webhook: bool = False,
    also: dict[int, tuple[type[BaseModel], str]] | None = None,
) -> dict[int, Any]:
    """A route's OpenAPI `responses`: its success answer and every error status it can give, with what each means."""
    table = WEBHOOK_ERRORS if webhook else ERRORS
    answers: dict[int, Any] = {status: {"description": description, "content": {JSON: {"model": model}}}}
    for extra_status, (extra_model, extra_description) in (also or {}).items():
        answers[extra_status] = {"description": extra_description, "content": {JSON: {"model": extra_model}}}
    for code in errors:
        answers[code] = {"description": table[code], "content": {JSON: {"model": ErrorResponse}}}
    return answers
