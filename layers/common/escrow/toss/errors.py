"""Toss errors carry Toss's `code`, `message` and HTTP status. Retry decisions go by code, not by status
(docs/toss-behaviours.md: PROVIDER_ERROR is a 400 but transient)."""

from __future__ import annotations

# Transient: the same request may succeed later (with the same Idempotency-Key when no answer was received).
RETRYABLE_CODES = frozenset(
    {
        "PROVIDER_ERROR",
        "IDEMPOTENT_REQUEST_PROCESSING",
        "FAILED_INTERNAL_SYSTEM_PROCESSING",
        "FAILED_PAYMENT_INTERNAL_SYSTEM_PROCESSING",
        "UNKNOWN_PAYMENT_ERROR",
        "CARD_PROCESSING_ERROR",
        "COMMON_ERROR",
        "UNKNOWN_ERROR",
        "FORBIDDEN_CONSECUTIVE_REQUEST",
        "NOT_AVAILABLE_BANK",
        "FAILED_REFUND_PROCESS",
        "FAILED_METHOD_HANDLING_CANCEL",
        "FAILED_PARTIAL_REFUND",
    }
)

# The operation may or may not have happened: look the payment up before deciding anything.
OUTCOME_UNKNOWN_CODES = frozenset(
    {
        "ALREADY_PROCESSED_PAYMENT",
        "CARD_PROCESSING_ERROR",
        "FAILED_INTERNAL_SYSTEM_PROCESSING",
        "FAILED_PAYMENT_INTERNAL_SYSTEM_PROCESSING",
        "UNKNOWN_PAYMENT_ERROR",
        "COMMON_ERROR",
        "UNKNOWN_ERROR",
        "FAILED_REFUND_PROCESS",
        "FAILED_METHOD_HANDLING_CANCEL",
        "FAILED_PARTIAL_REFUND",
    }
)

# Our own configuration is wrong: never the payer's fault, never retried.
CONFIGURATION_CODES = frozenset(
    {
        "INVALID_API_KEY",
        "UNAUTHORIZED_KEY",
        "INCORRECT_BASIC_AUTH_FORMAT",
        "NOT_SUPPORTED_WIDGET_KEY",
        "INVALID_IDEMPOTENCY_KEY",
        "SECURITY_KEY_MISSING",  # ours: no security key configured for payouts v2 (nothing was sent)
    }
)


class TossError(Exception):
    """Base of everything the Toss client raises."""

    retryable = False
    outcome_unknown = False


def passes(code: str | None) -> bool:
    """A refusal that is not the payer's: Toss's passing trouble or our configuration. Asking again (with a new key:
    Toss replays an error for its key) may succeed."""
    return code in RETRYABLE_CODES or code in CONFIGURATION_CODES


class TossApiError(TossError):
    """An answer with an error, or an answer we could not read.

    `answered` is False when no answer of Toss's was read (an unreadable body, or a call we did not make: no
    security key): the operation may have happened, and a retry reuses its Idempotency-Key. True means Toss
    answered with `code`: that answer is bound to the key (for 15 days, 4xx surely and 5xx perhaps), so a new
    attempt needs a new key."""

    def __init__(self, status: int, code: str, message: str, *, answered: bool = True):
        super().__init__(f"Toss {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.answered = answered
        self.retryable = code in RETRYABLE_CODES or status >= 500 or status == 429
        self.outcome_unknown = code in OUTCOME_UNKNOWN_CODES or status >= 500
        self.configuration = code in CONFIGURATION_CODES


class TossTimeout(TossError):
    """No answer in time: the request may have been processed. Look it up; retry only with the same key."""

    retryable = True
    outcome_unknown = True


class TossConnectionError(TossError):
    """The connection could not be made: the request never reached Toss."""

    retryable = True
    outcome_unknown = False


class TossNotSent(TossConnectionError):
    """Not sent: too little of the invocation's time was left to wait for Toss's answer (escrow.deadline). Nothing
    reached Toss; the caller records what it knows (an outcome still unknown, a refund still pending) and answers."""
