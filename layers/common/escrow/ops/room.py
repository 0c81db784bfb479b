"""`escrow.ops room`: everything we hold about a chat room's requests, side by side with what Toss says.

Our side comes from the database (repositories/ops.py, one read); Toss's side from GET calls only (payments by
paymentKey and by orderId, payouts by id). Each row carries the differences found between the two, in words an
operator can act on; `differences` at every level is empty when both sides agree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Protocol

from escrow import db
from escrow.repositories import ops as ops_repo
from escrow.toss import TossApiError, TossError
from escrow.toss.models import Payment

NOT_FOUND_CODES = ("NOT_FOUND_PAYMENT", "NOT_FOUND_PAYMENT_SESSION", "NOT_FOUND_PAYOUT")


class TossReader(Protocol):
    """The GET calls the console may make (TossClient has them; nothing here can move money)."""

    def get_payment(self, payment_key: str) -> Payment: ...

    def get_payment_by_order(self, order_id: str) -> Payment: ...

    def get_payout(self, payout_id: str) -> dict[str, Any]: ...


class ReadOnlyToss:
    """Only Toss's GET calls of a client: what `room` and the listings are allowed to do."""

    def __init__(self, client: Any):
        self._client = client
        self.lookups = 0

    def get_payment(self, payment_key: str) -> Payment:
        self.lookups += 1
        payment: Payment = self._client.get_payment(payment_key)
        return payment

    def get_payment_by_order(self, order_id: str) -> Payment:
        self.lookups += 1
        payment: Payment = self._client.get_payment_by_order(order_id)
        return payment

    def get_payout(self, payout_id: str) -> dict[str, Any]:
        self.lookups += 1
        return dict(self._client.get_payout(payout_id))


def _lookup(fn: Any, arg: str) -> tuple[Any, str | None]:
    """(answer, None), (None, None) when Toss knows no such thing, or (None, why) when Toss did not answer."""
    try:
        return fn(arg), None
    except TossApiError as exc:
        if exc.code in NOT_FOUND_CODES:
            return None, None
        return None, f"Toss answered {exc.status} {exc.code}"
    except TossError as exc:
        return None, f"Toss did not answer ({type(exc).__name__})"


def _payment_view(payment: Payment) -> dict[str, Any]:
    return {
        "paymentKey": payment.payment_key,
        "orderId": payment.order_id,
        "status": payment.status,
        "totalAmount": payment.total_amount,
        "balanceAmount": payment.balance_amount,
        "refunded": payment.refunded_amount,
        "method": payment.method,
        "approvedAt": payment.approved_at,
        "cancels": [
            {
                "transactionKey": c.transaction_key,
                "cancelAmount": c.cancel_amount,
                "cancelStatus": c.cancel_status,
                "canceledAt": c.canceled_at,
                "cancelReason": c.cancel_reason,
            }
            for c in payment.cancels or []
        ],
    }


def expected_toss_status(charge: dict[str, Any]) -> tuple[str, ...] | None:
    """The Toss statuses that agree with one of our charges (None: any)."""
    status, refunded = charge["status"], int(charge["refunded_amount"])
    if status == "held":
        return ("DONE",) if refunded == 0 else ("PARTIAL_CANCELED",)
    if status == "refunded":
        return ("CANCELED", "PARTIAL_CANCELED")
    if status == "released":
        return ("DONE",) if refunded == 0 else ("PARTIAL_CANCELED",)
    if status == "waiting_for_deposit":
        return ("WAITING_FOR_DEPOSIT",)
    if status == "cancelled":
        return ("CANCELED",)
    return None


def charge_differences(charge: dict[str, Any], toss: dict[str, Any] | None, error: str | None) -> list[str]:
    """One Toss payment that funds a share, ours against Toss's."""
    key = charge["payment_key"]
    if error:
        return [f"{key}: not compared: {error}"]
    if toss is None:
        return [f"{key}: we hold it as {charge['status']}, Toss does not know it"]
    out = []
    expected = expected_toss_status(charge)
    if expected and toss["status"] not in expected:
        out.append(f"{key}: status ours {charge['status']}, Toss {toss['status']} (expected {' or '.join(expected)})")
    if toss["totalAmount"] != charge["amount"]:
        out.append(f"{key}: amount ours {charge['amount']}, Toss total {toss['totalAmount']}")
    if charge["status"] in ("held", "refunded", "released"):
        balance = int(charge["amount"]) - int(charge["refunded_amount"])
        if toss["balanceAmount"] != balance:
            out.append(f"{key}: balance ours {balance}, Toss {toss['balanceAmount']}")
    if toss["orderId"] != charge["order_id"]:
        out.append(f"{key}: orderId ours {charge['order_id']}, Toss {toss['orderId']}")
    return out


def share_differences(share: dict[str, Any], charge_rows: list[dict[str, Any]]) -> list[str]:
    """A share against its charges: what it holds is what its charges hold, never more than it owes."""
    out = [d for row in charge_rows for d in row["differences"]]
    counted = [r["ours"] for r in charge_rows if r["ours"]["status"] in ("held", "released", "refunded")]
    paid = sum(int(c["amount"]) for c in counted)
    refunded = sum(int(c["refunded_amount"]) for c in counted)
    if (paid, refunded) != (int(share["paid_amount"]), int(share["refunded_amount"])):
        out.append(f"share paid/refunded {share['paid_amount']}/{share['refunded_amount']}, charges {paid}/{refunded}")
    held = int(share["paid_amount"]) - int(share["refunded_amount"])
    if held > int(share["amount"]):
        out.append(f"holds {held}, more than the {share['amount']} it owes")
    if share["status"] == "completed" and held != int(share["amount"]):
        out.append(f"completed, but holds {held} of {share['amount']}")
    return out


def _share_toss_view(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Toss's view of a share: its charges' payments together."""
    views = [r["toss"] for r in rows if r["toss"] is not None]
    if not views:
        return None
    return {
        "paymentKeys": [v["paymentKey"] for v in views],
        "orderId": views[-1]["orderId"],
        "status": "+".join(v["status"] for v in views),
        "totalAmount": sum(v["totalAmount"] for v in views),
        "balanceAmount": sum(v["balanceAmount"] for v in views),
        "refunded": sum(v["refunded"] for v in views),
        "cancels": [c for v in views for c in v["cancels"]],
    }


def order_differences(order: dict[str, Any], share: dict[str, Any], toss: dict[str, Any] | None) -> list[str]:
    holds = toss is not None and toss["status"] in ("DONE", "PARTIAL_CANCELED") and toss["balanceAmount"] > 0
    if order["status"] in ("failed", "superseded", "issued", "refunded") and holds:
        assert toss is not None
        return [f"order {order['status']} here, but Toss holds {toss['balanceAmount']} on it"]
    if order["status"] == "done" and toss is None:
        return ["done here, Toss does not know the order"]
    return []


def payout_differences(s: dict[str, Any], payout: dict[str, Any] | None, error: str | None) -> list[str]:
    if not s["payout_id"]:
        if s["payout_status"] == "failed":
            return [f"the payout failed ({s['payout_error_code']}): the store is owed {s['net_amount']}"]
        return []
    if error:
        return [f"not compared: {error}"]
    if payout is None:
        return [f"Toss does not know payout {s['payout_id']}"]
    out = []
    value = (payout.get("amount") or {}).get("value")
    if value is None or int(value) != s["net_amount"]:
        out.append(f"amount: ours net {s['net_amount']}, Toss {value}")
    if payout.get("refPayoutId") != s["ref_payout_id"]:
        out.append(f"refPayoutId: ours {s['ref_payout_id']}, Toss {payout.get('refPayoutId')}")
    toss_status = str(payout.get("status") or "")
    ours = s["payout_status"]
    if ours in ("completed", "failed") and toss_status != ours.upper():
        out.append(f"status: ours {ours}, Toss {toss_status}")
    elif ours not in ("completed", "failed") and toss_status in ("COMPLETED", "FAILED"):
        out.append(f"Toss says {toss_status}, ours is still {ours} (the payout.changed webhook was not applied)")
    if ours == "failed":
        out.append(f"the payout failed ({s['payout_error_code']}): the store is owed {s['net_amount']}")
    return out


def _totals(ledger: list[dict[str, Any]], shares: list[dict[str, Any]]) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for entry in ledger:
        sums[entry["entry_type"]] += int(entry["amount"])
    held = sum(s["paid_amount"] - s["refunded_amount"] for s in shares if s["status"] != "released")
    return {
        "charged": sums["charge"],
        "refunded": sums["refund"],
        "released": sums["release"],
        "held": held,
    }


def room_view(chat_room_id: int, toss: TossReader) -> dict[str, Any]:
    """The room's requests with their shares, orders, ledger, refunds, settlement and events, and Toss's view."""
    with db.transaction() as tx:  # one consistent snapshot of our side
        requests = ops_repo.requests_of_room(tx, chat_room_id)
        members = ops_repo.members(tx, chat_room_id)
        request_ids = [r["id"] for r in requests]
        shares = ops_repo.shares(tx, request_ids)
        charges = ops_repo.charges(tx, request_ids)
        orders = ops_repo.orders(tx, [s["id"] for s in shares])
        ledger = ops_repo.ledger(tx, request_ids)
        cancels = ops_repo.cancels(tx, request_ids)
        settlements = ops_repo.settlements(tx, request_ids)
        events = ops_repo.events(tx, request_ids)
        stores = {r["store_id"]: ops_repo.store(tx, r["store_id"]) for r in requests}
        actions = ops_repo.operator_actions(tx, [f"settlement:{s['id']}" for s in settlements])
    for action in actions:
        action["detail"] = json.loads(action["detail"]) if action["detail"] else None

    by_order: dict[str, tuple[dict[str, Any] | None, str | None]] = {}

    def payment_by_key(key: str) -> tuple[dict[str, Any] | None, str | None]:
        found, error = _lookup(toss.get_payment, key)
        view = _payment_view(found) if found is not None else None
        if view is not None:
            by_order[view["orderId"]] = (view, None)
        return view, error

    def payment_by_order(order_id: str) -> tuple[dict[str, Any] | None, str | None]:
        if order_id not in by_order:
            found, error = _lookup(toss.get_payment_by_order, order_id)
            by_order[order_id] = (_payment_view(found) if found is not None else None, error)
        return by_order[order_id]

    out_requests = []
    total_differences = 0
    for request in requests:
        rid = request["id"]
        own_shares = [s for s in shares if s["payment_request_id"] == rid]
        own_ledger = [e for e in ledger if e["payment_request_id"] == rid]
        share_rows: list[dict[str, Any]] = []
        for share in own_shares:
            charge_rows = []
            for charge in (c for c in charges if c["payment_id"] == share["id"]):
                charge_view, error = payment_by_key(charge["payment_key"])
                charge_rows.append(
                    {"ours": charge, "toss": charge_view, "differences": charge_differences(charge, charge_view, error)}
                )
            toss_view = _share_toss_view(charge_rows)
            differences = share_differences(share, charge_rows)
            known = {c["transaction_key"] for c in cancels if c["payment_id"] == share["id"] and c["transaction_key"]}
            for c in (toss_view or {}).get("cancels", []):
                if (c["cancelStatus"] or "DONE") == "DONE" and c["transactionKey"] not in known:
                    differences.append(f"Toss lists a cancel we have not recorded: {c['transactionKey']}")
            share_rows.append({"ours": share, "toss": toss_view, "charges": charge_rows, "differences": differences})
        order_rows: list[dict[str, Any]] = []
        for order in orders:
            owner = next((s for s in own_shares if s["id"] == order["payment_id"]), None)
            if owner is None:
                continue
            toss_view, error = payment_by_order(order["order_id"])
            differences = [f"not compared: {error}"] if error else order_differences(order, owner, toss_view)
            order_rows.append(
                {
                    "ours": order,
                    "toss": None if toss_view is None else {k: toss_view[k] for k in ("status", "balanceAmount")},
                    "differences": differences,
                }
            )
        cancel_rows: list[dict[str, Any]] = []
        for c in (c for c in cancels if c["payment_request_id"] == rid):
            share_row = next((r for r in share_rows if r["ours"]["id"] == c["payment_id"]), None)
            toss_cancels = (share_row["toss"] or {}).get("cancels", []) if share_row else []
            match = next((t for t in toss_cancels if t["transactionKey"] == c["transaction_key"]), None)
            differences = []
            if c["status"] == "done" and match is None and share_row and share_row["toss"] is not None:
                differences.append(f"done here, Toss lists no cancel {c['transaction_key']}")
            if match is not None and match["cancelAmount"] != c["cancel_amount"]:
                differences.append(f"amount: ours {c['cancel_amount']}, Toss {match['cancelAmount']}")
            if c["status"] in ("failed",) and match is not None:
                differences.append("failed here, but Toss cancelled it")
            cancel_rows.append({"ours": c, "toss": match, "differences": differences})
        settlement_rows: list[dict[str, Any]] = []
        for s in (s for s in settlements if s["payment_request_id"] == rid):
            payout, error = _lookup(toss.get_payout, s["payout_id"]) if s["payout_id"] else (None, None)
            differences = payout_differences(s, payout, error)
            gross = sum(int(e["amount"]) for e in own_ledger if e["entry_type"] == "release")
            if s["gross_amount"] != gross:
                differences.append(f"gross {s['gross_amount']}, release entries {gross}")
            settlement_rows.append(
                {
                    "ours": s,
                    "toss": payout,
                    "differences": differences,
                    "operator_actions": [a for a in actions if a["target"] == f"settlement:{s['id']}"],
                }
            )
        totals = _totals(own_ledger, own_shares)
        request_differences = []
        if totals["charged"] < totals["refunded"] + totals["released"] + totals["held"]:
            request_differences.append(
                f"ledger: charged {totals['charged']} < refunded {totals['refunded']} + released "
                f"{totals['released']} + held {totals['held']}"
            )
        elif totals["charged"] > totals["refunded"] + totals["released"] + totals["held"]:
            awaiting = totals["charged"] - totals["refunded"] - totals["released"] - totals["held"]
            request_differences.append(
                f"ledger: {awaiting} charged and neither held, refunded nor released (a charge awaiting its refund, "
                "or a movement not recorded)"
            )
        count = (
            len(request_differences)
            + sum(len(r["differences"]) for r in share_rows)
            + sum(len(r["differences"]) for r in order_rows)
            + sum(len(r["differences"]) for r in cancel_rows)
            + sum(len(r["differences"]) for r in settlement_rows)
        )
        total_differences += count
        out_requests.append(
            {
                "request": request,
                "store": stores.get(request["store_id"]),
                "totals": totals,
                "differences": request_differences,
                "difference_count": count,
                "shares": share_rows,
                "orders": order_rows,
                "ledger": own_ledger,
                "cancels": cancel_rows,
                "settlements": settlement_rows,
                "events": [e for e in events if e["aggregate_id"] == str(rid)],
            }
        )
    return {
        "chat_room_id": chat_room_id,
        "members": members,
        "requests": out_requests,
        "difference_count": total_differences,
        "toss_lookups": getattr(toss, "lookups", None),
    }
