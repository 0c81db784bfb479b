"""HTTP glue shared by the handlers: the resolver, body parsing, authentication and error answers."""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from pydantic import BaseModel, ValidationError

from escrow import db
from escrow.auth import Principal, authenticate
from escrow.errors import AppError, BadRequest, DatabaseUnavailable, PayloadTooLarge, ValidationFailed
from escrow.observability import logger

MAX_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, ensure_ascii=False, default=str),
        headers=headers or {},
    )


def error_response(error: AppError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return json_response(error.status, error.body(), headers)


def make_resolver() -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver()

    @app.exception_handler(AppError)
    def _app_error(exc: AppError) -> Response:
        level = logger.warning if exc.status >= 500 else logger.info
        level("request refused", extra={"error_code": exc.code, "status": exc.status})
        return error_response(exc)

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if db.is_connection_error(exc):
            return error_response(DatabaseUnavailable("the database is not reachable; nothing was changed"))
        logger.exception("unhandled error")
        body = {"error": {"code": "INTERNAL_ERROR", "message": "an internal error occurred; nothing was charged twice"}}
        return json_response(500, body)

    @app.not_found
    def _not_found(_exc: Exception) -> Response:
        return json_response(404, {"error": {"code": "ROUTE_NOT_FOUND", "message": "no such route"}})

    return app


def raw_body(app: APIGatewayHttpResolver) -> bytes:
    event = app.current_event
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return data


def parse_body(app: APIGatewayHttpResolver, model: type[M]) -> M:
    data = raw_body(app)
    if not data.strip():
        raise BadRequest("a JSON body is required", code="INVALID_JSON")
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
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


def current_principal(app: APIGatewayHttpResolver) -> Principal:
    principal = authenticate(dict(app.current_event.headers or {}))
    logger.append_keys(user_id=principal.user_id)
    return principal


def run(app: APIGatewayHttpResolver, event: dict[str, Any], context: Any) -> dict[str, Any]:
    db.new_invocation()
    return app.resolve(event, context)
