"""Settings of one sandbox instance (constructor keywords of ``start_sandbox`` and CLI flags)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

# The two public test secret keys printed in Toss's docs [DOC https://docs.tosspayments.com/guides/using-api,
# https://docs.tosspayments.com/reference/using-api/authorization]: the API individual key and the
# payment-widget key. Both are accepted by default.
DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R",
    "test_gsk_docs_OaPz8L5KdmQXkzRz3y47BMw6",
)
# 64 hex characters, used for payout JWE (hex-decoded) and webhook HMAC. Not a real key.
DEFAULT_SECURITY_KEY = "5f2b1c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c"
# Toss retries a failed webhook 7 times after 1, 4, 16, 64, 256, 1024, 4096 minutes
# [DOC https://docs.tosspayments.com/guides/v2/webhook].
DEFAULT_WEBHOOK_RETRY_DELAYS: tuple[float, ...] = tuple(m * 60.0 for m in (1, 4, 16, 64, 256, 1024, 4096))
DEFAULT_MID = "tvivarepublica"
API_VERSION = "2022-11-16"

HMAC_ENCODINGS = ("hex", "ascii")
_CODE_RE = re.compile(r"^[A-Z0-9_]{1,100}$")
WEBHOOK_EVENT_TYPES = ("PAYMENT_STATUS_CHANGED", "DEPOSIT_CALLBACK", "payout.changed", "seller.changed")
DAY = 24 * 3600.0


@dataclass
class SandboxSettings:
    """Everything that can be configured. Mutable at run time through ``POST /sandbox/config``.

    Defaults play Toss as documented; where Toss's behaviour is unknown the default is the stricter of the two
    behaviours (the one a wrong client fails against), marked UNCONFIRMED. ``docs/toss-behaviours.md`` lists
    every setting with its source.
    """

    secret_keys: list[str] = field(default_factory=lambda: list(DEFAULT_SECRET_KEYS))
    security_key: str = DEFAULT_SECURITY_KEY
    webhook_url: str | None = None
    webhook_retry_delays: list[float] = field(default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_DELAYS))
    webhook_hmac_encoding: str = "hex"
    webhook_timeout_seconds: float = 10.0
    # Whether a retry repeats the first attempt's tosspayments-webhook-transmission-time (and so its signature):
    # UNCONFIRMED. Toss retries for about 4 days (https://docs.tosspayments.com/guides/v2/webhook [DOC]); a
    # receiver with a short freshness window rejects every late retry if the time is repeated. Default True,
    # the behaviour a freshness-window receiver fails against; False = a new time (and signature) per attempt.
    webhook_retry_same_headers: bool = True
    # Event types registered in the developer center (a webhook is sent only for these)
    # [DOC https://docs.tosspayments.com/guides/v2/webhook: registration per event type]. With both
    # PAYMENT_STATUS_CHANGED and DEPOSIT_CALLBACK, virtual-account changes arrive twice.
    webhook_event_types: list[str] = field(default_factory=lambda: list(WEBHOOK_EVENT_TYPES))
    confirm_window_seconds: float = 600.0
    seed: int | None = None
    mid: str = DEFAULT_MID
    # Idempotency keys are remembered for 15 days of sandbox time
    # [DOC https://docs.tosspayments.com/reference/using-api/idempotency-key].
    idempotency_ttl_seconds: float = 15 * DAY
    # Toss replays the first answer for a key, "even in the case of an error"
    # [DOC https://docs.tosspayments.com/en/api-guide]; 4xx replays observed [3P-live]. Whether a 5xx answer is
    # bound too is not observed: True (default) = bound like every answer (the English docs), False = a 5xx
    # releases the key and a retry with it is processed. 4xx answers are always bound.
    idempotency_bind_5xx: bool = True
    # Payout balances [DOC https://docs.tosspayments.com/reference/additional]: sales become pendingAmount and,
    # after the settlement cycle, availableAmount, which is all a payout may take. The cycle is contract-specific
    # (UNCONFIRMED D+N): a sale enters pendingAmount ``pending_after_seconds`` after its approval and becomes
    # available ``settlement_delay_seconds`` after its approval (sandbox clock).
    available_balance: int = 0
    pending_balance: int = 0
    pending_after_seconds: float = 0.0
    settlement_delay_seconds: float = 2 * DAY
    # A virtual account's deposit window: its dueDate is this long after it is issued. Toss's default is 7 days
    # and merchants may set it (``validHours``/``dueDate`` when the account is requested); after it the payment
    # stays WAITING_FOR_DEPOSIT with ``virtualAccount.expired`` true, no webhook, and a deposit is refused.
    virtual_account_valid_seconds: float = 7 * DAY
    # The refusal of a payout above availableAmount. Toss's full error list has 400 NOT_ENOUGH_AMOUNT
    # "지급가능한 금액을 초과했습니다." [DOC https://docs.tosspayments.com/reference/error-codes, 전체 에러 목록];
    # that v2 POST /v2/payouts answers exactly this code is UNCONFIRMED (its per-endpoint table does not render).
    payout_insufficient_balance_code: str = "NOT_ENOUGH_AMOUNT"
    payout_insufficient_balance_status: int = 400
    payout_auto_complete_seconds: float | None = None
    # PARTIALLY_APPROVED sellers may receive this much per 7 days before they fall into KYC_REQUIRED
    # [TC https://techchat.tosspayments.com/m/1461347481341132882; DOC https://docs.tosspayments.com/guides/v2/payouts].
    partially_approved_weekly_limit: int = 10_000_000
    # [3P] says refSellerId is 1-20 chars (UNCONFIRMED); keep it configurable.
    ref_seller_id_max_length: int = 20
    # Seller account.bankCode: "standard" = 3-digit KFTC codes (Toss's seller.changed example "092", a techchat
    # registration "004"), "toss" = Toss's 2-digit codes (a third-party SDK comment). UNCONFIRMED; see banks.py.
    seller_bank_code_table: str = "standard"
    # The refusal of an unknown seller bankCode: UNCONFIRMED (INVALID_BANK 400 is Toss's code for an invalid bank
    # in the error list, https://docs.tosspayments.com/reference/error-codes).
    seller_invalid_bank_code: str = "INVALID_BANK"
    # A deposited virtual-account payment cancelled without refundReceiveAccount: the code is UNCONFIRMED
    # (refundReceiveAccount is mandatory after deposit [3P-live summary of
    # https://docs.tosspayments.com/guides/v2/cancel-payment]; INVALID_REFUND_ACCOUNT_INFO is the refund-account
    # error of the cancel table).
    refund_account_missing_code: str = "INVALID_REFUND_ACCOUNT_INFO"
    # [3P-live]: cancelling the rest after partial cancels leaves PARTIAL_CANCELED with balance 0.
    rest_cancel_status: str = "PARTIAL_CANCELED"
    # Two cancels of one paymentKey in quick succession: 403 FORBIDDEN_CONSECUTIVE_REQUEST
    # [DOC https://docs.tosspayments.com/reference/error-codes]; the window is unknown. 0 disables the check.
    consecutive_cancel_window_seconds: float = 0.0
    # v2 (payout/seller) error bodies: "v2" = the v2 envelope with "error" {code, message}
    # [TC https://techchat.tosspayments.com/m/1461347481341132882]; "v1" = a bare {code, message}, so that a client
    # can be tested against a v2 error in v1 shape (UNCONFIRMED that Toss ever answers so; issue 8 item 8).
    v2_error_shape: str = "v2"
    # entityBody of POST /v2/payouts: "items" = {"items": [payout, ...]} ([3P] reads entityBody.items[]);
    # "list" = a bare JSON array [payout, ...]. UNCONFIRMED which one Toss answers.
    payout_entity_body: str = "items"
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
            webhook_event_types=list(self.webhook_event_types),
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
        unknown_events = set(self.webhook_event_types) - set(WEBHOOK_EVENT_TYPES)
        if unknown_events:
            raise ValueError(f"webhook_event_types must be among {WEBHOOK_EVENT_TYPES}")
        for name in ("pending_after_seconds", "settlement_delay_seconds", "virtual_account_valid_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.pending_after_seconds > self.settlement_delay_seconds:
            raise ValueError("pending_after_seconds must not exceed settlement_delay_seconds")
        for name in ("available_balance", "pending_balance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number of KRW")
        if not _CODE_RE.match(self.payout_insufficient_balance_code or ""):
            raise ValueError("payout_insufficient_balance_code must be an error code ([A-Z0-9_]+)")
        if not _CODE_RE.match(self.seller_invalid_bank_code or ""):
            raise ValueError("seller_invalid_bank_code must be an error code ([A-Z0-9_]+)")
        if not _CODE_RE.match(self.refund_account_missing_code or ""):
            raise ValueError("refund_account_missing_code must be an error code ([A-Z0-9_]+)")
        if not 400 <= self.payout_insufficient_balance_status <= 599:
            raise ValueError("payout_insufficient_balance_status must be an HTTP error status")
        if self.seller_bank_code_table not in ("standard", "toss"):
            raise ValueError("seller_bank_code_table must be 'standard' or 'toss'")
        if self.v2_error_shape not in ("v2", "v1"):
            raise ValueError("v2_error_shape must be 'v2' or 'v1'")
        if self.payout_entity_body not in ("items", "list"):
            raise ValueError("payout_entity_body must be 'items' or 'list'")

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
    settings.webhook_event_types = list(settings.webhook_event_types)
    settings.validate()
    return settings
