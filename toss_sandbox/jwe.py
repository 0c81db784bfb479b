"""Payout ENCRYPTION security mode [DOC https://docs.tosspayments.com/guides/v2/payouts]: compact JWE,
``alg: dir``, ``enc: A256GCM``.

The key is the 64-hex-character security key, hex-decoded to 32 bytes. The protected header carries the
custom members ``iat`` (ISO-8601 with offset, no milliseconds) and ``nonce`` (random).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from jwcrypto import jwe, jwk
from jwcrypto.common import base64url_decode, base64url_encode

from .clock import KST, iso

SECURITY_MODE_HEADER = "TossPayments-api-security-mode"
SECURITY_MODE_VALUE = "ENCRYPTION"


class JweError(ValueError):
    """The token is malformed, uses other algorithms, lacks iat/nonce, or does not decrypt with the key."""


def _key(security_key_hex: str) -> jwk.JWK:
    try:
        raw = bytes.fromhex(security_key_hex)
    except ValueError as exc:
        raise JweError("security key must be hex") from exc
    if len(raw) != 32:
        raise JweError("security key must decode to 32 bytes")
    return jwk.JWK(kty="oct", k=base64url_encode(raw))


def jwe_encrypt(
    payload: bytes | str,
    security_key_hex: str,
    *,
    iat: str | None = None,
    nonce: str | None = None,
) -> str:
    """Encrypt ``payload`` into a compact JWE string with Toss's protected header."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    header = {
        "alg": "dir",
        "enc": "A256GCM",
        "iat": iat or iso(datetime.now(KST)),
        "nonce": nonce or str(uuid.uuid4()),
    }
    token = jwe.JWE(data, protected=json.dumps(header, separators=(",", ":")))
    token.add_recipient(_key(security_key_hex))
    return str(token.serialize(compact=True))


def jwe_protected_header(token: str | bytes) -> dict[str, Any]:
    """The decoded protected header of a compact JWE (no decryption)."""
    text = token.decode("ascii") if isinstance(token, bytes) else token
    parts = text.strip().split(".")
    if len(parts) != 5:
        raise JweError("not a compact JWE (expected 5 parts)")
    try:
        header = json.loads(base64url_decode(parts[0]))
    except ValueError as exc:
        raise JweError("protected header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise JweError("protected header is not a JSON object")
    return header


def jwe_decrypt(token: str | bytes, security_key_hex: str, *, require_iat_nonce: bool = True) -> bytes:
    """Decrypt a compact JWE produced with the security key; checks ``dir``/``A256GCM`` and iat/nonce."""
    text = token.decode("ascii", errors="replace") if isinstance(token, bytes) else token
    text = text.strip()
    header = jwe_protected_header(text)
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
        raise JweError("protected header must have alg=dir and enc=A256GCM")
    if require_iat_nonce and (not header.get("iat") or not header.get("nonce")):
        raise JweError("protected header must carry iat and nonce")
    obj = jwe.JWE()
    try:
        obj.deserialize(text, key=_key(security_key_hex))
    except Exception as exc:  # jwcrypto raises several types (InvalidJWEData, ValueError, ...)
        raise JweError(f"cannot decrypt: {exc.__class__.__name__}") from exc
    return bytes(obj.payload)
