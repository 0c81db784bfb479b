"""Typed configuration, read once per container from the environment (and Secrets Manager when deployed)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

from escrow.errors import AppError

# Local-only defaults; deployed stages take their keys from Secrets Manager (APP_ENV != local refuses these).
LOCAL_JWT_SECRET = "local-dev-secret-change-me-0123456789abcdef"  # noqa: S105 - 32+ bytes for HS256
TOSS_PUBLIC_TEST_SECRET_KEY = "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R"  # noqa: S105 - printed in Toss docs


class NotConfigured(AppError, RuntimeError):
    """A setting the service needs is missing: a 503 with a code, never a guess and never a stack trace."""

    status, code = 503, "SERVICE_NOT_CONFIGURED"


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Non-secret settings, from environment variables of the same name in upper case. Secrets are resolved
    lazily by the accessors below, so an import never calls AWS. (A plain dataclass: pydantic's model machinery
    would cost every cold start tens of milliseconds for a dozen strings.)"""

    app_env: str = "local"
    database_url: str = ""
    db_secret_arn: str = ""
    db_host: str = ""
    db_name: str = ""
    db_connect_timeout: float = 3.0
    db_read_timeout: float = 10.0
    db_write_timeout: float = 10.0
    # TLS to MySQL: "required" (verify the server's certificate against DB_CA_BUNDLE and its host name) or
    # "disabled" (plain, local MariaDB). Empty = required everywhere but APP_ENV=local. See escrow.db.tls_context.
    db_tls: str = ""
    db_ca_bundle: str = ""  # empty = the bundle shipped in the layer (escrow/certs/rds-ca-bundle.pem)

    jwt_secret: str = ""
    jwt_secret_arn: str = ""
    jwt_algorithm: str = "HS256"
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    admin_role_claim: str = "role"
    admin_role: str = "admin"
    jwt_max_lifetime_seconds: int = 86400

    toss_api_base: str = "https://api.tosspayments.com"
    toss_secret_key: str = ""
    toss_security_key: str = ""
    toss_secret_arn: str = ""
    toss_connect_timeout: float = 3.0
    toss_read_timeout: float = 20.0
    toss_payout_read_timeout: float = 60.0
    toss_webhook_hmac_key_encoding: str = "hex"

    platform_fee_bps: int = 300
    # Account numbers at rest (escrow.crypto): the template's KMS key; locally a development key (or this one).
    accounts_kms_key_id: str = ""
    accounts_local_key: str = ""
    event_bus_name: str = "escrow-local"
    outbox_publisher: str = "eventbridge"  # or "log": the local runner prints events instead of calling AWS
    reconcile_after_seconds: int = 60
    secrets_max_age_seconds: int = 300

    def __post_init__(self) -> None:
        if self.jwt_algorithm not in ("HS256", "RS256"):
            raise ValueError("JWT_ALGORITHM must be HS256 or RS256")
        if self.toss_webhook_hmac_key_encoding not in ("hex", "ascii"):
            raise ValueError("TOSS_WEBHOOK_HMAC_KEY_ENCODING must be hex or ascii")
        if self.db_tls not in ("", "required", "disabled"):
            raise ValueError("DB_TLS must be required or disabled")
        if self.accounts_local_key and len(self.accounts_local_key) != 64:
            raise ValueError("ACCOUNTS_LOCAL_KEY must be 64 hex characters")
        if self.outbox_publisher not in ("eventbridge", "log"):
            raise ValueError("OUTBOX_PUBLISHER must be eventbridge or log")
        # API Gateway gives up after 29 s; a confirm still running then would answer the client 503 while
        # the payment may go through. Stay below it and reconcile instead.
        if not 0 < self.toss_read_timeout < 28:
            raise ValueError("TOSS_READ_TIMEOUT must be between 0 and 28 seconds (API Gateway's limit is 29 s)")
        if not 0 <= self.platform_fee_bps <= 10_000:
            raise ValueError("PLATFORM_FEE_BPS must be between 0 and 10000")
        if self.reconcile_after_seconds < 0:
            raise ValueError("RECONCILE_AFTER_SECONDS must not be negative")
        if self.jwt_max_lifetime_seconds <= 0:
            raise ValueError("JWT_MAX_LIFETIME_SECONDS must be positive")

    @property
    def is_local(self) -> bool:
        """Only an explicit local run may use the repository's public local keys."""
        return self.app_env == "local"

    @property
    def db_tls_required(self) -> bool:
        return self.db_tls == "required" or (self.db_tls == "" and self.app_env != "local")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        if not environ.get("APP_ENV") and environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            # Inside Lambda an unset APP_ENV fails closed: never the public local JWT secret or Toss test key.
            values["app_env"] = "unset"
        for spec in fields(cls):
            raw = environ.get(spec.name.upper())
            if raw is None or raw == "":
                continue
            kind: Any = type(spec.default)
            try:
                values[spec.name] = _bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{spec.name.upper()} must be a {kind.__name__}, not {raw!r}") from exc
        return cls(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env(os.environ)


_generation = 0


def settings_generation() -> int:
    """Bumped by reset_settings(); per-thread clients and connections made under an older one are rebuilt."""
    return _generation


def reset_settings() -> None:
    """Forget cached settings (tests and the local runner change the environment between runs)."""
    global _generation
    get_settings.cache_clear()
    _generation += 1


def _secret(arn: str, *, as_json: bool, force_fetch: bool = False) -> object:
    """A secret from Secrets Manager through Powertools Parameters (cached for secrets_max_age_seconds)."""
    from aws_lambda_powertools.utilities import parameters  # imported only when a secret is really needed

    max_age = get_settings().secrets_max_age_seconds
    if as_json:
        return parameters.get_secret(arn, max_age=max_age, transform="json", force_fetch=force_fetch)
    return parameters.get_secret(arn, max_age=max_age, force_fetch=force_fetch)


@dataclass(frozen=True)
class DatabaseParams:
    host: str
    port: int
    user: str
    password: str
    database: str

    def __repr__(self) -> str:  # never print the password
        return f"DatabaseParams(host={self.host!r}, port={self.port}, user={self.user!r}, database={self.database!r})"


def parse_database_url(url: str) -> DatabaseParams:
    parsed = urlparse(url)
    if parsed.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
        raise ValueError("DATABASE_URL must look like mysql://user:password@host:3306/database")
    return DatabaseParams(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 3306,
        user=unquote(parsed.username or "root"),
        password=unquote(parsed.password or ""),
        database=(parsed.path or "/").lstrip("/") or "escrow",
    )


def database_params(*, refresh: bool = False) -> DatabaseParams:
    """``refresh`` reads the DB secret again, past the cache (after a rotation the cached password is refused)."""
    settings = get_settings()
    if settings.database_url:
        params = parse_database_url(settings.database_url)
    elif settings.db_secret_arn:
        secret = _secret(settings.db_secret_arn, as_json=True, force_fetch=refresh)
        assert isinstance(secret, dict)
        params = DatabaseParams(
            host=str(secret.get("host", "")),
            port=int(secret.get("port", 3306)),
            user=str(secret["username"]),
            password=str(secret["password"]),
            database=str(secret.get("dbname", "escrow")),
        )
    else:
        params = parse_database_url("mysql://root:@127.0.0.1:3306/escrow")
    if settings.db_host:
        params = DatabaseParams(settings.db_host, params.port, params.user, params.password, params.database)
    if settings.db_name:
        params = DatabaseParams(params.host, params.port, params.user, params.password, settings.db_name)
    return params


def jwt_secret() -> str:
    settings = get_settings()
    if settings.jwt_secret:
        return settings.jwt_secret
    if settings.jwt_secret_arn:
        value = _secret(settings.jwt_secret_arn, as_json=False)
        text = value.decode() if isinstance(value, bytes) else str(value)
        # Accept either the plain secret or a JSON object {"secret": "..."}.
        if text.startswith("{"):
            return str(json.loads(text)["secret"])
        return text
    if settings.is_local:
        return LOCAL_JWT_SECRET
    raise NotConfigured("no JWT secret is configured (JWT_SECRET or JWT_SECRET_ARN)", code="AUTH_NOT_CONFIGURED")


@dataclass(frozen=True)
class TossKeys:
    secret_key: str
    security_key: str

    def __repr__(self) -> str:
        return "TossKeys(secret_key=***, security_key=***)"


def toss_keys() -> TossKeys:
    settings = get_settings()
    secret_key, security_key = settings.toss_secret_key, settings.toss_security_key
    if settings.toss_secret_arn and not secret_key:
        secret = _secret(settings.toss_secret_arn, as_json=True)
        assert isinstance(secret, dict)
        secret_key = str(secret.get("secret_key", ""))
        security_key = security_key or str(secret.get("security_key", ""))
    if not secret_key:
        if not settings.is_local:
            raise NotConfigured("no Toss secret key is configured (TOSS_SECRET_KEY or TOSS_SECRET_ARN)")
        secret_key = TOSS_PUBLIC_TEST_SECRET_KEY
    return TossKeys(secret_key=secret_key, security_key=security_key)
