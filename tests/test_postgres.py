"""What the PostgreSQL adapter adds to the shared contract (tests/test_store_contract.py):
a change log that loses nothing when transactions commit out of order, versioned
migrations that one node at a time applies, the key check, and backup/restore."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from recognizer.errors import AlreadyExists
from recognizer.store import postgres, schema
from recognizer.store.crypto import AesGcmCipher, TemplateKeyError
from recognizer.store.postgres import PostgresStore, _client_tool

MODEL = "pg-model"
DIM = 4


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_follower_loses_nothing_when_transactions_commit_out_of_order(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        who = store.create_identity("p").id
        position = store.current_seq()
        # T1 writes a template and its change first, and stays open (a slow writer that
        # does not take the serial lock: the log must not depend on writers being polite).
        slow = psycopg.connect(pg_url)
        label_1 = slow.execute(
            "INSERT INTO templates (identity_id, model, dim, vector, created_at)"
            " VALUES (%s, %s, %s, %s, 0) RETURNING label",
            (who, MODEL, DIM, unit(1, 1)[0].astype("<f4").tobytes()),
        ).fetchone()[0]
        slow.execute(
            "INSERT INTO changes (op, label, model) VALUES ('add', %s, %s)", (label_1, MODEL)
        )
        # T2 starts later, takes a later seq, and commits first.
        label_2 = store.add_templates(who, unit(1, 2), MODEL)[0].label
        seq_1, seq_2 = (
            slow.execute("SELECT seq FROM changes WHERE label = %s", (lb,)).fetchone()[0]
            for lb in (label_1, label_2)
        )
        # A follower reading `seq > watermark` would take T2's change now and pass T1's for
        # ever: T1's seq is the lower one and still uncommitted.
        assert seq_1 < seq_2
        assert store.changes_since(position, MODEL) == []  # T2 waits behind open T1
        assert store.backlog(position, MODEL)[0] == 1  # ...but counts as lag
        slow.commit()
        slow.close()
        got = store.changes_since(position, MODEL)
        assert [c.label for c in got] == [label_1, label_2]  # commit-safe order, both there
        assert store.changes_since(got[-1].seq, MODEL) == []
    finally:
        store.close()


def test_serial_writers_keep_a_plate_to_one_identity(pg_url: str) -> None:
    """Two nodes binding one plate to two identities at once: exactly one wins."""
    stores = [PostgresStore(pg_url) for _ in range(2)]
    try:
        ids = [s.create_identity(f"p{k}").id for k, s in enumerate(stores)]
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def bind(k: int) -> None:
            barrier.wait()
            try:
                stores[k].bind_plate(ids[k], "京A12345")
                outcomes.append("bound")
            except AlreadyExists:
                outcomes.append("refused")

        threads = [threading.Thread(target=bind, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["bound", "refused"]
        assert len(stores[0].identities_for_plate("京A12345")) == 1
    finally:
        for s in stores:
            s.close()


def test_nodes_starting_together_migrate_once(pg_url: str) -> None:
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresStore(pg_url, pool_size=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len({s.store_id for s in opened}) == 1
        # One found an empty database; the others found it part or fully migrated (each
        # step is its own transaction): a step applied twice would have failed them.
        found = sorted(s.schema_upgraded_from for s in opened)
        versions = set(range(schema.POSTGRES_BASELINE_VERSION, schema.SCHEMA_VERSION + 1))
        assert found[0] == 0 and set(found[1:]) <= versions
    finally:
        for s in opened:
            s.close()


def test_a_later_schema_step_is_applied_once_and_a_newer_database_is_refused(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = schema.SCHEMA_VERSION
    PostgresStore(pg_url).close()  # a database of this release
    applied: list[int] = []
    nxt = current + 1

    def step(c: postgres._Conn) -> None:  # a future release's step
        applied.append(nxt)
        c.execute("ALTER TABLE sightings ADD COLUMN lane TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", nxt)
    monkeypatch.setitem(schema.POSTGRES_MIGRATIONS, nxt, step)
    s = PostgresStore(pg_url)
    assert s.schema_upgraded_from == current and applied == [nxt]
    s.close()
    PostgresStore(pg_url).close()
    assert applied == [nxt]
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current)  # an older release
    with pytest.raises(RuntimeError, match="newer than this release"):
        PostgresStore(pg_url)


def test_every_schema_version_has_a_step_in_both_adapters() -> None:
    later = range(schema.POSTGRES_BASELINE_VERSION + 1, schema.SCHEMA_VERSION + 1)
    assert all(v in schema.POSTGRES_MIGRATIONS and v in schema.SQLITE_MIGRATIONS for v in later)


def test_a_wrong_key_is_refused_and_writes_nothing(pg_url: str) -> None:
    right, wrong = AesGcmCipher(bytes(range(32))), AesGcmCipher(bytes(range(1, 33)))
    s = PostgresStore(pg_url, cipher=right)
    who = s.create_identity("k").id
    vectors = unit(2)
    s.add_templates(who, vectors, MODEL)
    s.close()
    with psycopg.connect(pg_url) as c:
        before = c.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        blobs = c.execute("SELECT vector FROM templates ORDER BY label").fetchall()
    for cipher in (wrong, None):
        with pytest.raises(TemplateKeyError):
            PostgresStore(pg_url, cipher=cipher)
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == before
        assert c.execute("SELECT vector FROM templates ORDER BY label").fetchall() == blobs
    assert all(vectors[0].tobytes() not in bytes(b[0]) for b in blobs)  # sealed at rest
    s = PostgresStore(pg_url, cipher=right)
    got = np.stack([r.vector for r in s.templates(who, MODEL)])
    np.testing.assert_allclose(got, vectors, atol=1e-6)
    s.close()


def test_backup_and_restore_through_pg_dump(pg_url: str, pg_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = PostgresStore(pg_url)
    who = s.create_identity("b").id
    s.add_templates(who, unit(3), MODEL)
    s.bind_plate(who, "京A12345")
    dump = tmp_path / "backup" / "recognizer.pgdump"
    s.backup(dump)
    store_id = s.store_id
    s.close()
    restored_url = pg_cluster.create_database(f"r_{uuid.uuid4().hex[:12]}")
    subprocess.run(
        [_client_tool("pg_restore"), "--no-owner", f"--dbname={restored_url}", str(dump)],
        check=True,
        capture_output=True,
    )
    r = PostgresStore(restored_url)
    try:
        assert r.store_id == store_id and r.identities_for_plate("京A12345") == [who]
        assert r.count_templates(MODEL) == 3
        assert r.max_templates_per_identity() == 3
        assert r.add_templates(who, unit(1, 9), MODEL)[0].label > 3  # sequences restored
    finally:
        r.close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_migrate_on_postgres_and_on_a_release_0_1_0_data_directory(
    pg_url: str, tmp_path: Path
) -> None:
    import shutil

    env = {"RECOGNIZER_DATABASE_URL": pg_url}
    first = _cli("db", "migrate", "--data-dir", str(tmp_path), env=env)
    assert first.returncode == 0, first.stderr
    assert f"migrated from version 0 to {schema.SCHEMA_VERSION}" in first.stdout
    again = _cli("db", "migrate", "--data-dir", str(tmp_path), env=env)
    assert f"already at version {schema.SCHEMA_VERSION}" in again.stdout
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "release-0.1.0" / "plain", old)
    upgraded = _cli("db", "migrate", "--data-dir", str(old), env={})
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"migrated from version 1 to {schema.SCHEMA_VERSION}" in upgraded.stdout


def test_keys_encrypt_and_check_on_postgres(pg_url: str, tmp_path: Path) -> None:
    import base64

    s = PostgresStore(pg_url)
    who = s.create_identity("k").id
    vectors = unit(3)
    s.add_templates(who, vectors, MODEL)
    s.close()
    key = bytes(range(7, 39))
    env = {
        "RECOGNIZER_DATABASE_URL": pg_url,
        "RECOGNIZER_TEMPLATE_KEY": base64.b64encode(key).decode(),
    }
    done = _cli("keys", "encrypt", "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    assert "3 templates" in done.stdout
    checked = _cli("keys", "check", "--data-dir", str(tmp_path), env=env)
    assert checked.returncode == 0 and "key OK" in checked.stdout
    refused = _cli(
        "keys", "check", "--data-dir", str(tmp_path), env={**env, "RECOGNIZER_TEMPLATE_KEY": ""}
    )
    assert refused.returncode == 2
    with pytest.raises(TemplateKeyError):
        PostgresStore(pg_url)
    sealed = PostgresStore(pg_url, cipher=AesGcmCipher(key))
    got = np.stack([r.vector for r in sealed.templates(who, MODEL)])
    np.testing.assert_allclose(got, vectors, atol=1e-6)
    sealed.close()


def test_backup_and_restore_commands_on_postgres(pg_url: str, tmp_path: Path) -> None:
    s = PostgresStore(pg_url)
    s.create_identity("b")
    s.close()
    env = {"RECOGNIZER_DATABASE_URL": pg_url}
    dest = tmp_path / "backup"
    done = _cli("backup", str(dest), "--data-dir", str(tmp_path / "data"), env=env)
    assert done.returncode == 0, done.stderr
    assert (dest / "recognizer.pgdump").stat().st_size > 0
    assert "pg_dump" in done.stdout and "@" in done.stdout  # the location, no password
    refused = _cli("restore", str(dest), "--data-dir", str(tmp_path / "data"), env=env)
    assert refused.returncode != 0 and "pg_restore" in refused.stderr


def test_a_local_cluster_whose_free_port_was_taken_starts_on_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """devtools/pg_local: the port it picked is taken (another test worker) before the server
    binds it; the start tries a fresh port instead of failing the test session."""
    import socket

    from devtools import pg_local
    from tests.conftest import local_postgres

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [int(taken.getsockname()[1])]
        real = pg_local._free_port
        monkeypatch.setattr(pg_local, "_free_port", lambda: ports.pop() if ports else real())
        with local_postgres("recognizer-pg-port-") as cluster:
            assert cluster.port != taken.getsockname()[1] and not ports
            with psycopg.connect(cluster.url) as c:
                assert c.execute("SELECT 1").fetchone() == (1,)


def test_a_database_not_in_utf8_is_refused_untouched(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    """A SQL_ASCII database hands text back as bytes (no encoding to decode it by): names,
    plates and sealed fields would be misread. The store refuses it, saying how to make one,
    and creates nothing in it."""
    name = f"ascii_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as c:
        c.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    url = pg_cluster.url_for(name)
    with pytest.raises(RuntimeError, match=r"encoding is SQL_ASCII.*UTF8"):
        PostgresStore(url)
    with psycopg.connect(url) as c:
        tables = c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_a_transaction_open_in_another_database_holds_back_neither_log_nor_watch(
    pg_cluster,  # type: ignore[no-untyped-def]
) -> None:
    """Transaction ids are cluster-wide: an application's write transaction left open in
    another database of the same server must not stall this database's followers and
    watchers (the replica would lag and stop answering 1:N). One open in this database still
    holds them, as the out-of-order test above shows."""
    ours = pg_cluster.create_database(f"ours_{uuid.uuid4().hex[:12]}")
    theirs = pg_cluster.create_database(f"theirs_{uuid.uuid4().hex[:12]}")
    store = PostgresStore(ours)
    other = psycopg.connect(theirs)
    try:
        other.execute("CREATE TABLE t (x int)")
        other.commit()
        who = store.create_identity("p").id
        position, head = store.current_seq(), store.decision_head()
        other.execute("INSERT INTO t VALUES (1)")  # an xid, left open
        other.execute("SELECT pg_current_xact_id()")
        label = store.add_templates(who, unit(1, 3), MODEL)[0].label
        store.put_decision(
            gate_id="G-1", event_id="e-1", decision_id="d-1", identity_id=who,
            outcome="allow", payload=b"", inputs={}, input_digest="0" * 64,
        )  # fmt: skip
        assert [c.label for c in store.changes_since(position, MODEL)] == [label]
        assert [row.decision_id for _, row in store.decisions_after(head, 10)] == ["d-1"]
        assert store.current_seq() > position
    finally:
        other.rollback()
        other.close()
        store.close()
