"""JWE compact serialisation with `alg: dir`, `enc: A256GCM`, as Toss payouts v2 require (docs/toss-behaviours.md):
the security key is 64 hex characters, hex-decoded to the 32-byte content key; the protected header carries
`iat` and `nonce`."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KST = timezone(timedelta(hours=9))


class JweError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def content_key(security_key_hex: str) -> bytes:
    try:
        key = bytes.fromhex(security_key_hex)
    except ValueError as exc:
        raise JweError("the Toss security key must be 64 hex characters") from exc
    if len(key) != 32:
        raise JweError("the Toss security key must be 64 hex characters (32 bytes)")
    return key


def encrypt(plaintext: bytes | str, security_key_hex: str, *, now: datetime | None = None) -> str:
    if isinstance(plaintext, str):
        plaintext = plaintext.encode("utf-8")
    issued = (now or datetime.now(KST)).astimezone(KST).replace(microsecond=0)
    header = {"alg": "dir", "enc": "A256GCM", "iat": issued.isoformat(), "nonce": str(uuid.uuid4())}
    protected = _b64(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(content_key(security_key_hex)).encrypt(iv, plaintext, protected.encode("ascii"))
    return ".".join([protected, "", _b64(iv), _b64(sealed[:-16]), _b64(sealed[-16:])])


def decrypt(token: str, security_key_hex: str) -> bytes:
    parts = token.strip().split(".")
    if len(parts) != 5:
        raise JweError("not a JWE compact serialisation")
    protected, encrypted_key, iv, ciphertext, tag = parts
    try:
        header = json.loads(_unb64(protected))
    except ValueError as exc:
        raise JweError("the JWE header is not JSON") from exc
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM" or encrypted_key:
        raise JweError("only alg=dir, enc=A256GCM is accepted")
    try:
        return AESGCM(content_key(security_key_hex)).decrypt(
            _unb64(iv), _unb64(ciphertext) + _unb64(tag), protected.encode("ascii")
        )
    except InvalidTag as exc:
        raise JweError("the JWE does not decrypt with this key (tag mismatch)") from exc
