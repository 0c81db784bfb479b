"""Toss Payments client (Core API v1 and payouts v2), typed models and errors.

The pydantic models load on first use (`escrow.toss.models`), not with this package.
"""

from escrow.toss.errors import TossApiError, TossConnectionError, TossError, TossNotSent, TossTimeout

__all__ = ["TossApiError", "TossConnectionError", "TossError", "TossNotSent", "TossTimeout"]
