"""The optional allowlist of Toss's webhook source addresses, read from requestContext.http.sourceIp."""

from __future__ import annotations

import pytest

from escrow import webhook_source
from escrow.webhook_source import TOSS_DOCUMENTED_SOURCES, allowed, is_allowed, parse_allowlist
from tests.support.events import http_event

TOSS = ",".join(TOSS_DOCUMENTED_SOURCES)


def _webhook_from(ip: str | None) -> dict:
    event = http_event("POST", "/api/v1/payment/webhook", body={"eventType": "PAYMENT_STATUS_CHANGED"})
    if ip is None:
        del event["requestContext"]["http"]["sourceIp"]
    else:
        event["requestContext"]["http"]["sourceIp"] = ip
    return event


def test_no_allowlist_accepts_every_source() -> None:
    assert allowed(_webhook_from("198.51.100.7"), {})
    assert allowed(_webhook_from(None), {"TOSS_WEBHOOK_ALLOWED_IPS": ""})


@pytest.mark.parametrize("ip", TOSS_DOCUMENTED_SOURCES)
def test_tosss_documented_addresses_pass_the_allowlist(ip: str) -> None:
    assert allowed(_webhook_from(ip), {"TOSS_WEBHOOK_ALLOWED_IPS": TOSS})


@pytest.mark.parametrize("ip", ["198.51.100.7", "13.124.18.148", "3.36.173.15", "", None, "not-an-ip", "::1"])
def test_other_or_missing_sources_are_refused_when_there_is_an_allowlist(ip) -> None:
    assert not allowed(_webhook_from(ip), {"TOSS_WEBHOOK_ALLOWED_IPS": TOSS})


def test_headers_cannot_claim_an_allowed_address() -> None:
    event = _webhook_from("198.51.100.7")
    event["headers"]["x-forwarded-for"] = TOSS_DOCUMENTED_SOURCES[0]
    event["headers"]["x-real-ip"] = TOSS_DOCUMENTED_SOURCES[0]
    assert not allowed(event, {"TOSS_WEBHOOK_ALLOWED_IPS": TOSS})


def test_cidr_blocks_ipv6_and_ipv4_mapped_addresses() -> None:
    networks = parse_allowlist(" 115.92.221.120/29 , 2001:db8::/32,")
    assert is_allowed("115.92.221.126", networks)
    assert not is_allowed("115.92.221.128", networks)
    assert is_allowed("2001:db8::1", networks)
    assert is_allowed("::ffff:115.92.221.121", networks)
    assert not is_allowed("2001:db9::1", networks)


def test_a_malformed_allowlist_is_a_configuration_error_naming_the_entry() -> None:
    with pytest.raises(ValueError, match=r"'13\.124\.18\.300' is not an IP address"):
        parse_allowlist("13.124.18.147,13.124.18.300")


def test_the_process_environment_is_read_when_no_mapping_is_given(monkeypatch) -> None:
    monkeypatch.setenv("TOSS_WEBHOOK_ALLOWED_IPS", "13.124.18.147")
    assert webhook_source.allowed(_webhook_from("13.124.18.147"))
    assert not webhook_source.allowed(_webhook_from("13.124.18.146"))


def test_the_setting_refuses_an_entry_that_is_no_address_or_block() -> None:
    from escrow.config import Settings

    assert Settings.from_env({"TOSS_WEBHOOK_ALLOWED_IPS": TOSS}).toss_webhook_allowed_ips == TOSS
    with pytest.raises(ValueError, match="not-an-address"):
        Settings.from_env({"TOSS_WEBHOOK_ALLOWED_IPS": "13.124.18.147, not-an-address"})
