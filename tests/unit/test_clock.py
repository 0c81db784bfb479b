"""The clock port: services take `now` (escrow.clock.Clock); tests pin it with a FixedClock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from escrow.clock import FixedClock, db_time, iso


def test_a_fixed_clock_stands_still_until_moved():
    clock = FixedClock(datetime(2026, 3, 1, 0, 0, tzinfo=UTC))

    assert clock() == clock() == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    assert clock.advance(minutes=5) == datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    assert clock.advance(timedelta(days=1)) == clock() == datetime(2026, 3, 2, 0, 5, tzinfo=UTC)


def test_a_fixed_clock_tells_aware_time_and_never_goes_back():
    with pytest.raises(ValueError):
        FixedClock(datetime(2026, 3, 1))
    with pytest.raises(ValueError):
        FixedClock().advance(seconds=-1)


def test_database_times_are_naive_utc_and_answers_carry_the_offset():
    seoul = datetime.fromisoformat("2026-03-01T09:00:00+09:00")

    assert db_time(seoul) == datetime(2026, 3, 1, 0, 0)
    assert iso(db_time(seoul)) == "2026-03-01T00:00:00.000Z"
