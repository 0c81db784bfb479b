"""Typed configuration, read once per container from the environment (and Secrets Manager when deployed)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlparse

from escrow.errors import AppError, SecretsUnavailable

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
    # Seconds an HTTP invocation keeps back after its last Toss call, to record the outcome and answer before Lambda
    # stops it (escrow.deadline): each call's timeouts are cut to what is left minus this.
    deadline_margin_seconds: float = 2.0
    toss_webhook_hmac_key_encoding: str = "hex"
    # Addresses or CIDR blocks (comma-separated) webhooks may come from; empty = any (escrow.webhook_source).
    toss_webhook_allowed_ips: str = ""
    # Every id and Idempotency-Key we send Toss starts with this (escrow.toss.ids): two stacks, or a database
    # rebuilt from nothing, on one merchant id must never send Toss an id it has seen (keys live 15 days there,
    # refPayoutId / refSellerId / orderId for good). Letters and digits, at most 8 (refSellerId has 20 in all).
    toss_id_prefix: str = ""

    platform_fee_bps: int = 300
    # Account numbers at rest (escrow.crypto): the template's KMS key; locally a development key (or this one).
    accounts_kms_key_id: str = ""
    accounts_local_key: str = ""
    event_bus_name: str = "escrow-local"
    outbox_publisher: str = "eventbridge"  # or "log": the local runner prints events instead of calling AWS
    reconcile_after_seconds: int = 60
    # Scheduled work that scales out (escrow.services.fanout): with a queue URL the scheduled run plans (enqueues
    # chunks of due items) and JobsWorkerFunction works them off; empty = the run does every job itself.
    jobs_queue_url: str = ""
    jobs_chunk_size: int = 50  # items per message
    # Pacing of one worker's Toss calls (a token bucket per worker process); 0 = not paced.
    toss_calls_per_second: float = 0.0
    secrets_max_age_seconds: int = 300
    secrets_timeout_seconds: float = 3.0
    secrets_source: str = ""  # extension | sdk; empty = the extension on Lambda, the SDK elsewhere (the console)

    def __post_init__(self) -> None:
        if self.jwt_algorithm not in ("HS256", "RS256"):
            raise ValueError("JWT_ALGORITHM must be HS256 or RS256")
        if self.toss_webhook_hmac_key_encoding not in ("hex", "ascii"):
            raise ValueError("TOSS_WEBHOOK_HMAC_KEY_ENCODING must be hex or ascii")
        if self.secrets_source not in ("", "extension", "sdk"):
            raise ValueError("SECRETS_SOURCE must be extension or sdk (or empty: the extension on Lambda)")
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
        from escrow.webhook_source import parse_allowlist

        parse_allowlist(self.toss_webhook_allowed_ips)  # ValueError names an entry that is no address or block
        if not 0 < self.deadline_margin_seconds < 28:
            raise ValueError("DEADLINE_MARGIN_SECONDS must be between 0 and 28 seconds")
        if not 0 <= self.platform_fee_bps <= 10_000:
            raise ValueError("PLATFORM_FEE_BPS must be between 0 and 10000")
        if not re.fullmatch(r"[A-Za-z0-9]{0,8}", self.toss_id_prefix):
            raise ValueError("TOSS_ID_PREFIX must be at most 8 letters or digits")
        if self.reconcile_after_seconds < 0:
            raise ValueError("RECONCILE_AFTER_SECONDS must not be negative")
        if not 1 <= self.jobs_chunk_size <= 1000:
            raise ValueError("JOBS_CHUNK_SIZE must be between 1 and 1000")
        if self.toss_calls_per_second < 0:
            raise ValueError("TOSS_CALLS_PER_SECOND must not be negative")
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
    """Forget cached settings and secrets (tests and the local runner change the environment between runs)."""
    global _generation
    get_settings.cache_clear()
    clear_secrets()
    _generation += 1


# --- secrets -------------------------------------------------------------------------------------------------
# On Lambda every secret comes from the AWS Parameters and Secrets Lambda Extension (a layer in template.yaml): an
# HTTP GET to localhost, answered from the extension's cache or by its own GetSecretValue call. No AWS SDK is
# imported on the request path (boto3 and a Secrets Manager client cost a cold start about as much again as the
# whole function), and the function keeps what it got for `secrets_max_age_seconds`. Elsewhere (the operator's
# console against a deployed stack) there is no extension: one BatchGetSecretValue with the SDK.

EXTENSION_HOST = "localhost"
EXTENSION_DEFAULT_PORT = 2773  # PARAMETERS_SECRETS_EXTENSION_HTTP_PORT changes it, for the extension and for us

_secrets: dict[str, tuple[float, str]] = {}
_secrets_lock = threading.Lock()


def clear_secrets() -> None:
    """Forget fetched secrets (tests; a rotated secret is otherwise picked up after secrets_max_age_seconds)."""
    with _secrets_lock:
        _secrets.clear()


def _secret(secret_id: str, *, force_fetch: bool = False) -> str:
    """A secret's SecretString, from the in-process cache or the extension. SecretsUnavailable (503) when the
    extension cannot be reached or does not give the secret; the reason is logged, never the secret.

    A miss fetches every secret this function is configured with at once, in parallel: a cold start needs the JWT
    and the database secrets one after the other, and the extension's first answer for each is a Secrets Manager
    round trip. ``force_fetch`` (the database refused a rotated password) reads it from Secrets Manager itself."""
    if force_fetch:
        value = _fetch_from_secrets_manager(secret_id)
        with _secrets_lock:
            _secrets[secret_id] = (time.monotonic(), value)
        return value
    max_age = get_settings().secrets_max_age_seconds
    now = time.monotonic()
    with _secrets_lock:
        cached = _secrets.get(secret_id)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        stale = [s for s in _configured_secrets() if s not in _secrets or now - _secrets[s][0] >= max_age]
    others = [s for s in stale if s != secret_id]
    if _secrets_source() == "sdk":
        results = _batch_from_secrets_manager([secret_id, *others])
        if secret_id not in results:
            raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again")
        value = results[secret_id]
    else:
        results = {}
        threads = [threading.Thread(target=_prefetch, args=(s, results), daemon=True) for s in others]
        for thread in threads:
            thread.start()
        try:
            value = _fetch_secret(secret_id)  # this one's failure is the caller's; the others' when they are needed
        finally:
            for thread in threads:
                thread.join()
        results[secret_id] = value
    with _secrets_lock:
        fetched_at = time.monotonic()
        for key, text in results.items():
            _secrets[key] = (fetched_at, text)
    return value


def _secrets_source() -> str:
    return get_settings().secrets_source or ("extension" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "sdk")


def _configured_secrets() -> list[str]:
    """The secret ids this function would ask for: those not replaced by a plain environment value."""
    settings = get_settings()
    wanted = [
        (settings.db_secret_arn, not settings.database_url),
        (settings.jwt_secret_arn, not settings.jwt_secret and settings.jwt_algorithm == "HS256"),
        (settings.toss_secret_arn, not settings.toss_secret_key),
    ]
    return [secret_id for secret_id, needed in wanted if secret_id and needed]


def _prefetch(secret_id: str, results: dict[str, str]) -> None:
    try:
        results[secret_id] = _fetch_secret(secret_id)
    except Exception:  # noqa: BLE001, S110 - logged by _fetch_secret; fetched again, and raised, when it is needed
        pass


def _fetch_secret(secret_id: str) -> str:
    import http.client

    token = os.environ.get("AWS_SESSION_TOKEN", "")
    if not token:
        raise SecretsUnavailable("the secrets are not available (no AWS session token); nothing was done")
    port = int(os.environ.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT") or EXTENSION_DEFAULT_PORT)
    timeout = get_settings().secrets_timeout_seconds
    conn = http.client.HTTPConnection(EXTENSION_HOST, port, timeout=timeout)
    try:
        conn.request(
            "GET",
            "/secretsmanager/get?secretId=" + quote(secret_id, safe=""),
            headers={"X-Aws-Parameters-Secrets-Token": token},
        )
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset, malformed answer
        _log_secret_failure(secret_id, f"{type(exc).__name__}: {exc}")
        raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again") from exc
    finally:
        conn.close()
    if response.status != 200:
        _log_secret_failure(secret_id, f"HTTP {response.status}: {body[:300].decode('utf-8', 'replace')}")
        raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again")
    try:
        value = json.loads(body)["SecretString"]
    except (ValueError, KeyError, TypeError) as exc:
        _log_secret_failure(secret_id, "the answer holds no SecretString")
        raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again") from exc
    return str(value)


def _fetch_from_secrets_manager(secret_id: str) -> str:
    """GetSecretValue with the SDK, past both caches. Only after a rotation: the extension keeps a secret until its
    own TTL and has no way to skip its cache, so the password it holds would be refused until then."""
    try:
        import boto3  # only on this rare path; the runtime provides it

        answer = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)
        return str(answer["SecretString"])
    except Exception as exc:  # unreachable, refused, no credentials: the same 503 for the client (re-raised)
        _log_secret_failure(secret_id, f"GetSecretValue: {type(exc).__name__}: {str(exc)[:300]}")
        raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again") from exc


def _batch_from_secrets_manager(secret_ids: list[str]) -> dict[str, str]:
    """Every given secret in one BatchGetSecretValue (the ones it could not give are logged and left out)."""
    try:
        import boto3

        answer = boto3.client("secretsmanager").batch_get_secret_value(SecretIdList=secret_ids)
    except Exception as exc:  # unreachable, refused, no credentials: the same 503 for the client (re-raised)
        _log_secret_failure(",".join(secret_ids), f"BatchGetSecretValue: {type(exc).__name__}: {str(exc)[:300]}")
        raise SecretsUnavailable("the secrets are not available right now; nothing was done, try again") from exc
    for error in answer.get("Errors") or []:
        _log_secret_failure(str(error.get("SecretId")), f"{error.get('ErrorCode')}: {error.get('Message')}")
    found: dict[str, str] = {}
    for value in answer.get("SecretValues") or []:
        for asked in secret_ids:  # answered by ARN and name; asked by either
            if asked in (value.get("ARN"), value.get("Name")) and "SecretString" in value:
                found[asked] = str(value["SecretString"])
    return found


def _log_secret_failure(secret_id: str, reason: str) -> None:
    from escrow.observability import logger

    logger.error("secret not available", extra={"secret_id": secret_id, "reason": reason})


def _json_secret(secret_id: str, *, force_fetch: bool = False) -> dict[str, Any]:
    try:
        value = json.loads(_secret(secret_id, force_fetch=force_fetch))
    except ValueError as exc:
        raise _malformed(f"the secret {secret_id} is not JSON") from exc
    if not isinstance(value, dict):
        raise _malformed(f"the secret {secret_id} is not a JSON object")
    return value


def _malformed(reason: str) -> Exception:
    """A secret that is there but not in the shape we need: the operator's to fix; the client gets a 503."""
    from escrow.observability import logger

    logger.error("secret malformed", extra={"reason": reason})
    return SecretsUnavailable("the secrets are not usable right now; nothing was done")


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
        secret = _json_secret(settings.db_secret_arn, force_fetch=refresh)
        try:
            params = DatabaseParams(
                host=str(secret.get("host", "")),
                port=int(secret.get("port", 3306)),
                user=str(secret["username"]),
                password=str(secret["password"]),
                database=str(secret.get("dbname", "escrow")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed("the database secret needs username, password and a numeric port") from exc
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
        text = _secret(settings.jwt_secret_arn)
        # Accept either the plain secret or a JSON object {"secret": "..."}.
        if text.startswith("{"):
            try:
                return str(json.loads(text)["secret"])
            except (ValueError, KeyError, TypeError) as exc:
                raise _malformed('the JWT secret is JSON without a "secret"') from exc
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
        secret = _json_secret(settings.toss_secret_arn)
        secret_key = str(secret.get("secret_key", ""))
        security_key = security_key or str(secret.get("security_key", ""))
    if not secret_key:
        if not settings.is_local:
            raise NotConfigured("no Toss secret key is configured (TOSS_SECRET_KEY or TOSS_SECRET_ARN)")
        secret_key = TOSS_PUBLIC_TEST_SECRET_KEY
    return TossKeys(secret_key=secret_key, security_key=security_key)
