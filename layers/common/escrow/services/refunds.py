"""Refunding held money through Toss: part or all of one charge (the brief's cancel by paymentKey), every charge of
a share (a participant removed), or every charge of a request (the owner cancels it, or it expires).

Each refund is a `payment_cancels` row written before Toss is called. Its Idempotency-Key is `cancel-{id}` for the
first attempt and `cancel-{id}-{attempt}` after: a refund is asked again with the same key only when no answer
arrived (Toss replays the first answer for a key, errors included, for 15 days), and with a new key after a Toss
answer with an error code. Every request to Toss carries `refundableAmount` (what we believe the charge still
holds), so an attempt with a new key can never refund on top of an earlier one Toss finished late: Toss refuses it
(NOT_MATCHES_REFUNDABLE_AMOUNT) and we look the payment up instead.

What Toss lists for a payment is recorded by `apply_cancels`, whoever learns it first (this request's answer, the
lookup after a lost answer, the webhook, the schedule): a refund transaction is given to the refund row that asked
for it (the one in flight for that charge), so an answer never says "nothing was refunded" for a refund Toss made,
and nobody is refunded more than they asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escrow import db
from escrow.clock import Clock, db_time, utcnow
from escrow.errors import AppError, Conflict, Forbidden, NotFound, UpstreamUnavailable, ValidationFailed
from escrow.money import MIN_AMOUNT
from escrow.observability import count, logger
from escrow.repositories import cancels as cancels_repo
from escrow.repositories import charges as charges_repo
from escrow.repositories import ledger
from escrow.repositories import outbox as outbox_repo
from escrow.repositories import payments as payments_repo
from escrow.repositories import requests as requests_repo
from escrow.services import refund_accounts, rooms
from escrow.services.funding import refresh_funding
from escrow.states import (
    CANCEL_IN_FLIGHT,
    CANCEL_OPEN,
    CONFIRMING,
    REFUND_RECORDABLE,
    CancelStatus,
    ChargeStatus,
    OrderStatus,
    PaymentStatus,
    RequestStatus,
    share_status_for,
)
from escrow.toss import TossApiError, TossError
from escrow.toss.client import get_toss_client
from escrow.toss.ids import toss_name
from escrow.toss.port import TossPort

if TYPE_CHECKING:
    from escrow.auth import Principal
    from escrow.deadline import Deadline
    from escrow.models import CancelBody, RefundReceiveAccountBody
    from escrow.toss.models import Cancel, Payment

# Toss refused the refund for a reason that passes: ask again later, with a new key (docs/toss-behaviours.md).
RETRY_LATER_CODES = frozenset(
    {"PROVIDER_ERROR", "FORBIDDEN_CONSECUTIVE_REQUEST", "NOT_AVAILABLE_BANK", "NOT_MATCHES_REFUNDABLE_AMOUNT"}
)
# Toss may already hold the refund we asked for: look before deciding.
_LOOK_FIRST_CODES = frozenset({"ALREADY_CANCELED_PAYMENT", "NOT_CANCELABLE_AMOUNT", "NOT_MATCHES_REFUNDABLE_AMOUNT"})
RETRY_BACKOFF = timedelta(minutes=5)
RETRY_BACKOFF_MAX = timedelta(hours=6)


def cancel_idempotency_key(cancel_id: int, attempt: int = 1) -> str:
    """The key of a refund row's attempt, with the stack prefix: the row id comes from a database sequence, so two
    stacks on one merchant id (or a rebuilt database) would otherwise send a key Toss holds for 15 days."""
    name = f"cancel-{cancel_id}" if attempt <= 1 else f"cancel-{cancel_id}-{attempt}"
    return toss_name(name)


def retry_at(attempt: int, now: Clock = utcnow) -> datetime | None:
    """When to ask again after the `attempt`-th refusal that passes: 5 min, 10, 20, ... at most 6 h."""
    delay = min(RETRY_BACKOFF * (2 ** max(attempt - 1, 0)), RETRY_BACKOFF_MAX)
    return db_time(now() + delay)


def _request_key(payment_key: str, actor: str, amount: int | None, reason: str, client_key: str | None) -> str:
    """Identical cancels (same charge, person, amount and reason, or the same Idempotency-Key header) are one."""
    if client_key:
        return "client:" + hashlib.sha256(f"{payment_key}|{client_key}".encode()).hexdigest()[:100]
    basis = f"{payment_key}|{actor}|{amount if amount is not None else 'all'}|{reason}"
    return "auto:" + hashlib.sha256(basis.encode()).hexdigest()[:100]


@dataclass(frozen=True)
class RefundOutcome:
    """What became of one refund row: done (Toss refunded it), unknown (no answer yet: the schedule asks again with
    the same key), failed (Toss refused for now: asked again later with a new key; nothing was refunded), refused
    (Toss refused for good), needs_account (a deposited virtual account and no refund account on file: nothing was
    refunded), account_refused (Toss refused the refund account sent: it is forgotten, nothing was refunded)."""

    status: str
    charge: dict[str, Any]
    code: str | None = None
    message: str | None = None


def _charge_answer(charge: dict[str, Any], refund_status: str | None = None) -> dict[str, Any]:
    balance = int(charge["amount"]) - int(charge["refunded_amount"])
    return {
        "success": True,
        "refund_status": refund_status or ("refunded" if balance == 0 else "partially_refunded"),
        "paymentKey": charge["payment_key"],
        "refunded_amount": int(charge["refunded_amount"]),
        "remaining_amount": balance,
    }


def _find_charge(payment_key: str) -> dict[str, Any]:
    """The charge's ids, read before its transaction begins (they never change). Read inside the transaction, this
    plain read took the transaction's snapshot before the row locks were granted, so the later plain reads (refunds
    in flight, Toss transactions already recorded) missed what a concurrent transaction had just committed: two
    cancels of one share at once both passed the in-flight guard and both went to Toss, and the loser then recorded
    the winner's Toss transaction a second time (duplicate key, a 500). A webhook racing a cancel is the same race."""
    with db.reader() as tx:
        found = charges_repo.find(tx, payment_key)
    if found is None:
        raise NotFound("no payment with this paymentKey", code="PAYMENT_NOT_FOUND")
    return found


def _lock(tx: db.Tx, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    request = requests_repo.lock(tx, found["payment_request_id"])
    share = payments_repo.lock(tx, found["payment_id"])
    charge = charges_repo.get(tx, found["payment_key"])
    assert request is not None and share is not None and charge is not None
    return request, share, charge


def cancel(
    principal: Principal,
    body: CancelBody,
    *,
    client_key: str | None = None,
    toss: TossPort | None = None,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """A cancel from the API. Its Toss calls fit in `deadline` (escrow.deadline): a refund there is no time left to
    ask or hear about is answered pending, and settled by the schedule."""
    if body.chat_room_id is not None:
        if body.refundReceiveAccount is not None:
            raise ValidationFailed(
                "a whole-request cancel takes no refund account: each payer gives their own with their paymentKey",
                code="REFUND_ACCOUNT_NOT_NEEDED",
                details=[{"field": "refundReceiveAccount", "message": "only with paymentKey"}],
            )
        return cancel_request(principal, body.chat_room_id, body.cancelReason, toss=toss, deadline=deadline)
    assert body.paymentKey is not None
    return cancel_share(
        principal,
        body.paymentKey,
        body.cancelReason,
        body.cancelAmount,
        client_key=client_key,
        toss=toss,
        deadline=deadline,
        refund_account=body.refundReceiveAccount,
    )


# --- one charge (the brief's cancel) -----------------------------------------------------------------------------


def cancel_share(
    principal: Principal,
    payment_key: str,
    reason: str,
    amount: int | None,
    *,
    client_key: str | None = None,
    toss: TossPort | None = None,
    deadline: Deadline | None = None,
    refund_account: RefundReceiveAccountBody | None = None,
) -> dict[str, Any]:
    found = _find_charge(payment_key)
    # The bank resolved (422 UNKNOWN_BANK) and the account sealed before anything is locked or written.
    account = refund_accounts.seal(refund_account, payment_key) if refund_account is not None else None
    with db.transaction() as tx:
        request, share, charge = _lock(tx, found)
        owner = rooms.current_owner(tx, request["chat_room_id"])
        if principal.user_id not in (share["payer_id"], owner) and not principal.is_admin:
            raise Forbidden("only the payer or the room's owner can cancel this payment", code="NOT_ALLOWED_TO_CANCEL")
        waiting = _resume_waiting(tx, principal, share, charge, account) if account is not None else None
        used = waiting is not None  # the account given is the one this refund sends
        if waiting is not None:
            cancel_id = waiting
        else:
            key = _request_key(payment_key, principal.user_id, amount, reason, client_key)
            existing = cancels_repo.find_by_key(tx, key)
            if existing is not None and existing["status"] == CancelStatus.DONE:
                return _charge_answer(charge)  # the same cancel again: the same answer, nothing more refunded
            if existing is not None and existing["status"] in CANCEL_IN_FLIGHT:
                cancel_id = existing["id"]  # no answer arrived earlier: ask again with the same key
            else:
                _check_refundable(share, charge, amount)
                _check_account(tx, principal, share, charge, account)
                mine = existing["id"] if existing is not None else None  # the same cancel asked again
                if [c for c in cancels_repo.in_flight_for_payment(tx, share["id"]) if c["id"] != mine]:
                    raise Conflict(
                        "another refund of this payment is in progress; try again shortly", code="REFUND_IN_PROGRESS"
                    )
                if account is not None:
                    refund_accounts.remember(tx, charge, account, given_by=principal.user_id)
                    used = True
                if existing is None:
                    cancel_id = cancels_repo.insert(
                        tx,
                        payment_id=share["id"],
                        request_id=request["id"],
                        payment_key=payment_key,
                        request_key=key,
                        requested_by=principal.user_id,
                        reason=reason,
                        amount=amount,
                    )
                else:  # refused earlier, for a reason that passes or not: a new attempt, with a new key
                    cancel_id = existing["id"]
                    cancels_repo.set_status(
                        tx,
                        cancel_id,
                        existing["status"],
                        CancelStatus.REQUESTED,
                        attempt=int(existing["attempt"]) + 1,
                        next_attempt_at=None,
                    )
    outcome = send_refund(cancel_id, toss=toss, deadline=deadline)
    shown = {"refund_account": refund_accounts.masked(account)} if account is not None and used else {}
    if outcome.status == "done":
        return {**_charge_answer(outcome.charge), **shown}
    if outcome.status == "failed":
        with db.reader() as tx:
            row = cancels_repo.get(tx, cancel_id)
        if row is not None and row["next_attempt_at"] is not None:
            # Refused for now, and the schedule asks again by itself (a refund we promised): the promise stands;
            # "nothing was refunded, try again" would invite a second cancel on top of one that will happen.
            outcome = RefundOutcome("unknown", outcome.charge, outcome.code, outcome.message)
    if outcome.status == "unknown":
        return {
            **_charge_answer(outcome.charge, "refund_pending"),
            **shown,
            "message": "Toss has not confirmed the refund yet; it is settled automatically. Do not ask again.",
        }
    if outcome.status == "failed":
        raise UpstreamUnavailable(
            "Toss did not refund the payment now; nothing was refunded, try again shortly",
            toss_code=outcome.code,
        )
    if outcome.status == "needs_account":
        raise _account_required(principal, share)
    if outcome.status == "account_refused":
        raise ValidationFailed(
            "Toss refused this refund account (check the bank, the number and the holder's name); nothing was "
            "refunded and the account was not kept: give the account again",
            code="REFUND_ACCOUNT_REFUSED",
            toss_code=outcome.code,
            details=[{"field": "refundReceiveAccount", "message": "refused by Toss"}],
        )
    raise Conflict(f"Toss refused the refund: {outcome.message}", code="REFUND_REFUSED", toss_code=outcome.code)


def _check_account(
    tx: db.Tx,
    principal: Principal,
    share: dict[str, Any],
    charge: dict[str, Any],
    account: refund_accounts.RefundAccount | None,
) -> None:
    """A refund account goes with a deposited virtual account's refund, from its payer, and only then."""
    if account is not None:
        _check_account_giver(principal, share, charge)
    elif refund_accounts.needs_account(charge) and not refund_accounts.on_file(tx, charge["payment_key"]):
        raise _account_required(principal, share)


def _check_account_giver(principal: Principal, share: dict[str, Any], charge: dict[str, Any]) -> None:
    if principal.user_id != share["payer_id"]:
        raise Forbidden(
            "only the payer can give the account their payment is refunded to", code="REFUND_ACCOUNT_PAYER_ONLY"
        )
    if not refund_accounts.needs_account(charge):
        raise ValidationFailed(
            "this payment is refunded by Toss to where it came from; a refund account is only for a deposited "
            "virtual-account payment",
            code="REFUND_ACCOUNT_NOT_NEEDED",
            details=[{"field": "refundReceiveAccount", "message": "not for this payment"}],
        )


def _account_required(principal: Principal, share: dict[str, Any]) -> ValidationFailed:
    message = (
        "this payment was deposited to a virtual account: Toss refunds it only to a bank account; give yours as "
        "refundReceiveAccount {bank, accountNumber, holderName}"
        if principal.user_id == share["payer_id"]
        else "this payment was deposited to a virtual account: only its payer can have it refunded, with the bank "
        "account it goes to"
    )
    return ValidationFailed(
        message,
        code="REFUND_ACCOUNT_REQUIRED",
        details=[{"field": "refundReceiveAccount", "message": "required for a deposited virtual-account payment"}],
    )


def _resume_waiting(
    tx: db.Tx,
    principal: Principal,
    share: dict[str, Any],
    charge: dict[str, Any],
    account: refund_accounts.RefundAccount,
) -> int | None:
    """The payer gave the account a refund the service owes them waits for (the request was cancelled or expired,
    they were removed): it goes to Toss now as a new attempt (a new Idempotency-Key), for what the charge holds
    (the body's cancelAmount does not apply to it). None: no refund of this charge waits for an account."""
    waiting = cancels_repo.waiting_for_account(tx, charge["payment_key"])
    if not waiting:
        return None
    _check_account_giver(principal, share, charge)
    refund_accounts.remember(tx, charge, account, given_by=principal.user_id)
    row = waiting[0]
    cancels_repo.set_status(
        tx, row["id"], row["status"], CancelStatus.REQUESTED, attempt=int(row["attempt"]) + 1, next_attempt_at=None
    )
    return int(row["id"])


def _check_refundable(share: dict[str, Any], charge: dict[str, Any], amount: int | None) -> None:
    if charge["status"] == ChargeStatus.RELEASED or share["status"] == PaymentStatus.RELEASED:
        raise Conflict("this payment was already released to the store and cannot be refunded", code="ALREADY_RELEASED")
    if charge["status"] == ChargeStatus.REFUNDED:
        raise Conflict("this payment was already refunded in full", code="ALREADY_REFUNDED")
    if charge["status"] != ChargeStatus.HELD:
        raise Conflict(f"only held payments can be refunded (this one is {charge['status']})", code="NOT_REFUNDABLE")
    if share["status"] in CONFIRMING:
        raise Conflict("a payment of this share is being confirmed; try again shortly", code="PAYMENT_IN_PROGRESS")
    remaining = int(charge["amount"]) - int(charge["refunded_amount"])
    if amount is not None and amount > remaining:
        raise ValidationFailed(
            f"cancelAmount is more than the remaining {remaining} KRW",
            code="CANCEL_AMOUNT_TOO_LARGE",
            details=[{"field": "cancelAmount", "message": f"at most {remaining}"}],
        )
    # What the payer would owe after this refund must be payable again: Toss refuses a payment under MIN_AMOUNT
    # (BELOW_MINIMUM_AMOUNT), so a refund that leaves 1-99 KRW owed would leave a share nobody can fill again.
    refund = remaining if amount is None else amount
    owed_after = int(share["amount"]) - (int(share["paid_amount"]) - int(share["refunded_amount"]) - refund)
    if 0 < owed_after < MIN_AMOUNT:
        raise ValidationFailed(
            f"this refund would leave {owed_after} KRW owed, which cannot be paid again (Toss takes at least "
            f"{MIN_AMOUNT} KRW); refund at least {refund + MIN_AMOUNT - owed_after} KRW",
            code="CANCEL_AMOUNT_BELOW_MINIMUM",
            details=[{"field": "cancelAmount", "message": f"leaves {owed_after} KRW owed; at least {MIN_AMOUNT}"}],
        )


# --- asking Toss, and recording what Toss holds ------------------------------------------------------------------


def send_refund(
    cancel_id: int, *, toss: TossPort | None = None, promised: bool = False, deadline: Deadline | None = None
) -> RefundOutcome:
    """Ask Toss for the refund of row `cancel_id` with its attempt's key, and record what Toss holds afterwards.
    `promised`: an earlier attempt of this row was answered "settled automatically" (its row went `unknown`).
    `deadline`: the invocation's, which every Toss call fits in (escrow.deadline)."""
    toss = toss or get_toss_client(deadline)
    with db.reader() as tx:
        row = cancels_repo.get(tx, cancel_id)
        assert row is not None and row["payment_key"]
        charge = charges_repo.get(tx, row["payment_key"])
    assert charge is not None
    if row["status"] == CancelStatus.DONE:
        return RefundOutcome("done", charge)
    balance = int(charge["amount"]) - int(charge["refunded_amount"])
    amount = row["requested_amount"]
    partial = amount is not None and amount < balance
    account = refund_accounts.for_refund(row["payment_key"]) if refund_accounts.needs_account(charge) else None
    if account is None and refund_accounts.needs_account(charge):
        return _waits_for_account(cancel_id, row, charge, None, sent=False)
    try:
        result = toss.cancel(
            row["payment_key"],
            row["reason"],
            idempotency_key=cancel_idempotency_key(cancel_id, int(row["attempt"])),
            amount=amount if partial else None,
            refundable_amount=balance,
            refund_account=account,
        )
    except TossApiError as exc:
        if exc.code in refund_accounts.ACCOUNT_CODES and not exc.outcome_unknown:
            return _waits_for_account(cancel_id, row, charge, exc, sent=account is not None)
        if exc.code == "IDEMPOTENT_REQUEST_PROCESSING":
            return _unknown(cancel_id, charge, exc)  # the same key still running at Toss: ask again, same key
        if exc.outcome_unknown or exc.code in _LOOK_FIRST_CODES:
            # An answer, but one that does not say whether the refund happened (5xx) or says the balance is not what
            # we thought: look. A refund Toss made is recorded; otherwise a new attempt (new key) comes later.
            looked = _look(cancel_id, row["payment_key"], toss)
            if looked is not None and looked.status == "done":
                return looked
            if looked is None:
                return _unknown(cancel_id, charge, exc)
            promised = promised or row["status"] == CancelStatus.UNKNOWN
            if exc.outcome_unknown and promised and _new_attempt(cancel_id, CancelStatus.UNKNOWN):
                # We promised this refund is settled automatically, and Toss replays the 5xx it first answered for
                # this key (errors are bound to a key for 15 days) while its record shows no refund: ask again now,
                # with a new key. A new key cannot refund twice: `refundableAmount` is what the charge still holds.
                return send_refund(cancel_id, toss=toss, promised=True)
        retry, automatic = refusal_retry(exc, str(row["request_key"]))
        automatic = automatic or (retry and promised)  # a promise is kept by the schedule, not by the payer
        with db.transaction() as tx:
            cancels_repo.set_status_if_open(
                tx,
                cancel_id,
                CancelStatus.FAILED,
                toss_code=exc.code,
                toss_message=exc.message[:500],
                next_attempt_at=retry_at(int(row["attempt"])) if automatic else None,
            )
        count("RefundsRefused")
        logger.warning(
            "refund refused by Toss", extra={"cancel_id": cancel_id, "toss_code": exc.code, "retry_later": retry}
        )
        return RefundOutcome("failed" if retry else "refused", charge, exc.code, exc.message)
    except TossError as exc:
        # No answer (timeout, broken connection): Toss may have refunded. Look; if that fails too, the schedule asks
        # again with the same key, which Toss answers with the first outcome.
        looked = _look(cancel_id, row["payment_key"], toss)
        return looked if looked is not None and looked.status == "done" else _unknown(cancel_id, charge, exc)
    applied = apply_cancels(result, cancel_id=cancel_id, actor="cancel")
    with db.reader() as tx:
        mine = cancels_repo.status(tx, cancel_id)
    assert applied is not None
    return RefundOutcome("done" if mine == CancelStatus.DONE else "unknown", applied)


def _waits_for_account(
    cancel_id: int, row: Mapping[str, Any], charge: dict[str, Any], exc: TossApiError | None, *, sent: bool
) -> RefundOutcome:
    """A deposited virtual account's refund with no usable refund account: none on file (Toss not asked), or Toss
    refused the one sent (`sent`; it is forgotten) or wanted one. Nothing was refunded. A refund the service owes the
    payer waits open in needs_account for the account only they can give (never failed); the payer's or owner's
    own cancel is failed with no next attempt: they were told why, and ask again with an account."""
    own = str(row["request_key"]).startswith(("auto:", "client:"))
    with db.transaction() as tx:
        request = requests_repo.lock(tx, row["payment_request_id"])
        share = payments_repo.lock(tx, row["payment_id"])
        assert request is not None and share is not None
        if sent:
            refund_accounts.forget(tx, row["payment_key"])
        waits = cancels_repo.set_status_if_open(
            tx,
            cancel_id,
            CancelStatus.FAILED if own else CancelStatus.NEEDS_ACCOUNT,
            toss_code=exc.code if exc is not None else "REFUND_ACCOUNT_REQUIRED",
            toss_message=(exc.message if exc is not None else "no refund account on file")[:500],
            next_attempt_at=None,
        )
        if waits and not own:  # the payer is told (through the chat service) that their refund waits for them
            outbox_repo.add(
                tx,
                event_type="RefundAccountNeeded",
                aggregate_id=request["id"],
                dedupe_key=f"RefundAccountNeeded:{cancel_id}:{row['attempt']}",
                payload={
                    "payment_request_id": request["id"],
                    "chat_room_id": request["chat_room_id"],
                    "payer_id": share["payer_id"],
                    "paymentKey": row["payment_key"],
                    "refund_amount": int(charge["amount"]) - int(charge["refunded_amount"]),
                    "account_refused": sent,
                },
            )
    count("RefundsWaitingForAccount")
    logger.warning(
        "refund waits for the payer's refund account",
        extra={"cancel_id": cancel_id, "toss_code": exc.code if exc is not None else None, "account_refused": sent},
    )
    return RefundOutcome(
        "account_refused" if sent else "needs_account", charge, exc.code if exc else None, exc.message if exc else None
    )


def refusal_retry(exc: TossApiError, request_key: str) -> tuple[bool, bool]:
    """What a refusal of refund row `request_key` means: (retry: the refusal passes, so asking again later may work;
    automatic: the schedule asks again by itself). The schedule asks again only for the refunds it owes (a cancelled
    or expired request, a removed participant: never silently left failed). A payer's or owner's own cancel
    (`auto:`/`client:` keys) is theirs to ask again: they were told that nothing was refunded, and a refund made
    later behind their back would not be what they asked for."""
    # Our configuration (a key Toss does not take) passes too, once an operator fixes it: never final.
    retry = exc.retryable or exc.code in RETRY_LATER_CODES or exc.outcome_unknown or exc.configuration
    return retry, retry and not request_key.startswith(("auto:", "client:"))


def retry_refused(cancel_id: int) -> None:
    """A refund Toss refused for a reason that passes, asked again: a new attempt, so a new Idempotency-Key."""
    _new_attempt(cancel_id, CancelStatus.FAILED)


def _new_attempt(cancel_id: int, from_status: CancelStatus) -> bool:
    """Move refund row `cancel_id` from `from_status` to a new attempt (requested, attempt + 1: a new key), under the
    locks every refund takes (request, then share). False when the row is no longer in `from_status`."""
    with db.transaction() as tx:
        row = cancels_repo.get(tx, cancel_id)
        if row is None or row["status"] != from_status:
            return False
        found = charges_repo.find(tx, row["payment_key"])
        assert found is not None
        requests_repo.lock(tx, found["payment_request_id"])
        payments_repo.lock(tx, found["payment_id"])
        row = cancels_repo.get(tx, cancel_id)
        if row is None or row["status"] != from_status:
            return False
        cancels_repo.set_status(
            tx, cancel_id, row["status"], CancelStatus.REQUESTED, attempt=int(row["attempt"]) + 1, next_attempt_at=None
        )
    return True


def _look(cancel_id: int, payment_key: str, toss: TossPort) -> RefundOutcome | None:
    """Toss's record of the payment, applied; None when Toss could not be asked."""
    try:
        payment = toss.get_payment(payment_key)
    except TossError:
        return None
    charge = apply_cancels(payment, cancel_id=cancel_id, actor="cancel")
    assert charge is not None
    with db.reader() as tx:
        mine = cancels_repo.status(tx, cancel_id)
    return RefundOutcome("done" if mine == CancelStatus.DONE else "not_at_toss", charge)


def _unknown(cancel_id: int, charge: dict[str, Any], cause: Exception) -> RefundOutcome:
    with db.transaction() as tx:
        cancels_repo.set_status_if_open(tx, cancel_id, CancelStatus.UNKNOWN, toss_message=str(cause)[:500])
    count("RefundsOutcomeUnknown")
    return RefundOutcome("unknown", charge)


def apply_cancels(payment: Payment, *, cancel_id: int | None, actor: str) -> dict[str, Any] | None:
    """Record every refund transaction Toss lists for this charge that we have not recorded yet. Returns the charge
    row afterwards (None for a payment that funds no share: a charge we refund as unexpected).

    A transaction goes to the refund row that asked for it: `cancel_id` when given, else the oldest refund of this
    charge still in flight (one asked of Toss whose answer we have not recorded: only one can be in flight per
    share), else a row of its own (a refund made outside our API, e.g. in Toss's dashboard)."""
    with db.reader() as tx:
        found = charges_repo.find(tx, payment.payment_key)  # before the transaction: see _find_charge
    if found is None:
        return None
    with db.transaction() as tx:
        request, share, charge = _lock(tx, found)
        if charge["status"] == ChargeStatus.WAITING_FOR_DEPOSIT and payment.status == "CANCELED":
            _account_closed(tx, share, charge, payment, cancel_id)
            after = charges_repo.get(tx, found["payment_key"])
            assert after is not None
            return after
        new = attribute_refunds(payment, cancels_repo.for_payment(tx, share["id"]), cancel_id)
        for entry, mine in new:
            if mine is not None:
                row_id, current = mine["id"], mine["status"]
            else:
                current = CancelStatus.REQUESTED
                row_id = cancels_repo.insert(
                    tx,
                    payment_id=share["id"],
                    request_id=request["id"],
                    payment_key=payment.payment_key,
                    request_key=f"toss:{entry.transaction_key}",
                    requested_by="toss",
                    reason=(entry.cancel_reason or "cancelled at Toss")[:200],
                    amount=entry.cancel_amount,
                )
            cancels_repo.set_status(
                tx,
                row_id,
                current,
                CancelStatus.DONE,
                transaction_key=entry.transaction_key,
                cancel_amount=entry.cancel_amount,
                canceled_at=db_time(utcnow()),
                next_attempt_at=None,
            )
            ledger.record(
                tx,
                request_id=request["id"],
                payment_id=share["id"],
                entry_type="refund",
                amount=entry.cancel_amount,
                reference=entry.transaction_key,
                actor=actor,
                reason=(entry.cancel_reason or "refund")[:200],
            )
        if new:
            _record_charge_refunds(tx, request, share, charge, payment)
        if any(mine is not None for _entry, mine in new) and refund_accounts.is_virtual_account(charge):
            # The refund that asked for it is done: the payer's refund account is not kept a moment longer.
            refund_accounts.forget(tx, found["payment_key"])
        after = charges_repo.get(tx, found["payment_key"])
    assert after is not None
    logger.info("refunds recorded", extra={"payment_id": share["id"], "new": len(new)})
    return after


def _account_closed(
    tx: db.Tx, share: dict[str, Any], charge: dict[str, Any], payment: Payment, cancel_id: int | None
) -> None:
    """Toss cancelled a virtual account before any deposit: no money moved (no ledger entry), the charge is closed,
    and the refund row that asked for it is done with nothing refunded."""
    charges_repo.set_status(tx, charge["payment_key"], charge["status"], ChargeStatus.CANCELLED, toss_status="CANCELED")
    entry = payment.cancels[-1] if payment.cancels else None
    rows = cancels_repo.for_payment(tx, share["id"])
    mine = next(
        (
            r
            for r in rows
            if r["payment_key"] == charge["payment_key"] and (r["id"] == cancel_id or r["status"] in CANCEL_IN_FLIGHT)
        ),
        None,
    )
    if mine is not None and mine["status"] != CancelStatus.DONE:
        cancels_repo.set_status(
            tx,
            mine["id"],
            mine["status"],
            CancelStatus.DONE,
            transaction_key=entry.transaction_key if entry else None,
            cancel_amount=0,
            canceled_at=db_time(utcnow()),
            next_attempt_at=None,
        )
    order = payments_repo.find_order(tx, charge["order_id"])
    if order is not None and order["status"] in (OrderStatus.IN_PROGRESS, OrderStatus.UNKNOWN):
        payments_repo.set_order_status(
            tx, charge["order_id"], order["status"], OrderStatus.FAILED, failure_code="VIRTUAL_ACCOUNT_CANCELLED"
        )
    fresh = payments_repo.lock(tx, share["id"])
    assert fresh is not None
    if fresh["status"] in CONFIRMING and fresh["order_id"] == charge["order_id"]:
        held = int(fresh["paid_amount"]) - int(fresh["refunded_amount"])
        target = share_status_for(held, int(fresh["amount"]), ever_paid=int(fresh["paid_amount"]) > 0)
        payments_repo.set_status(tx, fresh["id"], fresh["status"], target, failure_code="VIRTUAL_ACCOUNT_CANCELLED")


def attribute_refunds(
    payment: Payment, rows: Sequence[Mapping[str, Any]], cancel_id: int | None
) -> list[tuple[Cancel, Mapping[str, Any] | None]]:
    """Which refund row each refund transaction Toss lists for this charge, and we have not recorded yet, belongs to
    (None: a row of its own, for a refund made outside our API). `rows` are the share's refund rows. A transaction
    goes to a row waiting for an answer about this charge (in flight, or the caller's own row `cancel_id` just
    refused), the caller's row first, then the oldest; among them to one that asked for this amount (or for all
    that was left), else to the first. Pure: `apply_cancels` writes what it decides."""
    known = {r["transaction_key"] for r in rows if r["transaction_key"] is not None}
    new = [c for c in payment.cancels or [] if c.transaction_key not in known and (c.cancel_status or "DONE") == "DONE"]
    waiting = [
        r
        for r in rows
        if r["payment_key"] == payment.payment_key
        and (r["status"] in CANCEL_OPEN or (r["id"] == cancel_id and r["status"] == CancelStatus.FAILED))
    ]
    waiting.sort(key=lambda r: (r["id"] != cancel_id, r["id"]))
    attributed: list[tuple[Cancel, Mapping[str, Any] | None]] = []
    for entry in new:
        mine = next((r for r in waiting if _asked_for(r, entry.cancel_amount)), waiting[0] if waiting else None)
        if mine is not None:
            waiting.remove(mine)
        attributed.append((entry, mine))
    return attributed


def _asked_for(row: Mapping[str, Any], amount: int) -> bool:
    return row["requested_amount"] is None or int(row["requested_amount"]) == amount


def _record_charge_refunds(
    tx: db.Tx, request: dict[str, Any], share: dict[str, Any], charge: dict[str, Any], payment: Payment
) -> None:
    refunded = min(payment.refunded_amount, int(charge["amount"]))
    fully = payment.balance_amount == 0 or refunded >= int(charge["amount"])
    if charge["status"] == ChargeStatus.RELEASED:
        # Refunded at Toss after we released it (someone used Toss's dashboard): the store was paid from money the
        # payer got back. Recorded and alarmed; not for this service to undo.
        logger.error("a released charge was refunded at Toss", extra={"payment_request_id": request["id"]})
        count("ReleasedChargesRefunded")
        charges_repo.update_refunded(tx, charge["payment_key"], refunded)
        return
    target = ChargeStatus.REFUNDED if fully else ChargeStatus.HELD
    charges_repo.set_status(
        tx, charge["payment_key"], charge["status"], target, refunded_amount=refunded, toss_status=payment.status
    )
    payments_repo.refresh_amounts(tx, share["id"])
    fresh = payments_repo.lock(tx, share["id"])
    assert fresh is not None
    if fresh["status"] in REFUND_RECORDABLE and fresh["status"] != PaymentStatus.REMOVED:
        new_status = share_status_for(
            int(fresh["paid_amount"]) - int(fresh["refunded_amount"]), int(fresh["amount"]), ever_paid=True
        )
        payments_repo.set_status(tx, share["id"], fresh["status"], new_status, toss_status=payment.status)
    elif fresh["status"] == PaymentStatus.REMOVED:
        payments_repo.set_status(tx, share["id"], fresh["status"], PaymentStatus.REMOVED)
    outbox_repo.add(
        tx,
        event_type="PaymentRefunded",
        aggregate_id=request["id"],
        dedupe_key=f"PaymentRefunded:{charge['payment_key']}:{refunded}",
        payload={
            "payment_request_id": request["id"],
            "chat_room_id": request["chat_room_id"],
            "payer_id": share["payer_id"],
            "paymentKey": payment.payment_key,
            "paid_amount": int(fresh["paid_amount"]),
            "refunded_amount": refunded,
            "held_amount": int(fresh["paid_amount"]) - int(fresh["refunded_amount"]),
            "refund_status": "refunded" if fully else "partially_refunded",
        },
    )
    count("PaymentsRefunded")
    refresh_funding(tx, request, why="refund")


# --- every charge of a share or a request ------------------------------------------------------------------------


def cancel_request(
    principal: Principal,
    chat_room_id: int,
    reason: str,
    *,
    toss: TossPort | None = None,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """The room owner cancels the whole request: it closes at once, then every held charge is refunded.

    Asked again once the request is cancelled (a retry after a lost answer), the refunds the first call queued and
    could not finish are sent again with their own keys, and the answer is the cancelled request's refunds as they
    stand: the first outcome, never a 404."""
    with db.transaction() as tx:
        room = rooms.known_room(tx, chat_room_id)
        rooms.require_owner(principal, room, "cancel the whole request")
        request = requests_repo.lock_open_for_room(tx, chat_room_id)
        if request is None:
            latest = requests_repo.latest_for_room(tx, chat_room_id)
            if latest is None:
                raise NotFound("the room has no payment request", code="PAYMENT_REQUEST_NOT_FOUND")
            if latest["status"] != RequestStatus.CANCELLED:
                raise Conflict(
                    f"the request is {latest['status']} and cannot be cancelled",
                    code="REQUEST_CLOSED",
                    payment_request_status=latest["status"],
                )
            cancelled_id: int | None = latest["id"]
            targets = [
                {"cancel_id": c["id"], "payment_key": c["payment_key"]}
                for c in cancels_repo.for_request(tx, latest["id"])
                if c["status"] in CANCEL_IN_FLIGHT and c["payment_key"]
            ]
        else:
            cancelled_id = None
            targets = queue_refunds(tx, request["id"], actor=principal.user_id, reason=reason, tag="room-cancel")
            _close_cancelled(tx, request, principal, reason, refund_amount=sum(t["remaining"] for t in targets))
    results = refund_queued(targets, toss=toss, deadline=deadline)
    if cancelled_id is None:
        return _summary(results)
    with db.reader() as tx:
        return {**cancelled_summary(tx, cancelled_id), "already_cancelled": True}


def _close_cancelled(
    tx: db.Tx, request: dict[str, Any], principal: Principal, reason: str, *, refund_amount: int
) -> None:
    requests_repo.set_status(
        tx,
        request["id"],
        request["status"],
        RequestStatus.CANCELLED,
        closed_at=db_time(utcnow()),
        closed_by=principal.user_id,
        close_reason=reason,
    )
    outbox_repo.add(
        tx,
        event_type="PaymentRequestCancelled",
        aggregate_id=request["id"],
        dedupe_key=f"PaymentRequestCancelled:{request['id']}",
        payload={
            "payment_request_id": request["id"],
            "chat_room_id": request["chat_room_id"],
            "store_id": request["store_id"],
            "amount_per_participant": request["amount"],
            "participant_count": request["participant_count"],
            "refund_amount": refund_amount,
            "reason": reason,
            "cancelled_by": principal.user_id,
        },
    )
    if request["status"] == RequestStatus.COMPLETED:  # the store was told everyone paid: correct it
        outbox_repo.add(
            tx,
            event_type="EscrowUnfunded",
            aggregate_id=request["id"],
            dedupe_key=f"EscrowUnfunded:{request['id']}:{request['funding_round']}",
            payload={
                "payment_request_id": request["id"],
                "chat_room_id": request["chat_room_id"],
                "store_id": request["store_id"],
                "funding_round": request["funding_round"],
                "reason": "cancelled",
            },
        )


def cancelled_summary(tx: db.Tx, request_id: int) -> dict[str, Any]:
    """A cancelled request's refunds as they stand (the answer to a repeated cancel)."""
    waiting = {
        c["payment_key"] for c in cancels_repo.for_request(tx, request_id) if c["status"] == CancelStatus.NEEDS_ACCOUNT
    }

    def status(c: Mapping[str, Any]) -> str:
        if c["status"] == ChargeStatus.REFUNDED:
            return "refunded"
        if c["status"] == ChargeStatus.HELD:
            return "refund_account_needed" if c["payment_key"] in waiting else "refund_pending"
        return str(c["status"])

    results = [
        {"paymentKey": c["payment_key"], "refund_status": status(c), "refunded_amount": int(c["refunded_amount"])}
        for c in charges_repo.for_request(tx, request_id)
    ]
    for r in results:
        if r["refund_status"] == "refund_account_needed":
            r["refund_account_needed"] = True
    return _summary(results)


def queue_refunds(
    tx: db.Tx, request_id: int, *, actor: str, reason: str, tag: str, payment_id: int | None = None
) -> list[dict[str, Any]]:
    """Lock the request's shares (or the one share `payment_id`) and write one refund row for every charge that
    still holds money and has no refund in flight (keyed so a rerun writes none), in the caller's transaction (the
    one that closes the request or removes the participant). Send them with `refund_queued` after it commits."""
    shares = [s for s in payments_repo.lock_for_request(tx, request_id) if payment_id in (None, s["id"])]
    # A charge with a refund open (in flight, or waiting for the payer's refund account) gets no second one.
    busy = {r["payment_key"] for r in cancels_repo.for_request(tx, request_id) if r["status"] in CANCEL_OPEN}
    targets = []
    for share in shares:
        for charge in charges_repo.for_share(tx, share["id"]):
            balance = int(charge["amount"]) - int(charge["refunded_amount"])
            # A virtual account still waiting for its deposit is closed too (Toss cancels it in full before any
            # deposit), so that the payer cannot send money to a request that no longer takes it.
            waiting = charge["status"] == ChargeStatus.WAITING_FOR_DEPOSIT
            if (charge["status"] != ChargeStatus.HELD or balance <= 0) and not waiting:
                continue
            if charge["payment_key"] in busy:
                continue
            key = f"{tag}:{request_id}:{charge['payment_key']}"[:128]
            existing = cancels_repo.find_by_key(tx, key)
            cancel_id = (
                existing["id"]
                if existing
                else cancels_repo.insert(
                    tx,
                    payment_id=share["id"],
                    request_id=request_id,
                    payment_key=charge["payment_key"],
                    request_key=key,
                    requested_by=actor,
                    reason=reason,
                    amount=None,
                )
            )
            targets.append(
                {"cancel_id": cancel_id, "payment_key": charge["payment_key"], "remaining": 0 if waiting else balance}
            )
    return targets


def refund_queued(
    targets: Iterable[dict[str, Any]], *, toss: TossPort | None = None, deadline: Deadline | None = None
) -> list[dict[str, Any]]:
    """Send queued refunds. Whatever goes wrong with one (Toss, the database) leaves it to the schedule: the change
    that queued them is committed, and the answer says which refunds are still pending."""
    results = []
    for t in targets:
        try:
            outcome = send_refund(t["cancel_id"], toss=toss, deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - one refund's trouble must not undo the answer about the others
            code = exc.code if isinstance(exc, AppError) else type(exc).__name__
            logger.warning("refund not finished; the schedule will retry", extra={"error_code": code})
            results.append({"paymentKey": t["payment_key"], "refund_status": "refund_pending", "error": code})
            continue
        status = {
            "done": "refunded",
            "refused": "refund_refused",
            "needs_account": "refund_account_needed",
            "account_refused": "refund_account_needed",
        }.get(outcome.status, "refund_pending")
        entry: dict[str, Any] = {"paymentKey": t["payment_key"], "refund_status": status}
        if status == "refund_account_needed":
            entry["refund_account_needed"] = True
        entry["refunded_amount"] = int(outcome.charge["refunded_amount"])
        if outcome.code:
            entry["toss_code"] = outcome.code
        results.append(entry)
    return results


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    pending = [r for r in results if r["refund_status"] != "refunded"]
    answer = {
        "success": True,
        "refund_status": "refunded" if not pending else "refund_pending",
        "refunds": results,
        "payment_request_status": "cancelled",
    }
    if any(r["refund_status"] == "refund_account_needed" for r in results):
        answer["refund_account_needed"] = True
        answer["message"] = (
            "some refunds are of deposited virtual accounts: Toss refunds them only to a bank account, which each "
            "payer gives on POST /api/v1/payment/cancel with their paymentKey and refundReceiveAccount"
        )
    return answer
