"""One error model: every failure a client can act on has a stable code and an HTTP status."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error that becomes an HTTP answer `{"error": {"code", "message", ...}}`."""

    status: int = 400
    code: str = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = {k: v for k, v in extra.items() if v is not None}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(AppError):
    status, code = 400, "BAD_REQUEST"


class ValidationFailed(AppError):
    status, code = 422, "VALIDATION_ERROR"


class Unauthorized(AppError):
    status, code = 401, "UNAUTHORIZED"


class Forbidden(AppError):
    status, code = 403, "FORBIDDEN"


class NotFound(AppError):
    status, code = 404, "NOT_FOUND"


class Conflict(AppError):
    status, code = 409, "CONFLICT"


class PayloadTooLarge(AppError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class PaymentDeclined(AppError):
    """Toss refused the payment; `toss_code` carries Toss's own code. The payer may pay again with a new order."""

    status, code = 402, "PAYMENT_DECLINED"


class PaymentOutcomeUnknown(AppError):
    """Toss did not give a definite answer; the payment is `unknown` until reconciliation settles it."""

    status, code = 502, "PAYMENT_OUTCOME_UNKNOWN"


class UpstreamUnavailable(AppError):
    status, code = 503, "TOSS_UNAVAILABLE"


class DatabaseUnavailable(AppError):
    status, code = 503, "DATABASE_UNAVAILABLE"


class NotImplementedYet(AppError):
    status, code = 501, "NOT_IMPLEMENTED"


class SecretsUnavailable(AppError):
    """Secrets Manager (through the Parameters and Secrets extension) did not give a secret: nothing was done."""

    status, code = 503, "SECRETS_UNAVAILABLE"
