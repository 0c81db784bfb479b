"""The OpenAPI description is the truth about the API: generated from the code, committed, served, complete, and
every answer the running API gives (to valid and to invalid requests) is one the description allows.

Schemathesis generates requests from `openapi.json` (positive and negative data, 25 examples per operation,
derandomized so CI is reproducible) and sends them to the local API with valid JWTs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.events import token

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi.json"

# Schema-valid requests may still be refused by a business rule the schema cannot express (an unknown store,
# a room with no open request, a cancel naming neither a share nor a room, Toss declining): those answers are
# documented 4xx codes, so they count as "accepted" for the positive-data check.
ACCEPTED_STATUSES = ["2xx", "401", "402", "403", "404", "409", "422"]
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_STATUSES}},
        # Methods a route does not have are API Gateway's business (the local runner's http.server answers TRACE
        # with its own 501 page); our handlers only ever see the template's routes.
        "phases": {"coverage": {"unexpected-methods": []}},
    }
)
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


def test_the_committed_description_is_what_the_code_generates():
    fresh = subprocess.run(
        [sys.executable, "-m", "local.openapi"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fresh == SPEC.read_text(encoding="utf-8"), "openapi.json is stale: run `make openapi`"


def test_every_template_route_is_described_and_nothing_else(api):
    from local.template import load_template

    described = json.loads(SPEC.read_text(encoding="utf-8"))
    operations = {f"{method.upper()} {path}" for path, item in described["paths"].items() for method in item}
    routes = {r.route_key for spec in load_template(environ={}).functions.values() for r in spec.routes}
    assert routes == operations
    served = requests.get(f"{api}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == described


def _headers_for(path: str) -> dict[str, str]:
    # A valid token of a user who belongs to no room (so nothing real can be touched), an admin for the admin route.
    if path.startswith("/api/v1/admin/"):
        return {"authorization": f"Bearer {token('fuzz_admin', role='admin')}"}
    return {"authorization": f"Bearer {token('fuzz_user')}"}


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_description(case, api):
    headers = {} if case.operation.path.endswith("/webhook") else _headers_for(case.operation.path)
    case.call_and_validate(base_url=api, headers=headers, checks=CHECKS, timeout=30)
