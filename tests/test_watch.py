"""AdminService.WatchDecisions through a real server and client on 127.0.0.1 (SQLite).

Most tests run a server whose runtime holds only the store (no models), and store decisions
straight into it as the gate does; one makes its decision through Authorize on the real
models. The PostgreSQL case, two nodes, is in tests/test_multinode.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest

from recognizer.client import Client
from recognizer.config import Config
from recognizer.service.runtime import Engines
from recognizer.service.server import RunningServer
from recognizer.store.crypto import NullCipher
from recognizer.store.open import open_store
from recognizer.v1 import gate_pb2
from tests.conftest import KEYS, client_for, start_server
from tests.helpers import StoreOnly, Watch, authorize_scene, error_reason, store_only

WAIT_S = 30.0  # generous: a bound on a hang, not a latency target (that is test-slow's)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path, runtime_factory=store_only)
    try:
        assert running.runtime.wait(WAIT_S)
        yield running
    finally:
        running.stop(grace=1.0)


def decide(running: RunningServer, gate_id: str) -> str:
    """Store a decision as the gate does; its id."""
    decision_id = uuid.uuid4().hex
    response = gate_pb2.AuthorizeResponse(
        decision_id=decision_id, outcome=gate_pb2.OUTCOME_STEP_UP, policy_id="default"
    )
    running.runtime.engines.gallery.store.put_decision(
        decision_id=decision_id,
        gate_id=gate_id,
        event_id=uuid.uuid4().hex,
        outcome="step_up",
        payload=response.SerializeToString(),
    )
    return decision_id


class SlowHead:
    """The store, with a slow read of where a watch starts (a busy database)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def decision_head(self) -> Any:
        time.sleep(0.5)  # the work of a slow read, inside the fake
        return self._store.decision_head()


def test_a_decision_stored_once_the_headers_arrive_is_streamed(tmp_path: Path) -> None:
    """The stream's start is fixed before its response headers go out: a client that has the
    headers and then causes a decision sees it, however slowly the start was read."""

    def slow_store(config: Config) -> Engines:
        return Engines(
            faces=None, plates=None, gallery=StoreOnly(SlowHead(open_store(config, NullCipher())))
        )

    running = start_server(tmp_path, runtime_factory=slow_store)
    try:
        assert running.runtime.wait(WAIT_S)
        with closing(client_for(running, "admin")) as c:
            watch = Watch(c)  # returns once the headers are in
            decided = decide(running, "G-1")
            assert watch.next().decision_id == decided
            watch.close()
    finally:
        running.stop(grace=1.0)


def test_decisions_stream_as_stored_and_only_the_gate_asked_for(server: RunningServer) -> None:
    with closing(client_for(server, "admin")) as c:
        watch = Watch(c, gate_id="G-1")
        try:
            first = decide(server, "G-1")
            decide(server, "G-2")  # another gate's: not sent
            second = decide(server, "G-1")
            assert watch.ids(2) == [first, second]
            assert watch.got.empty()
        finally:
            watch.close()
        everything = Watch(c)
        try:
            ids = [decide(server, gate) for gate in ("G-1", "G-2")]
            assert everything.ids(2) == ids
        finally:
            everything.close()


def test_a_reconnect_with_the_last_id_resumes_without_loss_or_repeats(
    server: RunningServer,
) -> None:
    with closing(client_for(server, "admin")) as c:
        watch = Watch(c, gate_id="G-1")
        seen = decide(server, "G-1")
        assert watch.ids(1) == [seen]
        watch.close()
        missed = [decide(server, gate) for gate in ("G-1", "G-2", "G-1")]
        resumed = Watch(c, gate_id="G-1", after=seen)
        try:
            assert resumed.ids(2) == [missed[0], missed[2]]
            live = decide(server, "G-1")
            assert resumed.ids(1) == [live]
            assert resumed.got.empty()
        finally:
            resumed.close()


def test_bad_watches_get_clear_errors(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="recognizer.access")
    with closing(client_for(server, "admin")) as c:
        unknown = Watch(c, after=uuid.uuid4().hex)
        err = unknown.next()
        assert isinstance(err, grpc.RpcError) and err.code() is grpc.StatusCode.NOT_FOUND
        assert "after_decision_id" in (err.details() or "")
        too_long = Watch(c, after="x" * 65)
        err = too_long.next()
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(err) == "TOO_LONG"
    for role in ("gate", "verifier"):
        with closing(client_for(server, role)) as other:
            denied = Watch(other)
            err = denied.next()
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    # The access log has each refused watch, with the key's name (never the key).
    lines = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "recognizer.access" and r.fields["method"].endswith("/WatchDecisions")  # type: ignore[attr-defined]
    ]
    codes = ["INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "PERMISSION_DENIED"]
    assert sorted(line["code"] for line in lines) == codes
    assert all(line["key"] and line["sent"] == 0 for line in lines)
    assert not any(key in str(lines) for key in KEYS.values())


def test_watch_max_streams_bounds_open_streams(tmp_path: Path) -> None:
    running = start_server(tmp_path, runtime_factory=store_only, watch_max_streams=1)
    try:
        assert running.runtime.wait(WAIT_S)
        with closing(client_for(running, "admin")) as c:
            first = Watch(c)
            decide(running, "G-1")
            first.next()  # the first stream is open
            err = Watch(c).next()
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            assert error_reason(err) == "TOO_MANY_STREAMS"
            first.close()
    finally:
        running.stop(grace=1.0)


def test_a_stopping_server_ends_its_streams_with_shutting_down(tmp_path: Path) -> None:
    running = start_server(tmp_path, runtime_factory=store_only, stop_grace_s=60)
    stopped = False
    try:
        assert running.runtime.wait(WAIT_S)
        with closing(client_for(running, "admin")) as c:
            watch = Watch(c)
            decide(running, "G-1")
            watch.next()
            stopper = threading.Thread(target=running.stop, kwargs={"grace": 60.0})
            stopper.start()
            err = watch.next()
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            assert error_reason(err) == "SHUTTING_DOWN"
            stopper.join(WAIT_S)
            assert not stopper.is_alive(), "the stream held the stop for its whole grace"
            stopped = True
    finally:
        if not stopped:
            running.stop(grace=1.0)


def test_an_authorize_is_seen_on_the_stream(admin: Client, real_server: RunningServer) -> None:
    gate_id = f"G-watch-{uuid.uuid4().hex[:8]}"
    watch = Watch(admin, gate_id=gate_id)
    try:
        response = authorize_scene(admin, gate_id, 0)
        record = watch.next()
        assert record.decision_id == response.decision_id
        assert (record.gate_id, record.event_id) == (gate_id, "E-1")
        assert record.response.outcome == response.outcome
        assert [r.code for r in record.response.reasons] == [r.code for r in response.reasons]
        assert record.amount_minor == 500
        # What the stream sent (a plate, a payment reference) is an admin read: audited.
        audit = admin.admin.ListAudit(
            gate_pb2.ListAuditRequest(page_size=50), metadata=admin.metadata
        )
        reads = [
            r
            for r in audit.records
            if r.action == "read_personal" and r.detail["method"].endswith("/WatchDecisions")
        ]
        assert reads and reads[0].key_name, audit.records
    finally:
        watch.close()


# --- PostgreSQL: every node sees every node's decisions, in commit order -------------------


def test_on_postgresql_node_b_streams_a_decision_stored_by_node_a(
    tmp_path: Path, pg_url: str
) -> None:
    """Not timed (test-slow's multinode test holds the 2-s bound): B hears A's NOTIFY."""
    a = start_server(tmp_path / "a", runtime_factory=store_only, database_url=pg_url)
    b = start_server(tmp_path / "b", runtime_factory=store_only, database_url=pg_url)
    try:
        assert a.runtime.wait(WAIT_S) and b.runtime.wait(WAIT_S)
        with closing(client_for(b, "admin")) as c:
            watch = Watch(c, gate_id="G-1")
            made = [decide(a, "G-1"), decide(b, "G-2"), decide(a, "G-1")]
            assert watch.ids(2) == [made[0], made[2]]
            watch.close()
            later = decide(a, "G-1")
            resumed = Watch(c, gate_id="G-1", after=made[2])
            assert resumed.ids(1) == [later]
            resumed.close()
    finally:
        a.stop(grace=1.0)
        b.stop(grace=1.0)


def test_on_postgresql_a_decision_committed_late_is_not_skipped(pg_url: str) -> None:
    """Transactions commit out of order: a watcher must not pass a decision whose writer is
    still open (it would never see it), nor send one twice."""
    import psycopg

    from recognizer.store.open import StoreLocation

    config = Config(database_url=pg_url)
    store = StoreLocation.of(config).open(NullCipher(), 4, 0.0, 1.0)
    try:
        start = store.decision_head()
        with psycopg.connect(pg_url) as late:  # a writer that began first and commits last
            late.execute(
                "INSERT INTO decisions (decision_id, gate_id, event_id, outcome, payload,"
                " created_at) VALUES ('late', 'G', 'E-late', 'deny', '', extract(epoch FROM now()))"
            )
            early = store.put_decision(
                decision_id="early", gate_id="G", event_id="E-early", outcome="deny", payload=b""
            )
            assert store.decisions_after(start, 10) == []  # held back behind the open writer
            late.commit()
        both = store.decisions_after(start, 10)
        assert [row.decision_id for _, row in both] == ["late", early.decision_id]
        assert store.decisions_after(both[-1][0], 10) == []
        assert store.decision_mark("early") == both[-1][0]
    finally:
        store.close()
