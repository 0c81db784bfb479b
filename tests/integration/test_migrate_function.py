"""MigrateFunction as CloudFormation calls it: Create/Update/Delete events of CloudFormation's real shape, the answer
PUT to the ResponseURL (here a local HTTP server that records it), against real MariaDB."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from escrow import config, migrate
from escrow.config import parse_database_url
from tests.support.databases import fresh_database, server_connection
from tests.support.events import Context
from tests.support.functions import load_function

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "data" / "cloudformation"
ALL = sorted(p.stem for p in (ROOT / "layers/common/escrow/migrations").glob("*.sql"))


@dataclass
class Put:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ResponseRecorder:
    """Plays the pre-signed S3 URL CloudFormation waits on: records every PUT; can fail the first few."""

    base: str = ""
    puts: list[Put] = field(default_factory=list)
    fail_next: int = 0

    def event(self, name: str) -> dict[str, Any]:
        event = json.loads((EVENTS / f"{name}.json").read_text())
        original = urlsplit(event["ResponseURL"])
        event["ResponseURL"] = f"{self.base}{original.path}?{original.query}"
        return event


@pytest.fixture()
def recorder() -> Iterator[ResponseRecorder]:
    rec = ResponseRecorder()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            if rec.fail_next:
                rec.fail_next -= 1
                self.send_response(500)
                self.end_headers()
                return
            rec.puts.append(Put(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture()
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with fresh_database("cfn") as url:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("APP_ENV", "local")
        config.reset_settings()
        yield url
    monkeypatch.undo()
    config.reset_settings()


@pytest.fixture(scope="module")
def function():
    return load_function("migrate")


def _tables(url: str) -> set[str]:
    conn = server_connection(parse_database_url(url).database)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _check_echo(put: Put, event: dict[str, Any]) -> None:
    assert put.path == urlsplit(event["ResponseURL"]).path + "?" + urlsplit(event["ResponseURL"]).query
    assert put.headers["content-type"] == ""  # the pre-signed URL is signed without a content type
    for key in ("StackId", "RequestId", "LogicalResourceId"):
        assert put.body[key] == event[key]


def test_create_migrates_a_new_database_and_reports_the_versions(function, recorder, database) -> None:
    event = recorder.event("create")
    answer = function.lambda_handler(event, Context())

    (put,) = recorder.puts
    _check_echo(put, event)
    assert put.body["Status"] == "SUCCESS" and answer["Status"] == "SUCCESS"
    assert put.body["PhysicalResourceId"] == "escrow-dev-database-migrations"
    assert put.body["Data"] == {
        "Database": parse_database_url(database).database,
        "Applied": ",".join(ALL),
        "Current": ALL[-1],
        "Count": str(len(ALL)),
        "AccountsEncrypted": "0",
    }
    assert {"stores", "payments", "ledger_entries", "_yoyo_migration"} <= _tables(database)
    assert len(json.dumps(put.body)) < 4096


def test_update_on_a_migrated_database_applies_nothing_and_keeps_the_physical_id(function, recorder, database) -> None:
    migrate.run_migrations(parse_database_url(database))
    event = recorder.event("update")
    function.lambda_handler(event, Context())

    (put,) = recorder.puts
    _check_echo(put, event)
    assert put.body["Status"] == "SUCCESS"
    assert put.body["PhysicalResourceId"] == event["PhysicalResourceId"]
    assert (put.body["Data"]["Applied"], put.body["Data"]["Current"]) == ("none", ALL[-1])


def test_delete_answers_success_without_touching_the_schema(function, recorder, database, monkeypatch) -> None:
    migrate.run_migrations(parse_database_url(database))
    before = _tables(database)
    monkeypatch.setenv("DATABASE_URL", "mysql://root:@127.0.0.1:1/unreachable")  # Delete must not need the database
    config.reset_settings()
    event = recorder.event("delete")
    function.lambda_handler(event, Context())

    (put,) = recorder.puts
    _check_echo(put, event)
    assert put.body["Status"] == "SUCCESS" and put.body["PhysicalResourceId"] == event["PhysicalResourceId"]
    assert _tables(database) == before


def test_a_failing_migration_answers_failed_so_the_deploy_rolls_back(
    function, recorder, database, monkeypatch, tmp_path
) -> None:
    broken = tmp_path / "migrations"
    broken.mkdir()
    for sql in sorted((ROOT / "layers/common/escrow/migrations").glob("*.sql")):
        (broken / sql.name).write_text(sql.read_text())
    (broken / "9999_broken.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x INT;\n")
    monkeypatch.setattr(migrate, "MIGRATIONS", broken)

    event = recorder.event("create")
    answer = function.lambda_handler(event, Context())

    (put,) = recorder.puts
    _check_echo(put, event)
    assert put.body["Status"] == "FAILED" and answer["Status"] == "FAILED"
    assert "no_such_table" in put.body["Reason"] and put.body["Reason"].startswith("migrations failed")
    assert put.body["PhysicalResourceId"] == "escrow-dev-database-migrations"  # CloudFormation then sends Delete


def test_an_unreachable_database_answers_failed_without_the_password(function, recorder, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://escrow:pw-never-printed@127.0.0.1:1/escrow")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "1")
    config.reset_settings()
    try:
        function.lambda_handler(recorder.event("update"), Context())
    finally:
        monkeypatch.undo()
        config.reset_settings()
    (put,) = recorder.puts
    assert put.body["Status"] == "FAILED" and "OperationalError" in put.body["Reason"]
    assert "pw-never-printed" not in json.dumps(put.body)


class ShortContext(Context):
    def get_remaining_time_in_millis(self) -> int:
        return 17_000  # 2 s of work once the answer margin is kept back


def test_a_run_that_cannot_finish_in_time_answers_failed_before_the_function_times_out(
    function, recorder, database
) -> None:
    holder = server_connection()  # another deploy's run holds the lock
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (migrate.lock_name(parse_database_url(database).database),))
        started = time.monotonic()
        function.lambda_handler(recorder.event("update"), ShortContext())
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    (put,) = recorder.puts
    assert put.body["Status"] == "FAILED" and "still running after 2s" in put.body["Reason"]
    assert elapsed < 5


def test_the_answer_is_retried_when_the_response_url_fails_once(function, recorder, database) -> None:
    recorder.fail_next = 1
    function.lambda_handler(recorder.event("create"), Context())
    (put,) = recorder.puts
    assert put.body["Status"] == "SUCCESS"


def test_by_hand_it_migrates_and_reports_status(function, database) -> None:
    status = function.lambda_handler({"action": "status"}, Context())
    assert status["pending"] == ALL and status["applied"] == []
    answer = function.lambda_handler({"action": "migrate"}, Context())
    assert answer["applied"] == ALL and answer["current"] == ALL and answer["accounts_encrypted"] == 0
    assert function.lambda_handler({}, Context())["applied"] == []
    assert function.lambda_handler({"action": "status"}, Context())["pending"] == []


def _forward_later(port: int, delay: float, target: tuple[str, int]) -> threading.Thread:
    """After ``delay`` seconds, accept on ``port`` and relay to ``target``: a proxy whose target becomes available
    while the first deploy's migration is already trying to connect."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        time.sleep(delay)
        listener = socket.create_server(("127.0.0.1", port))
        listener.settimeout(20)
        try:
            for _ in range(64):  # the migration's connections (a few per migration file), then the test's end
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    return
                upstream = socket.create_connection(target)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_database_that_becomes_reachable_during_the_run_is_migrated(function, recorder, database, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = parse_database_url(database)
    monkeypatch.setattr(function, "RETRY_INTERVAL_S", 0.5)
    monkeypatch.setenv("DATABASE_URL", f"mysql://{params.user}:@127.0.0.1:{port}/{params.database}")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "1")
    config.reset_settings()
    _forward_later(port, 1.5, (params.host, params.port))

    function.lambda_handler(recorder.event("create"), Context())

    (put,) = recorder.puts
    assert put.body["Status"] == "SUCCESS", put.body["Reason"]
    assert put.body["Data"]["Applied"] == ",".join(ALL)


def test_a_database_that_never_answers_fails_after_retrying_within_the_budget(function, recorder, monkeypatch):
    monkeypatch.setattr(function, "RETRY_INTERVAL_S", 0.5)
    monkeypatch.setenv("DATABASE_URL", "mysql://root:@127.0.0.1:1/escrow")
    config.reset_settings()
    try:
        function.lambda_handler(recorder.event("create"), ShortContext())
    finally:
        monkeypatch.undo()
        config.reset_settings()
    (put,) = recorder.puts
    assert put.body["Status"] == "FAILED"
    assert "could not be reached in" in put.body["Reason"] and "attempts" in put.body["Reason"]
