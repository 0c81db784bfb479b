"""Envelope encryption of account numbers at rest (stores' payout accounts, refund accounts).

Each value gets a data key of its own (AES-256, from KMS ``GenerateDataKey`` when deployed), is sealed with
AES-GCM, and is stored as two columns: the ciphertext (nonce + ciphertext + tag) and the data key encrypted
by the key provider. The encryption context names the table, the column and the row; KMS binds it to the
encrypted data key and AES-GCM to the ciphertext (as associated data), so a value copied onto another row, or
into another column, does not open.

Who decrypts: only the paths that must send the number to Toss (the payout path when a seller's account has
to be sent again, and virtual-account refunds, which need ``refundReceiveAccount``). The template grants
``kms:Decrypt`` to those functions' roles only; registration needs the number in clear once, from the request
body, and only encrypts.

Providers: :class:`KmsKeyProvider` (``ACCOUNTS_KMS_KEY_ID``: the template's key) and
:class:`LocalKeyProvider` (``APP_ENV=local`` only: a fixed development key, or ``ACCOUNTS_LOCAL_KEY``, 64 hex
characters). Nothing here is imported on a request path that does not encrypt: boto3 is imported on first use.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from escrow.config import get_settings, settings_generation

NONCE_BYTES = 12
KEY_BYTES = 32
# Development only (APP_ENV=local): local runs and tests encrypt with this key. Not a secret by design.
LOCAL_DEVELOPMENT_KEY = bytes.fromhex("6c6f63616c2d6f6e6c792d6163636f756e742d6b65792d6e6f742d7365637265")
_LOCAL_WRAP_PREFIX = b"LK1"  # marks a data key wrapped by the local provider (KMS blobs never start with it)

EncryptionContext = dict[str, str]


class AccountCryptoError(Exception):
    """A value could not be sealed or opened (wrong context, wrong key, tampered data, no key configured)."""


@dataclass(frozen=True)
class Sealed:
    """What is stored: ``ciphertext`` = nonce || AES-GCM(ciphertext || tag); ``data_key`` = the wrapped key."""

    ciphertext: bytes
    data_key: bytes

    def __repr__(self) -> str:
        return f"Sealed(ciphertext=<{len(self.ciphertext)} bytes>, data_key=<{len(self.data_key)} bytes>)"


class KeyProvider(Protocol):
    name: str

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        """A fresh 32-byte data key: (plaintext key, encrypted key)."""

    def decrypt_data_key(self, encrypted: bytes, context: EncryptionContext) -> bytes:
        """The plaintext data key, or AccountCryptoError."""


def encryption_context(table: str, column: str, row: str | int) -> EncryptionContext:
    """The context every sealed value is bound to: ``{"table", "column", "row"}`` (all strings, as KMS wants)."""
    return {"table": table, "column": column, "row": str(row)}


def _aad(context: EncryptionContext) -> bytes:
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


class KmsKeyProvider:
    """Data keys from AWS KMS (``GenerateDataKey`` AES_256 / ``Decrypt``), bound to the encryption context."""

    name = "kms"

    def __init__(self, key_id: str, client: Any = None) -> None:
        self.key_id = key_id
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # the Lambda runtime's; imported only when an account number is sealed or opened

            self._client = boto3.client("kms")
        return self._client

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        try:
            answer = self.client.generate_data_key(KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=context)
        except Exception as exc:
            raise AccountCryptoError(f"KMS could not generate a data key: {type(exc).__name__}") from exc
        return bytes(answer["Plaintext"]), bytes(answer["CiphertextBlob"])

    def decrypt_data_key(self, encrypted: bytes, context: EncryptionContext) -> bytes:
        if encrypted.startswith(_LOCAL_WRAP_PREFIX):
            raise AccountCryptoError("this value was sealed with the local development key, not with KMS")
        try:
            answer = self.client.decrypt(CiphertextBlob=encrypted, EncryptionContext=context, KeyId=self.key_id)
        except Exception as exc:
            raise AccountCryptoError(f"KMS refused to decrypt the data key: {type(exc).__name__}") from exc
        return bytes(answer["Plaintext"])


class LocalKeyProvider:
    """Local runs and tests: data keys wrapped with AES-GCM under a local key, the context as associated data."""

    name = "local"

    def __init__(self, key: bytes = LOCAL_DEVELOPMENT_KEY) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the local account key must be 32 bytes (64 hex characters)")
        self._wrap = AESGCM(key)

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        return key, _LOCAL_WRAP_PREFIX + nonce + self._wrap.encrypt(nonce, key, _aad(context))

    def decrypt_data_key(self, encrypted: bytes, context: EncryptionContext) -> bytes:
        if not encrypted.startswith(_LOCAL_WRAP_PREFIX):
            raise AccountCryptoError("this value was not sealed with the local key (a KMS data key?)")
        body = encrypted[len(_LOCAL_WRAP_PREFIX) :]
        try:
            return self._wrap.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad(context))
        except Exception as exc:
            raise AccountCryptoError("the data key does not open with this key and context") from exc


def seal(plaintext: str, context: EncryptionContext, provider: KeyProvider | None = None) -> Sealed:
    provider = provider or key_provider()
    key, wrapped = provider.generate_data_key(context)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext.encode(), _aad(context))
    return Sealed(ciphertext=nonce + ciphertext, data_key=wrapped)


def open_sealed(sealed: Sealed, context: EncryptionContext, provider: KeyProvider | None = None) -> str:
    """The plaintext. Only the payout and refund paths call this (see the module docstring)."""
    provider = provider or key_provider()
    key = provider.decrypt_data_key(sealed.data_key, context)
    blob = sealed.ciphertext
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(context)).decode()
    except Exception as exc:
        raise AccountCryptoError("the value does not open with this context (tampered, or another row's)") from exc


def last4(number: str) -> str:
    """Kept in clear beside the ciphertext, so answers can show a masked number without decrypting."""
    return number[-4:]


_provider_lock = threading.Lock()
_provider: tuple[int, KeyProvider] | None = None


def key_provider() -> KeyProvider:
    """The configured provider (cached per settings generation): KMS when a key is set, else local-only."""
    global _provider
    generation = settings_generation()
    with _provider_lock:
        if _provider is not None and _provider[0] == generation:
            return _provider[1]
        settings = get_settings()
        provider: KeyProvider
        if settings.accounts_kms_key_id:
            provider = KmsKeyProvider(settings.accounts_kms_key_id)
        elif settings.app_env == "local":
            key = bytes.fromhex(settings.accounts_local_key) if settings.accounts_local_key else LOCAL_DEVELOPMENT_KEY
            provider = LocalKeyProvider(key)
        else:
            raise AccountCryptoError("no KMS key configured for account numbers (ACCOUNTS_KMS_KEY_ID)")
        _provider = (generation, provider)
        return provider
