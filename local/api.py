"""A local stand-in for API Gateway (HTTP API, payload format 2.0) in front of the template's functions.

Each HTTP request becomes the event API Gateway would send, is run by one of a FIXED pool of worker threads
(N warm containers: the layer keeps one DB connection per thread, so connections are reused the way they are
on Lambda) and the handler's answer is mapped back to HTTP the way API Gateway maps it.

    handle = start_local_api(port=0, workers=4)
    ... requests to handle.url ...
    handle.stop()
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from local import REPO_ROOT
from local.functions import FunctionRuntime
from local.template import (
    DEFAULT_ENV_FILE,
    LocalTemplate,
    Route,
    apply_environment,
    load_template,
    restore_environment,
)

log = logging.getLogger("local.api")

MAX_BODY_BYTES = 10 * 1024 * 1024  # HTTP API payload limit
INTEGRATION_TIMEOUT_S = 30.0  # HTTP API's maximum integration timeout
ACCOUNT_ID = "123456789012"
API_ID = "localapi00"

_TEXT_TYPES = (
    "application/json",
    "application/javascript",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/graphql",
    "application/ld+json",
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

NOT_FOUND = (404, {"message": "Not Found"})
TOO_LARGE = (413, {"message": "Request Entity Too Large"})
INTERNAL_ERROR = (500, {"message": "Internal Server Error"})
UNAVAILABLE = (503, {"message": "Service Unavailable"})


SWAGGER_PATH = "/swagger"


def swagger_page(spec_json: str) -> str:
    """Powertools' Swagger UI page for a spec, with its bundled swagger-ui script and styles inlined (offline)."""
    from aws_lambda_powertools.event_handler.openapi import swagger_ui

    assets = Path(swagger_ui.__file__).parent
    js = (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8")
    css = (assets / "swagger-ui.min.css").read_text(encoding="utf-8")
    # "</" inside the inlined spec would end the <script> element early.
    return swagger_ui.generate_swagger_html(spec_json.replace("</", "<\\/"), js, css, "", None)


# ------------------------------------------------------------------------------------------ worker pool


class WorkerPool:
    """N long-lived threads that run invocations one at a time each; extra requests wait in the queue."""

    def __init__(self, size: int = 8, name: str = "lambda-worker") -> None:
        if size < 1:
            raise ValueError("the pool needs at least one worker")
        self.size = size
        self._queue: queue.Queue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    @property
    def thread_ids(self) -> list[int | None]:
        return [t.ident for t in self._threads]

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, lambda: fn(*args, **kwargs)))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))


# ------------------------------------------------------------------------------------------ event mapping


def is_text_content_type(content_type: str | None) -> bool:
    """API Gateway passes these bodies as text; anything else (and no content type) arrives base64-encoded."""
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+json", "+xml"))


def clf_time(epoch: float) -> str:
    tm = time.gmtime(epoch)
    clock = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    return f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:{clock} +0000"


def new_request_id() -> str:
    """Looks like an API Gateway request id (``JKJaXmPLvHcESHA=``)."""
    return base64.b64encode(secrets.token_bytes(11)).decode().replace("+", "A").replace("/", "B")


def build_event(
    route: Route | None,
    path_parameters: Mapping[str, str] | None,
    method: str,
    raw_path: str,
    raw_query: str,
    header_items: Iterable[tuple[str, str]],
    body: bytes | None,
    *,
    source_ip: str = "127.0.0.1",
    protocol: str = "HTTP/1.1",
    request_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload 2.0 event for one request."""
    now = time.time() if now is None else now
    request_id = request_id or new_request_id()
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in header_items:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    host = headers.get("host", "localhost")
    domain = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    if ":" in host and not host.endswith("]"):
        headers.setdefault("x-forwarded-port", host.rsplit(":", 1)[1])
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(now):08x}-{secrets.token_hex(12)}")

    route_key = route.route_key if route else "$default"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if raw_query:
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": method.upper(),
            "path": raw_path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": clf_time(now),
        "timeEpoch": int(now * 1000),
    }
    encoded = False
    if body:
        encoded = not is_text_content_type(headers.get("content-type"))
        event["body"] = base64.b64encode(body).decode("ascii") if encoded else body.decode("utf-8", errors="replace")
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    event["isBase64Encoded"] = encoded
    return event


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def json_response(status: int, payload: Any) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json")], json.dumps(payload).encode())


def map_result(result: Any) -> HttpResponse:
    """API Gateway's mapping of a payload 2.0 Lambda result to HTTP.

    A dict with ``statusCode`` is a response object. Anything else is taken as a 200 JSON body (a string as
    is, other values JSON-encoded). A malformed response object is a 500, as API Gateway answers.
    """
    if isinstance(result, dict) and "statusCode" in result:
        try:
            status = int(result["statusCode"])
        except (TypeError, ValueError):
            log.error("handler returned a malformed statusCode %r", result.get("statusCode"))
            return json_response(*INTERNAL_ERROR)
        headers: list[tuple[str, str]] = []
        for name, value in (result.get("headers") or {}).items():
            headers.append((str(name).lower(), _header_value(value)))
        for name, values in (result.get("multiValueHeaders") or {}).items():
            for value in values if isinstance(values, list) else [values]:
                headers.append((str(name).lower(), _header_value(value)))
        for cookie in result.get("cookies") or []:
            headers.append(("set-cookie", str(cookie)))
        raw_body = result.get("body")
        if raw_body is None:
            body = b""
        elif result.get("isBase64Encoded"):
            try:
                body = base64.b64decode(raw_body)
            except (ValueError, TypeError):
                log.error("handler returned isBase64Encoded with a body that is not base64")
                return json_response(*INTERNAL_ERROR)
        else:
            body = (raw_body if isinstance(raw_body, str) else json.dumps(raw_body)).encode("utf-8")
        if not any(k == "content-type" for k, _ in headers) and body:
            headers.append(("content-type", "application/json"))
        return HttpResponse(status, headers, body)
    body = (result if isinstance(result, str) else json.dumps(result)).encode("utf-8")
    return HttpResponse(200, [("content-type", "application/json")], body)


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ------------------------------------------------------------------------------------------ the API


class LocalApi:
    """Routing, event building, invocation on the worker pool and response mapping (no sockets here)."""

    def __init__(
        self,
        template: LocalTemplate,
        runtime: FunctionRuntime | None = None,
        workers: int = 8,
        base_dir: Path | None = None,
        integration_timeout: float = INTEGRATION_TIMEOUT_S,
    ) -> None:
        self.template = template
        self.runtime = runtime or FunctionRuntime(template)
        self.pool = WorkerPool(workers)
        self.base_dir = Path(base_dir) if base_dir else REPO_ROOT
        self.integration_timeout = integration_timeout
        from local.demo import DemoSite  # the reference chat client under /demo/ (local only)

        self.demo = DemoSite()

    def handle(
        self,
        method: str,
        target: str,
        header_items: list[tuple[str, str]],
        body: bytes | None,
        source_ip: str = "127.0.0.1",
        protocol: str = "HTTP/1.1",
    ) -> HttpResponse:
        raw_path, _, raw_query = target.partition("?")
        raw_path = raw_path or "/"
        request_id = new_request_id()
        demo = self.demo.handle(method, raw_path, raw_query, body)
        if demo is not None:
            return HttpResponse(*demo)
        if method.upper() == "GET" and raw_path in ("/openapi.json", SWAGGER_PATH):
            docs = self._docs(raw_path, raw_query, dict((k.lower(), v) for k, v in header_items).get("host"))
            if docs is not None:
                return docs
        matched = self.template.match(method, raw_path)
        if matched is None:
            response = json_response(*NOT_FOUND)
            response.headers.append(("apigw-requestid", request_id))
            return response
        route, path_params = matched
        event = build_event(
            route,
            path_params,
            method,
            raw_path,
            raw_query,
            header_items,
            body,
            source_ip=source_ip,
            protocol=protocol,
            request_id=request_id,
        )
        spec = self.template.functions[route.function]
        started = time.perf_counter()
        running = threading.Event()

        def invocation() -> Any:
            running.set()
            return self.runtime.invoke(route.function, event, str(uuid.uuid4()))

        future = self.pool.submit(invocation)
        try:
            # The function's Timeout counts from when a worker (container) picks the event up; API Gateway's
            # integration timeout counts from the request.
            if not running.wait(self.integration_timeout):
                future.cancel()
                raise concurrent.futures.TimeoutError
            left = self.integration_timeout - (time.perf_counter() - started)
            result = future.result(timeout=max(0.0, min(float(spec.timeout), left)))
            response = map_result(result)
        except concurrent.futures.TimeoutError:
            left = self.integration_timeout - (time.perf_counter() - started)
            if running.is_set() and spec.timeout < left:
                print(
                    f"{route.function}: Task timed out after {spec.timeout} seconds "
                    "(the worker stays busy until the handler returns)",
                    file=sys.stderr,
                )
                response = json_response(*INTERNAL_ERROR)
            else:
                print(
                    f"{route.function}: no answer within the {self.integration_timeout:g} s integration timeout",
                    file=sys.stderr,
                )
                response = json_response(*UNAVAILABLE)
        except Exception as exc:  # noqa: BLE001 - the handler crashed: API Gateway answers 500
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            print(f"{route.function} raised an exception ({route.route_key}):\n{trace}", file=sys.stderr, end="")
            response = json_response(*INTERNAL_ERROR)
        response.headers.append(("apigw-requestid", request_id))
        log.info(
            '%s "%s %s" %s %s %.1f ms',
            source_ip,
            method,
            target,
            response.status,
            route.function,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _docs(self, path: str, query: str, host: str | None) -> HttpResponse | None:
        """The committed openapi.json, and Swagger UI over it (`/swagger`; `/swagger?format=json` is the spec with
        this server as its server). The UI's script and styles are the copies Powertools ships in its package,
        inlined into the page: nothing is fetched from a CDN."""
        spec_file = self.base_dir / "openapi.json"
        if not spec_file.is_file():
            return None
        if path == "/openapi.json":
            return HttpResponse(200, [("content-type", "application/json")], spec_file.read_bytes())
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        if host:
            spec["servers"] = [{"url": f"http://{host}", "description": "this local API"}]
        text = json.dumps(spec, ensure_ascii=False, indent=2)
        if "format=json" in query.split("&"):
            return HttpResponse(200, [("content-type", "application/json")], text.encode())
        return HttpResponse(200, [("content-type", "text/html; charset=utf-8")], swagger_page(text).encode())

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _make_request_handler(api: LocalApi, max_body: int) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "escrow-local-api"

        def version_string(self) -> str:
            return self.server_version

        def _serve(self) -> None:
            body = self._read_body()
            if body is None:
                return
            response = api.handle(
                self.command,
                self.path,
                list(self.headers.items()),
                body,
                source_ip=self.client_address[0],
                protocol=self.request_version,
            )
            self._send(response)

        def _read_body(self) -> bytes | None:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                chunks: list[bytes] = []
                total = 0
                while True:
                    line = self.rfile.readline(65537)
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    total += size
                    if total > max_body:
                        self._reject_too_large()
                        return None
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline(3)
            length = self._content_length()
            if length is None:
                self._send(json_response(400, {"message": "Bad Request"}))
                self.close_connection = True
                return None
            if length > max_body:
                self._discard(length)
                self._reject_too_large()
                return None
            return self.rfile.read(length) if length > 0 else b""

        def _content_length(self) -> int | None:
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                return None
            return length if length >= 0 else None

        def handle_expect_100(self) -> bool:
            # `Expect: 100-continue` (curl does it for big uploads): refuse an oversized body before it is sent.
            length = self._content_length()
            if length is not None and length > max_body:
                self._reject_too_large()
                return False
            return super().handle_expect_100()

        def _discard(self, length: int) -> None:
            """Read (and drop) a moderately oversized body, so the client sees the 413 rather than a reset."""
            if length > 4 * max_body:
                return
            self.connection.settimeout(2.0)
            try:
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 16))
                    if not chunk:
                        return
                    length -= len(chunk)
            except OSError:
                return

        def _reject_too_large(self) -> None:
            self.close_connection = True
            response = json_response(*TOO_LARGE)
            response.headers.append(("connection", "close"))
            self._send(response)

        def _send(self, response: HttpResponse) -> None:
            self.send_response(response.status)
            for name, value in response.headers:
                if name not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

    return RequestHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


@dataclass
class LocalApiHandle:
    url: str
    host: str
    port: int
    api: LocalApi
    server: ThreadingHTTPServer
    thread: threading.Thread
    _previous_env: dict[str, str | None] = field(default_factory=dict, repr=False)
    _stopped: bool = False

    @property
    def template(self) -> LocalTemplate:
        return self.api.template

    @property
    def pool(self) -> WorkerPool:
        return self.api.pool

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.api.close()
        restore_environment(self._previous_env)

    def __enter__(self) -> LocalApiHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_api(
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 8,
    env: Mapping[str, str] | None = None,
    *,
    template_path: str | Path | None = None,
    env_file: str | Path | None = DEFAULT_ENV_FILE,
    functions_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    integration_timeout: float = INTEGRATION_TIMEOUT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> LocalApiHandle:
    """Serve the template's HTTP API routes on ``host:port`` (0 = a free port) in background threads.

    The functions' environment (template + env file, values already in ``os.environ`` win) is put into
    ``os.environ``; ``env`` overrides everything. ``stop()`` shuts down and restores ``os.environ``.
    """
    template = load_template(template_path, env_file=env_file, functions_dir=functions_dir)
    merged, conflicts = template.merged_environment()
    for conflict in conflicts:
        log.warning("functions disagree on an environment variable; using the last: %s", conflict)
    previous = apply_environment(merged, env)
    try:
        base = Path(base_dir) if base_dir else (Path(template_path).resolve().parent if template_path else REPO_ROOT)
        api = LocalApi(template, workers=workers, base_dir=base, integration_timeout=integration_timeout)
        server = _Server((host, port), _make_request_handler(api, max_body_bytes))
    except BaseException:
        restore_environment(previous)
        raise
    bound_host, bound_port = server.server_address[:2]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-api-http", daemon=True
    )
    thread.start()
    shown = bound_host if isinstance(bound_host, str) else host
    url = f"http://{shown}:{bound_port}"
    log.info("local API on %s (%d workers, %d routes)", url, workers, len(template.routes))
    return LocalApiHandle(
        url=url, host=str(shown), port=int(bound_port), api=api, server=server, thread=thread, _previous_env=previous
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m local.api``: only the HTTP API (no migrations, sandbox or scheduler)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_API_PORT", "3000")))
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--env-vars", default=str(DEFAULT_ENV_FILE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    handle = start_local_api(args.host, args.port, args.workers, env_file=args.env_vars)
    print(f"local API on {handle.url} (Ctrl-C to stop)", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
