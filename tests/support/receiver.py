"""A stand-in for the chat service's notification endpoint: records every request and answers as scripted."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow chat service)


@dataclass
class Receiver:
    """`script` holds the next answers (then 200). `requests` records each: status, headers, body, time."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def bodies(self, chat_room_id: int | None = None) -> list[dict[str, Any]]:
        """The bodies that were answered 200, optionally of one room."""
        with self.lock:
            items = [r["body"] for r in self.requests if r["status"] == 200]
        return [b for b in items if chat_room_id is None or b.get("detail", {}).get("chat_room_id") == chat_room_id]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def start_receiver(path: str = "/chat/notifications") -> Receiver:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            with receiver.lock:
                answer = receiver.script.pop(0) if receiver.script else Answer()
            if answer.delay:
                time.sleep(answer.delay)
            with receiver.lock:
                receiver.requests.append(
                    {
                        "status": answer.status,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(raw),
                        "at": time.monotonic(),
                        "path": self.path,
                    }
                )
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver._server = server
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver
