"""EscrowResolver: Powertools' resolver with our error model, the checks made before Powertools sees a request, and
per-thread request state. Routes here are made up; no database, no network."""

from __future__ import annotations

import base64
import json
import threading
from typing import Annotated, Any

import pytest
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel, ConfigDict, StrictInt, model_validator

from escrow.http import MAX_BODY_BYTES, EscrowResolver
from tests.support.events import Context, http_event


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: StrictInt
    inner: dict[str, StrictInt] | None = None

    @model_validator(mode="after")
    def _not_13(self) -> Body:
        if self.n == 13:
            raise ValueError("n must not be 13")
        return self


def make_app(*, authenticated: bool = True) -> EscrowResolver:
    app = EscrowResolver(authenticated=authenticated)

    @app.post("/echo")
    def echo(body: Body) -> dict[str, Any]:
        user = app.principal.user_id if authenticated else None
        return {"n": body.n, "user": user, "raw": len(app.raw_body)}

    @app.get("/items/<itemId>")
    def item(itemId: Annotated[int, Path(ge=1)]) -> dict[str, Any]:
        return {"item": itemId}

    @app.post("/boom")
    def boom() -> dict[str, Any]:
        raise RuntimeError("secret internals: password=hunter2")

    return app


def call(app: EscrowResolver, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any], dict[str, Any]]:
    result = app.resolve(http_event(method, path, **kw), Context())
    return result["statusCode"], json.loads(result["body"]), result.get("headers") or {}


def test_a_valid_request_reaches_the_handler_with_the_caller_and_the_raw_body():
    status, body, _ = call(make_app(), "POST", "/echo", body={"n": 1}, user="u1")
    assert (status, body) == (200, {"n": 1, "user": "u1", "raw": len('{"n": 1}')})


def test_the_token_is_checked_before_the_body_and_the_size_before_the_token():
    app = make_app()
    status, body, headers = call(app, "POST", "/echo", raw_body="not json")
    assert (status, body["error"]["code"], headers["www-authenticate"]) == (401, "AUTH_REQUIRED", "Bearer")
    status, body, _ = call(app, "POST", "/echo", raw_body="x" * (MAX_BODY_BYTES + 1))
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("", 400, "INVALID_JSON"),
        ("  \n", 400, "INVALID_JSON"),
        ('{"n": 1', 400, "INVALID_JSON"),
        ('{"n": "\\ud800"}', 400, "INVALID_JSON"),
        ("[" * 100_000 + "]" * 100_000, 413, "PAYLOAD_TOO_LARGE"),
        ("[" * 30_000 + "]" * 30_000, 400, "INVALID_JSON"),
        ("null", 422, "VALIDATION_ERROR"),
        ("[1]", 422, "VALIDATION_ERROR"),
    ],
)
def test_bodies_that_are_not_a_json_object_get_our_codes(raw, status, code):
    got, body, _ = call(make_app(), "POST", "/echo", raw_body=raw, user="u1")
    assert (got, body["error"]["code"]) == (status, code)
    assert set(body) == {"error"}


def test_powertools_validation_errors_come_out_as_our_422_with_details():
    status, body, _ = call(make_app(), "POST", "/echo", body={"n": "1", "inner": {"a": 1.5}, "x": 1}, user="u1")
    assert status == 422
    assert body["error"]["code"] == "VALIDATION_ERROR"
    fields = {d["field"] for d in body["error"]["details"]}
    assert fields == {"n", "inner.a", "x"}
    assert all(set(d) == {"field", "message"} for d in body["error"]["details"])  # no input echoed back
    status, body, _ = call(make_app(), "POST", "/echo", body={"n": 13}, user="u1")
    assert (status, body["error"]["details"][0]["field"]) == (422, "body")  # a rule over the whole body


def test_bodies_are_json_whatever_their_content_type_says():
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
        status, body, _ = call(
            make_app(), "POST", "/echo", body={"n": 2}, user="u1", headers={"content-type": content_type}
        )
        assert (status, body["n"]) == (200, 2), content_type


def test_a_base64_body_that_is_not_utf8_is_invalid_json():
    event = http_event("POST", "/echo", user="u1", headers={"content-type": "application/octet-stream"})
    event.update({"body": base64.b64encode(b'{"n": "\xff"}').decode(), "isBase64Encoded": True})
    result = make_app().resolve(event, Context())
    assert (result["statusCode"], json.loads(result["body"])["error"]["code"]) == (400, "INVALID_JSON")


def test_unknown_routes_and_methods_and_bad_path_parameters():
    app = make_app()
    assert call(app, "GET", "/nowhere", user="u1")[:2] == (
        404,
        {"error": {"code": "ROUTE_NOT_FOUND", "message": "no such route"}},
    )
    assert call(app, "GET", "/echo", user="u1")[1]["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert call(app, "GET", "/echo", user="u1")[0] == 405
    assert call(app, "GET", "/items/0", user="u1")[:2][0] == 404
    assert call(app, "GET", "/items/7", user="u1")[1] == {"item": 7}


def test_an_unexpected_error_is_a_500_without_a_stack_trace(caplog):
    status, body, _ = call(make_app(), "POST", "/boom", body={}, user="u1")
    assert (status, body) == (500, {"error": {"code": "INTERNAL_ERROR", "message": "an internal error occurred"}})
    assert "hunter2" not in json.dumps(body)


def test_first_requests_from_many_threads_at_once_each_get_their_own_answer():
    """The local runner serves a function from several threads: each request must see its own event, and the
    first concurrent requests must not build a route's middleware stack twice."""
    app = make_app()
    answers: dict[int, tuple[int, dict[str, Any]]] = {}
    start = threading.Barrier(16)

    def one(n: int) -> None:
        start.wait()
        status, body, _ = call(app, "POST", "/echo", body={"n": n}, user=f"user{n}")
        answers[n] = (status, body)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(100, 116)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {
        n: (200, {"n": n, "user": f"user{n}", "raw": len(json.dumps({"n": n}))}) for n in range(100, 116)
    }


def test_an_unauthenticated_resolver_takes_requests_without_a_token():
    status, body, _ = call(make_app(authenticated=False), "POST", "/echo", body={"n": 3})
    assert (status, body["n"]) == (200, 3)
