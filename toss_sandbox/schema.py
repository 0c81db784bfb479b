"""Checks every Payment object the sandbox produces against Toss's published ``Payment`` schema.

Source: ``components.schemas`` of the community transcription of Toss's Core API reference (API version
2022-11-16) [SPEC]; an unmodified extract is vendored in ``data/`` with its provenance and errata in
``data/PROVENANCE.md``; ``openapi_path`` may point at the full file. Adaptations applied at load time, all
documented errata or facts of real payloads (Toss's own examples, e.g. the Payment in
https://docs.tosspayments.com/reference/error-codes [DOC]):

* amount fields typed ``string`` (``totalAmount``, ``balanceAmount``) are numbers;
* the transcription never allows ``null`` while real Payment objects carry ``null`` for absent parts
  (``card``, ``virtualAccount``, ``cancels``, ``failure`` ...). Every property that is not ``required`` may
  therefore be ``null``; of the required ones only ``approvedAt`` (null until approval), ``method`` (may be
  null before approval) and ``virtualAccount.refundReceiveAccount`` may be ``null``.

``date-time`` and ``uri`` formats are checked (ISO-8601 with an offset; absolute URL).
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonschema import Draft202012Validator, FormatChecker

log = logging.getLogger("toss_sandbox.schema")

VENDORED_SCHEMA = Path(__file__).parent / "data" / "core_api_payment_schemas.json"

# (object name, property) pairs that are required by the transcription but null in real payloads.
NULLABLE_REQUIRED = {
    ("Payment", "approvedAt"),
    ("Payment", "method"),
    ("virtualAccount", "refundReceiveAccount"),
}


class PaymentSchemaError(AssertionError):
    """A Payment produced by the sandbox does not match the schema: a bug in the sandbox."""


def _is_amount_name(name: str) -> bool:
    return name == "amount" or name.endswith("Amount")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


def adapt_schema(node: Any, name: str = "") -> Any:
    """Apply the errata above to one schema node (recursively); returns a new node."""
    if isinstance(node, list):
        return [adapt_schema(item, name) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            required = set(node.get("required", []))
            props: dict[str, Any] = {}
            for prop, sub in value.items():
                adapted = adapt_schema(sub, prop)
                if _is_amount_name(prop) and adapted.get("type") == "string":
                    adapted["type"] = "number"
                if prop not in required or (name, prop) in NULLABLE_REQUIRED:
                    adapted = _nullable(adapted)
                props[prop] = adapted
            out[key] = props
        else:
            out[key] = adapt_schema(value, name)
    return out


def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


def _check_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlparse(value)
    return bool(parts.scheme and parts.netloc)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checks("date-time")(_check_date_time)
    checker.checks("uri")(_check_uri)
    return checker


def load_components(openapi_path: str | None = None) -> dict[str, Any]:
    path = Path(openapi_path) if openapi_path else VENDORED_SCHEMA
    document = json.loads(path.read_text(encoding="utf-8"))
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


class PaymentSchema:
    def __init__(self, openapi_path: str | None = None) -> None:
        components = load_components(openapi_path)
        adapted = {name: adapt_schema(copy.deepcopy(schema), name) for name, schema in components.items()}
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": {"schemas": adapted},
            "$ref": "#/components/schemas/Payment",
        }
        Draft202012Validator.check_schema(root)
        self._validator = Draft202012Validator(root, format_checker=_format_checker())

    def errors(self, payment: dict[str, Any]) -> list[str]:
        found = sorted(self._validator.iter_errors(payment), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in found]

    def check(self, payment: dict[str, Any]) -> None:
        problems = self.errors(payment)
        if problems:
            log.error("SANDBOX BUG: Payment %s violates the schema: %s", payment.get("paymentKey"), problems)
            raise PaymentSchemaError("; ".join(problems))
