"""Basic auth as Toss describes it (https://docs.tosspayments.com/reference/using-api/authorization)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import requests

from toss_sandbox import DEFAULT_SECRET_KEYS, Sandbox, basic_auth_header

from .conftest import TossClient


def _get(sandbox: Sandbox, headers: dict[str, str]) -> requests.Response:
    return requests.get(f"{sandbox.url}/v1/payments/unknown-key", headers=headers, timeout=5)


def test_missing_authorization_header_is_401_unauthorized_key(sandbox: Sandbox) -> None:
    response = _get(sandbox, {})
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED_KEY"
    assert response.json()["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(DEFAULT_SECRET_KEYS[0].encode()).decode(),  # no trailing colon
        "Basic !!!not-base64!!!",
        "Basic",
        "Bearer " + base64.b64encode(f"{DEFAULT_SECRET_KEYS[0]}:".encode()).decode(),
        "Basic " + base64.b64encode(f"{DEFAULT_SECRET_KEYS[0]}:password".encode()).decode(),
    ],
    ids=["no-colon", "not-base64", "no-credentials", "not-basic", "password-after-colon"],
)
def test_malformed_basic_header_is_403_incorrect_basic_auth_format(sandbox: Sandbox, header: str) -> None:
    response = _get(sandbox, {"Authorization": header})
    assert response.status_code == 403
    assert response.json()["code"] == "INCORRECT_BASIC_AUTH_FORMAT"


def test_unknown_key_is_401_unauthorized_key(sandbox: Sandbox) -> None:
    response = _get(sandbox, {"Authorization": basic_auth_header("test_sk_someoneElsesKey0000000")})
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED_KEY"


def test_key_encoded_with_a_bom_is_unknown(sandbox: Sandbox) -> None:
    value = base64.b64encode(f"\ufeff{DEFAULT_SECRET_KEYS[0]}:".encode()).decode()
    assert value.startswith("77u/")
    response = _get(sandbox, {"Authorization": f"Basic {value}"})
    assert response.status_code == 401


def test_documented_example_header_and_both_default_keys_are_accepted(sandbox: Sandbox) -> None:
    documented = "Basic dGVzdF9za196WExrS0V5cE5BcldtbzUwblgzbG1lYXhZRzVSOg=="
    for header in (documented, basic_auth_header(DEFAULT_SECRET_KEYS[1])):
        response = _get(sandbox, {"Authorization": header})
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND_PAYMENT"


def test_configured_secret_keys_replace_the_defaults(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(secret_keys=["test_sk_custom0000000000000000"])
    assert _get(sandbox, {"Authorization": basic_auth_header("test_sk_custom0000000000000000")}).status_code == 404
    assert _get(sandbox, {"Authorization": basic_auth_header(DEFAULT_SECRET_KEYS[0])}).status_code == 401


def test_auth_failures_are_recorded_in_the_call_log(sandbox: Sandbox, toss: TossClient) -> None:
    _get(sandbox, {})
    calls = toss.calls()
    assert calls[-1]["responseStatus"] == 401
    assert calls[-1]["responseCode"] == "UNAUTHORIZED_KEY"
    assert calls[-1]["route"] == "GET /v1/payments/{paymentKey}"
