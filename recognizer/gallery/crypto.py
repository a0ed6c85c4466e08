"""Encryption at rest for biometric templates (DESIGN.md, "Security").

Each blob is AES-256-GCM with a fresh random 12-byte nonce prefixed. The associated data
names the row the blob belongs to, so a blob copied into another row fails to decrypt
instead of silently giving another person's face.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("recognizer.gallery.crypto")

NONCE_BYTES = 12
KEY_ENV = "RECOGNIZER_TEMPLATE_KEY"


class CipherError(RuntimeError):
    """A blob failed authentication: wrong key, tampering, or a blob from another row."""


@runtime_checkable
class TemplateCipher(Protocol):
    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes: ...


class NullCipher:
    """No-op, used when no key is configured (development and tests)."""

    encrypted = False

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return bytes(plaintext)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        return bytes(ciphertext)


class AesGcmCipher:
    encrypted = True

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("template key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < NONCE_BYTES + 16:
            raise CipherError("template blob is too short to be AES-GCM output")
        try:
            return self._aead.decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise CipherError("template blob failed authentication") from exc


def cipher_from_env(
    var: str = KEY_ENV, env: dict[str, str] | None = None
) -> AesGcmCipher | NullCipher:
    """AES-GCM with the base64 key in `var`, or NullCipher (with a warning) when it is unset."""
    environ = os.environ if env is None else env
    raw = environ.get(var, "").strip()
    if not raw:
        log.warning("%s is not set: biometric templates are stored unencrypted", var)
        return NullCipher()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{var} is not valid base64") from exc
    if len(key) != 32:
        raise ValueError(f"{var} must decode to 32 bytes, got {len(key)}")
    return AesGcmCipher(key)
