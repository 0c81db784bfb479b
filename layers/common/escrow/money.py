"""Rules of money that are arithmetic only (no I/O): the services and the audit compute them the same way."""

from __future__ import annotations


def platform_fee(gross: int, bps: int) -> int:
    return gross * bps // 10_000  # rounded down: the store never gets less than its share


MIN_AMOUNT = 100  # KRW; Toss refuses tiny card payments (BELOW_MINIMUM_AMOUNT)
MAX_AMOUNT = 10_000_000  # KRW per participant; a deposit above this is a typo, not a booking
# Participants of one request. The settlement's gross must fit its INT UNSIGNED columns (2^32 - 1 KRW):
# MAX_PARTICIPANTS x MAX_AMOUNT = 1,000,000,000 does. A room may have more members; a request takes at most this many.
MAX_PARTICIPANTS = 100
assert MAX_PARTICIPANTS * MAX_AMOUNT < 2**32
