"""Every Payment the sandbox produces matches Toss's published Payment schema (with the documented errata)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from toss_sandbox import Sandbox
from toss_sandbox.schema import VENDORED_SCHEMA, PaymentSchema

from .conftest import TossClient

AMOUNT_FIELDS = ("totalAmount", "balanceAmount", "suppliedAmount", "vat", "taxFreeAmount", "taxExemptionAmount")


def produce_every_kind_of_payment(toss: TossClient) -> list[dict[str, Any]]:
    """Drive payments into every status and method the sandbox knows; return every Payment answered."""
    seen: list[dict[str, Any]] = []

    def keep(response: Any) -> None:
        assert response.status_code == 200, response.text
        seen.append(response.json())

    for method in ("카드", "간편결제", "계좌이체", "휴대폰"):
        seen.append(toss.paid(amount=30000, method=method, metadata={"groupId": "g1"}))
    in_progress = toss.widget(amount=1000)
    keep(toss.get(f"/v1/payments/{in_progress['paymentKey']}"))
    payment = toss.paid(amount=30000, taxFreeAmount=1000)
    keep(toss.cancel(payment["paymentKey"], {"cancelReason": "a", "cancelAmount": 10000, "taxFreeAmount": 500}))
    keep(toss.cancel(payment["paymentKey"], {"cancelReason": "b"}))
    full = toss.paid(amount=5000)
    keep(toss.cancel(full["paymentKey"], {"cancelReason": "full"}))
    va = toss.widget(amount=20000, method="가상계좌")
    keep(toss.confirm(va["paymentKey"], va["orderId"], 20000))
    seen.append(toss.control("POST", f"/sandbox/payments/{va['paymentKey']}/deposit"))
    toss.faults(failure_rate=1)
    aborted = toss.widget()
    toss.confirm(aborted["paymentKey"], aborted["orderId"], aborted["amount"])
    toss.control("DELETE", "/sandbox/faults")
    keep(toss.get(f"/v1/payments/{aborted['paymentKey']}"))
    expired = toss.widget()
    toss.control("POST", "/sandbox/clock", {"advance_seconds": 601})
    keep(toss.get(f"/v1/payments/orders/{expired['orderId']}"))
    seen.extend(toss.control("GET", "/sandbox/payments")["items"])
    return seen


def test_all_produced_payments_validate_against_the_payment_schema(toss: TossClient) -> None:
    payments = produce_every_kind_of_payment(toss)
    schema = PaymentSchema()

    statuses = {p["status"] for p in payments}
    assert statuses == {
        "IN_PROGRESS",
        "WAITING_FOR_DEPOSIT",
        "DONE",
        "CANCELED",
        "PARTIAL_CANCELED",
        "ABORTED",
        "EXPIRED",
    }
    assert {p["method"] for p in payments} == {"카드", "간편결제", "계좌이체", "휴대폰", "가상계좌"}
    for payment in payments:
        assert schema.errors(payment) == [], payment
        for name in AMOUNT_FIELDS:
            assert isinstance(payment[name], int) and not isinstance(payment[name], bool), name
    stats = toss.stats()
    assert stats["schemaViolations"] == 0
    assert toss.control("GET", "/sandbox/schema-violations")["items"] == []


def test_payments_carry_every_property_of_the_schema(toss: TossClient) -> None:
    schema = json.loads(VENDORED_SCHEMA.read_text(encoding="utf-8"))["components"]["schemas"]["Payment"]
    payment = toss.paid()
    assert set(schema["properties"]) <= set(payment)
    entry = toss.cancel(payment["paymentKey"], {"cancelReason": "x"}).json()["cancels"][0]
    assert set(schema["properties"]["cancels"]["items"]["properties"]) <= set(entry)


def test_schema_check_has_teeth(toss: TossClient) -> None:
    payment = toss.paid()
    schema = PaymentSchema()
    broken_amount = dict(payment, totalAmount="30000")
    missing = {k: v for k, v in payment.items() if k != "mId"}
    bad_status = dict(payment, status="PAID")
    bad_time = dict(payment, requestedAt="yesterday")
    bad_card = copy.deepcopy(payment)
    bad_card["card"]["cardType"] = "credit"
    for broken in (broken_amount, missing, bad_status, bad_time, bad_card):
        assert schema.errors(broken), broken
    assert schema.errors(payment) == []


def test_a_payment_that_breaks_the_schema_is_answered_500_and_recorded(
    sandbox: Sandbox, toss: TossClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = toss.paid()
    original = sandbox.core.payments.to_json

    def broken(record: Any) -> dict[str, Any]:
        return dict(original(record), totalAmount="oops")

    monkeypatch.setattr(sandbox.core.payments, "to_json", broken)
    response = toss.get(f"/v1/payments/{payment['paymentKey']}")

    assert response.status_code == 500
    assert response.json()["code"] == "SANDBOX_SCHEMA_VIOLATION"
    assert toss.stats()["schemaViolations"] == 1
    assert "totalAmount" in toss.control("GET", "/sandbox/schema-violations")["items"][0]["errors"]


def test_vendored_schema_is_the_unmodified_extract_its_provenance_names() -> None:
    document = json.loads(VENDORED_SCHEMA.read_text(encoding="utf-8"))
    provenance = document["x-provenance"]
    schemas = document["components"]["schemas"]
    canonical = json.dumps(schemas, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    assert set(schemas) == {"Payment", "Failure", "CashReceipt"}
    assert hashlib.sha256(canonical).hexdigest() == provenance["extract_sha256"]
    assert provenance["commit"] in (VENDORED_SCHEMA.parent / "PROVENANCE.md").read_text(encoding="utf-8")
    assert provenance["extract_sha256"] in (VENDORED_SCHEMA.parent / "PROVENANCE.md").read_text(encoding="utf-8")


def test_the_full_openapi_file_can_be_used_instead(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    """``openapi_path`` takes a whole OpenAPI document (here: the extract wrapped in one with paths)."""
    vendored = json.loads(VENDORED_SCHEMA.read_text(encoding="utf-8"))
    full = {
        "openapi": "3.1.0",
        "info": vendored["info"],
        "paths": {"/v1/payments/{paymentKey}": {"get": {"responses": {"200": {"description": "Payment"}}}}},
        "components": {"schemas": {**vendored["components"]["schemas"], "Unrelated": {"type": "object"}}},
    }
    path = tmp_path / "core-api.openapi.json"
    path.write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    toss = TossClient(make_sandbox(openapi_path=str(path)).url)
    assert toss.paid()["status"] == "DONE"
    assert toss.stats()["schemaViolations"] == 0


def test_a_schema_file_that_breaks_the_payment_shape_is_noticed(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    vendored = json.loads(VENDORED_SCHEMA.read_text(encoding="utf-8"))
    vendored["components"]["schemas"]["Payment"]["required"].append("somethingTossNeverSends")
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(vendored, ensure_ascii=False), encoding="utf-8")
    toss = TossClient(make_sandbox(openapi_path=str(path)).url)

    response = requests.post(
        toss.base_url + "/sandbox/payments", json={"orderId": "order-broken-1", "amount": 1000}, timeout=5
    )

    assert (response.status_code, response.json()["code"]) == (500, "SANDBOX_SCHEMA_VIOLATION")
    assert "somethingTossNeverSends" in response.json()["message"]
    assert toss.stats()["schemaViolations"] == 1
