"""Placeholders for statements with a variable number of values. Only `%s` markers and column names written in
our code are formatted into SQL; every value goes in as a parameter."""

from __future__ import annotations

from collections.abc import Iterable, Sized


def marks(values: Sized) -> str:
    """`%s, %s, ...`, one per value (for `IN (...)`)."""
    return ", ".join(["%s"] * len(values))


def rows(n: int, width: int) -> str:
    """`(%s, ...), (%s, ...)`: n rows of `width` values (for a multi-row INSERT)."""
    row = "(" + ", ".join(["%s"] * width) + ")"
    return ", ".join([row] * n)


def assignments(columns: Iterable[str]) -> str:
    """`a = %s, b = %s` for the columns a caller sets (names from our code, never from input)."""
    return ", ".join(f"{name} = %s" for name in columns)


def in_order(statuses: Iterable[str]) -> list[str]:
    """A named set of statuses as parameters, in a fixed order (so the statement text is the same every time)."""
    return sorted(statuses)
