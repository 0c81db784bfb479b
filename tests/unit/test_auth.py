"""JWT rules: pinned algorithm, exp required, user from user_id else sub."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from escrow.auth import authenticate
from escrow.config import LOCAL_JWT_SECRET, reset_settings
from escrow.errors import AppError, Unauthorized


@pytest.fixture(autouse=True)
def _local_settings(monkeypatch):
    monkeypatch.setenv("APP_ENV", "local")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("JWT_AUDIENCE", raising=False)
    monkeypatch.delenv("JWT_ISSUER", raising=False)
    reset_settings()
    yield
    reset_settings()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def hs(claims: dict, key: str = LOCAL_JWT_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def future() -> int:
    return int(time.time()) + 600


def test_user_id_claim_names_the_user():
    assert authenticate(bearer(hs({"user_id": "user_2", "sub": "other", "exp": future()}))).user_id == "user_2"


def test_sub_is_the_fallback():
    assert authenticate(bearer(hs({"sub": "user_3", "exp": future()}))).user_id == "user_3"


def test_numeric_user_ids_become_strings():
    assert authenticate(bearer(hs({"user_id": 42, "exp": future()}))).user_id == "42"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "AUTH_REQUIRED"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "INVALID_TOKEN"),
        ({"authorization": "Bearer "}, "INVALID_TOKEN"),
        ({"authorization": "Bearer not.a.jwt"}, "INVALID_TOKEN"),
    ],
)
def test_missing_or_malformed_headers_are_refused(headers, code):
    with pytest.raises(Unauthorized) as err:
        authenticate(headers)
    assert err.value.code == code


def test_expired_token_is_refused():
    with pytest.raises(Unauthorized) as err:
        authenticate(bearer(hs({"user_id": "u", "exp": int(time.time()) - 3600})))
    assert err.value.code == "TOKEN_EXPIRED"


def test_token_without_exp_is_refused():
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"user_id": "u"})))


def test_not_yet_valid_token_is_refused():
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"user_id": "u", "exp": future(), "nbf": int(time.time()) + 3600})))


def test_wrong_key_is_refused():
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"user_id": "u", "exp": future()}, key="another-secret-of-thirty-two-bytes!!")))


def test_alg_none_is_refused():
    unsigned = jwt.encode({"user_id": "u", "exp": future()}, key=None, algorithm="none")
    with pytest.raises(Unauthorized):
        authenticate(bearer(unsigned))


def test_rs256_token_is_refused_when_hs256_is_pinned():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):
        authenticate(bearer(jwt.encode({"user_id": "u", "exp": future()}, private, algorithm="RS256")))


def test_token_without_a_user_is_refused():
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"exp": future(), "role": "admin"})))


def test_audience_and_issuer_are_checked_when_configured(monkeypatch):
    monkeypatch.setenv("JWT_AUDIENCE", "escrow-api")
    monkeypatch.setenv("JWT_ISSUER", "https://chat.example")
    reset_settings()
    good = {"user_id": "u", "exp": future(), "aud": "escrow-api", "iss": "https://chat.example"}
    assert authenticate(bearer(hs(good))).user_id == "u"
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({**good, "aud": "other"})))
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({**good, "iss": "https://evil.example"})))


def test_admin_role_claim_marks_admins():
    assert authenticate(bearer(hs({"user_id": "a", "exp": future(), "role": "admin"}))).is_admin
    assert authenticate(bearer(hs({"user_id": "a", "exp": future(), "role": ["x", "admin"]}))).is_admin
    assert not authenticate(bearer(hs({"user_id": "a", "exp": future()}))).is_admin


# --- issue 7, finding 12: auth fails closed inside Lambda, exp is a number, tokens do not live for ever ----------


def test_inside_lambda_an_unset_app_env_is_not_local(monkeypatch):
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "escrow-dev-RequestFunction")
    reset_settings()
    with pytest.raises(AppError) as refused:
        authenticate(bearer(hs({"user_id": "user_2", "exp": future()})))  # the repository's public local secret
    assert (refused.value.status, refused.value.code) == (503, "AUTH_NOT_CONFIGURED")


def test_inside_lambda_the_public_toss_test_key_is_not_used(monkeypatch):
    from escrow.config import toss_keys

    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("TOSS_SECRET_KEY", raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "escrow-dev-ConfirmFunction")
    reset_settings()
    with pytest.raises(AppError) as refused:
        toss_keys()
    assert refused.value.status == 503


def test_a_string_exp_is_refused():
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"user_id": "user_2", "exp": str(future())})))


def test_a_token_that_lives_longer_than_the_cap_is_refused(monkeypatch):
    monkeypatch.setenv("JWT_MAX_LIFETIME_SECONDS", "3600")
    reset_settings()
    now = int(time.time())
    assert authenticate(bearer(hs({"user_id": "u", "iat": now, "exp": now + 3000}))).user_id == "u"
    with pytest.raises(Unauthorized) as refused:
        authenticate(bearer(hs({"user_id": "u", "iat": now, "exp": now + 10 * 365 * 86400})))
    assert refused.value.code == "TOKEN_LIFETIME_TOO_LONG"
    with pytest.raises(Unauthorized):
        authenticate(bearer(hs({"user_id": "u", "exp": now + 10 * 365 * 86400})))  # no iat: exp itself is capped
