"""Data protection: with a key set no template's bytes lie in any file of the data directory
or of a backup; files are 0600 in a 0700 directory; audit records commit with their change;
the consistency check reports what it found before it repairs, and GetMetrics reports
the last check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest

from recognizer import maintenance
from recognizer.gallery import index as index_module
from recognizer.gallery.gallery import Gallery
from recognizer.gallery.index import VectorIndex
from recognizer.store.crypto import KEY_ENV, NEW_KEY_ENV, AesGcmCipher
from recognizer.store.rows import AuditEntry
from recognizer.store.sqlite import SqliteStore
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import client_for, dataset, require_models, start_server
from tests.keyfixtures import DIM, MODEL, b64, scan, unit

KEY = bytes(range(5, 37))
N_FACES = 200


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*")}


def assert_private(root: Path) -> None:
    assert root.stat().st_mode & 0o777 == 0o700, oct(root.stat().st_mode)
    loose = {n: oct(m) for n, m in modes(root).items() if m not in (0o600, 0o700)}
    assert not loose, f"files readable by others: {loose}"


def stored_templates(store: SqliteStore) -> list[np.ndarray]:
    return [v for _, vecs in store.iter_templates(MODEL) for v in vecs]


# --- through the Gallery API ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf_pqfs"])
def test_no_template_bytes_in_data_dir_or_backup(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data / "recognizer.db", AesGcmCipher(KEY))
    params = {"ivf_nlist": 8} if kind == "ivf_pqfs" else {}
    flat_max = 100 if kind == "ivf_pqfs" else 100_000
    g = Gallery(store, MODEL, DIM, data / "faces-default.faiss", flat_max, index_params=params)
    g.open()
    vecs = unit(np.random.default_rng(11).standard_normal((N_FACES, DIM)))
    for i, v in enumerate(vecs):
        g.enroll(store.create_identity(f"p{i}").id, v)
    g.rebuild()  # the kind by size: ivf_pqfs holds PQ codes and a float32 copy
    assert g.index.kind == kind
    g.checkpoint(force=True)
    truth = [*vecs, *stored_templates(store)]
    assert len(truth) == 2 * N_FACES
    assert not scan(data, truth), "template bytes in the live data directory"
    assert_private(data)  # the -wal and -shm files too, while open

    info = maintenance.backup(data, tmp_path / "backup", AesGcmCipher(KEY))
    assert not scan(info.path, truth), "template bytes in the backup"
    assert_private(info.path)
    g.close()
    assert not scan(data, truth), "template bytes in the data directory after close"

    # The backup restores and reads with the key.
    restored = tmp_path / "restored"
    maintenance.restore(info.path, restored)
    assert_private(restored)
    back = SqliteStore(restored / "recognizer.db", AesGcmCipher(KEY))
    assert len(stored_templates(back)) == N_FACES
    back.close()
    loaded = VectorIndex.load(restored / "faces-default.faiss", cipher=AesGcmCipher(KEY))
    assert loaded is not None and loaded[0].ntotal == N_FACES


def test_backup_seals_a_plaintext_index_file(tmp_path: Path) -> None:
    """An index file not sealed yet (left by release 0.1.0) is sealed on the way."""
    data = tmp_path / "data"
    store = SqliteStore(data / "recognizer.db", AesGcmCipher(KEY))
    g = Gallery(store, MODEL, DIM, data / "faces-default.faiss")
    g.open()
    vecs = unit(np.random.default_rng(3).standard_normal((20, DIM)))
    g.enroll(store.create_identity("p").id, vecs)
    g.index.save(data / "faces-default.faiss", g.watermark, tag="plain")  # no cipher
    assert scan(data, list(vecs)), "control: the plaintext index file shows the templates"
    info = maintenance.backup(data, tmp_path / "backup", AesGcmCipher(KEY))
    assert not scan(info.path, list(vecs))
    g.close()


# --- through the real server ------------------------------------------------------------------


def face_images() -> list[bytes]:
    root = dataset("faces")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".pgm"))
    return [p.read_bytes() for p in paths]


def test_real_server_enrolment_leaves_no_template_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_models("default")
    images = face_images()
    monkeypatch.setenv(KEY_ENV, b64(KEY))
    monkeypatch.delenv(NEW_KEY_ENV, raising=False)
    data = tmp_path / "data"
    running = start_server(data)  # its own: the key from the environment, its files searched
    try:
        assert running.runtime.wait(180)
        c = client_for(running, "admin")
        enrolled = 0
        for image in images:
            if enrolled == N_FACES:
                break
            iid = c.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name="face"), metadata=c.metadata
            ).identity_id
            try:
                c.identity.EnrollFace(
                    identity_pb2.EnrollFaceRequest(identity_id=iid, images=[image], force=True),
                    metadata=c.metadata,
                    timeout=60,
                )
            except grpc.RpcError as err:  # no face, or quality too low: try the next photo
                assert err.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ), err
                continue
            enrolled += 1
        if enrolled < N_FACES:
            pytest.skip(f"only {enrolled} sample photos enrol; {N_FACES} are needed")
        metrics = c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=c.metadata)
        assert metrics.gallery.store_templates == N_FACES
        c.close()
        running.runtime.engines.gallery.checkpoint(force=True)
        truth = stored_templates(running.runtime.engines.gallery.store)
        assert len(truth) == N_FACES
        assert not scan(data, truth), "template bytes in the live data directory"
        assert_private(data)
        info = maintenance.backup(data, tmp_path / "backup", AesGcmCipher(KEY))  # online
    finally:
        running.stop(grace=1.0)
    assert not scan(data, truth), "template bytes in the data directory after stop"
    assert not scan(info.path, truth), "template bytes in the backup"
    assert_private(data)
    assert_private(info.path)


# --- audit records commit with their change ---------------------------------------------------


def test_audit_record_commits_with_its_change(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    bad = AuditEntry("admin", "create_identity", "", {"not json": object()})
    with pytest.raises(TypeError):
        store.create_identity("x", audit=bad)
    assert store.count_identities() == 0, "the change committed without its audit record"

    iid = store.create_identity("a", audit=AuditEntry("admin", "create_identity", "")).id
    vec = unit(np.ones((2, DIM)))
    labels = [r.label for r in store.add_templates(iid, vec, MODEL, audit=entry("enroll", iid))]
    store.bind_plate(iid, "京A12345", audit=entry("bind_plate", iid))
    binding = store.bind_payment(iid, "ref", "plate", 0, audit=entry("bind_payment", iid))
    store.unbind_payment(iid, binding.binding_id, audit=entry("unbind_payment", iid))
    store.unbind_plate(iid, "京A12345", audit=entry("unbind_plate", iid))
    store.remove_template(iid, labels[0], audit=entry("remove_face", iid))
    store.delete_identity(iid, audit=entry("delete_identity", iid))
    rows = {r.action: r for r in store.list_audit(20)}
    assert rows["create_identity"].target == iid  # the new id fills an empty target
    assert rows["enroll"].detail["templates"] == labels
    assert rows["bind_payment"].detail["binding"] == binding.binding_id
    assert rows["delete_identity"].detail["templates"] == labels[1:]
    assert set(rows) == {
        "create_identity",
        "enroll",
        "bind_plate",
        "bind_payment",
        "unbind_payment",
        "unbind_plate",
        "remove_face",
        "delete_identity",
    }
    # A refused change leaves no audit record either.
    with pytest.raises(Exception, match="unknown identity"):
        store.bind_plate("nobody", "京B00000", audit=entry("bind_plate", "nobody"))
    assert len(store.list_audit(50)) == 8
    store.close()


def entry(action: str, target: str) -> AuditEntry:
    return AuditEntry("admin", action, target)


# --- an honest consistency check --------------------------------------------------------------


def test_check_reports_an_orphan_before_repairing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    g = Gallery(store, MODEL, DIM, tmp_path / "faces.faiss")
    g.open()
    vecs = unit(np.random.default_rng(5).standard_normal((6, DIM)))
    g.enroll(store.create_identity("a").id, vecs[:5])
    assert g.check().consistent

    g.index.add([999_999], vecs[5:])  # an orphan vector: no such template in the store
    found = g.check()
    assert not found.consistent and found.orphan_vectors == 1 and found.missing_vectors == 0
    after = g.check()  # repaired (rebuilt from the store) after reporting
    assert after.consistent and after.ntotal == 5

    g.index.remove([int(g.index.labels()[0])])  # a missing vector
    found = g.check()
    assert (found.consistent, found.orphan_vectors, found.missing_vectors) == (False, 0, 1)
    assert g.check().consistent
    g.close()


def test_stats_only_reads_and_reports_the_last_check(tmp_path: Path) -> None:
    """GetMetrics' figures: the index and store counts as they are, and the consistency the
    last check found; reading them never repairs (nor lists every label)."""
    store = SqliteStore(tmp_path / "db.sqlite")
    g = Gallery(store, MODEL, DIM, tmp_path / "faces.faiss")
    g.open()
    assert not g.stats().consistent and g.stats().checked_at == 0.0  # never checked
    vecs = unit(np.random.default_rng(7).standard_normal((4, DIM)))
    g.enroll(store.create_identity("a").id, vecs[:3])
    g.check()
    g.index.add([999_999], vecs[3:])  # an orphan the last check did not see
    st = g.stats()
    assert st.consistent and st.ntotal == 4 and st.store_templates == 3
    assert g.index.ntotal == 4  # not repaired by reading
    assert not g.check().consistent and not g.stats().consistent
    assert g.index.ntotal == 3  # the check repaired it
    g.close()


def test_check_does_not_call_a_lagging_index_inconsistent(tmp_path: Path) -> None:
    """A write in the store that the index has not applied yet is lag, not an orphan."""
    store = SqliteStore(tmp_path / "db.sqlite")
    g = Gallery(store, MODEL, DIM, tmp_path / "faces.faiss")
    g.open()
    iid = store.create_identity("a").id
    vecs = unit(np.random.default_rng(6).standard_normal((3, DIM)))
    rows = g.enroll(iid, vecs[:2])
    store.add_templates(iid, vecs[2:], MODEL)  # in the store, not yet in the index
    store.remove_template(iid, rows[0].label)
    st = g.check()
    assert st.consistent and st.orphan_vectors == 0 and st.missing_vectors == 0
    assert g.check().ntotal == 2
    g.close()


def test_modes_of_a_new_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an operator might: the index writer tightens it
    store = SqliteStore(data / "recognizer.db")
    g = Gallery(store, MODEL, DIM, data / "faces.faiss")
    g.open()
    g.enroll(store.create_identity("a").id, unit(np.ones(DIM)))
    g.checkpoint(force=True)
    with sqlite3.connect(data / "recognizer.db") as raw:  # another reader: -shm exists now
        raw.execute("SELECT COUNT(*) FROM templates").fetchone()
        files = modes(data)
    assert {"recognizer.db", "recognizer.db-wal", "recognizer.db-shm", "faces.faiss"} <= set(files)
    assert set(files.values()) == {0o600}, files
    assert data.stat().st_mode & 0o777 == 0o700
    g.close()


# --- the sealed index file --------------------------------------------------------------------


def test_sealed_index_file_is_chunked_and_authenticated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "CHUNK_BYTES", 1000)  # many chunks from a small index
    vi = VectorIndex(DIM)
    vecs = unit(np.random.default_rng(8).standard_normal((50, DIM)))
    vi.add(np.arange(50), vecs)
    path = tmp_path / "faces.faiss"
    vi.save(path, 7, tag="t", cipher=AesGcmCipher(KEY))
    assert not scan(tmp_path, list(vecs))
    loaded = VectorIndex.load(path, cipher=AesGcmCipher(KEY))
    assert loaded is not None and loaded[1] == 7 and loaded[0].ntotal == 50
    np.testing.assert_array_equal(loaded[0].search(vecs[:3], 1)[1][:, 0], [0, 1, 2])

    data = path.read_bytes()
    assert VectorIndex.load(path, cipher=AesGcmCipher(bytes(32))) is None  # another key
    flipped = bytearray(data)
    flipped[-100] ^= 1  # inside the last chunk
    path.write_bytes(bytes(flipped))
    assert VectorIndex.load(path, cipher=AesGcmCipher(KEY)) is None
    path.write_bytes(data.replace(b'"watermark": 7', b'"watermark": 9'))  # header is bound
    assert VectorIndex.load(path, cipher=AesGcmCipher(KEY)) is None
    path.write_bytes(data[:-1500])  # a chunk short
    assert VectorIndex.load(path, cipher=AesGcmCipher(KEY)) is None
