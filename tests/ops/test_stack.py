"""`escrow.ops --stack NAME`: the console finds a deployed stack's secrets through CloudFormation (moto) and reads
the database and Toss with them. Runs in-process (moto fakes AWS inside this process) through Typer's test runner."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from escrow.config import parse_database_url
from tests.ops.conftest import TOSS_TEST_SECRET_KEY, Rooms, Stack, _security_key

REGION = "ap-northeast-2"

# The part of template.yaml the console reads: parameters and one output (moto's CloudFormation cannot build the
# SAM template itself; a stack with the same parameter and output names stands for it).
STACK_TEMPLATE = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Parameters": {
        **{
            name: {"Type": "String", "Default": ""}
            for name in ("Stage", "DbSecretArn", "DbHost", "DbName", "TossSecretArn", "TossApiBase", "PlatformFeeBps")
        },
        "BusName": {"Type": "String", "Default": "escrow-deployed"},
    },
    "Resources": {"DeadLetterQueue": {"Type": "AWS::SQS::Queue"}},
    "Outputs": {"EventBusName": {"Value": {"Ref": "BusName"}}},
}


@pytest.fixture()
def deployed(stack: Stack) -> Iterator[str]:
    """A stack whose secrets point at the test database and the sandbox, as a deployed stack's point at RDS and
    Toss; the process environment has no plain DATABASE_URL or Toss key to fall back on."""
    saved = {k: os.environ.pop(k) for k in ("DATABASE_URL", "TOSS_SECRET_KEY", "TOSS_SECURITY_KEY") if k in os.environ}
    db = parse_database_url(stack.database_url)
    tag = uuid.uuid4().hex[:8]  # another suite's moto may be active for the whole session: names of our own
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name=REGION)
        db_arn = secrets.create_secret(
            Name=f"escrow/db-{tag}",
            SecretString=json.dumps(
                {"host": db.host, "port": db.port, "username": db.user, "password": db.password, "dbname": "wrong"}
            ),
        )["ARN"]
        toss_arn = secrets.create_secret(
            Name=f"escrow/toss-{tag}",
            SecretString=json.dumps({"secret_key": TOSS_TEST_SECRET_KEY, "security_key": _security_key()}),
        )["ARN"]
        boto3.client("cloudformation", region_name=REGION).create_stack(
            StackName=f"escrow-dev-{tag}",
            TemplateBody=json.dumps(STACK_TEMPLATE),
            Parameters=[
                {"ParameterKey": "Stage", "ParameterValue": "dev"},
                {"ParameterKey": "DbSecretArn", "ParameterValue": db_arn},
                {"ParameterKey": "DbName", "ParameterValue": db.database},  # overrides the secret's dbname
                {"ParameterKey": "TossSecretArn", "ParameterValue": toss_arn},
                {"ParameterKey": "TossApiBase", "ParameterValue": stack.sandbox},
            ],
        )
        yield f"escrow-dev-{tag}"
    os.environ.update(saved)
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    from escrow.config import reset_settings

    reset_settings()


def test_stack_environment_maps_the_stack_to_the_functions_settings(deployed: str) -> None:
    from escrow.ops.environment import stack_environment

    env = stack_environment(deployed, region=REGION)
    assert env["DB_SECRET_ARN"].startswith("arn:aws:secretsmanager:") and env["TOSS_SECRET_ARN"]
    assert (env["APP_ENV"], env["EVENT_BUS_NAME"], env["DATABASE_URL"], env["TOSS_SECRET_KEY"]) == (
        "dev",
        "escrow-deployed",
        "",
        "",
    )


def test_a_stack_that_created_its_database_names_it_in_its_outputs() -> None:
    """CreateDatabase=true: DbSecretArn and DbHost are empty; the outputs name the secret and the proxy."""
    from escrow.ops.environment import StackError, stack_environment

    template = {
        "Parameters": {
            **{name: {"Type": "String", "Default": ""} for name in ("DbSecretArn", "DbHost", "TossSecretArn")},
            "Secret": {"Type": "String"},
            "Proxy": {"Type": "String"},
        },
        "Conditions": {"HasSecret": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Secret"}, ""]}]}},
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "DatabaseSecretArn": {"Condition": "HasSecret", "Value": {"Ref": "Secret"}},
            "DatabaseProxyEndpoint": {"Condition": "HasSecret", "Value": {"Ref": "Proxy"}},
        },
    }
    tag = uuid.uuid4().hex[:8]
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        for name, secret in ((f"created-{tag}", "arn:db"), (f"broken-{tag}", "")):
            cloudformation.create_stack(
                StackName=name,
                TemplateBody=json.dumps(template),
                Parameters=[
                    {"ParameterKey": "TossSecretArn", "ParameterValue": "arn:toss"},
                    {"ParameterKey": "Secret", "ParameterValue": secret},
                    {"ParameterKey": "Proxy", "ParameterValue": "proxy.example"},
                ],
            )
        env = stack_environment(f"created-{tag}", region=REGION)
        assert (env["DB_SECRET_ARN"], env["DB_HOST"], env["TOSS_SECRET_ARN"]) == ("arn:db", "proxy.example", "arn:toss")
        with pytest.raises(StackError, match="no database secret"):
            stack_environment(f"broken-{tag}", region=REGION)


def test_room_against_a_deployed_stack_reads_its_secrets(
    deployed: str, stack: Stack, rooms: Rooms, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from escrow.config import get_settings
    from escrow.ops.cli import app

    # A deployed stage requires TLS to the database and the test MariaDB has none: the operator says so (a dev
    # stack; prod refuses DB_TLS=disabled).
    monkeypatch.setenv("DB_TLS", "disabled")
    room = rooms.paid(2)
    before = dict(os.environ)
    result = CliRunner().invoke(
        app, ["--stack", deployed, "--region", REGION, "room", str(room.chat_room_id), "--json"]
    )
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["difference_count"] == 0
    keys = [k for s in view["requests"][0]["shares"] for k in s["toss"]["paymentKeys"]]
    assert sorted(keys) == sorted(room.payment_keys.values())
    assert dict(os.environ) == before  # the stack's settings do not leak into the process afterwards
    assert get_settings().db_secret_arn == ""


def test_an_unknown_stack_is_a_clear_error(deployed: str) -> None:
    from typer.testing import CliRunner

    from escrow.ops.cli import app

    result = CliRunner().invoke(app, ["--stack", "nope", "--region", REGION, "payouts"])
    assert result.exit_code == 2
    assert "cannot read stack 'nope'" in result.output
