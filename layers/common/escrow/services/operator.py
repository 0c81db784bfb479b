"""What an operator may do to money by hand (the console, `python -m escrow.ops`), each step checked and recorded.

Every action gets a row in `operator_actions` with the operator's name and reason, and a log line. The actions go
through the same services as the API, the webhook and the schedule; none of them bypasses a rule:

* `retry_payout`: a payout that ended `failed` goes back to `scheduled` (a checked transition, states.py), in the
  same transaction as its record. The next scheduled run sends it as a new attempt (a new Idempotency-Key,
  `payout-{settlement}-{attempt}`). If Toss had created a payout for it, Toss must say FAILED now (a GET), and the
  retry gets a new refPayoutId, since Toss refuses a refPayoutId it has seen (DUPLICATED_REF_PAYOUT_ID).
* `replay_webhook`: a logged delivery's subject (the payment, order, payout or seller it named, kept as a
  well-formed id) is asked of Toss again and Toss's state now is applied, through the same services the webhook
  uses. A delivery's body is never trusted, forged or not (and the log keeps bodies masked, or not at all for a
  delivery that did not verify), so a replay can only bring our rows to what Toss says (see REPLAY_MEANING).
* `run_job`: one of the scheduled jobs through `jobs.run_scheduled`, the code the schedule runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from escrow import db
from escrow.errors import Conflict, NotFound, UpstreamUnavailable, ValidationFailed
from escrow.observability import logger
from escrow.repositories import charges as charges_repo
from escrow.repositories import operator_actions as actions_repo
from escrow.repositories import ops as ops_repo
from escrow.repositories import settlements as settlements_repo
from escrow.states import check_operator_payout
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.port import TossPort

# What replaying a logged delivery means, per event type (the console prints it before it asks to go on).
REPLAY_MEANING: dict[str, str] = {
    "PAYMENT_STATUS_CHANGED": (
        "the payment the delivery named is fetched from Toss again (GET by paymentKey or orderId) and Toss's state "
        "now is applied, as the reconciliation would. Safe at any time: nothing in the delivery is believed."
    ),
    "DEPOSIT_CALLBACK": (
        "the order the delivery named is fetched from Toss again (GET by orderId) and Toss's state now is applied: "
        "a deposit counts only when Toss shows it. The delivery's secret is not kept in the log."
    ),
    "payout.changed": (
        "the payout the delivery named is fetched from Toss again; COMPLETED or FAILED there closes the settlement. "
        "What the delivery said is not believed (its signature cannot be checked again: the log keeps no raw body)."
    ),
    "seller.changed": (
        "the seller the delivery named is fetched from Toss again and its status now is recorded, so an old "
        "delivery cannot undo a newer change."
    ),
}
OTHER_EVENTS_MEANING = "not an event we act on, or a delivery that named nothing well formed: nothing to replay."

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


def retry_payout(settlement_id: int, *, operator: str, reason: str, toss: TossPort | None = None) -> dict[str, Any]:
    """Put a failed payout back to `scheduled` for the next scheduled run. Returns what changed."""
    operator, reason = _need(operator, reason)
    with db.reader() as tx:
        before = ops_repo.settlement(tx, settlement_id)
    if before is None:
        raise NotFound(f"no settlement {settlement_id}", code="SETTLEMENT_NOT_FOUND")
    check_operator_payout(before["payout_status"], "scheduled")
    with db.reader() as tx:
        reversed_ = charges_repo.released_but_taken_back(tx, int(before["payment_request_id"]))
    if reversed_:
        raise Conflict(
            f"Toss took back {len(reversed_)} released virtual-account deposit(s) of this request and they were not "
            "deposited again: paying out now would pay the store money we do not hold. Nothing was changed.",
            code="RELEASED_DEPOSIT_TAKEN_BACK",
        )
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
        new_ref = (
            settlements_repo.retry_ref_payout_id(s["payment_request_id"], s["payout_attempts"] + 1)
            if s["payout_id"]
            else None
        )
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


def replay_webhook(webhook_id: int, *, operator: str, reason: str, toss: TossPort | None = None) -> dict[str, Any]:
    """Ask Toss again about what a logged delivery named, and apply what Toss says now (see REPLAY_MEANING)."""
    from escrow.services import webhooks  # the webhook service, as the webhook function uses it

    operator, reason = _need(operator, reason)
    with db.reader() as tx:
        row = ops_repo.webhook(tx, webhook_id)
    if row is None:
        raise NotFound(f"no logged webhook delivery {webhook_id}", code="WEBHOOK_NOT_FOUND")
    event_type, subject = row["event_type"], row["subject"]
    target = f"webhook:{webhook_id}"
    with db.transaction() as tx:
        action_id = actions_repo.start(
            tx,
            action="replay_webhook",
            target=target,
            operator=operator,
            reason=reason,
            detail={"event_type": event_type, "subject": subject, "original_outcome": row["outcome"]},
        )
    result: dict[str, Any] = {
        "operator_action_id": action_id,
        "webhook_id": webhook_id,
        "event_type": event_type,
        "subject": subject,
        "meaning": replay_meaning(event_type),
        "original_verification": row["verification"],
        "original_outcome": row["outcome"],
    }
    if not subject:
        result.update(
            result="refused", detail="the delivery named no payment, order, payout or seller we can ask about"
        )
        status = "refused"
    else:
        try:
            applied = webhooks.apply_subject(subject, toss=toss)
        except TossApiError as exc:
            result.update(result="refused", detail=f"Toss answered {exc.status} {exc.code} for {subject}")
            status = "refused"
        except TossError as exc:
            with db.transaction() as tx:
                actions_repo.finish(tx, action_id, status="failed", detail={"error": type(exc).__name__})
            _logged("replay_webhook", action_id, operator, target, reason, "failed")
            raise UpstreamUnavailable("Toss did not answer; nothing was replayed, try again") from exc
        else:
            result.update(result="applied", detail=applied)
            status = "done"
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
    toss: TossPort | None = None,
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
