"""PostgreSQL store: the shared source of truth when several nodes serve one gallery.

`database_url = postgresql://...` selects it (config.py). The port methods are the shared
SQL of `SqlStore`; this module adds a connection pool, the schema and its migrations, and
the change log's read side that every node's FAISS replica follows.

The change log is gap-free although transactions commit out of order. Each change row
carries the id of the transaction that wrote it (`xid8 DEFAULT pg_current_xact_id()`), and a
follower reads only rows whose transaction is older than the oldest transaction of this
database its snapshot sees open (`_LINE`): every such transaction has finished, so no row can
still appear below that line. A follower's position
is the highest transaction id it has applied, and it reads `xid > position` next time.
(Serial writers, which hold an advisory lock, commit in xid order anyway; the line also
covers any writer that does not.) Commits send NOTIFY to wake followers at once; the
followers poll as well, because a notification is lost while a listener is disconnected.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from recognizer.store import faults, files, keys, schema
from recognizer.store.crypto import NullCipher, TemplateCipher
from recognizer.store.rows import Change, DecisionMark, DecisionRow
from recognizer.store.sql import NOTIFY_CHANNEL, PUT_META, SqlStore, ring

log = logging.getLogger("recognizer.store.postgres")

# Advisory lock keys (any two int64s unique to this application).
_WRITE_LOCK = 0x7265636F6701  # serial write transactions (SqlStore._tx(serial=True))
_MIGRATE_LOCK = 0x7265636F6702  # one node migrates at a time
# A plate's presence (SqlStore._lock_plate): the two-int4 key space, which never meets the
# one-int64 keys above; the plate's hash is the second key (a collision only serialises
# two plates' decisions).
_PLATE_LOCK_CLASS = 0x72637031


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """qmark placeholders (the shared SQL's) to psycopg's."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Conn:
    """A psycopg connection that takes the shared SQL's qmark placeholders."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(_pg_sql(sql), tuple(params))

    def executemany(self, sql: str, params: Iterable[Any], /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(_pg_sql(sql), [tuple(p) for p in params])
        return cur


_FIRST_RETRY_S = 0.1
# Connection failures and a server going away (admin shutdown, crash, starting up).
_GONE_STATES = ("57P01", "57P02", "57P03")


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE_STATES


class _CappedAttempt(AttemptWithBackoff):
    """psycopg_pool's reconnect backoff (1, 2, 4, 8... s), capped: whatever the outage's
    length, the next attempt comes at most `cap_s` after the database returns."""

    def __init__(self, *, timeout: float, cap_s: float) -> None:
        super().__init__(timeout=timeout)
        self.cap_s = cap_s

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.cap_s)


class _Pool(ConnectionPool):
    """The pool, with its reconnect backoff capped. psycopg_pool (3.2, 3.3) starts each
    reconnect chain in `_add_connection(attempt=None)`; the cap is put in there, and the
    45-s outage test (test-slow) checks the first success after the database returns."""

    retry_max_s = 1.0

    def _add_connection(
        self, attempt: AttemptWithBackoff | None = None, *args: Any, **kwargs: Any
    ) -> None:
        if attempt is None:
            attempt = _CappedAttempt(timeout=self.reconnect_timeout, cap_s=self.retry_max_s)
        super()._add_connection(attempt, *args, **kwargs)


DECISION_PAYLOAD = "decision"  # a decision's NOTIFY; template changes send ''


class _Listener:
    """One LISTEN session on the store's channel, woken only by the payloads it is for.

    Used by one thread at a time (the replica's follower, or the decision feed)."""

    def __init__(self, url: str, wanted: Callable[[str], bool], what: str) -> None:
        self._url = url
        self._wanted = wanted
        self._what = what
        self._raw: psycopg.Connection[Any] | None = None

    def wait(self, timeout_s: float) -> bool:
        """Block until a wanted NOTIFY, or `timeout_s`. False on timeout or when the session
        is down (it reconnects next time; the caller polls anyway)."""
        give_up = time.monotonic() + timeout_s
        try:
            if self._raw is None or self._raw.closed:
                self._raw = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
                self._raw.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while (left := give_up - time.monotonic()) > 0:  # each turn takes one notify
                notifies = self._raw.notifies(timeout=left, stop_after=1)
                try:
                    got = next(notifies, None)
                finally:
                    notifies.close()
                if got is None:
                    return False
                if self._wanted(got.payload):
                    return True
            return False
        except psycopg.Error as exc:
            log.warning("%s listener: %s; polling until it reconnects", self._what, exc)
            self.close()
            time.sleep(min(timeout_s, 1.0))
            return False

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def wait_for_database(url: str, wait_s: float, retry_max_s: float) -> None:
    """Connect once, retrying with backoff capped at `retry_max_s` for up to `wait_s`
    seconds, one log line per failed attempt; raises faults.DatabaseUnreachable after."""
    t0 = time.monotonic()
    delay = _FIRST_RETRY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
                c.execute("SELECT 1")
            if attempt > 1:
                log.warning("database reached after %d attempts", attempt)
            return
        except psycopg.Error as exc:
            if not _unreachable(exc):
                raise  # reached, and refused (a password, a database name): waiting won't do
            waited = time.monotonic() - t0
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if waited + delay > wait_s:
                raise faults.DatabaseUnreachable(
                    f"the database was unreachable for {waited:.0f}s (database_wait_s = "
                    f"{wait_s:g}); last error: {why}"
                ) from None
            log.warning(
                "database unreachable (attempt %d, %.1fs waited of %gs): %s; retrying in %.2fs",
                attempt,
                waited,
                wait_s,
                why,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, retry_max_s)


def _require_utf8(c: Any) -> None:
    """Refuse a database whose text is not UTF-8: SQL_ASCII hands text back as bytes, and
    names, plates and sealed fields would be misread (a LATIN1 one cannot hold them)."""
    row = c.execute("SHOW server_encoding").fetchone()
    encoding = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
    if encoding.upper().replace("-", "") != "UTF8":
        raise RuntimeError(
            f"the database's encoding is {encoding}; recognizer stores UTF-8 text: create the "
            "database with ENCODING 'UTF8' (createdb -E UTF8 -T template0 NAME)"
        )


class PostgresStore(SqlStore):
    shared = True  # other nodes write too: a gallery on it must follow the change log

    def __init__(
        self,
        url: str,
        cipher: TemplateCipher | None = None,
        pool_size: int = 8,
        connect_timeout_s: float = 30.0,
        wait_timeout_s: float = 5.0,
        database_wait_s: float = 0.0,
        retry_max_s: float = 1.0,
    ) -> None:
        self.url = url
        self._local = threading.local()
        self._changes = _Listener(url, lambda p: p != DECISION_PAYLOAD, "change")
        self._decisions = _Listener(url, lambda p: p == DECISION_PAYLOAD, "decision")
        self._wait_timeout_s = wait_timeout_s
        self._stopping = False
        self._busy: set[psycopg.Connection[Any]] = set()  # sessions in use (interrupt)
        self._busy_lock = threading.Condition()
        self.health = faults.StoreHealth(interval_s=min(0.5, retry_max_s))
        self.health.set_probe(faults.StoreHealth.UNREACHABLE, self._probe_reach)
        self.health.set_probe(faults.StoreHealth.FULL, self._probe_write)
        wait_for_database(url, database_wait_s, retry_max_s)
        self._pool = _Pool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "connect_timeout": 5},
            open=False,
            name="recognizer",
            # A connection left broken by a database restart is replaced, not handed out.
            check=ConnectionPool.check_connection,
            # No free connection (or no database) within this: the call is UNAVAILABLE.
            timeout=wait_timeout_s,
            reconnect_timeout=24 * 3600.0,  # never give up on the database: it comes back
        )
        self._pool.retry_max_s = retry_max_s  # before open: its first connections use it
        self._pool.open(wait=True, timeout=connect_timeout_s)
        try:
            with self._conn() as c:
                _require_utf8(c)
                unlocked = keys.unlock(
                    keys.state_of(self._read_meta(c)), ring(cipher or NullCipher())
                )
            self.cipher: TemplateCipher = unlocked.cipher
            self.schema_upgraded_from = self._migrate()
            self.store_id: str = self._record_store(unlocked.record)
            self._seal_personal_fields()
        except BaseException:
            self.close()
            raise

    # --- schema -------------------------------------------------------------------------------

    def _version(self, c: _Conn) -> int:
        meta = self._read_meta(c)
        return int(meta.get("schema_version", "0")) if meta is not None else 0

    def _migrate(self) -> int:
        """Bring the schema to this release's version, one transaction per step, one node at
        a time; returns the version found (0 for a new database). A database from a newer
        release is refused untouched."""
        target_version = schema.SCHEMA_VERSION
        found = -1
        while True:
            with self._tx(serial=False) as c:
                c.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))
                version = self._version(c)
                found = version if found < 0 else found
                if version > target_version:
                    raise RuntimeError(
                        f"the database has schema version {version}, newer than this "
                        f"release's {target_version}: upgrade recognizer, or restore a backup"
                    )
                if version >= target_version:
                    return found
                if version == 0:
                    for statement in filter(str.strip, schema.POSTGRES_BASELINE.split(";")):
                        c.execute(statement)
                    reached = schema.POSTGRES_BASELINE_VERSION
                else:
                    reached = version + 1
                    schema.POSTGRES_MIGRATIONS[reached](c)
                c.execute(PUT_META, ("schema_version", str(reached)))
                log.info("schema migrated from version %d to %d", version, reached)

    def _read_meta(self, c: Any) -> dict[str, str] | None:
        return _meta(c)

    def _compact(self) -> None:
        """Rewrite the sealed tables (VACUUM FULL), so their old plaintext row versions leave
        the table files; the database's own WAL keeps them until it recycles its segments."""
        tables = ", ".join(self._SEALED_TABLES)
        try:
            with self._conn() as c:
                c.execute(f"VACUUM FULL {tables}")
        except Exception as exc:  # another node may hold the tables: VACUUM later
            log.warning("VACUUM FULL after sealing failed (%s): run it yourself", exc)

    # --- connections and transactions ---------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[_Conn]:
        pinned = getattr(self._local, "pinned", None)
        if pinned is not None:  # inside snapshot(): every read sees the one snapshot
            yield pinned
            return
        with self._session(tx=False) as c:
            yield c

    @contextmanager
    def _tx(self, serial: bool = True) -> Iterator[_Conn]:
        """One transaction whose every wait (a pooled session, locks, statements) is bounded
        by the caller's deadline, checked again before COMMIT: a call whose deadline passed
        stores nothing."""
        with self._session(tx=True, serial=serial) as c:
            yield c

    def _lock_plate(self, c: Any, plate: str) -> None:
        digest = hashlib.blake2b(plate.encode("utf-8"), digest_size=4).digest()
        key = int.from_bytes(digest, "big", signed=True)
        c.execute("SELECT pg_advisory_xact_lock(?, ?)", (_PLATE_LOCK_CLASS, key))

    @contextmanager
    def _session(self, tx: bool, serial: bool = False) -> Iterator[_Conn]:
        wait_s, bounded = faults.wait_bound(self._wait_timeout_s)
        try:
            with self._pool.connection(timeout=wait_s) as raw:
                with self._busy_lock:
                    self._busy.add(raw)
                try:
                    c = _Conn(raw)
                    if tx:
                        with raw.transaction():
                            if bounded:
                                self._limit(c, wait_s, local=True)
                            if serial:
                                # Check-then-write invariants hold as under SQLite's one writer.
                                c.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))
                            yield c
                            faults.before_commit()
                        self.health.ok()
                    else:
                        if bounded:
                            self._limit(c, wait_s, local=False)
                        try:
                            yield c
                        finally:
                            if bounded and not raw.closed and not raw.broken:
                                with contextlib.suppress(psycopg.Error):  # then it is broken
                                    raw.execute("RESET statement_timeout")
                                    raw.execute("RESET lock_timeout")
                finally:
                    with self._busy_lock:
                        self._busy.discard(raw)
                        self._busy_lock.notify_all()
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._translate(exc, bounded) from exc
        self.health.ok(faults.StoreHealth.UNREACHABLE)

    @staticmethod
    def _limit(c: _Conn, seconds: float, local: bool) -> None:
        """lock_timeout and statement_timeout of the caller's remaining deadline (for this
        transaction, or this session until reset)."""
        ms = f"{max(1, int(seconds * 1000))}ms"
        c.execute(
            "SELECT set_config('lock_timeout', ?, ?), set_config('statement_timeout', ?, ?)",
            (ms, local, ms, local),
        )

    def _translate(self, exc: BaseException, bounded: bool) -> BaseException:
        if self._stopping and isinstance(exc, psycopg.errors.QueryCanceled):
            return faults.shutting_down()
        if isinstance(exc, psycopg.errors.DiskFull):
            self.health.fail(faults.StoreHealth.FULL, str(exc).strip())
            return faults.storage_full("the database's disk")
        if _unreachable(exc):
            if isinstance(exc, PoolTimeout) and bounded and self.health.reachable:
                return faults.deadline_passed("a database session")
            self.health.fail(faults.StoreHealth.UNREACHABLE, str(exc).strip().split("\n")[0])
            return exc
        if bounded and isinstance(
            exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled
        ):
            return faults.deadline_passed("a lock or a statement")
        return exc

    def _probe_reach(self) -> bool:
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as c:
                c.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def interrupt(self) -> None:
        """For a stopping server: cancel the statements of sessions in use (UNAVAILABLE
        `SHUTTING_DOWN` for their calls; their transactions roll back)."""
        self._stopping = True
        with self._busy_lock:
            busy = list(self._busy)
        for raw in busy:
            try:
                raw.cancel_safe(timeout=2.0)
            except Exception as exc:  # the session may be gone already
                log.warning("cancel: %s", exc)

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every store call has ended within `timeout_s`."""
        with self._busy_lock:
            return self._busy_lock.wait_for(lambda: not self._busy, timeout_s)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads on this thread inside the block see one consistent state (for rebuilds)."""
        with self._pool.connection() as raw:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._local.pinned = _Conn(raw)
            try:
                raw.execute("SELECT 1 FROM changes LIMIT 1").fetchall()  # take the snapshot now
                yield
            finally:
                self._local.pinned = None
                raw.execute("COMMIT")

    def _changed(self, c: Any) -> None:
        c.execute("SELECT pg_notify(?, '')", (NOTIFY_CHANNEL,))  # delivered on commit

    def close(self) -> None:
        self.health.close()
        if self._stopping:
            self.wait_idle(2.0)
        self._changes.close()
        self._decisions.close()
        self._pool.close()

    # --- change log ---------------------------------------------------------------------------

    # The settled line: the oldest transaction still open in this database by the statement's
    # snapshot (else the snapshot's next id). Below it no row of this database can still
    # appear. Transaction ids are cluster-wide, so the snapshot's own xmin would also wait for
    # transactions open in other databases of the server (another application's, left open):
    # an open id is passed over only when a session of another database holds it now (its
    # lock); one that has ended since the snapshot, or a prepared one, still counts.
    _LINE = (
        "(SELECT COALESCE(MIN(x::text::bigint), MIN(pg_snapshot_xmax(snap.s)::text::bigint))"
        " FROM (SELECT pg_current_snapshot() AS s) snap"
        " LEFT JOIN LATERAL pg_snapshot_xip(snap.s) AS x"
        " ON x::text::bigint % 4294967296 NOT IN ("
        "SELECT l.transactionid::text::bigint FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted"
        " AND a.datname IS NOT NULL AND a.datname <> current_database()))"
    )

    def changes_since(self, seq: int, model: str, settled_only: bool = True) -> list[Change]:
        """Changes of transactions after position `seq`, in commit order; `Change.seq` is the
        writer's transaction id (the follower's position). With `settled_only` (following),
        only transactions below the settled line (`_LINE`), which can no longer gain rows
        below them; without it (consistency checks), everything this snapshot sees."""
        settled = f" AND xid::text::bigint < {self._LINE}" if settled_only else ""
        with self._conn() as c:
            rows = c.execute(
                "SELECT xid::text::bigint, op, label, model FROM changes"
                f" WHERE xid > ?::text::xid8 AND model = ?{settled} ORDER BY xid, seq",
                (int(seq), model),
            ).fetchall()
        return [Change(int(r[0]), r[1], int(r[2]), r[3]) for r in rows]

    def current_seq(self) -> int:
        """The position up to which the log is settled (the settled line − 1)."""
        with self._conn() as c:
            r = c.execute(f"SELECT {self._LINE} - 1")
            row = r.fetchone()
            assert row is not None  # a SELECT of one value
            return int(row[0])

    def backlog(self, seq: int, model: str) -> tuple[int, float]:
        """(changes after position `seq`, seconds since the oldest of them was made), by the
        database's clock: (0, 0.0) when none."""
        with self._conn() as c:
            row = c.execute(
                "SELECT COUNT(*), COALESCE(extract(epoch FROM clock_timestamp()) - MIN(at), 0)"
                " FROM changes WHERE xid > ?::text::xid8 AND model = ?",
                (int(seq), model),
            ).fetchone()
        assert row is not None  # an aggregate: always one row
        n, age = row
        return int(n), max(0.0, float(age))

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until a NOTIFY of a committed template change, or `timeout_s`."""
        return self._changes.wait(timeout_s)

    # --- watching decisions (WatchDecisions) ----------------------------------------------------
    #
    # A decision's position is the id of the transaction that wrote it, as for the change log:
    # watchers read only rows below the settled line (`_LINE`), below which no row can still
    # appear, so a watch neither skips a late commit nor sends one twice. The decisions table
    # has no column for it (the schema is not this code's to change), so the position is the
    # row's system column xmin, widened to 64 bits against the snapshot's next id; that holds
    # for rows less than 2^32 transactions old. Rows are scanned by created_at from
    # WATCH_SCAN_SLACK_S before the mark (its index): a later transaction's decision was made
    # at most a call's length plus the nodes' clock skew before the mark's.

    WATCH_SCAN_SLACK_S = 900.0
    _SNAP = (
        "WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nx,"
        f" {_LINE} AS line)"
    )
    _POS = "s.nx - ((s.nx - d.xmin::text::bigint) % 4294967296)"

    def _notify_decision(self, c: Any) -> None:
        c.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, DECISION_PAYLOAD))  # on commit

    def wait_for_decision(self, timeout_s: float) -> bool:
        """Block until a NOTIFY of a decision stored on any node, or `timeout_s`."""
        return self._decisions.wait(timeout_s)

    def decision_mark(self, decision_id: str) -> DecisionMark | None:
        """Where a decision stands (indexed by decision_id since schema 5)."""
        with self._conn() as c:
            r = c.execute(
                f"{self._SNAP} SELECT {self._POS}, d.created_at FROM decisions d, s"
                " WHERE d.decision_id = ?",
                (decision_id,),
            ).fetchone()
        return DecisionMark(int(r[0]), float(r[1])) if r else None

    def decision_head(self) -> DecisionMark:
        """The settled line now: a watch from here sees decisions committed later."""
        with self._conn() as c:
            row = c.execute(f"{self._SNAP} SELECT line FROM s").fetchone()
            assert row is not None  # a SELECT of one value
            line = row[0]
        return DecisionMark(int(line) - 1, time.time())

    def decisions_after(
        self, mark: DecisionMark, limit: int
    ) -> list[tuple[DecisionMark, DecisionRow]]:
        """Settled decisions after `mark`, in transaction order."""
        cols = ", ".join(f"d.{col.strip()}" for col in self._DECISION_COLS.split(","))
        with self._conn() as c:
            rows = c.execute(
                f"{self._SNAP}, w AS (SELECT {self._POS} AS pos, s.line, {cols}"
                " FROM decisions d, s WHERE d.created_at >= ?)"
                f" SELECT pos, {self._DECISION_COLS} FROM w WHERE pos > ? AND pos < line"
                " ORDER BY pos LIMIT ?",
                (mark.created_at - self.WATCH_SCAN_SLACK_S, mark.position, int(limit)),
            ).fetchall()
        return self._marked(rows)

    # --- maintenance --------------------------------------------------------------------------

    def backup(self, dest: Path) -> None:
        """A consistent online copy in pg_dump's custom format (restore: pg_restore; see the
        README, "Several nodes")."""
        dest = Path(dest)
        files.private_dir(dest.parent)
        files.create_private(dest)
        pg_dump = _client_tool("pg_dump")
        subprocess.run(
            [pg_dump, "--format=custom", "--no-owner", f"--file={dest}", self.url],
            check=True,
            capture_output=True,
        )


def _meta(c: Any) -> dict[str, str] | None:
    """The meta rows (None when the database has no schema yet)."""
    # A query on the catalog, not to_regclass(): its cache can miss a table another node
    # has just created (an advisory lock does not refresh it).
    found = c.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE tablename = 'meta'"
        " AND schemaname = current_schema()"
    ).fetchone()
    if found is None:
        return None
    return {str(k): str(v) for k, v in c.execute("SELECT key, value FROM meta")}


def _peek_meta(url: str) -> dict[str, str] | None:
    """The meta rows of the database at `url`, read-only."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as raw:
            return _meta(_Conn(raw))
    except psycopg.OperationalError as exc:
        if not _unreachable(exc):
            raise
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise faults.DatabaseUnreachable(f"the database is unreachable: {why}") from None


def read_key_state(url: str) -> keys.KeyState | None:
    return keys.state_of(_peek_meta(url))


def check_key(url: str, cipher: TemplateCipher) -> keys.Unlocked:
    """Check `cipher` against the database's key records without writing anything."""
    return keys.unlock(read_key_state(url), ring(cipher))


def _client_tool(name: str) -> str:
    """A PostgreSQL client program, preferring the newest server-side install (Debian)."""
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found: install PostgreSQL's client programs")
    return path
