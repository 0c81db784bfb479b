"""Rules of money that are arithmetic only (no I/O): the services and the audit compute them the same way."""

from __future__ import annotations


def platform_fee(gross: int, bps: int) -> int:
    return gross * bps // 10_000  # rounded down: the store never gets less than its share
