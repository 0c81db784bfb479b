"""Events (`outbox`): written in the same transaction as the change they announce, published by the schedule."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from escrow.db import Row, Tx
from escrow.repositories._sql import rows


@dataclass(frozen=True)
class Event:
    event_type: str
    aggregate_id: str | int
    dedupe_key: str
    payload: dict[str, Any]


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, default=str)


def add(tx: Tx, *, event_type: str, aggregate_id: str | int, dedupe_key: str, payload: dict[str, Any]) -> bool:
    """Queue an event in the same transaction as the change it announces; a repeat (same dedupe key) is ignored."""
    inserted = tx.execute(
        "INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload) VALUES (%s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE id = id",
        (event_type, str(aggregate_id), dedupe_key, _json(payload)),
    )
    return inserted == 1


def add_many(tx: Tx, events: Sequence[Event]) -> None:
    """Many events in one statement, each once (as `add` does)."""
    if not events:
        return
    tx.execute(
        f"INSERT INTO outbox (event_type, aggregate_id, dedupe_key, payload) VALUES {rows(len(events), 4)} "
        "ON DUPLICATE KEY UPDATE id = id",
        [v for e in events for v in (e.event_type, str(e.aggregate_id), e.dedupe_key, _json(e.payload))],
    )


def claim_unpublished(tx: Tx, limit: int) -> list[Row]:
    """The oldest unpublished events, locked; SKIP LOCKED: two runs at once take different rows."""
    return tx.all(
        "SELECT id, event_type, payload, created_at FROM outbox WHERE published_at IS NULL "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    )


def mark_published(tx: Tx, event_id: int) -> None:
    tx.execute("UPDATE outbox SET published_at = NOW(3), attempts = attempts + 1 WHERE id = %s", (event_id,))


def mark_not_accepted(tx: Tx, event_id: int) -> None:
    tx.execute("UPDATE outbox SET attempts = attempts + 1, last_error = 'not accepted' WHERE id = %s", (event_id,))
