"""The status vocabulary and the state machines. A transition that is not in these tables raises.

Every status the database holds is a member of one of the enums below (they are `str`s, stored as they are spelt),
and every write of a status goes through the `check` of its machine: repositories that write a status take the
current and the new status, and bulk writes check every row. The named sets say what a group of statuses means;
modules use them instead of writing the statuses out again.

Toss's own statuses that we keep beside ours (`payments.toss_status`, `payment_charges.toss_status`,
`stores.seller_status`) are Toss's word, recorded as Toss spells them: no machine of ours decides them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from escrow.errors import Conflict


class InvalidTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


class Machine:
    """One state machine: the statuses a row may be written with first, and where each status may go next."""

    def __init__(self, noun: str, initial: Iterable[str], transitions: Mapping[str, Iterable[str]]):
        self.noun = noun
        self.initial = frozenset(initial)
        self.transitions: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in transitions.items()}

    def allows(self, current: str, new: str) -> bool:
        return new in self.transitions.get(current, frozenset())

    def check(self, current: str, new: str) -> None:
        if not self.allows(current, new):
            raise InvalidTransition(f"{self.noun} cannot go from {current} to {new}")

    def check_each(self, currents: Iterable[str], new: str) -> None:
        """A bulk write: every row's own transition."""
        for current in currents:
            self.check(current, new)

    def check_initial(self, status: str) -> None:
        if status not in self.initial:
            raise InvalidTransition(f"{self.noun} cannot start as {status}")


# --- payments (a participant's share: `payments.status`) ---------------------------------------------------


class PaymentStatus(StrEnum):
    PENDING = "pending"  # nothing paid yet
    IN_PROGRESS = "in_progress"  # a confirm was sent to Toss
    UNKNOWN = "unknown"  # Toss's answer to the confirm was lost; the schedule looks it up
    FAILED = "failed"  # the last attempt did not charge and nothing is held; the payer may pay again
    COMPLETED = "completed"  # the whole share is held
    PARTIALLY_REFUNDED = "partially_refunded"  # part of the share was refunded; the rest is held, the rest is owed
    RELEASED = "released"  # what was held went to the store
    REFUNDED = "refunded"  # refunded in full: nothing held, the whole share owed again
    REMOVED = "removed"  # the owner took the participant out of the request; what they held is refunded


PAYMENT = Machine(
    "a payment",
    initial={PaymentStatus.PENDING},
    transitions={
        PaymentStatus.PENDING: {PaymentStatus.IN_PROGRESS, PaymentStatus.REMOVED},
        # Toss's record wins: an attempt we had marked failed that Toss reports approved is completed.
        PaymentStatus.FAILED: {PaymentStatus.IN_PROGRESS, PaymentStatus.COMPLETED, PaymentStatus.REMOVED},
        # -> partially_refunded / refunded: an attempt to pay again (the difference, or the whole share after a full
        # refund) did not charge; the share is back to what it holds.
        PaymentStatus.IN_PROGRESS: {
            PaymentStatus.COMPLETED,
            PaymentStatus.FAILED,
            PaymentStatus.UNKNOWN,
            PaymentStatus.PARTIALLY_REFUNDED,
            PaymentStatus.REFUNDED,
        },
        PaymentStatus.UNKNOWN: {
            PaymentStatus.COMPLETED,
            PaymentStatus.FAILED,
            PaymentStatus.UNKNOWN,
            PaymentStatus.PARTIALLY_REFUNDED,
            PaymentStatus.REFUNDED,
        },
        # -> in_progress: Toss took a virtual-account deposit back (a deposit error); the account waits again.
        PaymentStatus.COMPLETED: {
            PaymentStatus.IN_PROGRESS,
            PaymentStatus.RELEASED,
            PaymentStatus.REFUNDED,
            PaymentStatus.PARTIALLY_REFUNDED,
            PaymentStatus.REMOVED,
        },
        # -> in_progress: the payer pays the refunded difference. -> completed: Toss's record of such an attempt wins
        # over our record of its failure.
        PaymentStatus.PARTIALLY_REFUNDED: {
            PaymentStatus.IN_PROGRESS,
            PaymentStatus.COMPLETED,
            PaymentStatus.REFUNDED,
            PaymentStatus.PARTIALLY_REFUNDED,
            PaymentStatus.REMOVED,
        },
        PaymentStatus.RELEASED: set(),
        # A refund Toss lists that we had not recorded, for a share already refunded in full, is recorded (its
        # ledger entry and refunded_amount) and the share stays refunded: the status is written again unchanged.
        # -> in_progress: the payer pays the whole share again.
        PaymentStatus.REFUNDED: {
            PaymentStatus.REFUNDED,
            PaymentStatus.IN_PROGRESS,
            PaymentStatus.COMPLETED,
            PaymentStatus.REMOVED,
        },
        # -> pending: the owner adds the participant back (nothing held, nothing in flight). removed -> removed:
        # a refund of what they held is recorded.
        PaymentStatus.REMOVED: {PaymentStatus.PENDING, PaymentStatus.REMOVED},
    },
)

# A share that holds money in full and may be released: funding counts these (and only for current participants).
HELD: frozenset[PaymentStatus] = frozenset({PaymentStatus.COMPLETED})
# A share that may hold money (some of it): refunds, removal and closing a request look at these shares' charges.
MAY_HOLD: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.COMPLETED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.FAILED, PaymentStatus.REFUNDED}
)
# What the status answer counts as paid (`paid_count`): the share is fully held, or was released.
PAID_IN_FULL: frozenset[PaymentStatus] = frozenset({PaymentStatus.COMPLETED, PaymentStatus.RELEASED})
# A confirm whose outcome we do not know yet.
CONFIRMING: frozenset[PaymentStatus] = frozenset({PaymentStatus.IN_PROGRESS, PaymentStatus.UNKNOWN})
# A share that may start a payment (the owed amount is what it does not hold).
PAYABLE: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.PENDING, PaymentStatus.FAILED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
# A share whose refunds we record (anything that may hold money, and a removed participant's).
REFUND_RECORDABLE: frozenset[PaymentStatus] = MAY_HOLD | {PaymentStatus.REMOVED}


def share_status_for(held: int, amount: int, *, ever_paid: bool) -> PaymentStatus:
    """The status a share not being confirmed has, from what it holds of what it owes."""
    if held >= amount:
        return PaymentStatus.COMPLETED
    if held > 0:
        return PaymentStatus.PARTIALLY_REFUNDED
    return PaymentStatus.REFUNDED if ever_paid else PaymentStatus.FAILED


# --- charges (`payment_charges.status`): the Toss payments that fund a share -------------------------------


class ChargeStatus(StrEnum):
    WAITING_FOR_DEPOSIT = "waiting_for_deposit"  # a virtual account was issued; nothing deposited yet
    HELD = "held"  # money we hold for the share (amount - refunded_amount of it)
    RELEASED = "released"  # what it held went to the store
    REFUNDED = "refunded"  # refunded in full
    CANCELLED = "cancelled"  # a virtual account cancelled before any deposit


CHARGE = Machine(
    "a charge",
    initial={ChargeStatus.HELD, ChargeStatus.WAITING_FOR_DEPOSIT},
    transitions={
        # -> released: a released deposit Toss took back (below), deposited again: the store's money again.
        ChargeStatus.WAITING_FOR_DEPOSIT: {ChargeStatus.HELD, ChargeStatus.CANCELLED, ChargeStatus.RELEASED},
        # held -> held: a partial refund. -> waiting_for_deposit: Toss reverses a deposit (a deposit error).
        ChargeStatus.HELD: {
            ChargeStatus.HELD,
            ChargeStatus.RELEASED,
            ChargeStatus.REFUNDED,
            ChargeStatus.WAITING_FOR_DEPOSIT,
        },
        ChargeStatus.RELEASED: {ChargeStatus.WAITING_FOR_DEPOSIT},  # a deposit error after release: alarmed
        ChargeStatus.REFUNDED: {ChargeStatus.REFUNDED},
        ChargeStatus.CANCELLED: set(),
    },
)


# --- payment requests (`payment_requests.status`) ----------------------------------------------------------


class RequestStatus(StrEnum):
    PENDING = "pending"  # open, waiting for payers
    COMPLETED = "completed"  # open, every participant paid (funded)
    RELEASED = "released"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


REQUEST = Machine(
    "a payment request",
    initial={RequestStatus.PENDING},
    transitions={
        RequestStatus.PENDING: {RequestStatus.COMPLETED, RequestStatus.CANCELLED, RequestStatus.EXPIRED},
        # -> pending: a share refunded in full makes a funded request wait for payers again.
        RequestStatus.COMPLETED: {RequestStatus.RELEASED, RequestStatus.PENDING, RequestStatus.CANCELLED},
        RequestStatus.RELEASED: set(),
        RequestStatus.CANCELLED: set(),
        RequestStatus.EXPIRED: set(),
    },
)

# The room's open request (the generated column `open_room_id` of the schema says the same).
OPEN: frozenset[RequestStatus] = frozenset({RequestStatus.PENDING, RequestStatus.COMPLETED})


# --- orders (`payment_orders.status`): every orderId issued or used ------------------------------------------


class OrderStatus(StrEnum):
    ISSUED = "issued"  # handed to the widget by prepare, not confirmed yet
    IN_PROGRESS = "in_progress"  # confirm sent to Toss
    UNKNOWN = "unknown"  # the confirm's answer was lost
    DONE = "done"  # the share's charge
    FAILED = "failed"  # not charged (declined, aborted, expired, or Toss has no such payment)
    SUPERSEDED = "superseded"  # an issued order the payer did not use: another of their orders was confirmed
    REFUND_PENDING = "refund_pending"  # Toss charged it and we must not keep the money: to be cancelled
    REFUNDED = "refunded"  # such a charge, cancelled


ORDER = Machine(
    "an order",
    initial={OrderStatus.ISSUED, OrderStatus.IN_PROGRESS},
    transitions={
        # -> failed: Toss aborted or expired the widget's payment before we confirmed it (its webhook).
        # -> refund_pending: Toss reports a charge on an order we never confirmed: money we must not keep.
        OrderStatus.ISSUED: {
            OrderStatus.IN_PROGRESS,
            OrderStatus.SUPERSEDED,
            OrderStatus.FAILED,
            OrderStatus.REFUND_PENDING,
        },
        OrderStatus.IN_PROGRESS: {
            OrderStatus.DONE,
            OrderStatus.FAILED,
            OrderStatus.UNKNOWN,
            OrderStatus.REFUND_PENDING,
        },
        OrderStatus.UNKNOWN: {OrderStatus.DONE, OrderStatus.FAILED, OrderStatus.UNKNOWN, OrderStatus.REFUND_PENDING},
        # Toss's record wins: an order we had marked failed that Toss reports approved is done (or, when the share
        # was paid meanwhile, a charge to refund). failed -> failed: the same failure recorded again (a repeated
        # confirm, an ABORTED webhook after our decline).
        # -> in_progress: refused for a reason that passes (Toss's trouble, our configuration), confirmed again.
        OrderStatus.FAILED: {OrderStatus.DONE, OrderStatus.FAILED, OrderStatus.REFUND_PENDING, OrderStatus.IN_PROGRESS},
        OrderStatus.SUPERSEDED: {OrderStatus.FAILED, OrderStatus.REFUND_PENDING},
        OrderStatus.DONE: set(),
        # refund_pending -> refund_pending: the same unexpected charge reported again (webhook and reconciliation).
        OrderStatus.REFUND_PENDING: {OrderStatus.REFUNDED, OrderStatus.REFUND_PENDING},
        # Surprising, kept as today: refunded -> refunded when two workers cancel the same unexpected charge (the
        # second's cancel answers the first's result, same Idempotency-Key); refunded -> refund_pending when Toss's
        # DONE record of the charge, fetched before our cancel, is applied after it. The schedule then finds
        # Toss's balance at 0 and marks it refunded again without cancelling anything.
        OrderStatus.REFUNDED: {OrderStatus.REFUNDED, OrderStatus.REFUND_PENDING},
    },
)

ORDER_IN_FLIGHT: frozenset[OrderStatus] = frozenset({OrderStatus.IN_PROGRESS, OrderStatus.UNKNOWN})
# What the reconciliation job settles: confirms with no outcome yet, and charges still to cancel.
ORDER_TO_RECONCILE: frozenset[OrderStatus] = ORDER_IN_FLIGHT | {OrderStatus.REFUND_PENDING}


# --- cancels (`payment_cancels.status`): one refund each ---------------------------------------------------


class CancelStatus(StrEnum):
    REQUESTED = "requested"  # written before Toss is called; Toss's answer not recorded yet
    UNKNOWN = "unknown"  # Toss's answer was lost and the lookup failed; the schedule asks again
    DONE = "done"
    FAILED = "failed"  # Toss refused it, or holds no refund for it
    # A deposited virtual-account payment is refunded to the payer's bank account (Toss's refundReceiveAccount), and
    # we have none on file (or Toss refused the one we had): the refund waits, open, for the payer to give one. Not
    # failed: nothing was refused for good, and nobody else can finish it.
    NEEDS_ACCOUNT = "needs_account"


CANCEL = Machine(
    "a refund",
    initial={CancelStatus.REQUESTED},
    transitions={
        # requested -> requested: the payer asks again after a lost answer, with the same key.
        # -> needs_account: a refund of a deposited virtual account with no refund account on file (Toss not asked),
        # or one Toss refused the account of.
        CancelStatus.REQUESTED: {
            CancelStatus.REQUESTED,
            CancelStatus.UNKNOWN,
            CancelStatus.DONE,
            CancelStatus.FAILED,
            CancelStatus.NEEDS_ACCOUNT,
        },
        CancelStatus.UNKNOWN: {
            CancelStatus.REQUESTED,
            CancelStatus.UNKNOWN,
            CancelStatus.DONE,
            CancelStatus.FAILED,
            CancelStatus.NEEDS_ACCOUNT,
        },
        # -> requested: asked again, with the same key. -> done: Toss's record wins; a refund we had recorded as
        # not made (NOT_CANCELLED_AT_TOSS) that Toss lists afterwards is done.
        CancelStatus.FAILED: {CancelStatus.REQUESTED, CancelStatus.DONE},
        # Surprising, kept as today: apply_cancels gives the caller's refund row the first Toss transaction it has
        # not recorded, without looking at the row's status. When two workers apply the same refund and Toss lists
        # a further transaction (one made in Toss's dashboard), the second worker writes it over the first's: the
        # row stays done with the other transaction key.
        CancelStatus.DONE: {CancelStatus.DONE},
        # -> requested: the payer gave an account (a new attempt: a new Idempotency-Key). -> done: Toss lists a refund
        # of the charge made otherwise (Toss's record wins). needs_account -> needs_account: still no usable account.
        CancelStatus.NEEDS_ACCOUNT: {CancelStatus.REQUESTED, CancelStatus.DONE, CancelStatus.NEEDS_ACCOUNT},
    },
)

# A refund whose outcome is not recorded yet: a release of the room waits for it.
CANCEL_IN_FLIGHT: frozenset[CancelStatus] = frozenset({CancelStatus.REQUESTED, CancelStatus.UNKNOWN})
# A refund that is not finished and not given up: in flight, or waiting for the payer's refund account. The share
# holds the money meanwhile: it may not pay again, be added back, or (a current participant) be released. Only the
# in-flight ones are sent again by the schedule; one waiting for an account is never failed nor reported stale.
CANCEL_OPEN: frozenset[CancelStatus] = CANCEL_IN_FLIGHT | {CancelStatus.NEEDS_ACCOUNT}


# --- settlements' payouts (`payment_settlements.payout_status`) ----------------------------------------------
#
# Release is the decision; the payout is its execution (escrow.services.payouts). A released settlement waits in
# `scheduled` until the payout job sends it: while Toss's payout balance (GET /v2/balances, availableAmount) does
# not cover it, while the store has no payable seller, or until the back-off after a refusal has passed.
# `payout_waiting_for` says which (PayoutWaitingFor).


class PayoutStatus(StrEnum):
    SCHEDULED = "scheduled"  # to be sent to Toss (payout_waiting_for says what it waits for)
    NOT_NEEDED = "not_needed"  # nothing to pay out (the fee took it all)
    REQUESTING = "requesting"  # claimed by a run and being sent (payout_lease_until says for how long)
    # Toss's own statuses (lower case), recorded as Toss reports them:
    REQUESTED = "requested"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"  # Toss failed it, or refused it for a reason only a person can fix (payout_error_code)
    CANCELED = "canceled"


class PayoutWaitingFor(StrEnum):
    """Why a `scheduled` payout has not been sent (`payment_settlements.payout_waiting_for`)."""

    SCHEDULE = "schedule"  # nothing: the next scheduled run sends it
    BALANCE = "balance"  # Toss's available payout balance did not cover it (card sales settle after a cycle)
    SELLER = "seller"  # the store has no seller at Toss yet, or Toss does not pay its seller yet (KYC)
    RETRY = "retry"  # Toss refused it or did not settle it; tried again at payout_next_attempt_at (back-off)


_TOSS_HOLDS_IT = {PayoutStatus.REQUESTED, PayoutStatus.IN_PROGRESS, PayoutStatus.COMPLETED, PayoutStatus.FAILED}

PAYOUT = Machine(
    "a payout",
    initial={PayoutStatus.SCHEDULED, PayoutStatus.NOT_NEEDED},
    transitions={
        # Toss's word on a payout it holds (webhook or poll) wins over scheduled too: the answer to our request was
        # lost or did not list the item, and the settlement had gone back to scheduled.
        PayoutStatus.SCHEDULED: {PayoutStatus.REQUESTING, *_TOSS_HOLDS_IT},
        PayoutStatus.NOT_NEEDED: set(),
        # requesting -> requesting: a run takes over a payout whose lease ran out (same key); -> scheduled: refused
        # for now (back-off), answered with an error Toss may overcome, or missing from Toss's answer (each a new
        # attempt with a new key); -> failed: refused for a reason a person must fix (the seller's account);
        # -> canceled: recorded as Toss's answer states it (Toss documents CANCELED only for a scheduled payout
        # cancelled later, so it is not expected in an answer to a request).
        PayoutStatus.REQUESTING: {
            PayoutStatus.REQUESTING,
            PayoutStatus.SCHEDULED,
            PayoutStatus.CANCELED,
            *_TOSS_HOLDS_IT,
        },
        PayoutStatus.REQUESTED: {*_TOSS_HOLDS_IT},
        # in_progress -> requested is surprising and kept as today: deliveries are applied in the order they
        # arrive, so a late REQUESTED after IN_PROGRESS is written (the next poll or webhook corrects it).
        PayoutStatus.IN_PROGRESS: {*_TOSS_HOLDS_IT},
        PayoutStatus.COMPLETED: set(),
        # A failed payout is final here; only an operator sends it back to the schedule (OPERATOR_PAYOUT below).
        PayoutStatus.FAILED: set(),
        PayoutStatus.CANCELED: set(),
    },
)

PAYOUT_FINAL: frozenset[PayoutStatus] = frozenset({PayoutStatus.COMPLETED, PayoutStatus.FAILED})
# Toss took the payout and has not reported it final: polled when its webhook is late.
PAYOUT_AT_TOSS: frozenset[PayoutStatus] = frozenset({PayoutStatus.IN_PROGRESS, PayoutStatus.REQUESTED})
# A payout a run may take to send: never sent (or to send again), or sent with no answer yet.
PAYOUT_CLAIMABLE: frozenset[PayoutStatus] = frozenset({PayoutStatus.SCHEDULED, PayoutStatus.REQUESTING})
# Still needs the schedule: to send, to ask again, or to poll.
PAYOUT_DUE: frozenset[PayoutStatus] = PAYOUT_CLAIMABLE | PAYOUT_AT_TOSS


# --- stores' sellers at Toss payouts v2 (`stores.seller_registration`) ----------------------------------------
#
# `POST /api/v1/admin/stores` records what to register and answers at once; the `sellers` job sends it to Toss
# (escrow.services.stores). Toss's own word on the seller (APPROVAL_REQUIRED, PARTIALLY_APPROVED, KYC_REQUIRED,
# APPROVED) is `stores.seller_status`, stored as Toss spells it.


class SellerRegistration(StrEnum):
    PENDING = "pending"  # accepted by our API; the sellers job sends it (a registration, or an update of the seller)
    SENDING = "sending"  # claimed by a run (seller_lease_until); Toss's answer not recorded yet
    REGISTERED = "registered"  # Toss holds the seller with this content
    REFUSED = "refused"  # Toss refused it (seller_error_code); the admin corrects it by registering again


SELLER_REGISTRATION = Machine(
    "a seller registration",
    initial={SellerRegistration.PENDING},
    transitions={
        # pending -> pending: registered again (corrected) before the job sent it, or answered with an error Toss
        # may overcome (retried with a new key after a back-off).
        SellerRegistration.PENDING: {SellerRegistration.SENDING, SellerRegistration.PENDING},
        # sending -> sending: a run takes over one whose lease ran out (no answer: the same key); -> pending: Toss
        # answered with an error it may overcome (the next attempt has a new key).
        SellerRegistration.SENDING: {
            SellerRegistration.SENDING,
            SellerRegistration.PENDING,
            SellerRegistration.REGISTERED,
            SellerRegistration.REFUSED,
        },
        # -> pending: the admin changes the account (the job sends Toss an update of the seller).
        SellerRegistration.REGISTERED: {SellerRegistration.PENDING},
        # -> pending: the admin corrects it and registers again.
        SellerRegistration.REFUSED: {SellerRegistration.PENDING},
    },
)

# Toss pays out to these sellers only (docs/toss-behaviours.md, "Balances and payouts").
PAYABLE_SELLER_STATUSES: frozenset[str] = frozenset({"PARTIALLY_APPROVED", "APPROVED"})


# --- webhook deliveries (`payment_webhooks.verification` and `.outcome`) -------------------------------------


class WebhookVerification(StrEnum):
    PENDING = "pending"  # logged, not verified yet (or not processed: see WebhookOutcome.ERROR)
    UNREADABLE = "unreadable"  # the body is not a JSON object
    SKIPPED = "skipped"  # a duplicate: not verified again
    NOT_APPLICABLE = "not_applicable"  # an event type we do not act on
    FETCHED = "fetched"  # unsigned: what we act on is what Toss says when we ask
    SECRET = "secret"  # noqa: S105 - a verification method, not a secret: DEPOSIT_CALLBACK, the secret matched
    SIGNATURE = "signature"  # payout.changed / seller.changed: the HMAC signature verified
    MALFORMED = "malformed"
    UNKNOWN_PAYMENT = "unknown_payment"
    SECRET_MISMATCH = "secret_mismatch"  # noqa: S105 - a verification outcome, not a secret
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    SOURCE_NOT_ALLOWED = "source_not_allowed"  # sent from an address outside TOSS_WEBHOOK_ALLOWED_IPS


class WebhookOutcome(StrEnum):
    RECEIVED = "received"  # logged, not finished yet
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"
    ERROR = "error"  # not processed (Toss or the database unreachable): Toss delivers it again


# A delivery's row is written once when it arrives and finished once: each delivery is a row of its own.
WEBHOOK_OUTCOME = Machine(
    "a webhook delivery",
    initial={WebhookOutcome.RECEIVED},
    transitions={
        WebhookOutcome.RECEIVED: {
            WebhookOutcome.PROCESSED,
            WebhookOutcome.DUPLICATE,
            WebhookOutcome.IGNORED,
            WebhookOutcome.REJECTED,
            WebhookOutcome.ERROR,
        },
    },
)
WEBHOOK_VERIFICATION = Machine(
    "a webhook's verification",
    initial={WebhookVerification.PENDING},
    # pending -> pending: a delivery that could not be processed was not verified either.
    transitions={WebhookVerification.PENDING: set(WebhookVerification)},
)


# --- the checks every status write goes through ------------------------------------------------------------


def check_charge(current: str, new: str) -> None:
    CHARGE.check(current, new)


def check_payment(current: str, new: str) -> None:
    PAYMENT.check(current, new)


def check_request(current: str, new: str) -> None:
    REQUEST.check(current, new)


def check_order(current: str, new: str) -> None:
    ORDER.check(current, new)


def check_cancel(current: str, new: str) -> None:
    CANCEL.check(current, new)


def check_payout(current: str, new: str) -> None:
    PAYOUT.check(current, new)


def check_seller_registration(current: str | None, new: str) -> None:
    if current is None:
        SELLER_REGISTRATION.check_initial(new)
    else:
        SELLER_REGISTRATION.check(current, new)


# --- what an operator may do by hand (escrow.ops through services/operator.py) --------------------------------

# A failed payout goes back to the schedule (retry-payout). Not a move of PAYOUT: a payout Toss failed is final for
# the schedule and for Toss's webhooks; only a person, after fixing the cause (the store's account: registering the
# store again updates its Toss seller), decides to pay it again: a new attempt, so a new Idempotency-Key, and a new
# refPayoutId when Toss had made a payout under the old one (settlements_repo.reschedule_by_operator).
OPERATOR_PAYOUT = Machine(
    "a payout (by an operator)",
    initial=set(),
    transitions={PayoutStatus.FAILED: {PayoutStatus.SCHEDULED}},
)


def check_operator_payout(current: str, new: str) -> None:
    OPERATOR_PAYOUT.check(current, new)


# --- what an operator did (`operator_actions.status`) ----------------------------------------------------------


class OperatorActionStatus(StrEnum):
    STARTED = "started"  # recorded before the action runs (it calls Toss or runs a job)
    DONE = "done"
    FAILED = "failed"  # it could not run (Toss or the database unreachable, a job raised)
    REFUSED = "refused"  # it ran and was refused (Toss refused it, or there was nothing to do it on)


OPERATOR_ACTION = Machine(
    "an operator action",
    # done: an action whose outcome is known at once, recorded in the same transaction as its change.
    initial={OperatorActionStatus.STARTED, OperatorActionStatus.DONE},
    transitions={
        OperatorActionStatus.STARTED: {
            OperatorActionStatus.DONE,
            OperatorActionStatus.FAILED,
            OperatorActionStatus.REFUSED,
        },
    },
)
