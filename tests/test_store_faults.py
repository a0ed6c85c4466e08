"""Faults of the store, tried as an operator would (issue 29): the store locked by another
process, a full disk, the database down, a stop with a call stuck in the store.

A real server on the real models; the lock holder is another process (SQLite) or another
session (PostgreSQL). What each test asserts is what the callers see and what the store
holds afterwards, counted in its own tables.
"""

from __future__ import annotations

import functools
import os
import platform
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from recognizer.client import Client
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import (
    client_for,
    loaded_server,
    local_postgres,
    missing,
    require_models,
    start_server,
)
from tests.helpers import error_reason, eventually, lfw_face

GATE = "G-faults"
WRITE_TABLES = ("identities", "templates", "plates", "decisions", "audit")
IDENTITY = "recognizer.v1.IdentityService"
GATE_SERVICE = "recognizer.v1.GateService"


# --- who holds the lock -----------------------------------------------------------------

_SQLITE_HOLDER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
c.execute("ROLLBACK")
"""


@contextmanager
def sqlite_locked(db: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock (`BEGIN IMMEDIATE`) inside the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)


@contextmanager
def postgres_locked(url: str, mode: str = "EXCLUSIVE") -> Iterator[None]:
    """Another session holds a table lock on every table the writes touch."""
    import psycopg

    with psycopg.connect(url) as c:
        c.execute(f"LOCK TABLE {', '.join(WRITE_TABLES)}, sightings IN {mode} MODE")
        try:
            yield
        finally:
            c.rollback()


def _wait_for_a_lock_wait(url: str, seconds: float = 30.0) -> None:
    """Until a session of the database waits on a lock (pg_stat_activity says so)."""
    import psycopg

    end = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as c:
        while not c.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < end, "no session ever waited on the lock"
            time.sleep(0.02)


# nanosleep and clock_nanosleep by machine: SQLite's busy handler sleeps between its tries for
# the write lock; an idle server's threads wait on futexes and epoll instead.
_SLEEP_SYSCALLS = {"x86_64": {"35", "230"}, "aarch64": {"101", "115"}}


def _sleeping_threads(pid: int) -> int:
    """Threads of process `pid` inside a sleep system call now (Linux /proc)."""
    calls = _SLEEP_SYSCALLS.get(platform.machine())
    if calls is None or not Path(f"/proc/{pid}/task").is_dir():
        missing(f"no known sleep system call numbers on {platform.machine()} or no /proc")
    sleeping = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            sleeping += (task / "syscall").read_text().split()[0] in calls
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return sleeping


def _wait_for_a_busy_wait(pid: int) -> None:
    """Until a thread of the server sleeps in SQLite's busy handler: the call waits for the
    write lock (nothing outside the process shows it, unlike PostgreSQL's pg_stat_activity)."""
    eventually(lambda: _sleeping_threads(pid) > 0, what="a thread in SQLite's busy wait")


def sqlite_counts(db: Path) -> dict[str, int]:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: int(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in WRITE_TABLES}
    finally:
        c.close()


def postgres_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return {t: int(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in WRITE_TABLES}


# --- the four writes --------------------------------------------------------------------


class Writes:
    """CreateIdentity, EnrollFace, BindPlate and Authorize, each the same request every time
    it is sent (so a retry is a retry)."""

    def __init__(self, admin: Client, gate: Client, identity_id: str) -> None:
        self.admin, self.gate = admin, gate
        n = uuid.uuid4().int % 90000
        self.plate = f"京B{10000 + n:05d}"
        self.event = uuid.uuid4().hex
        self.calls: dict[str, Callable[[float], Any]] = {
            "CreateIdentity": lambda t: admin.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name="made while locked"),
                metadata=admin.metadata,
                timeout=t,
            ),
            "EnrollFace": lambda t: admin.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=identity_id, images=[lfw_face("George_W_Bush", 1)], force=True
                ),
                metadata=admin.metadata,
                timeout=t,
            ),
            "BindPlate": lambda t: admin.identity.BindPlate(
                identity_pb2.BindPlateRequest(identity_id=identity_id, plate=self.plate),
                metadata=admin.metadata,
                timeout=t,
            ),
            "Authorize": lambda t: gate.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id=GATE,
                    event_id=self.event,
                    plate_text=f"京C{10000 + n:05d}",
                    amount_minor=100,
                    currency="CNY",
                ),
                metadata=gate.metadata,
                timeout=t,
            ),
        }

    def all_at_once(self, timeout: float) -> dict[str, tuple[Any, float]]:
        """Every call in its own thread: name -> (status code or response, seconds)."""
        out: dict[str, tuple[Any, float]] = {}

        def run(name: str) -> None:
            t0 = time.monotonic()
            try:
                result: Any = self.calls[name](timeout)
            except grpc.RpcError as exc:
                result = exc
            out[name] = (result, time.monotonic() - t0)

        threads = [threading.Thread(target=run, args=(n,)) for n in self.calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out


def _prepare(admin: Client) -> str:
    created = admin.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name="payer"), metadata=admin.metadata
    )
    admin.identity.EnrollFace(
        identity_pb2.EnrollFaceRequest(
            identity_id=created.identity_id, images=[lfw_face("George_W_Bush", 0)], force=True
        ),
        metadata=admin.metadata,
    )
    return created.identity_id


def _locked_writes_store_nothing(
    running: Any, locked: Callable[[], Any], counts: Callable[[], dict[str, int]]
) -> None:
    admin, gate = client_for(running, "admin"), client_for(running, "gate")
    try:
        writes = Writes(admin, gate, _prepare(admin))
        before = counts()
        with locked():
            results = writes.all_at_once(timeout=2.0)
            # Every caller had its answer while the lock was still held (not a clock bound:
            # a call the lock held would still run, and be missing here).
            assert set(results) == set(writes.calls), results
            time.sleep(2.0)  # the lock outlives the callers' deadlines by far
        for name, (result, took) in results.items():
            assert isinstance(result, grpc.RpcError), f"{name} succeeded under the lock"
            assert result.code() is grpc.StatusCode.DEADLINE_EXCEEDED, (name, result, took)
        # Anything still pending would commit now that the lock is gone: until no call runs.
        end = time.monotonic() + 30
        while not running.idle():
            assert time.monotonic() < end, "a call still runs 30 s after the lock was gone"
            time.sleep(0.02)
        assert counts() == before, "a call whose deadline passed stored something"
        # Their retries succeed once each, and a second retry duplicates nothing.
        for call in writes.calls.values():
            call(30.0)
        first = counts()
        assert first["identities"] == before["identities"] + 1
        assert first["templates"] > before["templates"]
        assert first["plates"] == before["plates"] + 1
        assert first["decisions"] == before["decisions"] + 1
        replay = writes.calls["Authorize"](30.0)
        assert replay.replayed
        writes.calls["BindPlate"](30.0)  # idempotent for the same identity
        after = counts()
        assert after["decisions"] == first["decisions"]
        assert after["plates"] == first["plates"]
    finally:
        admin.close()
        gate.close()


def test_a_write_whose_deadline_passed_under_a_sqlite_lock_stores_nothing(
    tmp_path: Path,
) -> None:
    with loaded_server(tmp_path) as running:
        db = running.runtime.config.db_path
        _locked_writes_store_nothing(running, lambda: sqlite_locked(db), lambda: sqlite_counts(db))


def test_a_write_whose_deadline_passed_under_a_postgres_lock_stores_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    with loaded_server(tmp_path, database_url=pg_url) as running:
        _locked_writes_store_nothing(
            running, lambda: postgres_locked(pg_url), lambda: postgres_counts(pg_url)
        )


def test_reads_under_a_postgres_table_lock_give_back_their_sessions_and_slots(
    tmp_path: Path, pg_url: str
) -> None:
    """GetIdentity with 1-s deadlines while a table is locked: they time out at 1 s, and
    once the lock goes the next call is served (no slot held, no inflated estimate)."""
    with loaded_server(tmp_path, database_url=pg_url, database_pool_size=4) as running:
        admin = client_for(running, "admin")
        try:
            iid = admin.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name="reader"), metadata=admin.metadata
            ).identity_id
            get = identity_pb2.GetIdentityRequest(identity_id=iid)
            with postgres_locked(pg_url, "ACCESS EXCLUSIVE"):
                for _ in range(6):  # more than the pool's sessions and the method's slots
                    t0 = time.monotonic()
                    with pytest.raises(grpc.RpcError) as err:
                        admin.identity.GetIdentity(get, metadata=admin.metadata, timeout=1.0)
                    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                    # Answered near its deadline, not when the lock goes (the bug: 15 s);
                    # the slack is for a loaded machine.
                    assert time.monotonic() - t0 < 5.0
            # Once the lock goes, calls are served again at once: not refused for the length
            # of the stall (the bug: DEADLINE_TOO_SHORT for about 15 s more).
            t0 = time.monotonic()
            while True:
                try:
                    got = admin.identity.GetIdentity(get, metadata=admin.metadata, timeout=2.0)
                    break
                except grpc.RpcError as exc:
                    assert time.monotonic() - t0 < 8.0, exc
                    time.sleep(0.2)
            assert got.identity_id == iid
        finally:
            admin.close()


# --- a full disk ------------------------------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")


def _fill(folder: Path) -> Path:
    """A file that takes every free byte of `folder`'s filesystem."""
    filler = folder / "filler"
    # Unbuffered: a write the disk takes only in part leaves nothing behind for close() to
    # flush (a buffered file raised ENOSPC from close() whenever the free space was not a
    # multiple of the chunk).
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 16)
        for _ in range(100_000):  # bounded: far more than the tmpfs holds
            try:
                f.write(chunk)
            except OSError:
                break
    return filler


def _wait_health(c: Client, service: str, want: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while c.health(service) != want:
        assert time.monotonic() < end, f"{service} health never became {want}"
        time.sleep(0.1)


def test_a_full_disk_is_unavailable_storage_full_and_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    _mount_tmpfs(data, "24m")
    try:
        require_models("default")
        running = start_server(data, checkpoint_seconds=3600.0)
        stopped = False
        admin = client_for(running, "admin")
        try:
            assert running.runtime.wait(180), "models failed to load"
            md = admin.metadata
            kept = admin.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name="before"), metadata=md
            ).identity_id
            filler = _fill(data)
            refused = 0
            for k in range(20):  # the WAL may hold a few more pages: then it is full
                try:
                    admin.identity.CreateIdentity(
                        identity_pb2.CreateIdentityRequest(display_name=f"full {k}"),
                        metadata=md,
                        timeout=10,
                    )
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                    assert error_reason(exc) == "STORAGE_FULL"
                    refused += 1
                    break
            assert refused, "writes kept succeeding on a full disk"
            _wait_health(admin, IDENTITY, "NOT_SERVING", 5)
            assert admin.health(GATE_SERVICE) == "NOT_SERVING"
            verifier = client_for(running, "verifier")
            got = verifier.identity.GetIdentity(
                identity_pb2.GetIdentityRequest(identity_id=kept), metadata=verifier.metadata
            )
            verifier.close()
            assert got.identity_id == kept  # reads keep working
            # An admin read of personal fields is audited first: with no room for the audit
            # row, the fields are not handed out (issue 32).
            with pytest.raises(grpc.RpcError) as unaudited:
                admin.identity.GetIdentity(
                    identity_pb2.GetIdentityRequest(identity_id=kept), metadata=md
                )
            assert unaudited.value.code() is grpc.StatusCode.UNAVAILABLE
            assert error_reason(unaudited.value) == "STORAGE_FULL"
            filler.unlink()
            _wait_health(admin, IDENTITY, "SERVING", 10)
            after = admin.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name="after"), metadata=md
            )
            admin.identity.EnrollFace(  # the index now holds what its file does not
                identity_pb2.EnrollFaceRequest(
                    identity_id=after.identity_id,
                    images=[lfw_face("Tony_Blair", 0)],
                    force=True,
                ),
                metadata=md,
            )
            listed = admin.identity.ListIdentities(
                identity_pb2.ListIdentitiesRequest(), metadata=md
            )
            ids = {i.identity_id for i in listed.identities}
            assert {kept, after.identity_id} <= ids  # nothing acknowledged was lost
            # Stopping on a full disk: a clean stop, one warning that the index was not saved.
            _fill(data)
            admin.close()
            with caplog.at_level("WARNING"):
                running.stop(grace=1.0)
            stopped = True
            warned = [r for r in caplog.records if "index file not saved" in r.getMessage()]
            assert len(warned) == 1, [r.getMessage() for r in caplog.records]
        finally:
            admin.close()
            if not stopped:
                running.stop(grace=1.0)
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


# --- PostgreSQL down at start -----------------------------------------------------------


def _pg_env(url: str, **more: str) -> dict[str, str]:
    return {"RECOGNIZER_DATABASE_URL": url, "RECOGNIZER_REPLICA_POLL_S": "0.1", **more}


def _log_lines(server: Any, text: str) -> list[str]:
    return [line for line in list(server.log) if text in line]


def test_a_node_started_while_postgres_is_down_waits_and_serves_once_it_is_back(
    tmp_path: Path,
) -> None:
    from devtools import pg_local
    from tests import procserver

    with local_postgres("recognizer-pg-late-") as db:
        db.stop()
        server = procserver.start(
            tmp_path / "node",
            extra_env=_pg_env(db.url, RECOGNIZER_DATABASE_WAIT_S="120"),
            wait_serving=False,
        )
        try:
            end = time.monotonic() + 60
            while len(_log_lines(server, "database unreachable (attempt")) < 3:
                assert server.alive(), "".join(server.log[-20:])
                assert time.monotonic() < end, "no retry lines while the database is down"
                time.sleep(0.2)
            c = server.client()
            try:
                assert c.health() == "NOT_SERVING"
                assert c.health(IDENTITY) == "NOT_SERVING"
                pg_local.start(db.data, durable=False, port=db.port)
                assert c.wait_serving(120), "".join(server.log[-20:])
                made = c.identity.CreateIdentity(
                    identity_pb2.CreateIdentityRequest(display_name="late"),
                    metadata=c.metadata,
                    timeout=30,
                )
                assert made.identity_id
            finally:
                c.close()
            assert not any('"exc"' in line or "Traceback" in line for line in server.log)
            assert server.terminate(30) == 0
        finally:
            server.kill()


def test_a_node_exits_2_when_postgres_stays_down_past_database_wait_s(tmp_path: Path) -> None:
    from tests import procserver

    with local_postgres("recognizer-pg-never-") as db:
        db.stop()
        server = procserver.start(
            tmp_path / "node",
            extra_env=_pg_env(
                db.url, RECOGNIZER_DATABASE_WAIT_S="2", RECOGNIZER_DATABASE_RETRY_MAX_S="0.5"
            ),
            wait_serving=False,
        )
        try:
            code = server.proc.wait(120)
            assert code == 2, "".join(server.log[-20:])
            assert not any("Traceback" in line or '"exc"' in line for line in server.log)
            assert len(_log_lines(server, "database_wait_s")) == 1  # the one line saying why
        finally:
            server.kill()


# --- stopping -----------------------------------------------------------------------------


def _call_into(out: list[Any], call: Callable[[], Any]) -> None:
    try:
        out.append(call())
    except grpc.RpcError as exc:
        out.append(exc.code())


def _stop_with_a_stuck_create(
    server: Any, c: Any, until_blocked: Callable[[], None]
) -> tuple[int, float, list[Any]]:
    """A CreateIdentity without a deadline sent from a thread; once `until_blocked` returns
    (it waits for the call to be stuck in the store), SIGTERM: (exit code, seconds the stop
    took, the call's outcome)."""
    outcome: list[Any] = []
    create = identity_pb2.CreateIdentityRequest(display_name="stuck")
    caller = threading.Thread(
        target=_call_into,
        args=(outcome, functools.partial(c.identity.CreateIdentity, create, metadata=c.metadata)),
    )
    caller.start()
    until_blocked()
    t0 = time.monotonic()
    code = server.terminate(30)
    took = time.monotonic() - t0
    caller.join(10)
    return code, took, outcome


def _stuck_stop(tmp_path: Path, runs: int, timed: bool = False) -> None:
    """SIGTERM while a CreateIdentity without a deadline waits for SQLite's write lock
    (another process holds it past the stop's grace): exit 0, and nothing of it stored."""
    from tests import procserver

    for run in range(runs):
        data = tmp_path / f"run{run}"
        server = procserver.start(
            data, extra_env={"RECOGNIZER_STOP_GRACE_S": "1", "RECOGNIZER_DRAIN_S": "0.2"}
        )
        c = server.client()
        try:
            db = data / "recognizer.db"
            before = sqlite_counts(db)
            with sqlite_locked(db):
                # Idle, no thread of the server sleeps so: the wait below sees the call's.
                assert _sleeping_threads(server.proc.pid) == 0
                code, took, outcome = _stop_with_a_stuck_create(
                    server, c, functools.partial(_wait_for_a_busy_wait, server.proc.pid)
                )
            assert code == 0, (run, code, "".join(server.log[-20:]))
            assert took < 15 or not timed, took  # a clock bound: the slow tier only
            assert outcome and isinstance(outcome[0], grpc.StatusCode), outcome
            assert outcome[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert sqlite_counts(db) == before, "a half-written or late write"
            assert not any("Traceback" in line for line in server.log)
        finally:
            c.close()
            server.kill()


def test_sigterm_with_a_call_stuck_in_the_store_exits_0(tmp_path: Path) -> None:
    _stuck_stop(tmp_path, runs=1)


@pytest.mark.parametrize("timed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sigterm_with_a_call_stuck_in_postgres_exits_0(
    tmp_path: Path, pg_url: str, timed: bool
) -> None:
    """The same on PostgreSQL: the stuck statement is cancelled, the process exits 0 (within
    15 s: `timed`, a clock bound, in the slow tier only)."""
    from tests import procserver

    server = procserver.start(
        tmp_path / "node",
        extra_env=_pg_env(pg_url, RECOGNIZER_STOP_GRACE_S="1", RECOGNIZER_DRAIN_S="0.2"),
    )
    c = server.client()
    try:
        before = postgres_counts(pg_url)
        with postgres_locked(pg_url):
            code, took, outcome = _stop_with_a_stuck_create(
                server, c, lambda: _wait_for_a_lock_wait(pg_url)
            )
        assert code == 0, "".join(server.log[-20:])
        assert took < 15 or not timed, took
        assert outcome and outcome[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert postgres_counts(pg_url) == before
        assert not any("Traceback" in line for line in server.log)
    finally:
        c.close()
        server.kill()


@pytest.mark.slow
def test_sigterm_with_a_call_stuck_in_the_store_exits_0_20_times(tmp_path: Path) -> None:
    _stuck_stop(tmp_path, runs=20, timed=True)


def test_sigterm_under_load_drains_before_the_port_closes(tmp_path: Path) -> None:
    """Health turns NOT_SERVING while the port still answers (for drain_s), and every call
    started before the port closes finishes."""
    from tests import procserver

    server = procserver.start(tmp_path / "node", extra_env={"RECOGNIZER_DRAIN_S": "2"})
    try:
        watcher, worker = server.client(), server.client()
        iid = worker.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name="load"), metadata=worker.metadata
        ).identity_id
        seen: list[tuple[float, str]] = []
        results: list[tuple[float, float, Any]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    seen.append((time.monotonic(), watcher.health(IDENTITY, timeout=1.0)))
                except grpc.RpcError as exc:
                    seen.append((time.monotonic(), exc.code().name))
                time.sleep(0.05)

        def load() -> None:
            get = identity_pb2.GetIdentityRequest(identity_id=iid)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    worker.identity.GetIdentity(get, metadata=worker.metadata, timeout=10)
                    results.append((t0, time.monotonic(), "OK"))
                except grpc.RpcError as exc:
                    results.append((t0, time.monotonic(), exc.code()))
                time.sleep(0.02)

        threads = [threading.Thread(target=watch), threading.Thread(target=load)]
        for t in threads:
            t.start()
        # Both loops are under way: health seen SERVING and calls answered.
        eventually(
            lambda: ("SERVING" in {s for _, s in seen}) and len(results) >= 3,
            what="health SERVING and three answered calls",
        )
        server.proc.send_signal(15)
        code = server.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(10)
        assert code == 0, "".join(server.log[-20:])
        states = [s for _, s in seen]
        assert "NOT_SERVING" in states, states
        first_not = next(at for at, s in seen if s == "NOT_SERVING")
        gone = [at for at, s in seen if s not in ("SERVING", "NOT_SERVING")]
        assert gone and gone[0] > first_not + 1.0, "no drain window before the port closed"
        # Calls during the drain were served; none failed but by finding the port closed.
        closing = first_not + 1.5  # the drain's last half second: the port may be closing
        during = [r for t0, _, r in results if first_not <= t0 < closing]
        assert during and all(r == "OK" for r in during), during
        # Except one that reached the server as its drain ended and the port began to close:
        # gRPC core ends a call no handler has taken yet with CANCELLED, not UNAVAILABLE
        # (grpc/grpc#41785; seen once in CI, 20 ms before the port was seen closed).
        other = [
            (t0, t1, r)
            for t0, t1, r in results
            if r not in ("OK", grpc.StatusCode.UNAVAILABLE)
            and not (r == grpc.StatusCode.CANCELLED and t0 >= closing)
        ]
        assert not other, (first_not, gone[0], other)
        watcher.close()
        worker.close()
    finally:
        server.kill()


# --- the pieces, without a server -----------------------------------------------------------


def test_the_sqlite_write_lock_is_waited_for_until_the_deadline_only(tmp_path: Path) -> None:
    from recognizer import deadline
    from recognizer.errors import DeadlineExceeded
    from recognizer.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "r.db")
    try:
        with sqlite_locked(tmp_path / "r.db"):
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded), deadline.running(deadline.Budget.after(0.5)):
                store.create_identity("late")
            assert 0.4 < time.monotonic() - t0 < 1.5
        # The deadline passes inside the transaction: the check before COMMIT rolls it back.
        budget = deadline.Budget.after(0.2)
        with pytest.raises(DeadlineExceeded), deadline.running(budget), store._tx() as c:
            c.execute("INSERT INTO meta VALUES ('late', 'x')")
            time.sleep(0.3)
        assert store.list_identities(10) == []
        with store._conn() as c:
            assert c.execute("SELECT COUNT(*) FROM meta WHERE key = 'late'").fetchone()[0] == 0
    finally:
        store.close()


def test_store_health_clears_by_its_probe_and_tells_its_listeners() -> None:
    from recognizer.store.faults import StoreHealth

    health = StoreHealth(interval_s=0.02)
    seen: list[bool] = []
    health.on_change(lambda h: seen.append(h.writable))
    tries = iter([False, False, True])
    health.set_probe(StoreHealth.FULL, lambda: next(tries, True))
    health.fail(StoreHealth.FULL, "no space")
    assert not health.writable and health.full and health.reachable
    end = time.monotonic() + 5
    while len(seen) < 2:  # the listeners hear of it just after the condition clears
        assert time.monotonic() < end, "the probe never cleared the condition"
        time.sleep(0.01)
    assert seen == [False, True] and health.writable
    health.close()


def test_reconnects_back_off_at_most_database_retry_max_s() -> None:
    from recognizer.store.postgres import _CappedAttempt

    attempt = _CappedAttempt(timeout=3600.0, cap_s=1.0)
    delays = []
    for k in range(12):
        attempt.update_delay(float(k))
        delays.append(attempt.delay)
    assert max(delays) <= 1.0 and delays[0] > 0


def test_the_fault_settings_are_bounded() -> None:
    from recognizer.config import ConfigError, load_config

    assert load_config(env={}).drain_s == 2.0
    assert load_config(env={}).database_retry_max_s == 1.0
    for name, bad in (("drain_s", -1), ("database_retry_max_s", 0), ("database_wait_s", -5)):
        with pytest.raises(ConfigError):
            load_config(env={}, **{name: bad})


# --- PostgreSQL killed under load on two nodes (slow) -------------------------------------


class _Load(threading.Thread):
    """CreateIdentity and Authorize on one node in a loop; records what was acknowledged
    and when each call ended."""

    def __init__(self, client: Client, gate: Client, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.gate, self.stop_event = client, gate, stop
        self.acked: list[str] = []
        self.events: list[str] = []
        self.ends: list[tuple[float, bool]] = []  # (when a call ended, it succeeded)
        self.codes: set[grpc.StatusCode] = set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            event = uuid.uuid4().hex
            try:
                made = self.client.identity.CreateIdentity(
                    identity_pb2.CreateIdentityRequest(display_name="load"),
                    metadata=self.client.metadata,
                    timeout=3.0,
                )
                self.acked.append(made.identity_id)
                self.gate.gate.Authorize(
                    gate_pb2.AuthorizeRequest(
                        gate_id=GATE,
                        event_id=event,
                        plate_text="京A12345",
                        amount_minor=1,
                        currency="CNY",
                    ),
                    metadata=self.gate.metadata,
                    timeout=3.0,
                )
                self.events.append(event)
                self.ends.append((time.monotonic(), True))
            except grpc.RpcError as exc:
                self.codes.add(exc.code())
                self.ends.append((time.monotonic(), False))
                time.sleep(0.05)
            time.sleep(0.05)


def _pg_from_a_fresh_process(db: Any, action: str) -> None:
    """Stop or start the test's PostgreSQL from a new single-threaded process: forking this
    one while gRPC threads are busy (pg_local runs the server as another user, which
    forks) can crash the child."""
    from tests.conftest import REPO

    code = "from pathlib import Path; from devtools import pg_local; " + (
        f"pg_local.Cluster(Path({str(db.data)!r}), {db.port}, pg_local.bindir()).stop()"
        if action == "stop"
        else f"pg_local.start(Path({str(db.data)!r}), durable=False, port={db.port})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.slow
def test_postgres_killed_45s_under_load_on_two_nodes(tmp_path: Path) -> None:
    import psycopg

    from tests import procserver

    outage_s = 45.0
    with local_postgres("recognizer-pg-outage-") as db:
        env = _pg_env(db.url, RECOGNIZER_DATABASE_WAIT_S="300")
        nodes = [procserver.start(tmp_path / f"n{k}", extra_env=env) for k in range(2)]
        late = None
        stop = threading.Event()
        clients = [(n.client("admin"), n.client("gate")) for n in nodes]
        loads = [_Load(a, g, stop) for a, g in clients]
        try:
            for load in loads:
                load.start()
            time.sleep(3.0)
            _pg_from_a_fresh_process(db, "stop")
            down_at = time.monotonic()
            late = procserver.start(tmp_path / "late", extra_env=env, wait_serving=False)
            end = down_at + 15
            while clients[0][0].health(IDENTITY) != "NOT_SERVING":
                assert time.monotonic() < end, "health did not follow the database down"
                time.sleep(0.2)
            time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
            _pg_from_a_fresh_process(db, "start")
            back_at = time.monotonic()
            end = back_at + 30
            while not all(any(ok and at > back_at for at, ok in load.ends) for load in loads):
                assert time.monotonic() < end, "no success after the database came back"
                time.sleep(0.05)
            for load in loads:
                first = min(at for at, ok in load.ends if ok and at > back_at)
                assert first - back_at < 2.0 + 0.2, first - back_at  # + one call's spacing
            c = late.client()
            try:
                assert c.wait_serving(180), "".join(late.log[-20:])
                c.identity.CreateIdentity(
                    identity_pb2.CreateIdentityRequest(display_name="late node"),
                    metadata=c.metadata,
                    timeout=30,
                )
            finally:
                c.close()
            time.sleep(2.0)
        finally:
            stop.set()
            for load in loads:
                load.join(30)
            for a, g in clients:
                a.close()
                g.close()
            for n in [*nodes, *([late] if late else [])]:
                n.kill()
        for load in loads:  # refusals only, never INTERNAL
            assert load.codes <= {
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            }, load.codes
        with psycopg.connect(db.url, autocommit=True) as conn:
            ids = {r[0] for r in conn.execute("SELECT id FROM identities")}
            decided = conn.execute(
                "SELECT event_id, COUNT(*) FROM decisions WHERE gate_id = %s GROUP BY event_id",
                (GATE,),
            ).fetchall()
        acked = [i for load in loads for i in load.acked]
        assert set(acked) <= ids, "an acknowledged identity was lost"
        events = {e for load in loads for e in load.events}
        per_event = dict(decided)
        assert events <= set(per_event), "an acknowledged decision was lost"
        assert all(n == 1 for n in per_event.values())
