"""HTTP serving (standard library ``ThreadingHTTPServer``) and the programmatic entry point."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .controls import Controls
from .core import SandboxCore
from .routing import Request, Response
from .settings import build_settings
from .store import Store
from .toss_api import TossApi

log = logging.getLogger("toss_sandbox.server")

MAX_BODY = 10 * 1024 * 1024


class ClientGone(Exception):
    """The connection closed before the request's body arrived in full."""


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for requests sleeping in a fault
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], core: SandboxCore) -> None:
        self.core = core
        self.toss_api = TossApi(core)
        self.controls = Controls(core)
        super().__init__(address, SandboxRequestHandler)

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/sandbox/") or req.path == "/sandbox":
            return self.controls.handle(req)
        return self.toss_api.handle(req)


class SandboxRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TossSandbox/1.0"
    server: SandboxHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms per call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise ClientGone
        return body

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        try:
            body = self._read_body()
        except ClientGone:
            # The caller's connection closed before its body arrived (its process died between the headers and the
            # body): like any HTTP server in front of Toss, nothing is processed, and nothing is bound to its
            # Idempotency-Key. (Processing the cut-off body would answer it INVALID_REQUEST and bind that answer to
            # the key, which the caller's retry with the same key would then get for good.)
            self.close_connection = True
            return
        except ValueError:
            self._write(Response.json(413, {"code": "INVALID_REQUEST", "message": "body too large"}))
            return
        req = Request(
            method=self.command,
            path=parts.path,
            query=Request.parse_query(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.dispatch(req)
        if response.drop_after_seconds is not None:
            # "Approve but lose the answer": hang, then close the connection without a byte of answer.
            self.server.core.stopping.wait(response.drop_after_seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.core.settings.verbose:
            log.debug("%s - %s", self.address_string(), format % args)


class Sandbox:
    """A running sandbox. ``url`` is its base URL; ``state`` is the in-process store (for tests)."""

    def __init__(self, core: SandboxCore, server: SandboxHTTPServer) -> None:
        self.core = core
        self._server = server
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="toss-sandbox-http", daemon=True
        )
        self._stopped = False

    @property
    def state(self) -> Store:
        return self.core.store

    @property
    def settings(self) -> Any:
        return self.core.settings

    def start(self) -> Sandbox:
        self.core.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.core.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(host: str = "127.0.0.1", port: int = 0, **settings: Any) -> Sandbox:
    """Start a sandbox in background threads. ``port=0`` picks a free port; see ``SandboxSettings``."""
    core = SandboxCore(build_settings(**settings))
    server = SandboxHTTPServer((host, port), core)
    return Sandbox(core, server).start()
