"""Settings of one sandbox instance (constructor keywords of ``start_sandbox`` and CLI flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The two public test secret keys printed in Toss's docs (REFERENCE §1): the API individual key and the
# payment-widget key. Both are accepted by default.
DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R",
    "test_gsk_docs_OaPz8L5KdmQXkzRz3y47BMw6",
)
# 64 hex characters, used for payout JWE (hex-decoded) and webhook HMAC. Not a real key.
DEFAULT_SECURITY_KEY = "5f2b1c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"
# Toss retries a failed webhook 7 times after 1, 4, 16, 64, 256, 1024, 4096 minutes (REFERENCE §7).
DEFAULT_WEBHOOK_RETRY_DELAYS: tuple[float, ...] = tuple(m * 60.0 for m in (1, 4, 16, 64, 256, 1024, 4096))
DEFAULT_MID = "tvivarepublica"
API_VERSION = "2022-11-16"

HMAC_ENCODINGS = ("hex", "ascii")


@dataclass
class SandboxSettings:
    """Everything that can be configured. Mutable at run time through ``POST /sandbox/config``."""

    secret_keys: list[str] = field(default_factory=lambda: list(DEFAULT_SECRET_KEYS))
    security_key: str = DEFAULT_SECURITY_KEY
    webhook_url: str | None = None
    webhook_retry_delays: list[float] = field(default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_DELAYS))
    webhook_hmac_encoding: str = "hex"
    webhook_timeout_seconds: float = 10.0
    confirm_window_seconds: float = 600.0
    seed: int | None = None
    mid: str = DEFAULT_MID
    # Idempotency keys are remembered for 15 days of sandbox time (REFERENCE §5).
    idempotency_ttl_seconds: float = 15 * 24 * 3600.0
    # Whether a 5xx answer is bound to its Idempotency-Key like any other answer (UNCONFIRMED: Toss's English docs
    # say errors are replayed; a 5xx replay is not observed). False: the key is released, a retry is processed.
    idempotency_bind_5xx: bool = False
    # Payouts: money that can be paid out right now, and an optional automatic completion of payouts.
    available_balance: int = 1_000_000_000
    pending_balance: int = 0
    payout_auto_complete_seconds: float | None = None
    # PARTIALLY_APPROVED sellers may receive this much per 7 days before they fall into KYC_REQUIRED.
    partially_approved_weekly_limit: int = 10_000_000
    # [3P] says refSellerId is 1-20 chars (UNCONFIRMED); keep it configurable.
    ref_seller_id_max_length: int = 20
    # [3P-live]: cancelling the rest after partial cancels leaves PARTIAL_CANCELED with balance 0.
    rest_cancel_status: str = "PARTIAL_CANCELED"
    # DESIGN §5a: "two cancels of one paymentKey within a second: Toss processes only the first".
    # 0 disables the check; when > 0 a second cancel inside the window gets 403 FORBIDDEN_CONSECUTIVE_REQUEST.
    consecutive_cancel_window_seconds: float = 0.0
    # A Payment that does not validate against the schema is a sandbox bug: answer 500 and log it.
    strict_schema: bool = True
    # Optional path of the full Core API OpenAPI file; default is the vendored extract in toss_sandbox/data.
    openapi_path: str | None = None
    verbose: bool = False

    def copy(self) -> SandboxSettings:
        return dataclasses.replace(
            self,
            secret_keys=list(self.secret_keys),
            webhook_retry_delays=list(self.webhook_retry_delays),
        )

    def validate(self) -> None:
        key = self.security_key
        if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
            raise ValueError("security_key must be 64 hex characters")
        if self.webhook_hmac_encoding not in HMAC_ENCODINGS:
            raise ValueError(f"webhook_hmac_encoding must be one of {HMAC_ENCODINGS}")
        if not self.secret_keys:
            raise ValueError("at least one secret key is required")
        if any(d < 0 for d in self.webhook_retry_delays):
            raise ValueError("webhook_retry_delays must be >= 0")
        if self.rest_cancel_status not in ("PARTIAL_CANCELED", "CANCELED"):
            raise ValueError("rest_cancel_status must be PARTIAL_CANCELED or CANCELED")

    def public_view(self) -> dict[str, Any]:
        """Settings as JSON for ``GET /sandbox/config``."""
        return dataclasses.asdict(self)


# Fields that may be changed at run time through POST /sandbox/config (host/port/seed are fixed at start).
RUNTIME_MUTABLE_FIELDS = frozenset(
    f.name for f in dataclasses.fields(SandboxSettings) if f.name not in ("seed", "openapi_path")
)


def build_settings(**overrides: Any) -> SandboxSettings:
    """Create settings from keyword overrides; unknown names raise TypeError."""
    names = {f.name for f in dataclasses.fields(SandboxSettings)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown sandbox settings: {sorted(unknown)}")
    settings = SandboxSettings(**overrides)
    settings.secret_keys = list(settings.secret_keys)
    settings.webhook_retry_delays = [float(d) for d in settings.webhook_retry_delays]
    settings.validate()
    return settings
