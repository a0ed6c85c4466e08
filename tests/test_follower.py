"""The replica follower's lag figure, its health signal, and the gallery's refusal of 1:N
searches while it lags (fakes for the store and clock; the real thing is in
tests/test_multinode.py). Also a rebuild on PostgreSQL while a later transaction is
visible but not settled: it must not apply that change twice."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recognizer import telemetry
from recognizer.errors import Unavailable
from recognizer.gallery.follower import Follower, ReplicaLag
from recognizer.gallery.gallery import Gallery
from recognizer.store.postgres import PostgresStore
from recognizer.store.sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStore:
    def __init__(self) -> None:
        self.pending = (0, 0.0)
        self.down = False

    def wait_for_change(self, timeout_s: float) -> bool:
        return False

    def backlog(self, seq: int, model: str) -> tuple[int, float]:
        if self.down:
            raise OSError("database unreachable")
        return self.pending


class FakeGallery:
    model = "m"
    watermark = 0

    def sync(self) -> int:
        return 0


def test_the_lag_grows_with_pending_changes_and_when_the_store_cannot_be_read() -> None:
    clock, store = Clock(), FakeStore()
    follower = Follower(FakeGallery(), store, poll_s=0.5, max_lag_s=2.0, clock=clock)
    seen: list[bool] = []
    follower.on_change(seen.append)
    assert follower.poll_once() == ReplicaLag(0, 0.0) and seen == [True]
    store.pending = (3, 1.5)  # three changes, the oldest 1.5 s old by the database
    assert follower.poll_once() == ReplicaLag(3, 1.5) and follower.fresh()
    clock.now += 1.0  # nobody polled for a second: the oldest is older now
    assert follower.lag() == ReplicaLag(3, 2.5) and not follower.fresh()
    store.pending = (4, 2.5)  # the database says the same a second later
    follower.poll_once()
    assert seen == [True, False]
    store.pending = (0, 0.0)
    follower.poll_once()
    assert seen == [True, False, True]
    store.down = True  # reads fail: the last good reading ages
    clock.now += 10.0
    lag = follower.poll_once()
    assert lag.seconds == pytest.approx(10.0 - 2 * 0.5) and seen[-1] is False


def test_a_lagging_gallery_refuses_1n_and_serves_again_once_fresh(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    gallery = Gallery(store, model="m", dim=4, index_path=None)
    gallery.open()
    who = store.create_identity("p").id
    v = np.eye(4, dtype=np.float32)[:1]
    gallery.enroll(who, v)
    fresh = [False]
    gallery.fresh = lambda: fresh[0]
    with pytest.raises(Unavailable) as err:
        gallery.identify(v, 1)
    assert err.value.reason == "REPLICA_LAGGING"
    fresh[0] = True
    assert [m.identity_id for m in gallery.identify(v, 1)] == [who]
    gallery.close()


def test_replica_lag_is_on_the_metrics_page() -> None:
    figures = telemetry.GalleryFigures(5, 2, ReplicaLag(7, 3.25))
    registry = telemetry.server_registry(dict, lambda: figures)
    from prometheus_client import generate_latest

    values = {
        s.name: s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    assert values["recognizer_replica_lag_changes"] == 7
    assert values["recognizer_replica_lag_seconds"] == 3.25
    no_replica = telemetry.server_registry(dict, lambda: telemetry.GalleryFigures(5, 2))
    assert b"recognizer_replica_lag" not in generate_latest(no_replica)


def test_a_rebuild_does_not_apply_an_unsettled_change_twice(pg_url: str, tmp_path: Path) -> None:
    """T1 holds the xmin line; T2 commits a template after it. A rebuild's snapshot already
    sees T2's template, and the log will hand T2's change over again once T1 ends."""
    writer = PostgresStore(pg_url)
    who = writer.create_identity("p").id
    unit = np.eye(4, dtype=np.float32)
    writer.add_templates(who, unit[:1], "m")
    slow = psycopg.connect(pg_url)
    slow.execute("INSERT INTO audit (at, actor_role, action, target) VALUES (0, 'x', 'y', 'z')")
    writer.add_templates(who, unit[1:2], "m")  # visible, not settled: T1 is still open
    reader = PostgresStore(pg_url)
    gallery = Gallery(reader, model="m", dim=4, index_path=tmp_path / "x.faiss")
    gallery.open()  # rebuilds from a snapshot holding both templates
    assert gallery.index.ntotal == 2
    assert not gallery.checkpoint(force=False)  # the file could not say what it holds
    slow.commit()
    slow.close()
    gallery.sync()
    assert gallery.index.ntotal == 2 and gallery.check().consistent
    assert gallery.checkpoint(force=False)
    writer.add_templates(who, unit[2:3], "m")
    gallery.sync()
    assert gallery.index.ntotal == 3 and gallery.check().consistent
    gallery.close()
    writer.close()


def test_the_follower_thread_stops(tmp_path: Path) -> None:
    follower = Follower(FakeGallery(), FakeStore(), poll_s=0.01)
    follower.start()
    assert any(t.name == "replica-follower" for t in threading.enumerate())
    follower.stop()
    assert not any(t.name == "replica-follower" for t in threading.enumerate())


def test_a_removal_made_on_another_node_leaves_this_nodes_index_file_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    from recognizer.gallery.index import VectorIndex

    other = PostgresStore(pg_url)
    who = other.create_identity("p").id
    label = other.add_templates(who, np.eye(4, dtype=np.float32)[:1], "m")[0].label
    gallery = Gallery(PostgresStore(pg_url), model="m", dim=4, index_path=tmp_path / "x.faiss")
    gallery.open()
    gallery.checkpoint(force=True)
    other.delete_identity(who)
    gallery.sync()
    loaded = VectorIndex.load(tmp_path / "x.faiss")
    assert loaded is not None and label not in loaded[0].labels()
    gallery.close()
    other.close()


def test_a_removal_replayed_by_a_rebuild_leaves_the_index_file_too(tmp_path: Path) -> None:
    """Many changes at once are applied by rebuilding: a deletion among them must still be
    checkpointed out of the file at once (the periodic save may be far off)."""
    from recognizer.gallery.index import VectorIndex

    store = SqliteStore(tmp_path / "s.db")
    gallery = Gallery(store, model="m", dim=4, index_path=tmp_path / "x.faiss")
    gallery.replay_rebuild_fraction = 0.0
    gallery.open()
    who = store.create_identity("p").id
    gallery.enroll(who, np.eye(4, dtype=np.float32)[:1])
    gallery.checkpoint(force=True)
    labels = store.template_labels(who)
    rows = np.random.default_rng(0).standard_normal((10_001, 4)).astype(np.float32)
    store.add_templates(
        store.create_identity("q").id, rows / np.linalg.norm(rows, axis=1, keepdims=True), "m"
    )
    gallery.delete_identity(who)  # 10,002 changes since the watermark: replayed by a rebuild
    loaded = VectorIndex.load(tmp_path / "x.faiss")
    assert loaded is not None and not set(labels) & set(loaded[0].labels().tolist())
    gallery.close()
