"""Unit tests are pure: no database, no Toss sandbox, no network. `pytest-socket` refuses every socket in this
directory (and only here), so a test that quietly reaches MariaDB or a server fails instead of passing slowly.
Toss is the in-memory fake (`tests/support/fake_toss.py`), time a fixed clock (`escrow.clock.FixedClock`)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.disable_socket)
