"""API Gateway HTTP API (payload 2.0) events for calling handlers in-process, as API Gateway would."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt

from escrow.config import LOCAL_JWT_SECRET


def token(user_id: str, *, secret: str = LOCAL_JWT_SECRET, ttl: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"user_id": user_id, "sub": user_id, "iat": now, "exp": now + ttl, **claims}, secret, algorithm="HS256"
    )


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    user: str | None = None,
    raw_body: str | None = None,
    headers: dict[str, str] | None = None,
    route: str | None = None,
    path_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    all_headers = {"content-type": "application/json", "host": "localhost", "user-agent": "pytest"}
    if user is not None:
        all_headers["authorization"] = f"Bearer {token(user)}"
    all_headers.update(headers or {})
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    request_id = str(uuid.uuid4())
    return {
        "version": "2.0",
        "routeKey": f"{method} {route or path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
            "requestId": request_id,
            "routeKey": f"{method} {route or path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": int(time.time() * 1000),
        },
        **({"pathParameters": path_parameters} if path_parameters else {}),
        **({"body": text, "isBase64Encoded": False} if text is not None else {"isBase64Encoded": False}),
    }


class Context:
    function_name = "test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:ap-northeast-2:123456789012:function:test"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 25_000
