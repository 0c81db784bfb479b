"""A small fake SAM project (template, env-vars file, dummy handlers) so the runner is tested without the real
handlers, the database or the Toss sandbox."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from local import functions as local_functions

FAKE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: dev
  LogLevel:
    Type: String
    Default: INFO
  Subnets:
    Type: CommaDelimitedList
    Default: ""
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  HasSubnets: !Not [!Equals [!Join ["", !Ref Subnets], ""]]
Globals:
  Function:
    Runtime: python3.11
    Handler: app.lambda_handler
    Timeout: 5
    MemorySize: 256
    VpcConfig: !If [HasSubnets, {SubnetIds: !Ref Subnets}, !Ref AWS::NoValue]
    Environment:
      Variables:
        APP_ENV: !Ref Stage
        LEVEL: !Ref LogLevel
        FROM_GLOBALS: global
        OVERRIDDEN: global
        FROM_PROCESS: template
        SUB_VALUE: !Sub "${AWS::Region}-${Stage}-${EchoBus}"
        IF_VALUE: !If [IsProd, prod-value, other-value]
        BUS: !Ref EchoBus
        BUS_ARN: !GetAtt EchoBus.Arn
Resources:
  EchoBus:
    Type: AWS::Events::EventBus
    Properties:
      Name: echo
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/echo/
      Timeout: 7
      Environment:
        Variables:
          OVERRIDDEN: function
          ONLY_ECHO: echo
      Events:
        Create:
          Type: HttpApi
          Properties: {Path: "/items", Method: POST}
        Get:
          Type: HttpApi
          Properties: {Path: "/items/{itemId}", Method: GET}
        Special:
          Type: HttpApi
          Properties: {Path: "/items/special", Method: get}
        Files:
          Type: HttpApi
          Properties: {Path: "/files/{proxy+}", Method: ANY}
  ShapeFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/shape/
      Events:
        Shape:
          Type: HttpApi
          Properties: {Path: "/shape/{kind}", Method: GET}
  BoomFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/boom/
      Events:
        Boom:
          Type: HttpApi
          Properties: {Path: "/boom", Method: POST}
  TickFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/tick/
      Timeout: 900
      Events:
        Every:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: rate(5 minutes)
            Input: '{"source": "escrow.schedule", "jobs": "all", "scheduled_time": "<aws.scheduler.scheduled-time>"}'
"""

HANDLERS = {
    "echo": """
        import json
        import os
        import threading
        import time

        import helper  # a sibling module: the function folder is on sys.path while app.py is imported

        ENV_KEYS = ["APP_ENV", "LEVEL", "FROM_GLOBALS", "OVERRIDDEN", "FROM_PROCESS", "ONLY_ECHO", "SUB_VALUE"]
        _lock = threading.Lock()
        _active = 0
        max_active = 0


        def lambda_handler(event, context):
            global _active, max_active
            with _lock:
                _active += 1
                max_active = max(max_active, _active)
            try:
                delay = float((event.get("queryStringParameters") or {}).get("sleep", 0))
                time.sleep(delay)
                print("handler output that must not reach stdout of local.invoke")
                body = {
                    "event": event,
                    "thread": threading.get_ident(),
                    "max_active": max_active,
                    "helper": helper.NAME,
                    "env": {k: os.environ.get(k) for k in ENV_KEYS},
                    "function_name": context.function_name,
                    "memory": context.memory_limit_in_mb,
                    "remaining_ms": context.get_remaining_time_in_millis(),
                    "request_id": context.aws_request_id,
                }
                return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}
            finally:
                with _lock:
                    _active -= 1
    """,
    "shape": """
        import base64


        def lambda_handler(event, context):
            kind = event["pathParameters"]["kind"]
            if kind == "plain-dict":
                return {"hello": "world", "n": 1}
            if kind == "string":
                return "just text"
            if kind == "cookies":
                return {
                    "statusCode": 201,
                    "headers": {"x-one": "1", "content-type": "text/plain"},
                    "multiValueHeaders": {"x-many": ["a", "b"]},
                    "cookies": ["a=1; Path=/", "b=2; HttpOnly"],
                    "body": "made",
                }
            if kind == "binary":
                return {
                    "statusCode": 200,
                    "headers": {"content-type": "application/octet-stream"},
                    "body": base64.b64encode(bytes(range(256))).decode(),
                    "isBase64Encoded": True,
                }
            if kind == "bad-status":
                return {"statusCode": "not a number", "body": "x"}
            if kind == "empty":
                return {"statusCode": 204}
            return {"statusCode": 400, "body": '{"error": "unknown kind"}'}
    """,
    "boom": """
        def lambda_handler(event, context):
            raise RuntimeError("the handler blew up on purpose")
    """,
    "tick": """
        calls = []


        def lambda_handler(event, context):
            calls.append(event)
            return {"ran": len(calls), "jobs": event.get("jobs")}
    """,
}


@dataclass
class FakeProject:
    root: Path
    template: Path
    env_file: Path
    functions_dir: Path

    def write_env(self, data: dict) -> Path:
        self.env_file.write_text(json.dumps(data), encoding="utf-8")
        return self.env_file


@pytest.fixture()
def fake_project(tmp_path: Path) -> Iterator[FakeProject]:
    root = tmp_path / "project"
    functions_dir = root / "functions"
    for name, source in HANDLERS.items():
        folder = functions_dir / name
        folder.mkdir(parents=True)
        (folder / "app.py").write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    (functions_dir / "echo" / "helper.py").write_text('NAME = "echo-helper"\n', encoding="utf-8")
    template = root / "template.yaml"
    template.write_text(FAKE_TEMPLATE, encoding="utf-8")
    env_file = root / "env.json"
    env_file.write_text(json.dumps({"Parameters": {"LEVEL": "DEBUG"}}), encoding="utf-8")
    yield FakeProject(root, template, env_file, functions_dir)
    local_functions.clear_cache()  # every test starts with cold containers
