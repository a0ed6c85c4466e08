"""Schema migrations: data directories written by release 0.1.0 (tests/data/release-0.1.0,
made by tests/data/make_release_0_1_0.py) open, upgrade in place, and serve."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import grpc
import numpy as np
import pytest

from recognizer.gate.inputs import legacy_digest
from recognizer.service.server import RunningServer
from recognizer.store.crypto import AesGcmCipher, NullCipher, TemplateCipher
from recognizer.store.schema import SCHEMA_VERSION
from recognizer.store.schema import SQLITE_MIGRATIONS as MIGRATIONS
from recognizer.store.sqlite import SqliteStore
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import client_for, require_models, start_server
from tests.helpers import StoreOnly, Watch

RELEASE = Path(__file__).parent / "data" / "release-0.1.0"
MODEL = "sface-2021dec+flip"


def copy_of(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(RELEASE / name, dest)
    return dest


def user_version(db: Path) -> int:
    with closing(sqlite3.connect(db)) as c:
        return int(c.execute("PRAGMA user_version").fetchone()[0])


def test_the_fixture_is_the_previous_release(tmp_path: Path) -> None:
    # Copies, never the committed files: opening those in place makes -shm/-wal beside them,
    # and another xdist worker copying the same directory saw them vanish mid-copy.
    assert user_version(copy_of("plain", tmp_path) / "recognizer.db") == 1
    assert user_version(copy_of("encrypted", tmp_path) / "recognizer.db") == 1
    assert SCHEMA_VERSION == max(MIGRATIONS) >= 2


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_a_release_0_1_0_store_upgrades_and_keeps_its_data(name: str, tmp_path: Path) -> None:
    data = copy_of(name, tmp_path)
    cipher = AesGcmCipher(bytes(range(32))) if name == "encrypted" else None
    store = SqliteStore(data / "recognizer.db", **({"cipher": cipher} if cipher else {}))
    try:
        assert store.schema_upgraded_from == 1
        ids = json.loads((RELEASE / f"{name}-ids.json").read_text())
        vectors = np.load(RELEASE / "vectors.npy")
        for k, identity_id in enumerate(ids):
            assert store.get_identity(identity_id).display_name == f"person-{k}"
            got = np.stack([r.vector for r in store.templates(identity_id, MODEL)])
            np.testing.assert_allclose(got, vectors[2 * k : 2 * k + 2], atol=1e-6)
            assert store.plates_for(identity_id) == [f"京A1000{k}"]
        row = store.get_decision("G-1", "evt-1")
        assert row is not None and row.payload == b"\x08\x01"
        assert row.input_digest == legacy_digest("G-1", "evt-1", json.loads(row.inputs))
        assert store.last_sighting("京A10000") is not None
    finally:
        store.close()
    assert user_version(data / "recognizer.db") == SCHEMA_VERSION
    again = SqliteStore(data / "recognizer.db", **({"cipher": cipher} if cipher else {}))
    assert again.schema_upgraded_from == SCHEMA_VERSION  # nothing left to do
    again.close()


def test_a_store_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    db = copy_of("plain", tmp_path) / "recognizer.db"
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(db)
    assert db.read_bytes() == before


@pytest.fixture()
def upgraded_server(tmp_path: Path) -> Iterator[tuple[RunningServer, list[str]]]:
    require_models("default")
    data = copy_of("plain", tmp_path)
    running = start_server(data)
    assert running.runtime.wait(180), "models failed to load"
    yield running, json.loads((RELEASE / "plain-ids.json").read_text())
    running.stop(grace=1.0)


def test_the_server_serves_an_upgraded_data_directory(
    upgraded_server: tuple[RunningServer, list[str]],
) -> None:
    running, ids = upgraded_server
    c = client_for(running, "admin")
    try:
        ident = c.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=ids[0]), metadata=c.metadata
        )
        assert ident.face_count == 2 and list(ident.plates) == ["京A10000"]
        records = c.admin.ListDecisions(
            gate_pb2.ListDecisionsRequest(gate_id="G-1"), metadata=c.metadata
        ).decisions
        assert [r.event_id for r in records] == ["evt-1"]
        # The old event keeps its record: other inputs under its id are refused.
        with pytest.raises(grpc.RpcError) as err:
            c.gate.Authorize(
                gate_pb2.AuthorizeRequest(gate_id="G-1", event_id="evt-1", plate_text="京A10000"),
                metadata=c.metadata,
            )
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    finally:
        c.close()


# The previous release (the last landed one, git 64951ce, schema 2; made by
# tests/data/make_release_64951ce.py): schema 3 adds the kept template and identity counts.
PREVIOUS = Path(__file__).parent / "data" / "release-64951ce"


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_the_previous_release_upgrades_and_its_index_file_still_loads(
    name: str, tmp_path: Path
) -> None:
    from recognizer.gallery.gallery import Gallery
    from recognizer.gallery.index import VectorIndex

    data = tmp_path / name
    shutil.copytree(PREVIOUS / name, data)
    assert user_version(data / "recognizer.db") == 2
    cipher = AesGcmCipher(bytes(range(32))) if name == "encrypted" else None
    store = SqliteStore(data / "recognizer.db", **({"cipher": cipher} if cipher else {}))
    assert store.schema_upgraded_from == 2
    ids = json.loads((PREVIOUS / f"{name}-ids.json").read_text())
    vectors = np.load(PREVIOUS / "vectors.npy")
    # 1, 2 and 3 templates: the counts the migration computed, and what the gate reads.
    assert store.count_identities() == 3 and store.max_templates_per_identity() == 3
    for k, identity_id in enumerate(ids):
        got = np.stack([r.vector for r in store.templates(identity_id, MODEL)])
        np.testing.assert_allclose(got, vectors[k * (k + 1) // 2 : (k + 1) * (k + 2) // 2])
    row = store.get_decision("G-1", "evt-1")
    assert row is not None and row.input_digest == "d" * 64  # kept as that release wrote it
    index_file = data / "faces-default.faiss"
    loaded = VectorIndex.load(index_file, cipher=store.cipher)
    assert loaded is not None  # the index file format is unchanged: no rebuild needed
    store.remove_template(ids[2], store.template_labels(ids[2])[0])
    assert store.max_templates_per_identity() == 2
    gallery = Gallery(store, model=MODEL, dim=128, index_path=index_file)
    gallery.open()
    assert gallery.index.ntotal == 5 and gallery.check().consistent
    gallery.close()
    assert user_version(data / "recognizer.db") == SCHEMA_VERSION


# The last landed release (git 62e9015, schema 4, personal fields sealed; made by
# tests/data/make_release_62e9015.py): schema 5 indexes decisions by decision_id.
LANDED = Path(__file__).parent / "data" / "release-62e9015"


def _landed(name: str, tmp_path: Path) -> tuple[Path, TemplateCipher]:
    data = tmp_path / name
    shutil.copytree(LANDED / name, data)
    assert user_version(data / "recognizer.db") == 4
    return data, AesGcmCipher(bytes(range(32))) if name == "encrypted" else NullCipher()


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_a_schema_4_store_finds_a_decision_by_its_id_through_an_index(
    name: str, tmp_path: Path
) -> None:
    data, cipher = _landed(name, tmp_path)
    store = SqliteStore(data / "recognizer.db", cipher=cipher)
    try:
        assert store.schema_upgraded_from == 4
        marks = [store.decision_mark(f"d{k}") for k in range(3)]
        assert all(marks) and [m.position for m in marks] == sorted(m.position for m in marks)
        later = store.decisions_after(marks[0], 10)
        assert [row.decision_id for _, row in later] == ["d1", "d2"]
        ids = json.loads((LANDED / f"{name}-ids.json").read_text())
        assert [store.get_identity(i).external_ref for i in ids] == ["ext-0", "ext-1", "ext-2"]
    finally:
        store.close()
    assert user_version(data / "recognizer.db") == SCHEMA_VERSION
    with closing(sqlite3.connect(data / "recognizer.db")) as c:
        plan = c.execute(
            "EXPLAIN QUERY PLAN SELECT rowid, created_at FROM decisions WHERE decision_id = ?",
            ("d1",),
        ).fetchall()
    assert any("decisions_decision" in str(step) for step in plan), plan


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_a_watch_resumes_after_a_decision_the_landed_release_stored(
    name: str, tmp_path: Path
) -> None:
    """Through the real WatchDecisions RPC, on the landed release's data directory after its
    upgrade: a reconnect after d0 gets d1 and d2; an id never stored is NOT_FOUND."""
    from recognizer.service.runtime import Engines
    from recognizer.store.open import open_store

    data, cipher = _landed(name, tmp_path)
    running = start_server(
        data,
        runtime_factory=lambda config: Engines(
            faces=None, plates=None, gallery=StoreOnly(open_store(config, cipher))
        ),
    )
    try:
        assert running.runtime.wait(30)
        with closing(client_for(running, "admin")) as c:
            watch = Watch(c, gate_id="G-1", after="d0")
            try:
                assert watch.ids(2) == ["d1", "d2"]
            finally:
                watch.close()
            unknown = Watch(c, after="d9")
            err = unknown.next()
            unknown.close()
            assert isinstance(err, grpc.RpcError) and err.code() is grpc.StatusCode.NOT_FOUND
    finally:
        running.stop(grace=1.0)


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_template_sources_are_sealed_on_the_first_start_with_the_key(
    name: str, tmp_path: Path
) -> None:
    """Schema 6: the landed release kept a template's `source` (client free text, here
    naming the person) in plaintext even under a key. Its first start with the key seals
    them (and VACUUMs: no old page keeps them); without a key they stay as they were."""
    data, cipher = _landed(name, tmp_path)
    db = data / "recognizer.db"
    assert db.read_bytes().count(b"kiosk photo of") == 6  # two templates each
    store = SqliteStore(db, cipher=cipher)
    try:
        ids = json.loads((LANDED / f"{name}-ids.json").read_text())
        names = [store.get_identity(i).display_name for i in ids]
        for identity_id, person in zip(ids, names, strict=True):
            sources = {r.source for r in store.templates(identity_id, MODEL)}
            assert sources == {f"kiosk photo of {person}"}
        new = store.add_templates(ids[0], np.eye(1, 128, dtype=np.float32), MODEL, "new photo")
        assert store.templates(ids[0], MODEL)[-1].source == "new photo" == new[0].source
    finally:
        store.close()
    at_rest = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    sealed = name == "encrypted"
    assert (b"kiosk photo of" in at_rest, b"new photo" in at_rest) == (not sealed, not sealed)


def test_a_sealed_source_moved_to_another_template_is_refused(tmp_path: Path) -> None:
    from recognizer.store.sealing import SealedFieldError

    store = SqliteStore(tmp_path / "s.db", cipher=AesGcmCipher(bytes(range(32))))
    try:
        who = store.create_identity("p").id
        a, b = store.add_templates(who, np.eye(2, 128, dtype=np.float32), MODEL, "kiosk 1")
        with store._tx() as c:  # an attacker with the file swaps one row's source in
            sealed = c.execute("SELECT source FROM templates WHERE label = ?", (a.label,))
            c.execute(
                "UPDATE templates SET source = ? WHERE label = ?",
                (sealed.fetchone()[0], b.label),
            )
        with pytest.raises(SealedFieldError, match=r"templates\.source"):
            store.templates(who, MODEL)
    finally:
        store.close()
