"""The local API Gateway: event shape, routing, bodies, limits, errors, response mapping and the worker pool."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.api import MAX_BODY_BYTES, build_event, is_text_content_type, map_result, start_local_api
from local.template import Route

from .conftest import FakeProject

RECORDED_EVENT = json.loads((Path(__file__).parent / "data" / "apigw_http_v2_event.json").read_text())


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, list[tuple[str, str]]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        items = response.getheaders()
        return response.status, {k.lower(): v for k, v in items}, data, items
    finally:
        conn.close()


@pytest.fixture()
def api(fake_project: FakeProject) -> Iterator[Any]:
    handle = start_local_api(
        port=0,
        workers=2,
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
    )
    yield handle
    handle.stop()


def echo(api: Any, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict:
    status, _, data, _ = request(api.url, method, path, body, headers)
    assert status == 200, data
    return json.loads(data)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def test_event_has_the_structure_of_a_recorded_api_gateway_http_api_event(api) -> None:
    body = b"Hello from Lambda"
    event = echo(
        api,
        "POST",
        "/items?parameter1=value1&parameter1=value2&parameter2=value",
        body,
        {"content-type": "text/plain", "cookie": "cookie1; cookie2", "user-agent": "agent"},
    )["event"]
    recorded = dict(RECORDED_EVENT)
    recorded.pop("stageVariables")  # only with stage variables, which the template has none of
    recorded.pop("pathParameters")  # only on templated routes (see the next test)
    recorded["requestContext"] = {
        k: v for k, v in recorded["requestContext"].items() if k not in ("authentication", "authorizer")
    }  # only with mutual TLS / an API Gateway authorizer
    shape = _shape(event)
    shape["headers"] = "dict"
    expected = _shape(recorded)
    expected["headers"] = "dict"
    assert shape == expected
    assert list(event) == [k for k in RECORDED_EVENT if k in event]  # same key order as API Gateway's

    assert event["version"] == "2.0"
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "POST /items"
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == "/items"
    assert event["rawQueryString"] == "parameter1=value1&parameter1=value2&parameter2=value"
    assert event["queryStringParameters"] == {"parameter1": "value1,value2", "parameter2": "value"}
    assert event["cookies"] == ["cookie1", "cookie2"]
    assert "cookie" not in event["headers"]
    assert event["body"] == "Hello from Lambda" and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["stage"] == "$default"
    assert ctx["http"] == {
        "method": "POST",
        "path": "/items",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "agent",
    }
    assert abs(ctx["timeEpoch"] / 1000 - __import__("time").time()) < 60
    assert len(ctx["time"].split()) == 2 and ctx["time"].endswith("+0000")


def test_headers_are_lower_cased_and_repeated_headers_comma_joined() -> None:
    event = build_event(
        Route("GET", "/x", "F"),
        {},
        "GET",
        "/x",
        "",
        [("X-Custom", "a"), ("x-custom", "b"), ("Host", "localhost:3000"), ("Content-Type", "application/json")],
        None,
    )
    assert event["headers"]["x-custom"] == "a,b"
    assert event["headers"]["content-type"] == "application/json"
    assert event["headers"]["x-forwarded-port"] == "3000"
    assert event["requestContext"]["domainName"] == "localhost"
    assert "body" not in event and event["isBase64Encoded"] is False
    assert "queryStringParameters" not in event and "pathParameters" not in event and "cookies" not in event


def test_path_parameters_come_from_the_matched_route_template(api) -> None:
    event = echo(api, "GET", "/items/42?x=1&x=2&y=")["event"]
    assert event["routeKey"] == "GET /items/{itemId}"
    assert event["pathParameters"] == {"itemId": "42"}
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    greedy = echo(api, "PUT", "/files/reports/2026/nov.csv", b"a,b", {"content-type": "text/csv"})["event"]
    assert greedy["routeKey"] == "ANY /files/{proxy+}"
    assert greedy["pathParameters"] == {"proxy": "reports/2026/nov.csv"}


@pytest.mark.parametrize(
    ("content_type", "base64_encoded"),
    [
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("text/plain", False),
        ("application/problem+json", False),
        ("application/octet-stream", True),
        ("image/png", True),
        ("application/x-www-form-urlencoded", True),
        (None, True),
    ],
)
def test_non_text_bodies_arrive_base64_encoded(api, content_type, base64_encoded) -> None:
    raw = b"\x00\x01\xffbinary" if base64_encoded else '{"a": "한글"}'.encode()
    headers = {"content-type": content_type} if content_type else {}
    event = echo(api, "POST", "/items", raw, headers)["event"]
    assert event["isBase64Encoded"] is base64_encoded
    received = base64.b64decode(event["body"]) if base64_encoded else event["body"].encode()
    assert received == raw
    assert is_text_content_type(content_type) is not base64_encoded


def test_unknown_route_is_404_like_api_gateway(api) -> None:
    for method, path in [("GET", "/nothing"), ("POST", "/items/42"), ("GET", "/items")]:
        status, headers, data, _ = request(api.url, method, path)
        assert status == 404
        assert json.loads(data) == {"message": "Not Found"}
        assert headers["content-type"] == "application/json"
        assert headers["apigw-requestid"]


def test_body_over_the_limit_is_413(fake_project: FakeProject) -> None:
    assert MAX_BODY_BYTES == 10 * 1024 * 1024
    handle = start_local_api(
        port=0,
        workers=1,
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
        max_body_bytes=100,
    )
    try:
        ok, _, _, _ = request(handle.url, "POST", "/items", b"x" * 100, {"content-type": "text/plain"})
        assert ok == 200
        status, _, data, _ = request(handle.url, "POST", "/items", b"x" * 101, {"content-type": "text/plain"})
        assert status == 413
        assert json.loads(data) == {"message": "Request Entity Too Large"}
    finally:
        handle.stop()


def test_a_body_over_10_mb_is_413(api) -> None:
    status, _, data, _ = request(
        api.url, "POST", "/items", b"x" * (MAX_BODY_BYTES + 1), {"content-type": "application/json"}
    )
    assert status == 413
    assert json.loads(data) == {"message": "Request Entity Too Large"}


def test_an_announced_oversized_body_is_refused_before_it_is_sent(api) -> None:
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest("POST", "/items")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(MAX_BODY_BYTES + 1))
        conn.putheader("expect", "100-continue")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == {"message": "Request Entity Too Large"}
    finally:
        conn.close()


def test_chunked_bodies_are_read(api) -> None:
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/items",
            body=iter([b'{"a":', b" 1}"]),
            headers={"content-type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(json.loads(response.read())["event"]["body"]) == {"a": 1}
    finally:
        conn.close()


def test_handler_exception_is_500_with_the_traceback_on_stderr(api, capfd) -> None:
    status, _, data, _ = request(api.url, "POST", "/boom", b"{}", {"content-type": "application/json"})
    assert status == 500
    assert json.loads(data) == {"message": "Internal Server Error"}
    err = capfd.readouterr().err
    assert "Traceback" in err and "the handler blew up on purpose" in err


def test_results_are_mapped_to_http_like_api_gateway(api) -> None:
    status, headers, data, _ = request(api.url, "GET", "/shape/plain-dict")
    assert (status, headers["content-type"], json.loads(data)) == (200, "application/json", {"hello": "world", "n": 1})

    status, _, data, _ = request(api.url, "GET", "/shape/string")
    assert (status, data) == (200, b"just text")

    status, headers, data, items = request(api.url, "GET", "/shape/cookies")
    assert (status, data, headers["x-one"], headers["content-type"]) == (201, b"made", "1", "text/plain")
    assert [v for k, v in items if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]
    assert [v for k, v in items if k.lower() == "x-many"] == ["a", "b"]

    status, _, data, _ = request(api.url, "GET", "/shape/binary")
    assert (status, data) == (200, bytes(range(256)))

    status, _, data, _ = request(api.url, "GET", "/shape/bad-status")
    assert (status, json.loads(data)) == (500, {"message": "Internal Server Error"})

    status, headers, data, _ = request(api.url, "GET", "/shape/empty")
    assert (status, data, headers["content-length"]) == (204, b"", "0")


def test_map_result_for_payload_2_0() -> None:
    assert map_result({"a": 1}).status == 200
    assert map_result({"a": 1}).body == b'{"a": 1}'
    assert map_result(None).body == b"null"
    mapped = map_result({"statusCode": 302, "headers": {"Location": "/x"}})
    assert (mapped.status, mapped.header("location"), mapped.body) == (302, "/x", b"")


def test_the_worker_pool_is_fixed_and_its_threads_are_reused(api) -> None:
    with ThreadPoolExecutor(6) as clients:
        results = list(clients.map(lambda _: echo(api, "GET", "/items/1?sleep=0.05"), range(12)))
    threads = {r["thread"] for r in results}
    assert threads <= set(api.pool.thread_ids)
    assert len(threads) <= 2
    assert max(r["max_active"] for r in results) <= 2  # requests waited for a free worker
    again = {echo(api, "GET", "/items/1")["thread"] for _ in range(4)}
    assert again <= set(api.pool.thread_ids)
    assert threading.get_ident() not in threads


def test_context_and_environment_reach_the_handler(api) -> None:
    body = echo(api, "GET", "/items/1")
    assert body["function_name"] == "EchoFunction"
    assert body["memory"] == 256
    assert 0 < body["remaining_ms"] <= 7000
    assert body["helper"] == "echo-helper"
    assert body["env"]["LEVEL"] == "DEBUG"  # from the env-vars file
    assert body["env"]["ONLY_ECHO"] == "echo"
    assert body["request_id"]


def test_env_argument_wins_and_stop_restores_os_environ(fake_project: FakeProject, monkeypatch) -> None:
    monkeypatch.setenv("FROM_PROCESS", "process")
    monkeypatch.delenv("ONLY_ECHO", raising=False)
    handle = start_local_api(
        port=0,
        workers=1,
        env={"FROM_PROCESS": "explicit"},
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
    )
    try:
        env = echo(handle, "GET", "/items/1")["env"]
        assert env["FROM_PROCESS"] == "explicit"
        assert env["ONLY_ECHO"] == "echo"
    finally:
        handle.stop()
    assert os.environ["FROM_PROCESS"] == "process"
    assert "ONLY_ECHO" not in os.environ


def test_openapi_json_is_served_from_the_project_root(fake_project: FakeProject) -> None:
    (fake_project.root / "openapi.json").write_text('{"openapi": "3.1.0"}', encoding="utf-8")
    handle = start_local_api(
        port=0,
        workers=1,
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
    )
    try:
        status, headers, data, _ = request(handle.url, "GET", "/openapi.json")
        assert (status, headers["content-type"], json.loads(data)) == (200, "application/json", {"openapi": "3.1.0"})
    finally:
        handle.stop()


def test_swagger_ui_is_served_offline_over_the_committed_description(fake_project: FakeProject) -> None:
    spec = {"openapi": "3.1.0", "info": {"title": "t</script>", "version": "1"}, "paths": {}}
    (fake_project.root / "openapi.json").write_text(json.dumps(spec), encoding="utf-8")
    handle = start_local_api(
        port=0,
        workers=1,
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
    )
    try:
        status, headers, data, _ = request(handle.url, "GET", "/swagger")
        page = data.decode("utf-8")
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert "SwaggerUIBundle" in page and ".swagger-ui" in page  # the script and the styles, inlined
        assert not re.search(r"<(script|link)[^>]+(src|href)=", page)  # nothing to fetch from anywhere
        assert "t</script>" not in page  # the spec cannot close the script element it sits in
        status, _, data, _ = request(handle.url, "GET", "/swagger?format=json")
        served = json.loads(data)
        assert status == 200 and served["servers"] == [{"url": handle.url, "description": "this local API"}]
        assert {k: v for k, v in served.items() if k != "servers"} == spec
    finally:
        handle.stop()


def test_keep_alive_connections_serve_several_requests(api) -> None:
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/items/7")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


def test_no_answer_within_the_integration_timeout_is_503(fake_project: FakeProject) -> None:
    handle = start_local_api(
        port=0,
        workers=1,
        template_path=fake_project.template,
        env_file=fake_project.env_file,
        functions_dir=fake_project.functions_dir,
        integration_timeout=0.2,
    )
    try:
        status, _, data, _ = request(handle.url, "GET", "/items/1?sleep=0.5")
        assert (status, json.loads(data)) == (503, {"message": "Service Unavailable"})
    finally:
        handle.stop()
