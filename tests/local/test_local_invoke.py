"""`python -m local.invoke` (what `sam local invoke -e` does), `python -m local.jwt` and the scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from local.functions import FakeLambdaContext, FunctionRuntime, load_module
from local.jwt import mint_token
from local.scheduler import Scheduler, load_schedule_event, scheduled_event
from local.template import load_env_file, load_template

from .conftest import FakeProject

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}", **(env or {})}
    full_env.pop("JWT_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def invoke_args(project: FakeProject, *args: str) -> list[str]:
    return [
        "local.invoke",
        *args,
        "--template",
        str(project.template),
        "--env-vars",
        str(project.env_file),
        "--functions-dir",
        str(project.functions_dir),
    ]


def http_event(path: str = "/items/5") -> dict:
    return {
        "version": "2.0",
        "routeKey": "GET /items/{itemId}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"authorization": "Bearer placeholder", "host": "localhost"},
        "requestContext": {"http": {"method": "GET", "path": path}, "routeKey": "GET /items/{itemId}"},
        "pathParameters": {"itemId": "5"},
        "isBase64Encoded": False,
    }


def test_invoke_prints_only_the_result_json_on_stdout(fake_project: FakeProject, tmp_path: Path) -> None:
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(http_event()), encoding="utf-8")

    result = run_module(*invoke_args(fake_project, "EchoFunction", str(event_file)))

    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)  # stdout holds nothing else
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["event"]["pathParameters"] == {"itemId": "5"}
    assert body["function_name"] == "EchoFunction"
    assert body["env"]["LEVEL"] == "DEBUG"
    assert "handler output that must not reach stdout" in result.stderr


def test_invoke_accepts_the_short_name_stdin_and_user(fake_project: FakeProject) -> None:
    fake_project.write_env({"Parameters": {"LEVEL": "DEBUG", "JWT_SECRET": "file-secret-0123456789abcdef0123456789"}})
    result = run_module(
        *invoke_args(fake_project, "echo", "-", "--user", "user_2", "--admin"), stdin=json.dumps(http_event())
    )

    assert result.returncode == 0, result.stderr
    headers = json.loads(json.loads(result.stdout)["body"])["event"]["headers"]
    token = headers["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, "file-secret-0123456789abcdef0123456789", algorithms=["HS256"])
    assert (claims["user_id"], claims["sub"], claims["role"]) == ("user_2", "user_2", "admin")
    assert headers["host"] == "localhost"


def test_invoke_reports_a_handler_exception_like_lambda(fake_project: FakeProject) -> None:
    result = run_module(*invoke_args(fake_project, "BoomFunction", "-"), stdin="{}")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["errorType"] == "RuntimeError"
    assert error["errorMessage"] == "the handler blew up on purpose"
    assert error["stackTrace"]


def test_invoke_refuses_an_unknown_function(fake_project: FakeProject) -> None:
    result = run_module(*invoke_args(fake_project, "nope"))
    assert result.returncode == 2
    assert "known: EchoFunction" in result.stderr


def test_jwt_command_mints_a_token_the_layer_accepts() -> None:
    result = run_module("local.jwt", "user_2")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    secret = load_env_file(ROOT / "local" / "env.json")["Parameters"]["JWT_SECRET"]
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["user_id"] == claims["sub"] == "user_2"
    assert 3500 <= claims["exp"] - time.time() <= 3600
    assert "role" not in claims


def test_mint_token_admin_and_ttl(tmp_path: Path, monkeypatch) -> None:
    for name in ("JWT_SECRET", "JWT_ALGORITHM", "JWT_ISSUER", "JWT_AUDIENCE", "ADMIN_ROLE_CLAIM", "ADMIN_ROLE"):
        monkeypatch.delenv(name, raising=False)  # the process environment would win over the file
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"Parameters": {"JWT_SECRET": "s3" * 16, "ADMIN_ROLE_CLAIM": "roles"}}))
    claims = jwt.decode(mint_token("admin_1", admin=True, ttl=60, env_file=env_file), "s3" * 16, algorithms=["HS256"])
    assert claims["roles"] == "admin" and claims["exp"] - claims["iat"] == 60
    monkeypatch.setenv("JWT_SECRET", "from-process-0123456789abcdef0123456789")
    jwt.decode(mint_token("u", env_file=env_file), "from-process-0123456789abcdef0123456789", algorithms=["HS256"])


def test_modules_load_by_path_under_unique_names_and_stay_warm(fake_project: FakeProject) -> None:
    template = load_template(fake_project.template, env_file=None, functions_dir=fake_project.functions_dir)
    spec = template.function("echo")
    path_before = list(sys.path)

    first = load_module("escrow_fn_echo", spec.module_file)

    assert sys.modules["escrow_fn_echo"] is first
    assert sys.path == path_before  # the function folder was on sys.path only during the import
    assert load_module("escrow_fn_echo", spec.module_file) is first


def test_fake_context_counts_down_from_the_timeout() -> None:
    context = FakeLambdaContext("ReleaseFunction", timeout_s=900, memory_limit_in_mb=512)
    assert 899_000 < context.get_remaining_time_in_millis() <= 900_000
    assert context.invoked_function_arn.endswith(":function:ReleaseFunction")
    assert context.memory_limit_in_mb == 512 and context.aws_request_id


def test_scheduled_event_fills_the_scheduler_placeholders() -> None:
    event = scheduled_event({"source": "escrow.schedule", "jobs": "all", "scheduled_time": "2020-01-01T00:00:00Z"})
    assert event["source"] == "escrow.schedule" and event["jobs"] == "all"
    assert event["scheduled_time"].startswith(time.strftime("%Y-", time.gmtime()))
    assert event["attempt"] == "1" and event["execution_id"]


def test_scheduler_invokes_the_function_every_interval(fake_project: FakeProject) -> None:
    template = load_template(fake_project.template, env_file=None, functions_dir=fake_project.functions_dir)
    runtime = FunctionRuntime(template)
    event = load_schedule_event(fake_project.root / "absent.json", runtime, "TickFunction")
    assert event["source"] == "escrow.schedule"

    scheduler = Scheduler(runtime, 0.02, event, function="TickFunction").start()
    try:
        deadline = time.monotonic() + 5
        while scheduler.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert scheduler.runs >= 2 and scheduler.failures == 0
    calls = sys.modules["escrow_fn_tick"].calls
    assert calls[0]["jobs"] == "all"
    assert not calls[0]["scheduled_time"].startswith("<aws.")


@pytest.mark.parametrize("name", ["release", "ReleaseFunction"])
def test_the_real_template_resolves_release_by_either_name(name: str) -> None:
    assert load_template(environ={}).function(name).logical_id == "ReleaseFunction"


def test_fresh_webhook_events_get_a_current_time_and_a_valid_signature() -> None:
    import base64
    import hashlib
    import hmac
    from datetime import datetime

    from local.invoke import refresh_event

    key = "5f2b1c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"
    event = json.loads((ROOT / "events" / "webhook_payout_changed.json").read_text(encoding="utf-8"))

    fresh = refresh_event(event, key)

    sent = fresh["headers"]["tosspayments-webhook-transmission-time"]
    assert abs(datetime.fromisoformat(sent).timestamp() - time.time()) < 60
    message = f"{fresh['body']}:{sent}".encode()
    signatures = [s.removeprefix("v1:") for s in fresh["headers"]["tosspayments-webhook-signature"].split(",")]
    for secret in (bytes.fromhex(key), key.encode()):
        assert base64.b64encode(hmac.new(secret, message, hashlib.sha256).digest()).decode() in signatures
    assert fresh["body"] == event["body"]
    assert event["headers"]["tosspayments-webhook-transmission-time"] != sent  # the input is left alone


def test_run_reports_a_failing_step_and_builds_the_child_pythonpath(capsys) -> None:
    from local.run import child_environment, run_step

    env = child_environment({"APP_ENV": "local"}, {"TOSS_API_BASE": "http://127.0.0.1:1"})
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(ROOT / "layers" / "common"), str(ROOT)]
    assert env["TOSS_API_BASE"] == "http://127.0.0.1:1"

    assert run_step("missing", "local.no_such_module", env) is False
    assert "local.no_such_module failed" in capsys.readouterr().err
