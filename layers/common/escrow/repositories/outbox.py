from __future__ import annotations

import json
from typing import Any

from escrow.db import Tx


def add(tx: Tx, *, event_type: str, aggregate_id: str | int, dedupe_key: str, payload: dict[str, Any]) -> bool:
    """Queue an event in the same transaction as the change it announces; a repeat (same dedupe key) is ignored."""
    inserted = tx.execute(
        "INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload) VALUES (%s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE id = id",
        (event_type, str(aggregate_id), dedupe_key, json.dumps(payload, ensure_ascii=False, default=str)),
    )
    return inserted == 1
