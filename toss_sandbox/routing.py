"""Request/response values and a small regex router shared by the Toss API and the test controls."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    route: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @staticmethod
    def parse_query(raw: str) -> dict[str, list[str]]:
        return parse_qs(raw, keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Toss error code of this answer (for the call log), if it is an error.
    code: str | None = None
    # "Approve but lose the answer": the server hangs, then closes the connection without answering.
    drop_after_seconds: float | None = None

    @classmethod
    def json(cls, status: int, payload: Any, code: str | None = None) -> Response:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return cls(status, data, {"Content-Type": "application/json; charset=utf-8"}, code)

    @classmethod
    def text(cls, status: int, text: str, code: str | None = None) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"}, code)

    @classmethod
    def html(cls, status: int, page: str, headers: dict[str, str] | None = None) -> Response:
        return cls(status, page.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8", **(headers or {})})

    @classmethod
    def redirect(cls, location: str) -> Response:
        """303 See Other: the browser follows with a GET, as after Toss's payment window."""
        return cls(303, b"", {"Location": location, "Cache-Control": "no-store"})

    def copy(self) -> Response:
        return Response(self.status, self.body, dict(self.headers), self.code, self.drop_after_seconds)


H = TypeVar("H", bound=Callable[..., Response])


@dataclass
class Route(Generic[H]):
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: H

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


class Router(Generic[H]):
    """Routes ``METHOD /path/{param}`` templates; ``{param}`` matches one path segment."""

    def __init__(self) -> None:
        self._routes: list[Route[H]] = []

    def add(self, method: str, template: str, handler: H) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self._routes.append(Route(method, template, re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Route[H] | None, dict[str, str], bool]:
        """Return (route, params, path_exists). ``path_exists`` is True when only the method differs."""
        path_exists = False
        for route in self._routes:
            found = route.pattern.match(path)
            if not found:
                continue
            if route.method == method:
                return route, found.groupdict(), True
            path_exists = True
        return None, {}, path_exists
