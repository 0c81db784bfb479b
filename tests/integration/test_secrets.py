"""Deployed, secrets come from the AWS Parameters and Secrets Lambda Extension (its HTTP interface played by
local.secrets_extension, backed by moto's Secrets Manager); when it cannot give them, the answer is a 503 with a code,
nothing is done, and the next request after it recovers succeeds without a restart. Off Lambda (the operator's
console) there is no extension: one BatchGetSecretValue. A rotated database password that the extension still
serves from its cache is read again from Secrets Manager itself."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from escrow import config
from escrow.config import parse_database_url
from local.secrets_extension import SecretsExtensionStandIn
from tests.support.events import Context, http_event, token
from tests.support.functions import load_function

pytestmark = pytest.mark.usefixtures("database_url")

SESSION_TOKEN = "session-token-of-this-container"
JWT_KEY = "a-jwt-secret-of-at-least-32-bytes!!"
DB_PASSWORD_MARK = "pw-never-printed"


@dataclass
class Deployed:
    client: Any
    extension: SecretsExtensionStandIn
    arns: dict[str, str]


@pytest.fixture()
def deployed(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[Deployed]:
    """A deployed stage: no plain secrets in the environment, three secret ARNs, the extension on a free port."""
    for name in ("DATABASE_URL", "JWT_SECRET", "TOSS_SECRET_KEY", "TOSS_SECURITY_KEY", "SECRETS_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_ENV", "dev")  # a deployed stage: no local defaults for keys
    monkeypatch.setenv("DB_TLS", "disabled")  # the test MariaDB has no TLS (prod refuses this setting)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "RequestFunction")  # on Lambda: secrets from the extension
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    db = parse_database_url(database_url)
    tag = uuid.uuid4().hex[:8]  # moto's state is per process: another test's mock may hold the same names
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="ap-northeast-2")
        arns = {
            "db": client.create_secret(
                Name=f"escrow/{tag}/db",
                SecretString=json.dumps(
                    {
                        "host": db.host,
                        "port": db.port,
                        "username": db.user,
                        "password": db.password,
                        "dbname": db.database,
                        "note": DB_PASSWORD_MARK,
                    }
                ),
            )["ARN"],
            "jwt": client.create_secret(Name=f"escrow/{tag}/jwt", SecretString=JWT_KEY)["ARN"],
            "toss": client.create_secret(
                Name=f"escrow/{tag}/toss",
                SecretString=json.dumps({"secret_key": "live_sk_example", "security_key": "ab" * 32}),
            )["ARN"],
        }
        monkeypatch.setenv("DB_SECRET_ARN", arns["db"])
        monkeypatch.setenv("JWT_SECRET_ARN", arns["jwt"])
        monkeypatch.setenv("TOSS_SECRET_ARN", arns["toss"])
        with SecretsExtensionStandIn(client, token=SESSION_TOKEN, cache_seconds=300) as extension:
            monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(extension.port))
            config.reset_settings()
            yield Deployed(client, extension, arns)
    monkeypatch.undo()
    config.reset_settings()


def status_of(room_id: int, user: str) -> tuple[int, dict[str, Any]]:
    event = http_event("GET", f"/api/v1/payment/status/{room_id}")
    event["headers"]["authorization"] = f"Bearer {token(user, secret=JWT_KEY)}"
    result = load_function("request").lambda_handler(event, Context())
    return result["statusCode"], json.loads(result["body"])


def test_database_credentials_come_from_the_rds_secret(deployed, monkeypatch):
    secret = {"host": "db.internal", "port": 3307, "username": "escrow", "password": "pw-not-printed", "dbname": "e"}
    _replace(deployed, "db", secret)
    monkeypatch.setenv("DB_HOST", "proxy.internal")  # RDS Proxy endpoint overrides the secret's host
    config.reset_settings()
    params = config.database_params()
    assert (params.host, params.port, params.user, params.password, params.database) == (
        "proxy.internal",
        3307,
        "escrow",
        "pw-not-printed",
        "e",
    )
    assert "pw-not-printed" not in repr(params)


def test_jwt_and_toss_keys_come_from_their_secrets(deployed):
    assert config.jwt_secret() == JWT_KEY
    keys = config.toss_keys()
    assert (keys.secret_key, keys.security_key) == ("live_sk_example", "ab" * 32)
    assert "live_sk" not in repr(keys)


def test_a_deployed_request_fetches_its_secrets_together_once_then_reuses_them(deployed, make_room):
    room = make_room(1)
    status, body = status_of(room.chat_room_id, room.members[0])
    assert (status, body["error"]["code"]) == (404, "PAYMENT_REQUEST_NOT_FOUND")  # authenticated, database reached
    assert sorted(deployed.extension.requests) == sorted(deployed.arns.values())  # each configured secret, once
    status, _ = status_of(room.chat_room_id, room.members[0])
    assert status == 404
    assert len(deployed.extension.requests) == 3  # the second request asked the extension nothing


def test_a_secret_the_request_does_not_need_cannot_fail_it(deployed, make_room, monkeypatch):
    monkeypatch.setenv("TOSS_SECRET_ARN", deployed.arns["toss"] + "-gone")  # fetched alongside, refused
    config.reset_settings()
    room = make_room(1)
    status, body = status_of(room.chat_room_id, room.members[0])
    assert (status, body["error"]["code"]) == (404, "PAYMENT_REQUEST_NOT_FOUND")


def test_an_unreachable_extension_is_a_503_with_a_code_and_recovery_needs_no_restart(
    deployed, make_room, monkeypatch, caplog
):
    room = make_room(1)
    deployed.extension.stop()  # the extension (or Secrets Manager behind it) is gone
    with caplog.at_level(logging.INFO):
        status, body = status_of(room.chat_room_id, room.members[0])
    assert status == 503
    assert body["error"]["code"] == "SECRETS_UNAVAILABLE"
    assert set(body) == {"error"} and "Traceback" not in json.dumps(body)

    with SecretsExtensionStandIn(deployed.client, token=SESSION_TOKEN) as extension:  # back, on a new port
        monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(extension.port))
        status, _ = status_of(room.chat_room_id, room.members[0])
    assert status == 404  # served: nothing about the failure was cached
    assert JWT_KEY not in caplog.text and DB_PASSWORD_MARK not in caplog.text


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("no session token", lambda d, mp: mp.delenv("AWS_SESSION_TOKEN")),
        ("the wrong session token", lambda d, mp: mp.setenv("AWS_SESSION_TOKEN", "another-container")),
        ("a secret that does not exist", lambda d, mp: mp.setenv("JWT_SECRET_ARN", d.arns["jwt"] + "-gone")),
        ("a database secret without a password", lambda d, mp: _replace(d, "db", {"username": "escrow"})),
        ("a database secret that is not JSON", lambda d, mp: _replace(d, "db", "not json")),
    ],
)
def test_secrets_that_cannot_be_had_are_a_503_not_a_500(deployed, make_room, monkeypatch, what, change):
    room = make_room(1)
    change(deployed, monkeypatch)
    config.reset_settings()
    status, body = status_of(room.chat_room_id, room.members[0])
    assert (status, body["error"]["code"]) == (503, "SECRETS_UNAVAILABLE"), what


def test_the_webhook_answers_503_too_so_toss_delivers_again(deployed):
    deployed.extension.stop()
    event = http_event("POST", "/api/v1/payment/webhook", body={"eventType": "PAYMENT_STATUS_CHANGED", "data": {}})
    result = load_function("webhook").lambda_handler(event, Context())
    assert result["statusCode"] == 503
    assert json.loads(result["body"])["error"]["code"] == "SECRETS_UNAVAILABLE"


def _replace(deployed: Deployed, which: str, value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    deployed.client.put_secret_value(SecretId=deployed.arns[which], SecretString=text)


def test_off_lambda_the_secrets_come_in_one_batch_from_secrets_manager(deployed, make_room, monkeypatch):
    """The operator's console (escrow.ops --stack) runs where no extension is: the SDK, one call for all."""
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    config.reset_settings()
    calls: list[list[str]] = []
    real = config._batch_from_secrets_manager
    monkeypatch.setattr(config, "_batch_from_secrets_manager", lambda ids: calls.append(ids) or real(ids))
    room = make_room(1)
    status, body = status_of(room.chat_room_id, room.members[0])
    assert (status, body["error"]["code"]) == (404, "PAYMENT_REQUEST_NOT_FOUND")
    assert deployed.extension.requests == []
    assert len(calls) == 1 and sorted(calls[0]) == sorted(deployed.arns.values())


def test_a_rotated_database_password_is_read_again_past_the_extensions_cache(deployed, make_room, sql, database_url):
    """RDS rotates the password; the extension keeps serving the old one for its TTL. The database refuses it, and
    the password is read once from Secrets Manager itself: the request is served, without a restart."""
    db = parse_database_url(database_url)
    user = f"rot_{uuid.uuid4().hex[:8]}"
    with sql.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'first-password'")
        cur.execute(f"GRANT ALL ON `{db.database}`.* TO '{user}'@'%'")
    try:
        secret = {"host": db.host, "port": db.port, "username": user, "dbname": db.database}
        _replace(deployed, "db", {**secret, "password": "first-password"})
        room = make_room(1)
        assert status_of(room.chat_room_id, room.members[0])[0] == 404  # connected with the first password
        with sql.cursor() as cur:  # the rotation: the database and the secret change, the extension's copy does not
            cur.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'second-password'")
        _replace(deployed, "db", {**secret, "password": "second-password"})
        asked = len(deployed.extension.requests)
        from escrow import db as escrow_db

        escrow_db.close()  # the next request needs a new connection (a frozen container's was dropped)
        status, body = status_of(room.chat_room_id, room.members[0])
        assert (status, body["error"]["code"]) == (404, "PAYMENT_REQUEST_NOT_FOUND")
        assert len(deployed.extension.requests) == asked  # not from the extension: it would still say the old one
    finally:
        from escrow import db as escrow_db

        escrow_db.close()
        with sql.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
