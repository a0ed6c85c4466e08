"""Which key a store is encrypted under, and whether the keys given may open it.

The `meta` table records the scheme ("aes-256-gcm" or "none"), the current key's id and
key-check value (KCV) and, while `recognizer keys encrypt|rotate` runs, the id and KCV of the
key being moved to ("pending"). `unlock` compares the keys held with those records before
the store writes anything, and either returns the cipher to use or refuses with a message
that says what to do. A store of release 0.1.0 has no records: its templates decide (an
encrypted one is upgraded by the first boot with a key that opens every template).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recognizer.store.crypto import (
    KEY_ENV,
    NEW_KEY_ENV,
    AesGcmCipher,
    NullCipher,
    TemplateKeyError,
    same_kcv,
)

SCHEME_AES = "aes-256-gcm"
SCHEME_NONE = "none"
_KEYS = ("template_encryption", "template_key_id", "template_kcv", "pending_key_id", "pending_kcv")

Cipher = AesGcmCipher | NullCipher


@dataclass(frozen=True, slots=True)
class KeyState:
    scheme: str  # "" when not recorded (a new store, or one of release 0.1.0)
    key_id: str = ""
    kcv: str = ""
    pending_key_id: str = ""
    pending_kcv: str = ""


@dataclass(frozen=True, slots=True)
class Legacy:
    """What the templates of a store without records look like."""

    kind: str  # "empty" | "plain" | "sealed"
    failures: Callable[[AesGcmCipher], int]  # templates a ring cannot open


@dataclass(frozen=True, slots=True)
class Unlocked:
    cipher: Cipher
    record: dict[str, str]  # meta rows to write now the key is proven (new store, upgrade)


def state_of(meta: dict[str, str] | None) -> KeyState | None:
    """The recorded state in a store's meta rows, or None for a database without a meta
    table (a new one)."""
    if meta is None:
        return None
    return KeyState(*(meta.get(k, "") for k in _KEYS))


def records(scheme: str, key_id: str = "", kcv: str = "") -> dict[str, str]:
    out = {"template_encryption": scheme}
    if scheme == SCHEME_AES:
        out |= {"template_key_id": key_id, "template_kcv": kcv}
    return out


def _refuse(message: str, reason: str) -> TemplateKeyError:
    return TemplateKeyError(message, reason=reason)


def unlock(
    state: KeyState | None, ring: Cipher, legacy: Callable[[], Legacy] | None = None
) -> Unlocked:
    """The cipher to use with a store in `state` (None: a new store), or TemplateKeyError.
    `legacy` describes the templates of a store without records (release 0.1.0)."""
    held = dict(ring.kcvs) if isinstance(ring, AesGcmCipher) else {}
    if state is not None and not state.scheme and legacy is not None:
        view = legacy()
        if view.kind == "plain":
            return _unlock_recorded(KeyState(SCHEME_NONE), ring, held, records(SCHEME_NONE))
        if view.kind == "sealed":
            return _upgrade(ring, held, view)
    if state is None or not state.scheme:  # new, or without templates to tell
        if not held:
            return Unlocked(NullCipher(), records(SCHEME_NONE))
        if len(held) > 1:
            raise _refuse(f"a new store takes one key: unset {NEW_KEY_ENV}", "KEY_AMBIGUOUS")
        assert isinstance(ring, AesGcmCipher)
        kid = ring.primary_id
        return Unlocked(ring, records(SCHEME_AES, kid, held[kid]))
    return _unlock_recorded(state, ring, held, {})


def _upgrade(ring: Cipher, held: dict[str, str], view: Legacy) -> Unlocked:
    """A 0.1.0 store with encrypted templates: the key that opens all of them becomes its
    recorded key."""
    if not held or not isinstance(ring, AesGcmCipher):
        raise _refuse(
            f"the store holds encrypted templates: set {KEY_ENV} to its key", "KEY_MISSING"
        )
    for kid, kcv in held.items():
        single = ring.derive(kid, [kid])
        if view.failures(single) == 0:
            return Unlocked(single, records(SCHEME_AES, kid, kcv))
    raise _refuse(
        f"{KEY_ENV} (key id {ring.primary_id}) does not open this store's templates: "
        "set it to the key the store was encrypted with",
        "KEY_WRONG",
    )


def _match(held: dict[str, str], kcv: str) -> str:
    return next((kid for kid, k in held.items() if kcv and same_kcv(k, kcv)), "")


def _unlock_recorded(
    state: KeyState, ring: Cipher, held: dict[str, str], record: dict[str, str]
) -> Unlocked:
    encrypted = state.scheme == SCHEME_AES
    current = _match(held, state.kcv) if encrypted else ""
    pending = _match(held, state.pending_kcv)
    if encrypted and not current:
        if not held:
            raise _refuse(
                f"the store is encrypted under key id {state.key_id}: set {KEY_ENV} to that key",
                "KEY_MISSING",
            )
        if pending:
            raise _refuse(
                f"a re-key to key id {state.pending_key_id} is unfinished: set {KEY_ENV} to "
                f"the old key (id {state.key_id}) and {NEW_KEY_ENV} to the new one, and run "
                "`recognizer keys rotate` to finish it",
                "KEY_ROTATION_UNFINISHED",
            )
        raise _refuse(
            f"{KEY_ENV} is the wrong key for this store (key id {next(iter(held))}, store "
            f"key id {state.key_id}): set it to the store's key",
            "KEY_WRONG",
        )
    if state.pending_kcv and not pending:
        raise _refuse(
            f"the store is being re-keyed to key id {state.pending_key_id}: also set "
            f"{NEW_KEY_ENV if encrypted else KEY_ENV} to that key, and run "
            f"`recognizer keys {'rotate' if encrypted else 'encrypt'}` to finish",
            "KEY_ROTATION_UNFINISHED",
        )
    extra = sorted(set(held) - {current, pending})
    if extra and not encrypted and not state.pending_kcv:
        raise _refuse(
            f"the store is not encrypted but {KEY_ENV} is set: unset it, or encrypt the "
            "store first with `recognizer keys encrypt` (server stopped)",
            "KEY_ON_PLAINTEXT_STORE",
        )
    if extra:
        raise _refuse(
            f"key id {extra[0]} is not a key of this store (key id {state.key_id or 'none'}"
            f"{', re-keying to ' + state.pending_key_id if state.pending_key_id else ''}): "
            "set the store's key",
            "KEY_WRONG",
        )
    if not current and not pending:
        return Unlocked(NullCipher(), record)
    assert isinstance(ring, AesGcmCipher)
    keep = [k for k in (current, pending) if k]
    return Unlocked(ring.derive(pending or current, keep, plaintext_ok=not encrypted), record)
