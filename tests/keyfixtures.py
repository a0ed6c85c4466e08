"""Shared by the key and data-protection tests: release-0.1.0 fixtures, synthetic galleries,
byte scans for plaintext templates, and file snapshots."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from recognizer.gallery.gallery import Gallery
from recognizer.store.crypto import NullCipher, TemplateCipher
from recognizer.store.rows import AuditEntry, DecisionRow
from recognizer.store.sqlite import SqliteStore

RELEASE = Path(__file__).parent / "data" / "release-0.1.0"
RELEASE_KEY = bytes(range(32))
MODEL = "sface-2021dec+flip"  # the fixtures' model, so the real server reads them
DIM = 128


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def copy_release(kind: str, dest: Path) -> Path:
    """A private copy of a release-0.1.0 data directory ("encrypted" or "plain")."""
    shutil.copytree(RELEASE / kind, dest)
    return dest


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build_gallery(
    data: Path, n: int, cipher: TemplateCipher | None = None, per_identity: int = 10, seed: int = 0
) -> dict[int, np.ndarray]:
    """A data directory with n random templates and a checkpointed index; label -> vector."""
    store = SqliteStore(data / "recognizer.db", cipher or NullCipher())
    g = Gallery(store, MODEL, DIM, data / "faces-default.faiss")
    g.open()
    vecs = unit(np.random.default_rng(seed).standard_normal((n, DIM)))
    out: dict[int, np.ndarray] = {}
    for start in range(0, n, per_identity):
        ident = store.create_identity(f"p{start}")
        for row in g.enroll(ident.id, vecs[start : start + per_identity]):
            out[row.label] = row.vector
    g.checkpoint(force=True)
    g.close()
    return out


def read_templates(data: Path, cipher: TemplateCipher) -> dict[int, np.ndarray]:
    store = SqliteStore(data / "recognizer.db", cipher)
    try:
        return {
            int(label): vec
            for labels, vecs in store.iter_templates(MODEL)
            for label, vec in zip(labels, vecs, strict=True)
        }
    finally:
        store.close()


Person = tuple[str, str, str, str, str]  # name, plate, payment ref, last gate, decision inputs


def add_personal(data: Path, cipher: TemplateCipher | None, n: int) -> dict[str, Person]:
    """Personal fields for the first n identities of a data directory (a bound plate with its
    audit record, a payment binding, a decision and its sighting); identity id -> fields."""
    store = SqliteStore(data / "recognizer.db", cipher or NullCipher())
    out: dict[str, Person] = {}
    try:
        for k, ident in enumerate(store.list_identities(n)):
            plate, ref, inputs = (
                f"京A{k:05d}",
                f"pay-{k:05d}",
                json.dumps({"plate_text": f"京A{k:05d}"}),
            )
            audit = AuditEntry("admin", "bind_plate", ident.id, {"plate": plate})
            store.bind_plate(ident.id, plate, audit=audit)
            store.bind_payment(ident.id, ref, "plate_and_face", 0)
            row = DecisionRow(
                f"d{k}", "G-1", f"e{k}", "allow", ref.encode(), ident.id, inputs, 1e3 + k
            )
            store.put_decision(row, sighting=(plate, f"G-{k}", "entry", 1e3 + k))
            out[ident.id] = (ident.display_name, plate, ref, f"G-{k}", inputs)
    finally:
        store.close()
    return out


def read_personal(data: Path, cipher: TemplateCipher, ids: list[str]) -> dict[str, Person]:
    """The same fields read back through the store (its plates looked up by blind index)."""
    store = SqliteStore(data / "recognizer.db", cipher)
    out: dict[str, Person] = {}
    try:
        for k, identity_id in enumerate(ids):
            (plate,) = store.plates_for(identity_id)
            (payment,) = store.payments_for(identity_id)
            assert store.identities_for_plate(plate) == [identity_id]
            last = store.last_sighting(plate)
            row = store.get_decision("G-1", f"e{k}")
            assert (
                last is not None and row is not None and row.payload == payment.payment_ref.encode()
            )
            name = store.get_identity(identity_id).display_name
            out[identity_id] = (name, plate, payment.payment_ref, last.gate_id, row.inputs)
    finally:
        store.close()
    return out


def needles(vectors: list[np.ndarray]) -> dict[bytes, str]:
    """Byte patterns a plaintext copy of these templates would contain (float32, float16)."""
    out = {}
    for i, v in enumerate(vectors):
        for name, dtype in (("f32", "<f4"), ("f16", "<f2")):
            raw = np.asarray(v).astype(dtype).tobytes()
            out[raw[:16]] = f"template {i} {name} head"
            out[raw[-16:]] = f"template {i} {name} tail"
    return out


def scan(root: Path, vectors: list[np.ndarray]) -> list[str]:
    """Every (file, template) where a template's bytes occur in a file under root.

    Vectorised: the first 8 bytes of each pattern are looked up at every byte offset of a
    file (as uint64 words, one pass per offset mod 8), then candidates are compared whole.
    """
    pats = needles(vectors)
    heads = {int.from_bytes(p[:8], "little"): p for p in pats}
    keys = np.sort(np.fromiter(heads, np.uint64, len(heads)))
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        raw = np.frombuffer(data, np.uint8)
        for r in range(8):
            n = (len(raw) - r) // 8
            if n <= 0:
                continue
            words = raw[r : r + 8 * n].view("<u8")
            at_key = np.minimum(np.searchsorted(keys, words), len(keys) - 1)
            for i in np.flatnonzero(keys[at_key] == words):
                at = r + 8 * int(i)
                pat = heads[int(words[i])]
                if data[at : at + len(pat)] == pat:
                    found.append(f"{path.name}@{at}: {pats[pat]}")
    return found


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) of every file under root."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
