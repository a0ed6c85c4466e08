"""Encryption at rest for templates and the index file (README: "Security", "Template keys").

Each blob is AES-256-GCM with a fresh random 12-byte nonce, prefixed by a magic and the id
of the key that sealed it, so a store half-way through a key rotation can still be read with
the old and the new key held together. The associated data names what the blob belongs to
(the template row, or the index file and chunk), so a blob copied elsewhere fails to decrypt
instead of silently giving another person's face. Release 0.1.0 wrote blobs without the
prefix (nonce + ciphertext); they are still read, by trying each key held.

A key's id and its key-check value (KCV) are HMAC-SHA256 of fixed labels: the id is public
(it names the key in blobs and messages), the KCV lets a store check a key before using it.
"""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
import logging
import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recognizer.errors import FailedPrecondition

log = logging.getLogger("recognizer.store.crypto")

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_BYTES = 8
MAGIC = b"RTK1"
# Magic, key id, nonce and tag: what sealing adds to a plaintext.
OVERHEAD = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES
_MAGIC_END = len(MAGIC)
_BODY_AT = len(MAGIC) + KEY_ID_BYTES  # where the nonce starts
KEY_ENV = "RECOGNIZER_TEMPLATE_KEY"
NEW_KEY_ENV = "RECOGNIZER_TEMPLATE_KEY_NEW"  # the target of `recognizer keys rotate`


class CipherError(RuntimeError):
    """A blob failed authentication: wrong key, tampering, or a blob from another row."""


class TemplateKeyError(FailedPrecondition):
    """The template key does not fit the store (wrong, missing, malformed, or unwanted)."""


def _hmac(key: bytes, label: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(label)
    return mac.finalize()


def key_id(key: bytes) -> str:
    return _hmac(key, b"recognizer.template-key.id.v1")[:KEY_ID_BYTES].hex()


def key_check_value(key: bytes) -> str:
    return _hmac(key, b"recognizer.template-key.kcv.v1").hex()


def blind_index_key(key: bytes) -> bytes:
    """The key of the plate blind index (store/sealing.py), derived from a template key for
    that one purpose, so an HMAC never uses the AES key itself."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"recognizer.blind-index.v1")
    return hkdf.derive(key)


def same_kcv(a: str, b: str) -> bool:
    return std_hmac.compare_digest(a.encode(), b.encode())


@runtime_checkable
class TemplateCipher(Protocol):
    encrypted: bool
    primary_id: str  # the key new seals use; "" without a key
    plaintext_ok: bool  # rows not yet sealed read as they are (a store being encrypted)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes: ...


class NullCipher:
    """No-op, used when no key is configured (development and tests)."""

    encrypted = False
    primary_id = ""
    plaintext_ok = False  # nothing is sealed: there is no unsealed row to excuse

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return bytes(plaintext)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        return bytes(ciphertext)

    def key_id_of(self, blob: bytes) -> str:
        return ""


class AesGcmCipher:
    """A key ring: seals with the primary key, opens with any key it holds.

    `plaintext_ok` is only for a store being encrypted (`recognizer keys encrypt`): rows not
    yet sealed are read as they are.
    """

    encrypted = True

    def __init__(self, key: bytes, *more: bytes, plaintext_ok: bool = False) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._kcvs: dict[str, str] = {}
        for k in (key, *more):
            if len(k) != 32:
                raise ValueError("template key must be 32 bytes (AES-256)")
            kid = key_id(k)
            self._keys.setdefault(kid, AESGCM(k))
            self._kcvs.setdefault(kid, key_check_value(k))
        self._raw = {key_id(k): k for k in (key, *more)}
        self.primary_id = key_id(key)
        # key id -> blind-index key, the primary's first (lookups try every key held).
        self.blind_keys = {kid: blind_index_key(self._raw[kid]) for kid in self._keys}
        self.primary_prefix = MAGIC + bytes.fromhex(self.primary_id)
        self.plaintext_ok = plaintext_ok

    @property
    def kcvs(self) -> Mapping[str, str]:
        """key id -> KCV of every key held."""
        return dict(self._kcvs)

    def derive(self, primary: str, keep: list[str], plaintext_ok: bool = False) -> AesGcmCipher:
        """A ring of some of these keys (by id), sealing with `primary`."""
        first = self._raw[primary]
        rest = [self._raw[k] for k in keep if k != primary]
        return AesGcmCipher(first, *rest, plaintext_ok=plaintext_ok)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aead = self._keys[self.primary_id]
        return self.primary_prefix + nonce + aead.encrypt(nonce, plaintext, aad)

    def key_id_of(self, blob: bytes) -> str:
        """The id of the key that sealed a prefixed blob; "" for anything else."""
        if len(blob) >= OVERHEAD and blob[:_MAGIC_END] == MAGIC:
            kid = blob[_MAGIC_END:_BODY_AT].hex()
            if kid in self._keys:
                return kid
        return ""

    def open_as(self, kid: str, blob: bytes, aad: bytes) -> bytes:
        """Open a prefixed blob that `key_id_of` said `kid` sealed (no second look at its
        prefix: a sealed field's hot path)."""
        return self._open(self._keys[kid], blob[_BODY_AT:], aad)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        kid = self.key_id_of(ciphertext)
        if kid:
            return self.open_as(kid, ciphertext, aad)
        if self.plaintext_ok:
            return bytes(ciphertext)
        # Release 0.1.0: nonce + ciphertext, no key id.
        for aead in self._keys.values():
            try:
                return self._open(aead, ciphertext, aad)
            except CipherError:
                continue
        raise CipherError("template blob failed authentication")

    @staticmethod
    def _open(aead: AESGCM, body: bytes, aad: bytes) -> bytes:
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise CipherError("template blob is too short to be AES-GCM output")
        try:
            return aead.decrypt(bytes(body[:NONCE_BYTES]), bytes(body[NONCE_BYTES:]), aad)
        except InvalidTag as exc:
            raise CipherError("template blob failed authentication") from exc


def decode_key(var: str, raw: str) -> bytes:
    """A base64 32-byte key, or TemplateKeyError saying what is wrong with it."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TemplateKeyError(
            f"{var} is not valid base64: set it to a base64 32-byte key", reason="KEY_MALFORMED"
        ) from exc
    if len(key) != 32:
        raise TemplateKeyError(
            f"{var} must decode to 32 bytes, got {len(key)}: set it to a base64 32-byte key",
            reason="KEY_MALFORMED",
        )
    return key


def keys_from_env(env: Mapping[str, str] | None = None) -> tuple[bytes | None, bytes | None]:
    """(RECOGNIZER_TEMPLATE_KEY, RECOGNIZER_TEMPLATE_KEY_NEW), each None when unset."""
    environ = os.environ if env is None else env
    out: list[bytes | None] = []
    for var in (KEY_ENV, NEW_KEY_ENV):
        raw = environ.get(var, "").strip()
        out.append(decode_key(var, raw) if raw else None)
    return out[0], out[1]


def cipher_from_env(
    env: Mapping[str, str] | None = None, *, warn: bool = False
) -> AesGcmCipher | NullCipher:
    """A ring of the keys in the environment (the current key first, then the rotation
    target if set), or NullCipher when none is set: with a warning if `warn` (the server,
    once; admin commands stay quiet). The store checks the ring against its key-check
    values before using it."""
    keys = [k for k in keys_from_env(env) if k is not None]
    if not keys:
        if warn:
            log.warning("%s is not set: templates and personal fields are stored unsealed", KEY_ENV)
        return NullCipher()
    return AesGcmCipher(*keys)
