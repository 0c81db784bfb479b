"""What an operator may do to money by hand (the console, `python -m escrow.ops`), each step checked and recorded.

Every action gets a row in `operator_actions` with the operator's name and reason, and a log line. The actions go
through the same services as the API, the webhook and the schedule; none of them bypasses a rule:

* `retry_payout`: a payout that ended `failed` goes back to `scheduled` (a checked transition, states.py), in the
  same transaction as its record. The next scheduled run sends it as a new attempt (a new Idempotency-Key,
  `payout-{settlement}-{attempt}`). If Toss had created a payout for it, Toss must say FAILED now (a GET), and the
  retry gets a new refPayoutId, since Toss refuses a refPayoutId it has seen (DUPLICATED_REF_PAYOUT_ID).
* `replay_webhook`: a logged delivery goes through `webhooks.receive` again, exactly as Toss's delivery would:
  verification still applies (see REPLAY_MEANING), a processed event is a duplicate, and the replay is logged as a
  delivery of its own (user-agent `escrow-ops/replay-of-{id}/action-{action}`).
* `run_job`: one of the scheduled jobs through `jobs.run_scheduled`, the code the schedule runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from escrow import db
from escrow.errors import Conflict, NotFound, UpstreamUnavailable, ValidationFailed
from escrow.observability import logger
from escrow.repositories import operator_actions as actions_repo
from escrow.repositories import ops as ops_repo
from escrow.repositories import settlements as settlements_repo
from escrow.states import check_operator_payout
from escrow.toss import TossApiError, TossError
from escrow.toss.client import TossClient, get_toss_client

# What replaying a logged delivery means, per event type (the console prints it before it asks to go on).
REPLAY_MEANING: dict[str, str] = {
    "PAYMENT_STATUS_CHANGED": (
        "unsigned: the body is only a trigger. The payment is fetched from Toss again (GET by paymentKey or orderId) "
        "and Toss's state now is applied, as the reconciliation would. Safe at any time; a delivery that was "
        "processed before is a duplicate and changes nothing."
    ),
    "DEPOSIT_CALLBACK": (
        "checked against the secret we stored for the order; if it matches, the payment is fetched from Toss by "
        "orderId and Toss's state now is applied. A wrong secret stays rejected."
    ),
    "payout.changed": (
        "signed: the HMAC signature must verify with the current security key, and the transmission time must have "
        "been fresh when we first received it (a stale delivery stays rejected). The console first checks that "
        "Toss still reports the payout's status as the delivery says; then COMPLETED or FAILED closes the settlement."
    ),
    "seller.changed": (
        "signed, verified as payout.changed. The store's seller status becomes the delivery's, so the console first "
        "checks that Toss still reports that status (an older delivery must not undo a newer change)."
    ),
}
OTHER_EVENTS_MEANING = "not an event we act on: it is logged as ignored again."

# What the webhook function answers 200 (webhooks.Result values): the delivery is done with.
ACCEPTED_RESULTS = ("processed", "duplicate", "ignored")

MONEY_JOBS = ("reconcile_payments", "reconcile_cancels", "expire", "release", "payouts", "all")


def _need(operator: str, reason: str) -> tuple[str, str]:
    operator, reason = operator.strip(), reason.strip()
    if not operator:
        raise ValidationFailed("the operator's name is required", code="OPERATOR_REQUIRED")
    if not reason:
        raise ValidationFailed("say why (a reason is recorded with the action)", code="REASON_REQUIRED")
    return operator, reason


def _logged(action: str, action_id: int, operator: str, target: str, reason: str, status: str) -> None:
    logger.info(
        "operator action",
        extra={
            "operator_action_id": action_id,
            "operator_action": action,
            "operator": operator,
            "target": target,
            "reason": reason,
            "status": status,
        },
    )


# --- payouts ------------------------------------------------------------------------------------------------


def retry_payout(settlement_id: int, *, operator: str, reason: str, toss: TossClient | None = None) -> dict[str, Any]:
    """Put a failed payout back to `scheduled` for the next scheduled run. Returns what changed."""
    operator, reason = _need(operator, reason)
    with db.reader() as tx:
        before = ops_repo.settlement(tx, settlement_id)
    if before is None:
        raise NotFound(f"no settlement {settlement_id}", code="SETTLEMENT_NOT_FOUND")
    check_operator_payout(before["payout_status"], "scheduled")
    toss_status = None
    if before["payout_id"]:
        # Toss created a payout under this refPayoutId: only a payout Toss itself reports FAILED may be made again.
        toss = toss or get_toss_client()
        try:
            toss_status = str(toss.get_payout(before["payout_id"]).get("status") or "")
        except TossApiError as exc:
            raise UpstreamUnavailable(
                f"Toss did not show payout {before['payout_id']} ({exc.code}); nothing was changed"
            ) from exc
        except TossError as exc:
            raise UpstreamUnavailable("Toss did not answer; nothing was changed, try again") from exc
        if toss_status != "FAILED":
            raise Conflict(
                f"Toss reports payout {before['payout_id']} as {toss_status or 'unknown'}, not FAILED: paying it again "
                "could pay the store twice. Nothing was changed; compare with `escrow.ops room`.",
                code="PAYOUT_NOT_FAILED_AT_TOSS",
            )
    target = f"settlement:{settlement_id}"
    with db.transaction() as tx:
        s = settlements_repo.lock(tx, settlement_id)
        assert s is not None
        if s["payout_status"] != before["payout_status"] or s["payout_id"] != before["payout_id"]:
            raise Conflict("the payout changed while we looked at it; nothing was changed, look again", code="CHANGED")
        check_operator_payout(s["payout_status"], "scheduled")
        new_ref = f"escrow-req-{s['payment_request_id']}-a{s['payout_attempts'] + 1}" if s["payout_id"] else None
        after = {
            "payout_status": "scheduled",
            "ref_payout_id": new_ref or s["ref_payout_id"],
            "payout_id": None,
            "next_attempt": s["payout_attempts"] + 1,
        }
        detail = {
            "before": {
                "payout_status": s["payout_status"],
                "payout_id": s["payout_id"],
                "ref_payout_id": s["ref_payout_id"],
                "payout_attempts": s["payout_attempts"],
                "payout_error_code": s["payout_error_code"],
                "payout_error_message": before["payout_error_message"],
            },
            "after": after,
            "toss_payout_status": toss_status,
        }
        action_id = actions_repo.record(
            tx, action="retry_payout", target=target, operator=operator, reason=reason, status="done", detail=detail
        )
        fields: dict[str, Any] = {
            "payout_id": None,
            "payout_lease_until": None,
            "payout_error_code": None,
            "payout_error_message": f"retried by {operator} (operator action {action_id}): {reason}"[:512],
        }
        if new_ref:
            fields["ref_payout_id"] = new_ref
        settlements_repo.reschedule_by_operator(tx, settlement_id, s["payout_status"], **fields)
    _logged("retry_payout", action_id, operator, target, reason, "done")
    return {
        "operator_action_id": action_id,
        "settlement_id": settlement_id,
        "payment_request_id": before["payment_request_id"],
        "chat_room_id": before["chat_room_id"],
        "net_amount": before["net_amount"],
        "seller_status": before["seller_status"],
        "toss_seller_id": before["toss_seller_id"],
        **detail,
    }


# --- webhooks -----------------------------------------------------------------------------------------------


def replay_meaning(event_type: str | None) -> str:
    return REPLAY_MEANING.get(event_type or "", OTHER_EVENTS_MEANING)


def _still_as_delivered(event_type: str, payload: dict[str, Any], toss: TossClient) -> str | None:
    """For a signed event: Toss's current status of the payout or seller, when it differs from the delivery's."""
    body = payload.get("entityBody")
    entity: dict[str, Any] = body if isinstance(body, dict) else {}
    entity_id, delivered = entity.get("id"), entity.get("status")
    if not isinstance(entity_id, str) or not entity_id:
        return None  # malformed: receive() rejects or ignores it as it would for Toss
    try:
        now = toss.get_payout(entity_id) if event_type == "payout.changed" else toss.get_seller(entity_id)
    except TossApiError as exc:
        if exc.status == 404:
            return f"Toss does not know {entity_id}"
        raise UpstreamUnavailable(f"Toss did not show {entity_id} ({exc.code}); nothing was replayed") from exc
    except TossError as exc:
        raise UpstreamUnavailable("Toss did not answer; nothing was replayed, try again") from exc
    current = now.get("status")
    return None if current == delivered else f"the delivery says {delivered}, Toss says {current} now"


def replay_webhook(webhook_id: int, *, operator: str, reason: str, toss: TossClient | None = None) -> dict[str, Any]:
    """Process a logged delivery again through the webhook service, with the same verification rules."""
    from escrow.services import webhooks  # the webhook service, as the webhook function uses it

    operator, reason = _need(operator, reason)
    with db.reader() as tx:
        row = ops_repo.webhook(tx, webhook_id)
        last_id = ops_repo.last_webhook_id(tx)
    if row is None:
        raise NotFound(f"no logged webhook delivery {webhook_id}", code="WEBHOOK_NOT_FOUND")
    raw = str(row["raw_body"]).encode("utf-8")
    headers: dict[str, str] = json.loads(row["headers"] or "{}")
    event_type = row["event_type"]
    if event_type in webhooks.SIGNED_EVENTS:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {}
        stale = _still_as_delivered(event_type, payload if isinstance(payload, dict) else {}, toss or get_toss_client())
        if stale:
            raise Conflict(
                f"not replayed: {stale}. Replaying would apply an outdated {event_type}.", code="DELIVERY_OUTDATED"
            )
    target = f"webhook:{webhook_id}"
    with db.transaction() as tx:
        action_id = actions_repo.start(
            tx,
            action="replay_webhook",
            target=target,
            operator=operator,
            reason=reason,
            detail={"event_type": event_type, "original_outcome": row["outcome"]},
        )
    marker = f"escrow-ops/replay-of-{webhook_id}/action-{action_id}"
    headers["user-agent"] = marker
    # Freshness of a signed delivery is judged at the time we first received it (a replay is not a new sending).
    received = row["received_at"].replace(tzinfo=UTC)
    try:
        outcome = webhooks.receive(headers, raw, toss=toss, now=received)
    except Exception as exc:
        with db.transaction() as tx:
            actions_repo.finish(tx, action_id, status="failed", detail={"error": f"{type(exc).__name__}: {exc}"[:500]})
        _logged("replay_webhook", action_id, operator, target, reason, "failed")
        raise
    with db.reader() as tx:
        logged = ops_repo.webhook_by_user_agent(tx, marker, last_id)
    status = (
        "done"
        if outcome.result in ACCEPTED_RESULTS
        else "failed"
        if outcome.result is webhooks.Result.RETRY_LATER
        else "refused"
    )
    result = {
        "operator_action_id": action_id,
        "webhook_id": webhook_id,
        "event_type": event_type,
        "meaning": replay_meaning(event_type),
        "result": outcome.result.value,
        "reason": outcome.reason,
        "replay_webhook_id": logged["id"] if logged else None,
        "verification": logged["verification"] if logged else None,
        "outcome": logged["outcome"] if logged else None,
        "detail": logged["detail"] if logged else None,
    }
    with db.transaction() as tx:
        actions_repo.finish(tx, action_id, status=status, detail=result)
    _logged("replay_webhook", action_id, operator, target, reason, status)
    return result


# --- scheduled jobs -----------------------------------------------------------------------------------------

RUN_BUDGET_MS = 900_000  # a scheduled run's time (the release function's timeout)


def job_names() -> tuple[str, ...]:
    from escrow.services import jobs

    return (*jobs.DEFAULT_JOBS, *jobs.OPTIONAL_JOBS, "all")


def run_job(
    name: str,
    *,
    operator: str,
    reason: str,
    toss: TossClient | None = None,
    publisher: Any = None,
    budget_ms: int = RUN_BUDGET_MS,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run one scheduled job (or all of them) now, through the schedule's own code, and record it."""
    from escrow.services import jobs

    operator, reason = _need(operator, reason)
    if name not in job_names():
        raise ValidationFailed(f"unknown job {name!r}; one of {', '.join(job_names())}", code="UNKNOWN_JOB")
    target = f"job:{name}"
    with db.transaction() as tx:
        action_id = actions_repo.start(
            tx, action="run_job", target=target, operator=operator, reason=reason, detail={"job": name}
        )
    _logged("run_job", action_id, operator, target, reason, "started")
    started = clock()
    try:
        report = jobs.run_scheduled(
            remaining_ms=lambda: budget_ms - int((clock() - started) * 1000),
            toss=toss,
            publisher=publisher,
            jobs="all" if name == "all" else [name],
        )
    except Exception as exc:
        with db.transaction() as tx:
            actions_repo.finish(tx, action_id, status="failed", detail={"error": f"{type(exc).__name__}: {exc}"[:500]})
        _logged("run_job", action_id, operator, target, reason, "failed")
        raise
    with db.transaction() as tx:
        actions_repo.finish(tx, action_id, status="done", detail={"job": name, "report": report})
    _logged("run_job", action_id, operator, target, reason, "done")
    return {"operator_action_id": action_id, "job": name, "report": report}
