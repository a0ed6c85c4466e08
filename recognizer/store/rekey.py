"""`recognizer keys encrypt` and `keys rotate`: seal every template and the index files under
a new key, crash-safe and resumable.

1. The new key's id and KCV are recorded as "pending" (one transaction) after the current
   key is proven against the store's KCV.
2. Templates are resealed in label order, a batch per transaction, then the personal fields
   of every table (store/sealing.py; plate indexes recomputed under the new key); rows
   already sealed with the new key are skipped, so a rerun after a crash continues where it
   stopped.
3. Each index file is rewritten sealed with the new key (temp file, fsync, rename).
4. One transaction checks that no template or personal field is left under another key,
   then makes the new key the store's key and clears "pending"; SQLite is then VACUUMed.

A kill at any point leaves a store that opens with the old and new keys together (the
server serves it, sealing new rows with the new key); rerunning the command finishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recognizer.store import keys
from recognizer.store.crypto import (
    KEY_ENV,
    NEW_KEY_ENV,
    AesGcmCipher,
    NullCipher,
    TemplateCipher,
    TemplateKeyError,
    key_check_value,
    key_id,
    same_kcv,
)
from recognizer.store.open import StoreLocation
from recognizer.store.sql import SqlStore

_ROUNDS = 3  # finishing finds rows a server sealed with the old key only if it ran without
# the new key, which the store refuses; a few rounds are plenty


@dataclass(frozen=True, slots=True)
class RekeyReport:
    key_id: str
    templates_resealed: int
    index_files_resealed: int
    already_done: bool = False
    personal_rows_resealed: int = 0  # rows of personal fields (store/sealing.py)


def rekey(
    where: Path | StoreLocation,
    reseal_index: Callable[[TemplateCipher], int],
    current: bytes | None,
    target: bytes,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> RekeyReport:
    """Move a store (a SQLite file, or where StoreLocation says) from `current` (None:
    plaintext) to `target`. Idempotent. `reseal_index` re-seals this node's index files under
    the given cipher and says how many it wrote (the index is the gallery's, not the store's:
    its caller knows where it is)."""
    location = where if isinstance(where, StoreLocation) else StoreLocation(Path(where))
    target_id, target_kcv = key_id(target), key_check_value(target)
    state = location.read_key_state()
    if state is None:
        raise TemplateKeyError(f"no store at {location}", reason="NO_STORE")
    if same_kcv(state.kcv, target_kcv) and not state.pending_kcv:
        return RekeyReport(target_id, 0, 0, already_done=True)  # a rerun after success
    encrypted = state.scheme == keys.SCHEME_AES or (not state.scheme and current is not None)
    if current is None and encrypted:
        raise TemplateKeyError(
            f"the store is already encrypted (key id {state.key_id}): use `recognizer keys "
            f"rotate` with {KEY_ENV} (current key) and {NEW_KEY_ENV} (new key)",
            reason="KEY_ALREADY_ENCRYPTED",
        )
    if current is not None and not encrypted:
        raise TemplateKeyError(
            "the store is not encrypted: use `recognizer keys encrypt`", reason="KEY_NOT_ENCRYPTED"
        )
    if current is not None and key_id(current) == target_id:
        raise TemplateKeyError("the new key is the current key", reason="KEY_SAME")
    if not same_kcv(state.pending_kcv, target_kcv):
        if state.pending_kcv:
            raise TemplateKeyError(
                f"a re-key to key id {state.pending_key_id} is unfinished: rerun with that key "
                "as the new key to finish it first",
                reason="KEY_ROTATION_UNFINISHED",
            )
        _begin(location, current, target_id, target_kcv)
    ring = AesGcmCipher(*([current] if current else []), target)
    store = location.open(ring)  # proves both keys against the records
    try:
        resealed, rows = 0, 0
        for _ in range(_ROUNDS):
            resealed += _reseal_all(store, batch, progress)
            rows += store.reseal_personal(batch, progress)
            files = reseal_index(store.cipher)
            left = store.finish_rekey()
            if not left:
                return RekeyReport(target_id, resealed, files, personal_rows_resealed=rows)
        raise TemplateKeyError(
            f"{left} rows (templates or personal fields) are still sealed with another key: "
            "is a server without "
            f"{NEW_KEY_ENV} writing to this store? Stop it and rerun",
            reason="KEY_ROTATION_UNFINISHED",
        )
    finally:
        store.close()


def _begin(location: StoreLocation, current: bytes | None, target_id: str, target_kcv: str) -> None:
    store = location.open(AesGcmCipher(current) if current else NullCipher())
    try:
        store.begin_rekey(target_id, target_kcv)
    finally:
        store.close()


def _reseal_all(store: SqlStore, batch: int, progress: Callable[[int], None] | None) -> int:
    after, total = 0, 0
    while True:
        after, n = store.reseal(after, batch)
        total += n
        if progress is not None:
            progress(total)
        if not after:
            return total
