"""Personal fields at rest: sealed with the template key, plates found through a blind index.

With a template key, every field that names or tracks a person (display names, external and
payment references, bound plates, decision payloads and inputs, audit details, a sighting's
gate and direction) is AES-GCM under the same key ring as the templates (crypto.py). The
associated data is the sealing key's id, the table and column, and the row's identity, so a
sealed value copied into another row, or another column, fails to open instead of giving
another person's data (SealedFieldError).

Plates are looked up by equality (bound holders, a plate's sightings), so their column holds
a blind index instead: HMAC-SHA256 of the plate text (as the service normalised it) under a
key derived for that purpose from the template key. The same plate always gives the same
index under one key: that is the linkability that remains (README "Data protection"). The
plate text itself is kept sealed beside it (`plate_text`), so a rotation can recompute the
index under the new key.

Without a key (`allow_plaintext = true`, development) every field stays as it is, and the
"blind index" is the plate itself. While a store is being sealed (its first boot with a key,
or `recognizer keys encrypt`) a value without a sealed prefix is read as it is; while it is
re-keyed, both keys open values and a plate has one index under each.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import threading
from typing import Any

from recognizer.errors import FailedPrecondition
from recognizer.store.crypto import KEY_ID_BYTES, MAGIC, AesGcmCipher, CipherError, TemplateCipher

BLIND_BYTES = 16  # 128 bits of HMAC-SHA256: collisions are out of reach
# Per store, in memory only: a plate's indexes, and opened text fields by (sealed value,
# column, row identity), so a row read again (a plate's last sighting, its holders' payment
# references) costs no HMAC or AES-GCM. The row identity is part of the key: a value moved
# to another row is opened (and refused) afresh. Rows this store sealed itself are remembered
# as they are written (`remember_sighting`): the sealed values carry a fresh nonce, so only that
# very row, as written, can ever hit such an entry.
BLIND_CACHE = 4096
OPEN_CACHE = 16384
_AAD = "recognizer.field.v1"
_SIGHTING = "sightings"  # the sighting cache's key tag
_B64_MAGIC = base64.b64encode(MAGIC)[:4].decode()  # "UlRL": every sealed text starts so
# The text form's prefix is base64(magic + key id): 12 bytes, so 16 characters that do not
# depend on what follows (prefix_of).
PREFIX_CHARS = (len(MAGIC) + KEY_ID_BYTES) * 4 // 3


class SealedFieldError(FailedPrecondition):
    """A sealed field did not open under its row: moved from another row, or tampered with."""


def text_prefix(key_id: str) -> str:
    """How every text sealed under `key_id` begins (a SQL prefix test finds rows left)."""
    return base64.b64encode(MAGIC + bytes.fromhex(key_id)).decode()


class FieldSealer:
    """Seals and opens the personal fields of one store with its cipher (NullCipher: plain).

    `lenient`: a value without a sealed prefix is read as plaintext (a store being sealed);
    otherwise it is an error, as is any value that fails authentication."""

    def __init__(self, cipher: TemplateCipher, lenient: bool = False) -> None:
        self.sealed = isinstance(cipher, AesGcmCipher)
        self._cipher = cipher
        self.lenient = lenient or not self.sealed or cipher.plaintext_ok
        if isinstance(cipher, AesGcmCipher):
            self.primary_id = cipher.primary_id
            self.prefix = text_prefix(cipher.primary_id)
            self._blind_keys = tuple(cipher.blind_keys.values())  # the primary's first
        else:
            self.primary_id = ""
            self.prefix = ""
            self._blind_keys = ()
        self.blinds = functools.lru_cache(maxsize=BLIND_CACHE)(self._blinds)
        self._opened = functools.lru_cache(maxsize=OPEN_CACHE)(self._open_text)
        # A sighting's gate and direction: (_SIGHTING, plate index, *sealed, time) -> texts.
        # A plain dict (a hit is one lookup, no lock); writes and eviction (oldest first) hold
        # the lock.
        self._rows: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._rows_lock = threading.Lock()

    # --- the blind index ---------------------------------------------------------------------

    def blind(self, plate: str) -> str:
        """The plate's index under the primary key (what a write stores): the first of
        `blinds`, through the same cache, so that a plate just written is looked up for free."""
        return self.blinds(plate)[0]

    def _blinds(self, plate: str) -> tuple[str, ...]:
        """Every index the plate may be stored under: one per key held, and the plate itself
        while plaintext rows may remain."""
        out = tuple(self._mac(k, plate) for k in self._blind_keys)
        return (*out, plate) if self.lenient and out else out or (plate,)

    @staticmethod
    def _mac(key: bytes, plate: str) -> str:
        return hmac.digest(key, plate.encode("utf-8"), "sha256")[:BLIND_BYTES].hex()

    # --- sealing -----------------------------------------------------------------------------

    @staticmethod
    def _aad(key_id: str, where: str, row: tuple[Any, ...]) -> bytes:
        # \x1f cannot occur in ids, gate ids or plates, so the parts cannot run together.
        return "\x1f".join((_AAD, key_id, where, *map(str, row))).encode("utf-8")

    def seal_bytes(self, plain: bytes, where: str, row: tuple[Any, ...]) -> bytes:
        """`where` is "table.column"; `row` the row's identity (its key columns)."""
        if not self.sealed:
            return bytes(plain)
        return self._cipher.encrypt(bytes(plain), self._aad(self.primary_id, where, row))

    def open_bytes(self, blob: bytes, where: str, row: tuple[Any, ...]) -> bytes:
        blob = bytes(blob)
        if not self.sealed:
            return blob
        assert isinstance(self._cipher, AesGcmCipher)
        kid = self._cipher.key_id_of(blob)
        if not kid:
            self._plain_allowed(where, row)
            return blob
        return self._open_as(kid, blob, where, row)

    def _open_as(self, kid: str, blob: bytes, where: str, row: tuple[Any, ...]) -> bytes:
        """A blob sealed under key `kid` (of this ring), or SealedFieldError."""
        assert isinstance(self._cipher, AesGcmCipher)
        try:
            return self._cipher.open_as(kid, blob, self._aad(kid, where, row))
        except CipherError as exc:
            raise SealedFieldError(
                f"{where} of row {row} does not open under its row: it was moved from another "
                "row or tampered with (restore the row from a backup)",
                reason="SEALED_FIELD_MOVED",
            ) from exc

    def _plain_allowed(self, where: str, row: tuple[Any, ...]) -> None:
        if not self.lenient:
            raise SealedFieldError(
                f"{where} of row {row} is not sealed under a key of this store",
                reason="SEALED_FIELD_INVALID",
            )

    def seal(self, text: str, where: str, row: tuple[Any, ...]) -> str:
        if not self.sealed:
            return text
        blob = self.seal_bytes(text.encode("utf-8"), where, row)
        return base64.b64encode(blob).decode("ascii")

    def open(self, value: str, where: str, row: tuple[Any, ...]) -> str:
        """The text sealed in `value` (`where`, `row` as it was sealed), or SealedFieldError."""
        return self._opened(value, where, row) if self.sealed else value

    def open_sighting(self, blind: str, fetched: tuple[str, str, float]) -> tuple[str, str]:
        """A sighting's gate and direction from its row as fetched (sealed gate, sealed
        direction, time) and its plate index: one flat cache lookup, the gate's hot path."""
        if not self.sealed:
            return fetched[0], fetched[1]
        key = (_SIGHTING, blind, *fetched)
        got = self._rows.get(key)
        if got is None:
            row = (blind, fetched[2])
            got = (
                self._open_text(fetched[0], "sightings.gate_id", row),
                self._open_text(fetched[1], "sightings.direction", row),
            )
            self._remember(key, got)
        return got  # type: ignore[return-value]

    def remember_sighting(
        self, blind: str, fetched: tuple[str, str, float], gate_id: str, direction: str
    ) -> None:
        """`fetched` is (gate_id, direction, at) as this sealer just sealed them for a new
        sighting: reading that very row back needs no AES-GCM. (Only these exact sealed
        values, with their fresh nonces, under this row identity hit; anything else stored
        there is opened, and refused, as usual.)"""
        if self.sealed:
            self._remember((_SIGHTING, blind, *fetched), (gate_id, direction))

    def _remember(self, key: tuple[Any, ...], plain: tuple[str, ...]) -> None:
        with self._rows_lock:
            self._rows[key] = plain
            if len(self._rows) > OPEN_CACHE:
                del self._rows[next(iter(self._rows))]

    def _open_text(self, value: str, where: str, row: tuple[Any, ...]) -> str:
        assert isinstance(self._cipher, AesGcmCipher)
        blob = b""
        if value.startswith(_B64_MAGIC):
            try:
                blob = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                blob = b""
        kid = self._cipher.key_id_of(blob)
        if not kid:  # plain text (a store being sealed)
            self._plain_allowed(where, row)
            return value
        return self._open_as(kid, blob, where, row).decode("utf-8")

    def is_current(self, value: str | bytes) -> bool:
        """Whether a stored value is sealed under the primary key (a re-seal skips it)."""
        if isinstance(value, str):
            return bool(self.prefix) and value.startswith(self.prefix)
        assert isinstance(self._cipher, AesGcmCipher)
        return self._cipher.key_id_of(bytes(value)) == self.primary_id
