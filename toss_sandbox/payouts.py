"""Payouts v2 (지급대행): sellers, payouts, completion.

Sources: [DOC https://docs.tosspayments.com/guides/v2/payouts, https://docs.tosspayments.com/en/integration-payouts]
(JWE, sellers, payout items), [DOC https://docs.tosspayments.com/reference/using-api/webhook-events] (status
flow, payout.changed / seller.changed), [TC https://techchat.tosspayments.com/m/1461347481341132882] (a real
request: a JSON array of items; FORBIDDEN_SELLER_PAYOUT in the v2 envelope),
[DOC https://docs.tosspayments.com/reference/additional] (payouts take only availableAmount; balances.py).

Choices where the sources leave room (docs/toss-behaviours.md lists them with their settings):

* duplicate ``refSellerId`` -> 400 DUPLICATED_REF_SELLER_ID; duplicate ``refPayoutId`` (already used, or twice in
  one request) -> 400 DUPLICATED_REF_PAYOUT_ID (the first payout stays readable); unknown ``destination`` -> 404
  NOT_FOUND_SELLER. These codes are the sandbox's (UNCONFIRMED).
* the sum of a payout request above ``availableAmount`` -> ``payout_insufficient_balance_code`` (default 400
  NOT_ENOUGH_AMOUNT from Toss's error list; UNCONFIRMED for v2), nothing is created.
* seller ``account.bankCode`` outside ``seller_bank_code_table`` -> ``seller_invalid_bank_code`` (default 400
  INVALID_BANK, UNCONFIRMED); see banks.py.
* a request is all-or-nothing: one bad item refuses the whole request.
* a PARTIALLY_APPROVED seller whose payouts of the last 7 days would exceed 10,000,000 KRW moves to
  KYC_REQUIRED (seller.changed is sent) and the request gets 403 FORBIDDEN_SELLER_PAYOUT.
* money leaves ``availableAmount`` when a payout is requested and returns when it is canceled or FAILED.
* cancel of a payout that is not REQUESTED -> 403 NOT_CANCELABLE_PAYOUT; unknown id -> 404 NOT_FOUND_PAYOUT.
* registration sends no seller.changed (it is not a status change); status changes through the control do
  (for PARTIALLY_APPROVED, KYC_REQUIRED, APPROVED).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from .banks import seller_bank
from .clock import iso
from .errors import TossError
from .payments import as_whole_amount
from .store import PayoutRecord, SellerRecord

if TYPE_CHECKING:
    from .core import SandboxCore

BUSINESS_TYPES = ("INDIVIDUAL", "INDIVIDUAL_BUSINESS", "CORPORATE")
SELLER_STATES = ("APPROVAL_REQUIRED", "PARTIALLY_APPROVED", "KYC_REQUIRED", "APPROVED")
SELLER_WEBHOOK_STATES = ("PARTIALLY_APPROVED", "KYC_REQUIRED", "APPROVED")
PAYABLE_SELLER_STATES = ("PARTIALLY_APPROVED", "APPROVED")
SCHEDULE_TYPES = ("EXPRESS", "SCHEDULED")
MAX_ITEMS = 100
DEFAULT_PAYOUT_ERROR = {"code": "FAILED_PAYOUT", "message": "[sandbox] 지급대행 처리에 실패했습니다."}
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _invalid(message: str) -> TossError:
    return TossError("INVALID_REQUEST", message)


def _require_str(obj: dict[str, Any], name: str, max_len: int, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _invalid(f"{where}{name} must be a non-empty string of at most {max_len} characters")
    return value


def _check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 5:
        raise _invalid("metadata must be an object with at most 5 pairs")
    for key, value in metadata.items():
        if len(key) > 40 or any(ch in key for ch in "[],"):
            raise _invalid("metadata keys are at most 40 characters without [ ] ,")
        if not isinstance(value, str) or len(value) > 500:
            raise _invalid("metadata values are strings of at most 500 characters")
    return dict(metadata)


class PayoutService:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core

    # ------------------------------------------------------------------ rendering
    @staticmethod
    def seller_json(s: SellerRecord) -> dict[str, Any]:
        return {
            "id": s.id,
            "refSellerId": s.ref_seller_id,
            "businessType": s.business_type,
            "company": s.company,
            "individual": s.individual,
            "status": s.status,
            "account": s.account,
            "metadata": s.metadata,
        }

    @staticmethod
    def payout_json(p: PayoutRecord) -> dict[str, Any]:
        return {
            "id": p.id,
            "refPayoutId": p.ref_payout_id,
            "destination": p.destination,
            "scheduleType": p.schedule_type,
            "payoutDate": p.payout_date,
            "amount": {"currency": p.currency, "value": p.amount},
            "transactionDescription": p.transaction_description,
            "requestedAt": iso(p.requested_at),
            "status": p.status,
            "error": p.error,
            "metadata": p.metadata,
        }

    def balance_json(self) -> dict[str, Any]:
        return self.core.balances.to_json()

    # ------------------------------------------------------------------ sellers
    def register_seller(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _invalid("body must be a JSON object")
        ref = _require_str(body, "refSellerId", self.core.settings.ref_seller_id_max_length, "")
        business_type = body.get("businessType")
        if business_type not in BUSINESS_TYPES:
            raise _invalid(f"businessType must be one of {BUSINESS_TYPES}")
        company = individual = None
        if business_type == "INDIVIDUAL":
            individual = body.get("individual")
            if not isinstance(individual, dict):
                raise _invalid("individual is required for INDIVIDUAL sellers")
            for name in ("name", "email", "phone"):
                _require_str(individual, name, 100, "individual.")
        else:
            company = body.get("company")
            if not isinstance(company, dict):
                raise _invalid("company is required for INDIVIDUAL_BUSINESS and CORPORATE sellers")
            for name in ("name", "representativeName", "email", "phone"):
                _require_str(company, name, 100, "company.")
            number = company.get("businessRegistrationNumber")
            if not isinstance(number, str) or not re.fullmatch(r"\d{10}", number):
                raise _invalid("company.businessRegistrationNumber must be 10 digits")
        account = body.get("account")
        if not isinstance(account, dict):
            raise _invalid("account is required")
        _require_str(account, "bankCode", 10, "account.")
        if seller_bank(account["bankCode"], self.core.settings.seller_bank_code_table) is None:
            raise TossError(self.core.settings.seller_invalid_bank_code, "유효하지 않은 은행입니다.", 400)
        number = account.get("accountNumber")
        if not isinstance(number, str) or not re.fullmatch(r"\d{1,20}", number):
            raise _invalid("account.accountNumber must be at most 20 digits")
        _require_str(account, "holderName", 60, "account.")
        metadata = _check_metadata(body.get("metadata"))
        core = self.core
        with core.store.lock:
            if ref in core.store.seller_by_ref:
                raise TossError("DUPLICATED_REF_SELLER_ID")
            seller_id = core.ids.seller_id()
            status = "PARTIALLY_APPROVED" if business_type == "CORPORATE" else "APPROVAL_REQUIRED"
            seller = SellerRecord(
                id=seller_id,
                ref_seller_id=ref,
                business_type=business_type,
                status=status,
                company=dict(company) if company else None,
                individual=dict(individual) if individual else None,
                account={k: account[k] for k in ("bankCode", "accountNumber", "holderName")},
                metadata=metadata,
                registered_at=core.clock.now(),
            )
            core.store.sellers[seller_id] = seller
            core.store.seller_by_ref[ref] = seller_id
            return self.seller_json(seller)

    def get_seller(self, seller_id: str) -> dict[str, Any]:
        with self.core.store.lock:
            seller = self.core.store.sellers.get(seller_id)
            if seller is None:
                raise TossError("NOT_FOUND_SELLER")
            return self.seller_json(seller)

    def list_sellers(self) -> dict[str, Any]:
        with self.core.store.lock:
            return {"items": [self.seller_json(s) for s in self.core.store.sellers.values()]}

    def update_seller(self, seller_id: str, body: Any) -> dict[str, Any]:
        """``POST /v2/sellers/{sellerId}``: change a seller's account or contact (docs/toss-behaviours.md: send the
        fields that change; refSellerId is immutable). Sandbox choices: businessType cannot change either
        (INVALID_REQUEST); the changed parts are checked as at registration; the status is kept."""
        if not isinstance(body, dict):
            raise _invalid("body must be a JSON object")
        account = body.get("account")
        if account is not None:
            if not isinstance(account, dict):
                raise _invalid("account must be an object")
            _require_str(account, "bankCode", 10, "account.")
            number = account.get("accountNumber")
            if not isinstance(number, str) or not re.fullmatch(r"\d{1,20}", number):
                raise _invalid("account.accountNumber must be at most 20 digits")
            _require_str(account, "holderName", 60, "account.")
            if seller_bank(account["bankCode"], self.core.settings.seller_bank_code_table) is None:
                raise TossError(self.core.settings.seller_invalid_bank_code, "유효하지 않은 은행입니다.", 400)
        for part, names in (("individual", ("name", "email", "phone")), ("company", ("name", "email", "phone"))):
            if body.get(part) is not None:
                if not isinstance(body[part], dict):
                    raise _invalid(f"{part} must be an object")
                for name in names:
                    _require_str(body[part], name, 100, f"{part}.")
        metadata = _check_metadata(body.get("metadata")) if "metadata" in body else None
        core = self.core
        with core.store.lock:
            seller = core.store.sellers.get(seller_id)
            if seller is None:
                raise TossError("NOT_FOUND_SELLER")
            if body.get("refSellerId", seller.ref_seller_id) != seller.ref_seller_id:
                raise _invalid("refSellerId cannot change")
            if body.get("businessType", seller.business_type) != seller.business_type:
                raise _invalid("businessType cannot change")
            if account is not None:
                seller.account = {k: account[k] for k in ("bankCode", "accountNumber", "holderName")}
            if body.get("individual") is not None:
                seller.individual = dict(body["individual"])
            if body.get("company") is not None:
                seller.company = {**(seller.company or {}), **body["company"]}
            if "metadata" in body:
                seller.metadata = metadata
            return self.seller_json(seller)

    def set_seller_status(self, seller_id: str, body: Any) -> dict[str, Any]:
        status = body.get("status") if isinstance(body, dict) else None
        if status not in SELLER_STATES:
            raise _invalid(f"status must be one of {SELLER_STATES}")
        core = self.core
        with core.store.lock:
            seller = core.store.sellers.get(seller_id)
            if seller is None:
                raise TossError("NOT_FOUND_SELLER")
            self._change_seller_status(seller, status)
            return self.seller_json(seller)

    def _change_seller_status(self, seller: SellerRecord, status: str) -> None:
        changed = seller.status != status
        seller.status = status
        if changed and status in SELLER_WEBHOOK_STATES:
            self.core.webhooks.seller_changed(self.seller_json(seller), self.core.clock.now())

    # ------------------------------------------------------------------ payouts
    def _parse_item(self, item: Any, index: int, today: date) -> dict[str, Any]:
        where = f"items[{index}]."
        if not isinstance(item, dict):
            raise _invalid(f"{where[:-1]} must be an object")
        ref = _require_str(item, "refPayoutId", 100, where)
        destination = _require_str(item, "destination", 100, where)
        schedule = item.get("scheduleType")
        if schedule not in SCHEDULE_TYPES:
            raise _invalid(f"{where}scheduleType must be EXPRESS or SCHEDULED")
        payout_date = item.get("payoutDate")
        if schedule == "SCHEDULED":
            if not isinstance(payout_date, str) or not DATE_RE.match(payout_date):
                raise _invalid(f"{where}payoutDate (yyyy-MM-dd) is required for SCHEDULED payouts")
            try:
                day = date.fromisoformat(payout_date)
            except ValueError as exc:
                raise _invalid(f"{where}payoutDate is not a date") from exc
            if day < today or day > today + timedelta(days=365):
                raise _invalid(f"{where}payoutDate must be between today and one year from today")
        else:
            payout_date = today.isoformat()
        amount = item.get("amount")
        if not isinstance(amount, dict):
            raise _invalid(f"{where}amount {{currency, value}} is required")
        if amount.get("currency", "KRW") != "KRW":
            raise _invalid(f"{where}amount.currency must be KRW")
        value = as_whole_amount(amount.get("value"), minimum=1)
        if value is None:
            raise _invalid(f"{where}amount.value must be a whole number >= 1")
        description = item.get("transactionDescription")
        if description is not None and not isinstance(description, str):
            raise _invalid(f"{where}transactionDescription must be a string")
        return {
            "ref": ref,
            "destination": destination,
            "schedule": schedule,
            "payout_date": payout_date,
            "amount": value,
            "description": description,
            "metadata": _check_metadata(item.get("metadata")),
        }

    def request_payouts(self, body: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """POST /v2/payouts: body is a JSON array of items (``{"items": [...]}`` is accepted too). The answer's
        entity is ``{"items": [...]}`` or a bare list, per ``payout_entity_body``."""
        refusal = self._next_refusal()
        if refusal is not None:
            raise refusal
        items = body.get("items") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            raise _invalid("body must be a non-empty JSON array of payout items")
        if len(items) > MAX_ITEMS:
            raise _invalid(f"at most {MAX_ITEMS} payout items per request")
        core = self.core
        now = core.clock.now()
        parsed = [self._parse_item(item, i, now.date()) for i, item in enumerate(items)]
        with core.store.lock:
            refs = [p["ref"] for p in parsed]
            if len(set(refs)) != len(refs) or any(ref in core.store.payout_by_ref for ref in refs):
                raise TossError("DUPLICATED_REF_PAYOUT_ID")
            per_seller: dict[str, int] = {}
            for p in parsed:
                seller = core.store.sellers.get(p["destination"])
                if seller is None:
                    raise TossError("NOT_FOUND_SELLER")
                if seller.status not in PAYABLE_SELLER_STATES:
                    raise TossError("FORBIDDEN_SELLER_PAYOUT")
                per_seller[seller.id] = per_seller.get(seller.id, 0) + p["amount"]
            for seller_id, new_total in per_seller.items():
                seller = core.store.sellers[seller_id]
                if seller.status != "PARTIALLY_APPROVED":
                    continue
                if self._paid_last_week(seller_id, now) + new_total > core.settings.partially_approved_weekly_limit:
                    self._change_seller_status(seller, "KYC_REQUIRED")
                    raise TossError("FORBIDDEN_SELLER_PAYOUT", "주간 지급 한도를 초과해 KYC가 필요합니다.")
            total = sum(p["amount"] for p in parsed)
            # Only availableAmount can be paid out [DOC https://docs.tosspayments.com/reference/additional].
            if total > core.balances.available():
                settings = core.settings
                raise TossError(
                    settings.payout_insufficient_balance_code,
                    "지급가능한 금액을 초과했습니다.",
                    settings.payout_insufficient_balance_status,
                )
            core.store.balance.available -= total
            created = []
            for p in parsed:
                express = p["schedule"] == "EXPRESS"
                record = PayoutRecord(
                    id=core.ids.payout_id(),
                    ref_payout_id=p["ref"],
                    destination=p["destination"],
                    schedule_type=p["schedule"],
                    payout_date=p["payout_date"],
                    amount=p["amount"],
                    currency="KRW",
                    transaction_description=p["description"],
                    metadata=p["metadata"],
                    requested_at=now,
                    status="IN_PROGRESS" if express else "REQUESTED",
                    in_progress_since=now if express else None,
                )
                core.store.payouts[record.id] = record
                core.store.payout_by_ref[record.ref_payout_id] = record.id
                core.store.counters["payouts"] += 1
                created.append(self.payout_json(record))
            if core.settings.payout_entity_body == "list":
                return created
            return {"items": created}

    # ------------------------------------------------------------------ control: refuse the next payout requests
    def queue_refusal(self, body: Any) -> dict[str, Any]:
        """``POST /sandbox/payouts/refuse {code, message?, status?, count?}``: the next ``count`` (default 1)
        ``POST /v2/payouts`` calls are refused with that code (in the v2 envelope), nothing is created. For
        testing how a client handles a code it does not know."""
        if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not body["code"]:
            raise _invalid("code is required")
        status = body.get("status", 400)
        count = body.get("count", 1)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise _invalid("status must be an HTTP error status")
        if not isinstance(count, int) or count < 1:
            raise _invalid("count must be a whole number >= 1")
        message = body.get("message") or f"[sandbox] payout refused with {body['code']}"
        refusal = {"code": body["code"], "message": str(message), "status": status, "count": count}
        with self.core.store.lock:
            self.core.store.payout_refusals.append(refusal)
            return {"items": list(self.core.store.payout_refusals)}

    def _next_refusal(self) -> TossError | None:
        with self.core.store.lock:
            queue = self.core.store.payout_refusals
            if not queue:
                return None
            refusal = queue[0]
            refusal["count"] -= 1
            if refusal["count"] <= 0:
                queue.pop(0)
            return TossError(refusal["code"], refusal["message"], refusal["status"])

    def _paid_last_week(self, seller_id: str, now: Any) -> int:
        since = now - timedelta(days=7)
        return sum(
            p.amount
            for p in self.core.store.payouts.values()
            if p.destination == seller_id and p.requested_at >= since and p.status not in ("CANCELED", "FAILED")
        )

    def get_payout(self, payout_id: str) -> dict[str, Any]:
        with self.core.store.lock:
            payout = self.core.store.payouts.get(payout_id)
            if payout is None:
                raise TossError("NOT_FOUND_PAYOUT")
            return self.payout_json(payout)

    def list_payouts(self) -> dict[str, Any]:
        with self.core.store.lock:
            return {"items": [self.payout_json(p) for p in self.core.store.payouts.values()]}

    def cancel_payout(self, payout_id: str) -> dict[str, Any]:
        core = self.core
        with core.store.lock:
            payout = core.store.payouts.get(payout_id)
            if payout is None:
                raise TossError("NOT_FOUND_PAYOUT")
            if payout.status != "REQUESTED":
                raise TossError("NOT_CANCELABLE_PAYOUT")
            payout.status = "CANCELED"
            core.store.balance.available += payout.amount
            return self.payout_json(payout)

    def complete(self, payout_id: str, body: Any) -> dict[str, Any]:
        """Control: finish a REQUESTED/IN_PROGRESS payout as COMPLETED or FAILED (+ payout.changed)."""
        body = body if isinstance(body, dict) else {}
        status = body.get("status", "COMPLETED")
        if status not in ("COMPLETED", "FAILED"):
            raise _invalid("status must be COMPLETED or FAILED")
        error = body.get("error")
        if error is not None and not (isinstance(error, dict) and "code" in error):
            raise _invalid("error must be {code, message}")
        with self.core.store.lock:
            payout = self.core.store.payouts.get(payout_id)
            if payout is None:
                raise TossError("NOT_FOUND_PAYOUT")
            if payout.status not in ("REQUESTED", "IN_PROGRESS"):
                raise TossError("INVALID_REQUEST", f"payout is {payout.status}")
            self._finish(payout, status, error)
            return self.payout_json(payout)

    def _finish(self, payout: PayoutRecord, status: str, error: dict[str, Any] | None = None) -> None:
        core = self.core
        payout.status = status
        if status == "FAILED":
            payout.error = {
                "code": str((error or DEFAULT_PAYOUT_ERROR)["code"]),
                "message": str((error or DEFAULT_PAYOUT_ERROR).get("message", "")),
            }
            core.store.balance.available += payout.amount
            core.store.counters["payouts_failed"] += 1
        else:
            core.store.counters["payouts_completed"] += 1
        core.webhooks.payout_changed(self.payout_json(payout), core.clock.now())

    def set_balance(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _invalid("body must be a JSON object")
        with self.core.store.lock:
            for field, attr in (("available", "available"), ("pending", "pending")):
                if field in body:
                    value = as_whole_amount(body[field], minimum=0)
                    if value is None:
                        raise _invalid(f"{field} must be a whole number >= 0")
                    setattr(self.core.store.balance, attr, value)
            return self.balance_json()

    # ------------------------------------------------------------------ time-driven progress
    def sweep(self) -> None:
        """SCHEDULED payouts start on their payoutDate; optional auto-completion after a delay."""
        core = self.core
        now = core.clock.now()
        delay = core.settings.payout_auto_complete_seconds
        with core.store.lock:
            for payout in list(core.store.payouts.values()):
                if payout.status == "REQUESTED" and date.fromisoformat(payout.payout_date) <= now.date():
                    payout.status = "IN_PROGRESS"
                    payout.in_progress_since = now
                if (
                    delay is not None
                    and payout.status == "IN_PROGRESS"
                    and payout.in_progress_since is not None
                    and (now - payout.in_progress_since).total_seconds() >= delay
                ):
                    self._finish(payout, "COMPLETED")
