"""Toss Payments client (Core API v1 and payouts v2), typed models and errors."""

from escrow.toss.errors import TossApiError, TossConnectionError, TossError, TossTimeout
from escrow.toss.models import Cancel, Payment

__all__ = ["Cancel", "Payment", "TossApiError", "TossConnectionError", "TossError", "TossTimeout"]
