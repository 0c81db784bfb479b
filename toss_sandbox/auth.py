"""Basic authentication as Toss does it: ``Authorization: Basic base64("{SECRET_KEY}:")``
[DOC https://docs.tosspayments.com/reference/using-api/authorization; codes DOC https://docs.tosspayments.com/reference/error-codes].

* no (or empty) Authorization header                       -> 401 UNAUTHORIZED_KEY
* not ``Basic <base64>``, not decodable, no trailing colon,
  or a non-empty password after the colon                  -> 403 INCORRECT_BASIC_AUTH_FORMAT
* a key that is not one of the accepted secret keys        -> 401 UNAUTHORIZED_KEY
  (a BOM-prefixed encoding, ``77u/...``, decodes to an unknown key and lands here)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from .errors import TossError


def basic_auth_header(secret_key: str) -> str:
    """The header value a client sends for ``secret_key``."""
    return "Basic " + base64.b64encode(f"{secret_key}:".encode()).decode("ascii")


def authenticate(header: str | None, accepted_keys: Iterable[str]) -> str:
    """Return the secret key of a valid header or raise the TossError Toss would answer."""
    if header is None or not header.strip():
        raise TossError("UNAUTHORIZED_KEY")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise TossError("INCORRECT_BASIC_AUTH_FORMAT")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TossError("INCORRECT_BASIC_AUTH_FORMAT") from None
    if not decoded.endswith(":") or decoded.count(":") != 1:
        raise TossError("INCORRECT_BASIC_AUTH_FORMAT")
    key = decoded[:-1]
    if not key or key not in set(accepted_keys):
        raise TossError("UNAUTHORIZED_KEY")
    return key
