"""An optional allowlist of the addresses Toss sends webhooks from (docs/toss-behaviours.md, "Webhooks": Toss's
security page lists 13.124.18.147, 13.124.108.35, 3.36.173.151 and 3.38.81.32).

``TOSS_WEBHOOK_ALLOWED_IPS`` is a comma-separated list of addresses or CIDR blocks (IPv4 or IPv6); empty means
every source is accepted (verification of the payload itself is what proves a webhook genuine; the allowlist is
a second fence). The address checked is API Gateway's ``requestContext.http.sourceIp``, the peer of the TLS
connection, which a client cannot forge with headers such as X-Forwarded-For.

The webhook service (`services/webhooks.receive`) checks it first, before the body is parsed: a delivery from another
address is answered 403 ``WEBHOOK_SOURCE_NOT_ALLOWED``, logged as metadata only (headers, size, SHA-256) and counted
in WebhooksRejected. The list is read with the other settings (`Settings.toss_webhook_allowed_ips`), which refuse
an entry that is not an address or a block.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_VAR = "TOSS_WEBHOOK_ALLOWED_IPS"
# Toss's documented webhook source addresses (docs/toss-behaviours.md), for the template's parameter description.
TOSS_DOCUMENTED_SOURCES = ("13.124.18.147", "13.124.108.35", "3.36.173.151", "3.38.81.32")


@lru_cache(maxsize=8)
def parse_allowlist(text: str) -> tuple[Network, ...]:
    """``"1.2.3.4, 10.0.0.0/8"`` -> networks. ValueError names the entry that is not an address or a block."""
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}: {entry!r} is not an IP address or CIDR block") from exc
    return tuple(networks)


def source_ip(event: Mapping[str, Any]) -> str | None:
    """API Gateway HTTP API (payload 2.0): requestContext.http.sourceIp."""
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, Mapping) else None
    value = http.get("sourceIp") if isinstance(http, Mapping) else None
    return value if isinstance(value, str) and value else None


def is_allowed(address: str | None, allowlist: tuple[Network, ...]) -> bool:
    """True when the allowlist is empty, or the address is in one of its networks. A missing or malformed
    address is refused when there is an allowlist (fail closed)."""
    if not allowlist:
        return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:13.124.18.147 is the IPv4 sender
    return any(ip.version == net.version and ip in net for net in allowlist)


def allowed(event: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> bool:
    """Whether this webhook event's sender is allowed by ``TOSS_WEBHOOK_ALLOWED_IPS`` (read per call: cheap, cached)."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return is_allowed(source_ip(event), parse_allowlist(text))
