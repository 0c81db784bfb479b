"""JWT authentication: the algorithm is pinned by configuration, `exp` is required, the user is `user_id` or `sub`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jwt

from escrow.config import NotConfigured, get_settings, jwt_secret
from escrow.errors import Unauthorized

_USER_ID_MAX = 64


@dataclass(frozen=True)
class Principal:
    user_id: str
    is_admin: bool = False
    claims: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    roles: frozenset[str] = frozenset()

    def has_role(self, role: str) -> bool:
        return role in self.roles


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=3)


def _bearer_token(headers: dict[str, str] | None) -> str:
    headers = headers or {}
    value = headers.get("authorization") or headers.get("Authorization") or ""
    if not value:
        raise Unauthorized("an Authorization: Bearer <token> header is required", code="AUTH_REQUIRED")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", code="INVALID_TOKEN")
    return token.strip()


def _signing_key(token: str) -> Any:
    settings = get_settings()
    if settings.jwt_algorithm == "RS256":
        if not settings.jwt_jwks_url:
            raise NotConfigured("JWT_ALGORITHM=RS256 needs JWT_JWKS_URL", code="AUTH_NOT_CONFIGURED")
        try:
            return _jwks_client(settings.jwt_jwks_url).get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise Unauthorized("the token's signing key is not known", code="INVALID_TOKEN") from exc
    return jwt_secret()


def decode_token(token: str) -> dict[str, Any]:
    settings = get_settings()
    options: Any = {"require": ["exp"], "verify_aud": bool(settings.jwt_audience)}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            _signing_key(token),
            algorithms=[settings.jwt_algorithm],  # pinned: never taken from the token's own header
            options=options,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            leeway=30,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("the token has expired", code="TOKEN_EXPIRED") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("the token is not valid", code="INVALID_TOKEN") from exc
    _check_lifetime(claims, settings.jwt_max_lifetime_seconds)
    return claims


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_lifetime(claims: dict[str, Any], max_lifetime: int) -> None:
    """`exp` (and `iat`, `nbf` when present) are NumericDate numbers (RFC 7519 §2): PyJWT turns the string "123"
    into a number and accepts it. A token may live at most `max_lifetime` seconds: from `iat`, or from now."""
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _numeric(claims[name]):
            raise Unauthorized(f"the token's {name} claim must be a number", code="INVALID_TOKEN")
    start = claims["iat"] if "iat" in claims else time.time()
    if claims["exp"] - start > max_lifetime + 30:  # 30 s of leeway, as for exp itself
        raise Unauthorized(
            f"the token lives longer than {max_lifetime} seconds; ask for a shorter-lived one",
            code="TOKEN_LIFETIME_TOO_LONG",
        )


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    settings = get_settings()
    raw = claims.get("user_id", claims.get("sub"))
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise Unauthorized("the token names no user (claim user_id or sub)", code="INVALID_TOKEN")
    user_id = str(raw).strip()
    # isprintable(): a control character or a lone surrogate names no real user. Such tokens were accepted (answered
    # 403 as some unknown user), and a surrogate cannot even be encoded for MySQL (UnicodeEncodeError, a 500).
    if not user_id or len(user_id) > _USER_ID_MAX or not user_id.isprintable():
        raise Unauthorized("the token's user id is empty, too long or not printable", code="INVALID_TOKEN")
    role = claims.get(settings.admin_role_claim)
    roles = frozenset(r for r in (role if isinstance(role, list) else [role]) if isinstance(r, str))
    return Principal(user_id=user_id, is_admin=settings.admin_role in roles, claims=claims, roles=roles)


def authenticate(headers: dict[str, str] | None) -> Principal:
    return principal_from_claims(decode_token(_bearer_token(headers)))
