"""What operators did (table operator_actions): who, which action on what, why, and what came of it."""

from __future__ import annotations

import json
from typing import Any

from escrow.db import Row, Tx
from escrow.states import OPERATOR_ACTION, OperatorActionStatus


def start(tx: Tx, *, action: str, target: str, operator: str, reason: str, detail: dict[str, Any] | None = None) -> int:
    OPERATOR_ACTION.check_initial(OperatorActionStatus.STARTED)
    return tx.insert(
        "INSERT INTO operator_actions (action, target, operator, reason, status, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (action, target[:100], operator[:64], reason[:500], OperatorActionStatus.STARTED, _json(detail)),
    )


def record(tx: Tx, *, action: str, target: str, operator: str, reason: str, status: str, detail: dict[str, Any]) -> int:
    """An action whose outcome is known at once (its change is in the same transaction)."""
    OPERATOR_ACTION.check_initial(status)
    return tx.insert(
        "INSERT INTO operator_actions (action, target, operator, reason, status, detail, finished_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, NOW(3))",
        (action, target[:100], operator[:64], reason[:500], status, _json(detail)),
    )


def finish(tx: Tx, action_id: int, *, status: str, detail: dict[str, Any]) -> None:
    """A started action's outcome (once: the row is written only while it is still started)."""
    OPERATOR_ACTION.check(OperatorActionStatus.STARTED, status)
    tx.execute(
        "UPDATE operator_actions SET status = %s, detail = %s, finished_at = NOW(3) WHERE id = %s AND status = %s",
        (status, _json(detail), action_id, OperatorActionStatus.STARTED),
    )


def for_target(tx: Tx, target: str) -> list[Row]:
    return tx.all(
        "SELECT id, action, target, operator, reason, status, detail, created_at, finished_at "
        "FROM operator_actions WHERE target = %s ORDER BY id",
        (target[:100],),
    )


def _json(detail: dict[str, Any] | None) -> str | None:
    return None if detail is None else json.dumps(detail, ensure_ascii=False, default=str)
