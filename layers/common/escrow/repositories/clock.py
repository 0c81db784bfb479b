from __future__ import annotations

from datetime import datetime

from escrow.db import Tx


def database_now(tx: Tx) -> datetime:
    """The database's clock (what `updated_at` is written in), to the millisecond."""
    row = tx.one("SELECT NOW(3) AS now")
    assert row is not None
    now: datetime = row["now"]
    return now
