"""Pure rules: state tables, body validation, Toss error classification, settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from escrow.config import Settings, parse_database_url
from escrow.models import ConfirmBody, CreatePaymentRequestBody
from escrow.states import InvalidTransition, check_payment, check_request
from escrow.toss.errors import TossApiError


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("pending", "in_progress"),
        ("in_progress", "completed"),
        ("in_progress", "unknown"),
        ("unknown", "completed"),
        ("failed", "in_progress"),
        ("completed", "released"),
        ("completed", "partially_refunded"),
        ("completed", "in_progress"),  # Toss took a virtual-account deposit back: the account waits again
    ],
)
def test_allowed_payment_transitions(current, new):
    check_payment(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("pending", "completed"),
        ("released", "refunded"),
        ("released", "in_progress"),
        ("removed", "completed"),
        ("removed", "in_progress"),
        ("in_progress", "removed"),
    ],
)
def test_refused_payment_transitions(current, new):
    with pytest.raises(InvalidTransition):
        check_payment(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("refunded", "in_progress"),  # the payer pays the whole share again
        ("partially_refunded", "in_progress"),  # ... or the refunded difference
        ("in_progress", "partially_refunded"),  # that attempt did not charge: back to what the share holds
        ("completed", "removed"),  # the owner takes the participant out (their money is refunded)
        ("removed", "pending"),  # ... and adds them back
    ],
)
def test_the_lifecycle_of_a_group_is_allowed(current, new):
    check_payment(current, new)


def test_request_cannot_leave_a_final_state():
    for final in ("released", "cancelled", "expired"):
        with pytest.raises(InvalidTransition):
            check_request(final, "pending")
    check_request("completed", "pending")  # a refunded share reopens a funded request


BASE = {"chat_room_id": 123, "store_id": "store_123", "amount": 15000, "participant_ids": ["user_2"]}


@pytest.mark.parametrize(
    "patch",
    [
        {"amount": 15000.0},
        {"amount": "15000"},
        {"amount": True},
        {"amount": 0},
        {"amount": -1},
        {"amount": 10**12},
        {"chat_room_id": "123"},
        {"chat_room_id": 0},
        {"store_id": "store 123; DROP TABLE payments"},
        {"unknown_field": 1},
        {"participant_ids": []},
        {"participant_ids": ["a", "a"]},
        {"message": "bell\x07"},
        {"release_at": "2030-01-01T00:00:00"},
    ],
)
def test_bad_request_bodies_are_refused(patch):
    with pytest.raises(ValidationError):
        CreatePaymentRequestBody.model_validate({**BASE, **patch})


def test_unicode_messages_are_accepted_verbatim():
    body = CreatePaymentRequestBody.model_validate({**BASE, "message": "예약금 🙏 '; DROP TABLE x; --"})
    assert body.message == "예약금 🙏 '; DROP TABLE x; --"


def test_deadlines_are_normalised_to_utc():
    body = CreatePaymentRequestBody.model_validate({**BASE, "release_at": "2030-01-01T09:00:00+09:00"})
    assert body.release_at is not None and body.release_at.isoformat() == "2030-01-01T00:00:00+00:00"


@pytest.mark.parametrize("order_id", ["short", "x" * 65, "has space 123", "order=123456"])
def test_order_ids_follow_tosss_rules(order_id):
    with pytest.raises(ValidationError):
        ConfirmBody.model_validate(
            {"chat_room_id": 1, "amount": 15000, "paymentKey": "pk", "orderId": order_id, "payment_method": "card"}
        )


def test_toss_errors_are_classified_by_code_not_status():
    assert TossApiError(400, "PROVIDER_ERROR", "x").retryable
    assert TossApiError(400, "ALREADY_PROCESSED_PAYMENT", "x").outcome_unknown
    assert not TossApiError(403, "REJECT_CARD_PAYMENT", "x").retryable
    assert TossApiError(500, "SOMETHING_NEW", "x").outcome_unknown
    assert TossApiError(401, "UNAUTHORIZED_KEY", "x").configuration


def test_toss_read_timeout_must_stay_below_api_gateways_limit():
    with pytest.raises(ValueError, match="TOSS_READ_TIMEOUT"):
        Settings(toss_read_timeout=30)
    with pytest.raises(ValueError, match="PLATFORM_FEE_BPS must be a int"):
        Settings.from_env({"PLATFORM_FEE_BPS": "three"})
    assert Settings.from_env({"TOSS_READ_TIMEOUT": "5", "PLATFORM_FEE_BPS": "250"}).platform_fee_bps == 250


def test_database_url_password_is_not_printed():
    params = parse_database_url("mysql://app:s3cret@db.example:3307/escrow")
    assert (params.host, params.port, params.user, params.database) == ("db.example", 3307, "app", "escrow")
    assert "s3cret" not in repr(params)
