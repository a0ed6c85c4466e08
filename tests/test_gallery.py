"""Gallery behaviour: store CRUD, index persistence and recovery, encryption, idempotency.

Synthetic, seeded vectors with known ground truth (no models needed).
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from recognizer.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from recognizer.gallery.gallery import Gallery
from recognizer.gallery.index import (
    APPROXIMATE,
    FLAT,
    IVF_FP16,
    IVF_PQFS,
    VectorIndex,
    _as_matrix,
)
from recognizer.store.crypto import (
    OVERHEAD,
    AesGcmCipher,
    CipherError,
    NullCipher,
    TemplateKeyError,
    cipher_from_env,
)
from recognizer.store.rows import DecisionRow
from recognizer.store.sqlite import SqliteStore

DIM = 32
MODEL = "test-model"
KEY = bytes(range(32))


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def people(n: int, per: int, seed: int, dim: int = DIM, noise: float = 0.15) -> np.ndarray:
    """(n, per, dim): `per` noisy templates around each of n random identity centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n, 1, dim)))
    return unit(centres + noise * rng.standard_normal((n, per, dim)) / np.sqrt(dim))


@pytest.fixture
def store() -> SqliteStore:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def open_gallery(tmp: Path, **kw) -> Gallery:  # type: ignore[no-untyped-def]
    cipher = kw.pop("cipher", NullCipher())
    g = Gallery(SqliteStore(tmp / "db.sqlite", cipher), MODEL, DIM, tmp / "faces.faiss", **kw)
    g.open()
    return g


def enrol(g: Gallery, vecs: np.ndarray) -> list[str]:
    ids = []
    for i, v in enumerate(vecs):
        ident = g.store.create_identity(f"person {i}")
        g.enroll(ident.id, v)
        ids.append(ident.id)
    return ids


def top1(g: Gallery, queries: np.ndarray) -> list[tuple[str, float]]:
    out = []
    for q in queries:
        m = g.identify(q, 1)
        out.append((m[0].identity_id, round(m[0].score, 5)) if m else ("", 0.0))
    return out


# --- store ------------------------------------------------------------------------------


def test_identity_crud_and_pagination(store: SqliteStore) -> None:
    made = [store.create_identity(f"p{i}", external_ref=f"ext{i}", metadata={"k": str(i)})
            for i in range(7)]  # fmt: skip
    got = store.get_identity(made[3].id)
    assert got == made[3] and got.metadata == {"k": "3"}
    pages, after = [], ""
    while page := store.list_identities(3, after):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(r.id for p in pages for r in p) == sorted(r.id for r in made)
    with pytest.raises(NotFound):
        store.get_identity("nope")
    with pytest.raises(NotFound):
        store.delete_identity("nope")
    with pytest.raises(InvalidArgument):
        store.create_identity("x", metadata={"k": 1})  # type: ignore[dict-item]


def test_plates_and_payments(store: SqliteStore) -> None:
    a, b = store.create_identity("a").id, store.create_identity("b").id
    store.bind_plate(a, "粤B12345")
    store.bind_plate(a, "粤B12345")  # idempotent for the same identity
    with pytest.raises(AlreadyExists) as exc:
        store.bind_plate(b, "粤B12345")
    assert exc.value.identity_id == a
    store.bind_plate(b, "粤B12345", allow_shared=True)
    assert store.identities_for_plate("粤B12345") == [a, b]
    assert store.plates_for(a) == ["粤B12345"]
    store.unbind_plate(b, "粤B12345")
    with pytest.raises(NotFound):
        store.unbind_plate(b, "粤B12345")
    with pytest.raises(NotFound):
        store.bind_plate("ghost", "粤B00000")

    p = store.bind_payment(a, "tok_123", "plate+face", 5000)
    assert store.payments_for(a) == [p]
    store.unbind_payment(a, p.binding_id)
    assert store.payments_for(a) == []
    with pytest.raises(NotFound):
        store.unbind_payment(a, p.binding_id)


def test_template_rows_and_change_log(store: SqliteStore) -> None:
    ident = store.create_identity("a").id
    vecs = people(1, 3, seed=1)[0]
    rows = store.add_templates(ident, vecs, MODEL, source="test", quality=0.8)
    labels = [r.label for r in rows]
    assert store.template_labels(ident) == labels
    back = store.templates(ident, MODEL)
    np.testing.assert_array_equal(np.stack([r.vector for r in back]), vecs)
    assert [(c.op, c.label) for c in store.changes_since(0, MODEL)] == [("add", x) for x in labels]
    assert store.remove_template(ident, labels[0]) == 2
    with pytest.raises(NotFound):
        store.remove_template(ident, labels[0])
    assert store.changes_since(0, MODEL)[-1].op == "remove"
    assert store.identity_for_labels([*labels, -1]) == {labels[1]: ident, labels[2]: ident}
    with pytest.raises(NotFound):
        store.add_templates("ghost", vecs, MODEL)


def test_decisions_audit_and_backup(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    row = DecisionRow("d1", "g1", "e1", "ALLOW", b"\x01\x02", "id1", "{}", 100.0)
    assert store.put_decision(row) == row
    assert store.put_decision(row) == row
    other = store.put_decision(
        gate_id="g1", event_id="e2", decision_id="d2", outcome="DENY", payload=b"x",
        inputs={"plate": "A"}, created_at=200.0,
    )  # fmt: skip
    assert store.get_decision("g1", "e2") == other
    assert store.get_decision("g1", "missing") is None
    assert [d.decision_id for d in store.list_decisions(gate_id="g1")] == ["d2", "d1"]
    assert [d.decision_id for d in store.list_decisions(identity_id="id1")] == ["d1"]
    assert store.purge_decisions(older_than=150.0) == 1
    store.audit("admin", "DeleteIdentity", "id1", {"templates": 2})
    assert store.list_audit(5)[0].detail == {"templates": 2}
    store.backup(tmp_path / "copy.sqlite")
    copy = SqliteStore(tmp_path / "copy.sqlite")
    assert copy.get_decision("g1", "e2") == other
    copy.close()
    store.close()


def test_put_decision_idempotent_under_concurrency(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    start = threading.Barrier(50)
    results: list[DecisionRow] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        start.wait()
        r = store.put_decision(DecisionRow(f"d{i}", "gate", "event", "ALLOW", f"{i}".encode()))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50 and len({r.decision_id for r in results}) == 1
    with sqlite3.connect(tmp_path / "db.sqlite") as raw:
        assert raw.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1
    store.close()


# --- encryption ---------------------------------------------------------------------------


def test_encryption_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SqliteStore(path, AesGcmCipher(KEY))
    a, b = store.create_identity("a").id, store.create_identity("b").id
    vecs = people(2, 3, seed=2)
    store.add_templates(a, vecs[0], MODEL)
    store.add_templates(b, vecs[1], MODEL)
    np.testing.assert_array_equal(np.stack([r.vector for r in store.templates(a, MODEL)]), vecs[0])
    store.close()

    raw_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("db"))
    for v in vecs.reshape(-1, DIM):
        assert v.tobytes()[:16] not in raw_bytes

    raw = sqlite3.connect(path)
    blobs = raw.execute("SELECT label, vector FROM templates ORDER BY label").fetchall()
    assert all(len(blob) == OVERHEAD + DIM * 4 for _, blob in blobs)
    # Swap blobs between rows: the AAD binds each blob to its own row.
    raw.execute("UPDATE templates SET vector = ? WHERE label = ?", (blobs[3][1], blobs[0][0]))
    raw.commit()
    store = SqliteStore(path, AesGcmCipher(KEY))
    with pytest.raises(CipherError):
        store.templates(a, MODEL)
    # Tamper with one byte of b's blob.
    tampered = bytearray(blobs[4][1])
    tampered[20] ^= 0x01
    raw.execute("UPDATE templates SET vector = ? WHERE label = ?", (bytes(tampered), blobs[4][0]))
    raw.commit()
    with pytest.raises(CipherError):
        store.templates(b, MODEL)
    with pytest.raises(TemplateKeyError):
        SqliteStore(path, AesGcmCipher(bytes(32)))  # wrong key: refused before any use
    raw.close()
    store.close()


def test_cipher_from_env() -> None:
    assert isinstance(cipher_from_env(env={}), NullCipher)
    c = cipher_from_env(env={"RECOGNIZER_TEMPLATE_KEY": base64.b64encode(KEY).decode()})
    assert isinstance(c, AesGcmCipher)
    assert c.decrypt(c.encrypt(b"abc", b"1"), b"1") == b"abc"
    with pytest.raises(TemplateKeyError):
        cipher_from_env(env={"RECOGNIZER_TEMPLATE_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(TemplateKeyError):
        cipher_from_env(env={"RECOGNIZER_TEMPLATE_KEY": "not base64!"})


# --- gallery: identify / verify / delete ---------------------------------------------------


def test_identify_and_verify(tmp_path: Path) -> None:
    vecs = people(30, 3, seed=3)
    g = open_gallery(tmp_path)
    ids = enrol(g, vecs)
    probes = people(30, 1, seed=3, noise=0.0)[:, 0]  # the identity centres themselves
    assert [m for m, _ in top1(g, probes)] == ids
    exact = float(np.max(vecs[5] @ probes[5]))
    assert g.verify(ids[5], probes[5]) == pytest.approx(exact, abs=1e-5)
    with pytest.raises(NotFound):
        g.verify("ghost", probes[0])
    empty = g.store.create_identity("empty").id
    with pytest.raises(FailedPrecondition):
        g.verify(empty, probes[0])
    with pytest.raises(InvalidArgument):
        g.identify(np.zeros(DIM + 1, np.float32), 3)
    assert g.check().consistent
    g.close()


def test_delete_removes_rows_and_vectors(tmp_path: Path) -> None:
    vecs = people(10, 3, seed=4)
    g = open_gallery(tmp_path)
    ids = enrol(g, vecs)
    victim = ids[2]
    labels = g.store.template_labels(victim)
    g.store.bind_plate(victim, "A12345")
    g.store.bind_payment(victim, "tok", "plate", 100)
    counts = g.delete_identity(victim)
    assert (counts.templates, counts.plates, counts.payments) == (3, 1, 1)
    with pytest.raises(NotFound):
        g.store.get_identity(victim)
    assert g.store.identities_for_plate("A12345") == []
    assert not np.isin(labels, g.index.labels()).any()
    _, found = g.index.search(vecs[2], 5)
    assert not np.isin(found, labels).any()
    assert all(m.identity_id != victim for m in g.identify(vecs[2][0], 10))
    removed = [c.label for c in g.store.changes_since(0, MODEL) if c.op == "remove"]
    assert sorted(removed) == sorted(labels)
    # The persisted index no longer holds them either (checkpoint on delete).
    on_disk = VectorIndex.load(tmp_path / "faces.faiss")
    assert on_disk is not None and not np.isin(labels, on_disk[0].labels()).any()
    # remove_template takes one vector out of both.
    keep = g.store.template_labels(ids[0])
    assert g.remove_template(ids[0], keep[0]) == 2
    assert keep[0] not in set(g.index.labels().tolist())
    assert g.index.ntotal == g.store.count_templates(MODEL) == 26
    g.close()


def test_aggregation_max_vs_mean2(store: SqliteStore) -> None:
    def at(cos: float, axis: int) -> np.ndarray:
        v = np.zeros(DIM, np.float32)
        v[0], v[axis] = cos, np.sqrt(1 - cos**2)
        return v

    probe = at(1.0, 1)
    a = store.create_identity("a").id  # one very close template, one far
    b = store.create_identity("b").id  # two fairly close templates
    results = {}
    for how in ("max", "mean2"):
        g = Gallery(store, MODEL, DIM, None, aggregate=how)
        g.open()
        if how == "max":
            g.enroll(a, np.stack([at(0.9, 2), at(0.1, 3)]))
            g.enroll(b, np.stack([at(0.8, 4), at(0.8, 5)]))
        results[how] = [(m.identity_id, round(m.score, 4)) for m in g.identify(probe, 2)]
        assert g.verify(a, probe) == pytest.approx(0.9 if how == "max" else 0.5, abs=1e-5)
    assert results["max"] == [(a, 0.9), (b, 0.8)]
    assert results["mean2"] == [(b, 0.8), (a, 0.5)]


# --- gallery: persistence and recovery -----------------------------------------------------


def _reference(g: Gallery, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return g.index.search(queries, 5)


def test_save_and_reopen_gives_same_results(tmp_path: Path) -> None:
    vecs = people(40, 3, seed=5)
    queries = people(40, 1, seed=5, noise=0.3)[:, 0]
    g = open_gallery(tmp_path)
    enrol(g, vecs)
    before = _reference(g, queries)
    wm = g.watermark
    g.close()  # graceful: checkpoints
    loaded = VectorIndex.load(tmp_path / "faces.faiss")
    assert loaded is not None and loaded[1] == wm
    g = open_gallery(tmp_path)
    after = _reference(g, queries)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    g.close()


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "flipped"])
def test_missing_or_corrupt_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    vecs = people(20, 3, seed=6)
    g = open_gallery(tmp_path)
    enrol(g, vecs)
    before = _reference(g, vecs[:, 0])
    g.close()
    path = tmp_path / "faces.faiss"
    data = path.read_bytes()
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not an index at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[-100] ^= 0xFF
        path.write_bytes(bytes(flipped))
    assert VectorIndex.load(path) is None
    g = open_gallery(tmp_path)
    np.testing.assert_array_equal(_reference(g, vecs[:, 0])[1], before[1])
    assert g.check().consistent
    g.close()


def test_old_watermark_replays_adds_and_removes(tmp_path: Path) -> None:
    vecs = people(30, 3, seed=7)
    g = open_gallery(tmp_path)
    ids = enrol(g, vecs[:20])
    g.checkpoint()
    saved = g.watermark
    # More writes after the checkpoint, then a "crash" (no close, no checkpoint).
    g.checkpoint_on_delete = False
    late = enrol(g, vecs[20:])
    g.delete_identity(ids[0])
    g.remove_template(late[0], g.store.template_labels(late[0])[0])
    g.delete_identity(late[1])  # added and deleted after the checkpoint
    expected = _reference(g, vecs[:, 0])
    assert VectorIndex.load(tmp_path / "faces.faiss")[1] == saved  # type: ignore[index]

    g2 = open_gallery(tmp_path)
    assert g2.watermark > saved
    np.testing.assert_array_equal(_reference(g2, vecs[:, 0])[1], expected[1])
    assert sorted(g2.index.labels()) == sorted(
        lb for i in g2.store.list_identities(100) for lb in g2.store.template_labels(i.id)
    )
    g2.close()


def test_crash_between_store_and_index(tmp_path: Path) -> None:
    vecs = people(10, 3, seed=8)
    g = open_gallery(tmp_path)
    enrol(g, vecs[:5])
    g.checkpoint()
    # The store write is acknowledged, the process dies before the index saw it.
    orphan = g.store.create_identity("late").id
    g.store.add_templates(orphan, vecs[5], MODEL)
    assert g.index.ntotal == 15
    g2 = open_gallery(tmp_path)
    assert g2.index.ntotal == g2.store.count_templates(MODEL) == 18
    assert g2.identify(vecs[5][0], 1)[0].identity_id == orphan


def test_index_ahead_of_store_is_rebuilt(tmp_path: Path) -> None:
    vecs = people(5, 2, seed=9)
    g = open_gallery(tmp_path)
    enrol(g, vecs)
    g.close()
    # A fresh (e.g. restored-from-older-backup) store with the newer index file.
    (tmp_path / "db.sqlite").unlink()
    g = open_gallery(tmp_path)
    assert g.index.ntotal == 0 and g.watermark == 0
    g.close()


def test_index_from_another_model_is_rebuilt(tmp_path: Path) -> None:
    g = open_gallery(tmp_path)
    enrol(g, people(5, 2, seed=15))
    g.close()
    store = SqliteStore(tmp_path / "db.sqlite")
    other = Gallery(store, "other-model", DIM, tmp_path / "faces.faiss")
    other.open()
    assert other.index.ntotal == 0 and other.check().consistent
    other.close()


def test_concurrent_enrol_keeps_watermark_exact(tmp_path: Path) -> None:
    vecs = people(40, 2, seed=10)
    g = open_gallery(tmp_path)
    idents = [g.store.create_identity(f"p{i}").id for i in range(40)]

    def worker(part: range) -> None:
        for i in part:
            g.enroll(idents[i], vecs[i])
            g.identify(vecs[i][0], 3)

    threads = [threading.Thread(target=worker, args=(range(k, 40, 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert g.index.ntotal == g.store.count_templates(MODEL) == 80
    assert g.watermark == g.store.current_seq()
    g.close()


# --- approximate kind ------------------------------------------------------------------------


def _clustered(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4000 templates (1000 identities x 4) and 300 probes: fresh views of enrolled people."""
    n_ids, per = 1000, 4
    vecs = people(n_ids, per, seed=seed, noise=0.6)
    rng = np.random.default_rng(seed + 1)
    centres = people(n_ids, 1, seed=seed, noise=0.0)[:, 0]
    noise = 0.6 * rng.standard_normal((300, DIM)) / np.sqrt(DIM)
    return vecs, unit(centres[rng.integers(0, n_ids, 300)] + noise)


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_approximate_kind_recall_and_remove(kind: str) -> None:
    vecs, probes = _clustered(seed=11)
    x = vecs.reshape(-1, DIM)
    labels = np.arange(1, len(x) + 1, dtype=np.int64)
    flat = VectorIndex(DIM, flat_max=10**6)
    # A fixed nprobe (the automatic one would scan every list of so small an index).
    approx = VectorIndex(DIM, flat_max=1000, nprobe=64, approx=kind)
    assert flat.rebuild(labels, x) == FLAT
    assert approx.rebuild(labels, x) == kind
    assert approx.nlist == 256 and approx.nprobe == 64
    _, truth = flat.search(probes, 1)
    _, got = approx.search(probes, 1)
    assert np.mean(got[:, 0] == truth[:, 0]) >= 0.99

    rng = np.random.default_rng(13)
    gone = rng.choice(labels, 40, replace=False)
    assert approx.remove(gone) == 40 and approx.ntotal == len(labels) - 40
    _, after = approx.search(x[gone - 1], 10)
    assert not np.isin(after, gone).any()
    assert not np.isin(approx.labels(), gone).any()


def test_pqfs_scores_are_exact_and_a_delete_leaves_no_copy(tmp_path: Path) -> None:
    vecs, probes = _clustered(seed=12)
    x = _as_matrix(vecs.reshape(-1, DIM), DIM)  # the rows exactly as the index stores them
    labels = np.arange(1, len(x) + 1, dtype=np.int64)
    index = VectorIndex(DIM, flat_max=0, nprobe=64)
    assert index.rebuild(labels, x) == IVF_PQFS
    scores, got = index.search(probes, 5)
    # Re-ranked from the float32 copy: the very cosines, not 4-bit estimates.
    want = np.einsum("qkd,qd->qk", x[got - 1], probes.astype(np.float32))
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)

    gone = got[:3, 0]
    assert index.remove(gone) == 3
    path = tmp_path / "faces.faiss"
    index.save(path, watermark=7)
    raw = path.read_bytes()
    # The removed templates' float32 bytes are in neither section of the saved file.
    kept = next(label for label in labels if label not in gone)
    assert x[kept - 1].tobytes() in raw
    assert not any(x[g - 1].tobytes() in raw for g in gone)
    loaded = VectorIndex.load(path, nprobe=64)
    assert loaded is not None and loaded[1] == 7
    again = loaded[0]
    assert again.kind == IVF_PQFS and again.ntotal == len(labels) - 3
    np.testing.assert_array_equal(again.search(probes, 5)[1], index.search(probes, 5)[1])


def test_gallery_switches_kind_by_size(tmp_path: Path) -> None:
    vecs, _ = _clustered(seed=14)
    g = open_gallery(tmp_path, flat_max=1000)
    enrol(g, vecs[:400])
    assert g.index.kind == FLAT and g.index.ntotal == 1600
    g.close()
    g = open_gallery(tmp_path, flat_max=1000)  # chosen by size at (re)build
    assert g.index.kind == IVF_PQFS
    victim = g.identify(vecs[7][0], 1)[0].identity_id
    g.delete_identity(victim)
    assert all(m.identity_id != victim for m in g.identify(vecs[7][0], 5))
    g.close()
    g = open_gallery(tmp_path, flat_max=1000)  # the approximate index loads and stays
    assert g.index.kind == IVF_PQFS and g.check().consistent and g.index.ntotal == 1596
    g.close()
    # A build configured for another approximate kind rebuilds the saved index in its own.
    g = open_gallery(tmp_path, flat_max=1000, index_params={"approx": IVF_FP16})
    assert g.index.kind == IVF_FP16 and g.check().consistent and g.index.ntotal == 1596
    g.close()


def test_check_compares_label_sets_not_counts(tmp_path: Path) -> None:
    g = open_gallery(tmp_path)
    enrol(g, people(2, 2, seed=5))
    assert g.check().consistent
    labels = np.sort(g.index.labels())
    # Swap one real label for a bogus one: the counts still agree, the sets do not.
    g.index.remove(labels[:1])
    g.index.add(np.array([10_000], np.int64), people(1, 1, seed=6)[0])
    st = g.check()
    assert st.ntotal == st.store_templates
    assert not st.consistent
    g.close()
