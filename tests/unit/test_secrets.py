"""Secrets come from Secrets Manager (faked by moto) through Powertools Parameters when no plain value is set."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from escrow import config


@pytest.fixture()
def secrets(monkeypatch):
    for name in ("DATABASE_URL", "JWT_SECRET", "TOSS_SECRET_KEY", "TOSS_SECURITY_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_ENV", "prod")
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="ap-northeast-2")
        yield client
    config.reset_settings()
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()


def test_database_credentials_come_from_the_rds_secret(secrets, monkeypatch):
    arn = secrets.create_secret(
        Name="db",
        SecretString=json.dumps(
            {
                "host": "db.internal",
                "port": 3306,
                "username": "escrow",
                "password": "pw-not-printed",
                "dbname": "escrow",
            }
        ),
    )["ARN"]
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    monkeypatch.setenv("DB_HOST", "proxy.internal")  # RDS Proxy endpoint overrides the secret's host
    config.reset_settings()
    params = config.database_params()
    assert (params.host, params.user, params.password, params.database) == (
        "proxy.internal",
        "escrow",
        "pw-not-printed",
        "escrow",
    )
    assert "pw-not-printed" not in repr(params)


def test_jwt_and_toss_keys_come_from_their_secrets(secrets, monkeypatch):
    jwt_arn = secrets.create_secret(Name="jwt", SecretString="a-jwt-secret-of-at-least-32-bytes!!")["ARN"]
    toss_arn = secrets.create_secret(
        Name="toss", SecretString=json.dumps({"secret_key": "live_sk_example", "security_key": "ab" * 32})
    )["ARN"]
    monkeypatch.setenv("JWT_SECRET_ARN", jwt_arn)
    monkeypatch.setenv("TOSS_SECRET_ARN", toss_arn)
    config.reset_settings()
    assert config.jwt_secret() == "a-jwt-secret-of-at-least-32-bytes!!"
    keys = config.toss_keys()
    assert (keys.secret_key, keys.security_key) == ("live_sk_example", "ab" * 32)
    assert "live_sk" not in repr(keys)


def test_a_deployed_stage_without_keys_refuses_to_guess(secrets):
    config.reset_settings()
    with pytest.raises(RuntimeError):
        config.jwt_secret()
    with pytest.raises(RuntimeError):
        config.toss_keys()
