"""Where the console's settings come from: the environment (DATABASE_URL, TOSS_* ...) as for the local runner, or a
deployed stack (`--stack NAME`): its CloudFormation parameters and outputs name the Secrets Manager secrets (the
database, Toss's keys) and the settings the functions run with, and the layer's own config reads the secrets."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# Template parameter -> the environment variable the functions get from it (template.yaml, Globals and functions).
STACK_PARAMETERS = {
    "DbSecretArn": "DB_SECRET_ARN",
    "DbHost": "DB_HOST",
    "DbName": "DB_NAME",
    "TossSecretArn": "TOSS_SECRET_ARN",
    "TossApiBase": "TOSS_API_BASE",
    "WebhookHmacKeyEncoding": "TOSS_WEBHOOK_HMAC_KEY_ENCODING",
    "PlatformFeeBps": "PLATFORM_FEE_BPS",
    "Stage": "APP_ENV",
}
STACK_OUTPUTS = {"EventBusName": "EVENT_BUS_NAME"}
# A stack that created its database (CreateDatabase=true) names the database's secret and the RDS Proxy endpoint
# in its outputs, and leaves DbSecretArn and DbHost empty.
CREATED_DATABASE_OUTPUTS = {"DatabaseSecretArn": "DB_SECRET_ARN", "DatabaseProxyEndpoint": "DB_HOST"}
REQUIRED_PARAMETERS = ("TossSecretArn",)


class StackError(Exception):
    """The stack cannot be read, or it lacks what the console needs."""


def stack_environment(stack_name: str, *, region: str | None = None, client: Any = None) -> dict[str, str]:
    """The functions' settings for a deployed stack, read from CloudFormation (describe_stacks only)."""
    if client is None:
        import boto3

        client = boto3.client("cloudformation", region_name=region)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as exc:
        raise StackError(f"cannot read stack {stack_name!r}: {exc}") from exc
    if not stacks:
        raise StackError(f"no stack {stack_name!r}")
    stack = stacks[0]
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters") or []}
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs") or []}
    missing = [name for name in REQUIRED_PARAMETERS if not parameters.get(name)]
    if missing:
        raise StackError(f"stack {stack_name!r} has no {', '.join(missing)}: is it this project's stack?")
    # Plain values the local runner would use must not win over the stack's secrets: empty means "not set".
    env = {
        "DATABASE_URL": "",
        "TOSS_SECRET_KEY": "",
        "TOSS_SECURITY_KEY": "",
        "OUTBOX_PUBLISHER": "eventbridge",
    }
    for name, variable in STACK_PARAMETERS.items():
        if name in parameters:
            env[variable] = parameters[name]
    for name, variable in STACK_OUTPUTS.items():
        if outputs.get(name):
            env[variable] = outputs[name]
    # The prefix of every id the stack sends Toss (template: TossIdPrefix, else the stage): a refPayoutId the console
    # makes for a retried payout must carry it too.
    env["TOSS_ID_PREFIX"] = parameters.get("TossIdPrefix") or parameters.get("Stage", "")
    for name, variable in CREATED_DATABASE_OUTPUTS.items():
        if outputs.get(name) and not env.get(variable):
            env[variable] = outputs[name]
    if not env.get("DB_SECRET_ARN"):
        raise StackError(f"stack {stack_name!r} names no database secret (DbSecretArn or the DatabaseSecretArn output)")
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return env


@contextmanager
def configured(env: Mapping[str, str]) -> Iterator[None]:
    """Run with these settings, then put the process environment (and the layer's cached settings) back."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _reset()
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset()


def _reset() -> None:
    from escrow import db
    from escrow.config import reset_settings
    from escrow.toss.client import reset_toss_client

    reset_settings()
    reset_toss_client()
    db.close()


def operator_name(given: str | None) -> str:
    """`--operator`, else ESCROW_OPERATOR, else the OS user."""
    name = (given or os.environ.get("ESCROW_OPERATOR") or "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
