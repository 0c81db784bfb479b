"""The real template.yaml, events/ and local/env*.json agree with docs/ARCHITECTURE.md and with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.template import load_env_file, load_template

ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((ROOT / "events").glob("*.json"))

ARCHITECTURE_ROUTES = {
    "RequestFunction": {
        "POST /api/v1/payment/request",
        "GET /api/v1/payment/status/{chatRoomId}",
        "POST /api/v1/payment/participants/add",
        "POST /api/v1/payment/participants/remove",
        "PUT /api/v1/admin/rooms/{chatRoomId}/members",
    },
    "ConfirmFunction": {
        "POST /api/v1/payment/prepare",
        "POST /api/v1/payment/initiate",
        "POST /api/v1/payment/confirm",
    },
    "CancelFunction": {"POST /api/v1/payment/cancel"},
    "ReleaseFunction": {
        "POST /api/v1/payment/release",
        "POST /api/v1/admin/stores",
        "GET /api/v1/admin/stores/{storeId}",
    },
    "WebhookFunction": {"POST /api/v1/payment/webhook"},
    "MembershipFunction": set(),  # RoomMembershipChanged events from the chat service (EventBridge), no route
    "MigrateFunction": set(),  # the CloudFormation custom resource and manual runs; no route
    "JobsWorkerFunction": set(),  # chunks of scheduled work from the jobs queue (SQS), no route
}
SECRET_VARS = {
    "MigrateFunction": {"DB_SECRET_ARN"},
    "MembershipFunction": {"DB_SECRET_ARN"},
    "RequestFunction": {"DB_SECRET_ARN", "JWT_SECRET_ARN", "TOSS_SECRET_ARN"},  # a removed participant is refunded
    "ConfirmFunction": {"DB_SECRET_ARN", "JWT_SECRET_ARN", "TOSS_SECRET_ARN"},
    "CancelFunction": {"DB_SECRET_ARN", "JWT_SECRET_ARN", "TOSS_SECRET_ARN"},
    "ReleaseFunction": {"DB_SECRET_ARN", "JWT_SECRET_ARN", "TOSS_SECRET_ARN"},
    "WebhookFunction": {"DB_SECRET_ARN", "TOSS_SECRET_ARN"},
    "JobsWorkerFunction": {"DB_SECRET_ARN", "TOSS_SECRET_ARN"},  # refunds and payouts, no JWT (no HTTP)
}


@pytest.fixture(scope="module")
def template():
    return load_template(environ={})


def test_template_has_the_architecture_functions_and_routes(template) -> None:
    routes = {fid: {r.route_key for r in spec.routes} for fid, spec in template.functions.items()}
    assert routes == ARCHITECTURE_ROUTES
    for spec in template.functions.values():
        assert spec.code_dir == ROOT / "functions" / spec.name
        assert spec.handler == "app.lambda_handler"
    assert template.functions["ReleaseFunction"].timeout == template.functions["MigrateFunction"].timeout == 900
    api_only = [f for f, routes in ARCHITECTURE_ROUTES.items() if routes and f != "ReleaseFunction"]
    assert all(template.functions[f].timeout <= 28 for f in api_only)
    schedule = template.functions["ReleaseFunction"].schedules[0]
    assert schedule["expression"] == "rate(5 minutes)"
    assert schedule["input"]["source"] == "escrow.schedule" and schedule["input"]["jobs"] == "all"


def test_each_function_gets_exactly_the_secrets_it_needs(template) -> None:
    for fid, wanted in SECRET_VARS.items():
        env = template.functions[fid].environment
        assert {k for k in env if k.endswith("_SECRET_ARN")} == wanted, fid


def test_local_env_files_only_set_variables_the_template_declares(template) -> None:
    declared = set().union(*(spec.environment for spec in template.functions.values()))
    for name in ("env.json", "env.docker.json"):
        sections = load_env_file(ROOT / "local" / name)
        for section, values in sections.items():
            if section == "Parameters":
                assert set(values) <= declared, (name, set(values) - declared)
            else:
                assert set(values) <= set(template.functions[section].environment), (name, section)
    assert set(load_env_file(ROOT / "local" / "env.json")["Parameters"]) == set(
        load_env_file(ROOT / "local" / "env.docker.json")["Parameters"]
    )


def test_local_defaults_are_the_architecture_ones() -> None:
    env = load_template(environ={}).functions["ReleaseFunction"].environment
    assert env["APP_ENV"] == "local"
    assert env["DATABASE_URL"] == "mysql://root:@127.0.0.1:3306/escrow"
    assert env["TOSS_API_BASE"] == "http://127.0.0.1:4010"
    assert env["EVENT_BUS_NAME"] == "escrow-local"
    assert env["TOSS_SECURITY_KEY"] == "5f2b1c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"
    assert (env["TOSS_CONNECT_TIMEOUT"], env["TOSS_READ_TIMEOUT"], env["TOSS_PAYOUT_READ_TIMEOUT"]) == ("3", "20", "60")
    assert env["PLATFORM_FEE_BPS"] == "300"
    assert env["DB_SECRET_ARN"] == env["TOSS_SECRET_ARN"] == env["JWT_SECRET_ARN"] == ""
    assert env["JOBS_QUEUE_URL"] == ""  # locally the scheduled run does every job itself (FanOut's fallback)


@pytest.mark.parametrize("path", EVENTS, ids=[p.name for p in EVENTS])
def test_every_http_event_matches_a_route_of_the_template(path: Path, template) -> None:
    event = json.loads(path.read_text(encoding="utf-8"))
    if "routeKey" not in event:
        # The other events: the schedule's, and the chat service's membership event (MembershipFunction's rule).
        assert (event["source"], event.get("detail-type")) in (
            ("escrow.schedule", None),
            ("chat.service", "RoomMembershipChanged"),
        ), "a non-HTTP event must be the scheduled one or a RoomMembershipChanged"
        if event["source"] == "escrow.schedule":
            schedule_input = template.functions["ReleaseFunction"].schedules[0]["input"]
            assert set(event) == set(schedule_input)
        else:  # an EventBridge event as the MembershipFunction's rule delivers it
            assert {"version", "id", "detail-type", "source", "time", "region", "detail"} <= set(event)
            assert {"chat_room_id", "owner_id", "member_ids"} <= set(event["detail"])
        return
    assert event["version"] == "2.0"
    assert event["routeKey"] == event["requestContext"]["routeKey"]
    method, _path = event["routeKey"].split(" ", 1)
    assert event["requestContext"]["http"]["method"] == method
    assert event["requestContext"]["http"]["path"] == event["rawPath"]
    matched = template.match(method, event["rawPath"])
    assert matched is not None, f"{path.name}: {event['routeKey']} is not a route of template.yaml"
    route, params = matched
    assert route.route_key == event["routeKey"]
    assert event.get("pathParameters", {}) == params
    assert all(k == k.lower() for k in event["headers"])
    if "body" in event:
        assert event["isBase64Encoded"] is False
        assert event["headers"]["content-type"] == "application/json"
        json.loads(event["body"])
        assert int(event["headers"]["content-length"]) == len(event["body"].encode())
    if route.function == "WebhookFunction":
        assert "authorization" not in event["headers"]
        assert event["headers"]["tosspayments-webhook-transmission-id"]
    else:
        assert event["headers"]["authorization"].startswith("Bearer ")


def test_every_route_has_a_sample_event(template) -> None:
    covered = {json.loads(p.read_text()).get("routeKey") for p in EVENTS}
    assert {r.route_key for r in template.routes} <= covered


def test_only_the_functions_that_run_refunds_may_open_refund_accounts_and_only_cancel_seals_them() -> None:
    """A payer's refund account (context table refund_accounts) is opened by the refund paths only: the cancel
    route, participant removal (RequestFunction) and the schedule (ReleaseFunction, and JobsWorkerFunction when the
    work is fanned out: expiry, refunds retried); only
    the cancel route, where the payer gives it, may seal one. Each function that opens one is told the key."""
    import yaml

    from local.template import CloudFormationLoader

    template = yaml.load((ROOT / "template.yaml").read_text(encoding="utf-8"), Loader=CloudFormationLoader)
    resources = template["Resources"]
    may_open, may_seal = set(), set()
    for name, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                condition = statement.get("Condition", {}).get("StringEquals", {})
                if condition.get("kms:EncryptionContext:table") != "refund_accounts":
                    continue
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                role = name.removesuffix("FunctionRole")
                if "kms:Decrypt" in actions:
                    may_open.add(role)
                if "kms:GenerateDataKey" in actions:
                    may_seal.add(role)
    assert may_open == {"Cancel", "Request", "Release", "JobsWorker"}  # JobsWorker: the fanned-out expiry refunds
    assert may_seal == {"Cancel"}
    for role in may_open:
        variables = resources[f"{role}Function"]["Properties"]["Environment"]["Variables"]
        assert variables["ACCOUNTS_KMS_KEY_ID"] == {"Fn::GetAtt": ["AccountsKey", "Arn"]}
