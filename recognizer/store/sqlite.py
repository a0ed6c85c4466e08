"""SQLite store: the source of truth for identities, templates, bindings and decisions.

WAL mode with synchronous=FULL, so a write is on disk before it is acknowledged, and every
multi-row write is one `BEGIN IMMEDIATE` transaction. Each template add or removal appends
to the `changes` log in the same transaction; the FAISS index records the last seq it has
applied (its watermark) and replays the log forward on start, so a crash between the store
and the index write loses nothing and leaves no orphan vector.

Threading: file databases get one connection per thread (readers run concurrently under
WAL; SQLite's own lock and busy timeout order the writers). ":memory:" is private to one
connection, so that case shares a single connection behind a lock.

Templates are encrypted with the injected cipher; the associated data is the template's
label and identity, so blobs cannot be swapped between rows. The cipher is checked against
the store's key-check value (keys.py) before the store writes anything; a key that does not
fit raises TemplateKeyError from the constructor.

Methods that change data take an optional AuditEntry, written in the same transaction as the
change, so a change never commits without its audit record (nor the record without it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recognizer.store import faults, files, keys, schema
from recognizer.store.crypto import NullCipher, TemplateCipher
from recognizer.store.rows import Change, DecisionMark, DecisionRow
from recognizer.store.sql import SqlStore, legacy_view, ring

__all__ = ["SqliteStore", "check_key", "read_key_state"]

log = logging.getLogger("recognizer.store.sqlite")

_NULL_CIPHER = NullCipher()
_LOCK_POLL_S = 0.05  # BEGIN IMMEDIATE retries at this pace (sqlite3_interrupt cannot end a
# busy wait, so waiting for the write lock is a loop here that a deadline or a stop can end)


_FULL_FREE_BYTES = 1 << 20  # an I/O error with less free space than this is a full disk


def _is_full(exc: BaseException, folder: str) -> bool:
    """SQLITE_FULL, or an I/O error on a disk with (almost) no space left: SQLite reports
    ENOSPC as either, depending on which file the write hit."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name == "SQLITE_FULL" or "disk is full" in str(exc):
        return True
    if name.startswith("SQLITE_IOERR") and folder:
        try:
            return shutil.disk_usage(folder).free < _FULL_FREE_BYTES
        except OSError:
            return False
    return False


def _meta(c: sqlite3.Connection) -> dict[str, str] | None:
    has_meta = c.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return None
    return {str(k): str(v) for k, v in c.execute("SELECT key, value FROM meta")}


def _read_state(c: sqlite3.Connection) -> keys.KeyState | None:
    return keys.state_of(_meta(c))


def _unlock(c: sqlite3.Connection, cipher: TemplateCipher) -> keys.Unlocked:
    return keys.unlock(_read_state(c), ring(cipher), lambda: legacy_view(c))


def _peek(path: Path, read: Callable[[sqlite3.Connection], Any]) -> Any:
    # Reads only: closing the last connection then leaves the files as they were. A WAL left
    # beside the file (a server that did not fold it) is read through a read-only connection,
    # whose close cannot checkpoint it into the database (only its -shm read marks move).
    if Path(f"{path}-wal").exists():
        c = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        try:
            return read(c)
        finally:
            c.close()
    c = sqlite3.connect(str(path), isolation_level=None)
    try:
        return read(c)
    finally:
        c.close()


def check_key(path: Path | str, cipher: TemplateCipher) -> keys.Unlocked:
    """Check `cipher` against a store without writing anything (for a boot or a command to
    refuse early); raises TemplateKeyError. A missing store passes (it will be created)."""
    path = Path(path)
    if not path.is_file():
        return keys.unlock(None, ring(cipher))
    return _peek(path, lambda c: _unlock(c, cipher))  # type: ignore[no-any-return]


def read_key_state(path: Path | str) -> keys.KeyState | None:
    """The key records of a store (None if there is none), without writing anything."""
    path = Path(path)
    return _peek(path, _read_state) if path.is_file() else None


class SqliteStore(SqlStore):
    """The embedded adapter: one SQLite file under data_dir, for one node."""

    def __init__(
        self,
        path: Path | str,
        cipher: TemplateCipher = _NULL_CIPHER,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        self._local = threading.local()
        self._lock = threading.RLock()  # guards the single connection of an in-memory store
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._active = 0  # store calls in progress (close waits for them after interrupt)
        self._active_lock = threading.Condition()
        self._decided = threading.Event()  # a decision committed (wait_for_decision)
        self.health = faults.StoreHealth()
        self.health.set_probe(faults.StoreHealth.FULL, self._probe_write)
        if not self._memory:
            Path(self.path).parent.mkdir(mode=files.DIR_MODE, parents=True, exist_ok=True)
            files.create_private(Path(self.path))
        self._shared = self._open() if self._memory else None
        try:
            # The key is proven before the first write (migrations included).
            with self._conn() as c:
                unlocked = _unlock(c, cipher)
        except BaseException:
            self.close()
            raise
        self.cipher: TemplateCipher = unlocked.cipher
        if not self._memory:  # files of release 0.1.0 were 0644
            for suffix in ("", "-wal", "-shm"):
                files.tighten(Path(self.path + suffix))
        self.schema_upgraded_from = self._migrate()
        self.store_id: str = self._record_store(unlocked.record)
        self._seal_personal_fields()

    def _migrate(self) -> int:
        """Bring the schema to schema.SCHEMA_VERSION, one transaction per step; returns the version
        found (0 for a new database). A database from a newer release is refused untouched."""
        with self._tx() as c:
            found = int(c.execute("PRAGMA user_version").fetchone()[0])
            if found > schema.SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {found}, newer than this release's "
                    f"{schema.SCHEMA_VERSION}: upgrade recognizer, or restore a backup"
                )
            if found == 0:
                for statement in filter(str.strip, schema.SQLITE_BASELINE.split(";")):
                    c.execute(statement)
                c.execute("PRAGMA user_version = 1")
        version = max(found, 1)
        for target in sorted(v for v in schema.SQLITE_MIGRATIONS if v > version):
            with self._tx() as c:
                schema.SQLITE_MIGRATIONS[target](c)
                c.execute(f"PRAGMA user_version = {int(target)}")
            version = target
        return found

    # --- connections and transactions ---------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        c = sqlite3.connect(
            self.path,
            isolation_level=None,  # autocommit; transactions are explicit BEGINs
            check_same_thread=False,
            timeout=self._busy_timeout_s,
        )
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA secure_delete=ON")  # deleted templates are overwritten, not left
        c.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        with self._conns_lock:
            self._conns.append(c)
        return c

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RuntimeError("store is closed")
        with self._active_lock:
            self._active += 1
        try:
            if self._shared is not None:
                with self._lock:
                    yield self._shared
                return
            c = getattr(self._local, "conn", None)
            if c is None:
                c = self._local.conn = self._open()
            yield c
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            with self._active_lock:
                self._active -= 1
                self._active_lock.notify_all()

    def _translate(self, exc: sqlite3.Error) -> Exception:
        """A full disk and an interrupted stop are conditions with their own answers; any
        other SQLite error stays itself (an internal error)."""
        if _is_full(exc, "" if self._memory else str(Path(self.path).parent)):
            self.health.fail(faults.StoreHealth.FULL, str(exc))
            return faults.storage_full(str(exc))
        if self._stopping and isinstance(exc, sqlite3.OperationalError):
            return faults.shutting_down()
        return exc

    def _begin(self, c: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock at most until the caller's deadline
        (or the busy timeout, without one); raises DeadlineExceeded when the deadline came
        first. Polls in short busy waits, so a stopping server ends the wait too."""
        wait_s, bounded = faults.wait_bound(self._busy_timeout_s)
        give_up = time.monotonic() + wait_s
        step_ms = max(1, int(_LOCK_POLL_S * 1000))
        c.execute(f"PRAGMA busy_timeout={step_ms}")
        try:
            while True:
                try:
                    c.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    name = str(getattr(exc, "sqlite_errorname", ""))
                    if not name.startswith("SQLITE_BUSY") and "locked" not in str(exc):
                        raise
                    if self._stopping:
                        raise faults.shutting_down() from exc
                    if time.monotonic() >= give_up:
                        if bounded:
                            raise faults.deadline_passed("the write lock") from exc
                        raise
        finally:
            c.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")

    @contextmanager
    def _tx(self, serial: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock).
        SQLite has one writer at a time, so every transaction is serial. The wait for the lock
        is bounded by the caller's deadline, which is checked again before COMMIT: a call
        whose deadline passed stores nothing."""
        with self._conn() as c:
            self._begin(c)
            try:
                yield c
                faults.before_commit()
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:  # also when COMMIT itself failed
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                raise
        self.health.ok(faults.StoreHealth.FULL)

    def interrupt(self) -> None:
        """For a stopping server: end store calls in progress (statements and waits for the
        write lock) with UNAVAILABLE `SHUTTING_DOWN`; nothing of theirs commits."""
        self._stopping = True
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            c.interrupt()

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every store call has ended within `timeout_s`."""
        with self._active_lock:
            return self._active_lock.wait_for(lambda: not self._active, timeout_s)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads on this thread inside the block see one consistent state (for rebuilds).

        Only reads may be issued inside; a write would need its own transaction.
        """
        with self._conn() as c:
            c.execute("BEGIN")
            try:
                c.execute("SELECT 1 FROM changes LIMIT 1").fetchall()  # pin the snapshot now
                yield
            finally:
                c.execute("COMMIT")

    def _after_delete(self) -> None:
        """Best effort: fold the WAL into the database and truncate it, so old page images
        of deleted templates do not linger in the -wal file (secure_delete zeroes the db)."""
        if self._shared is not None:
            return
        # Busy readers can block it; the next automatic checkpoint then completes it.
        with self._conn() as c, contextlib.suppress(sqlite3.OperationalError):
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _compact(self) -> None:
        """Rebuild the file (VACUUM) and fold the WAL into it, truncated: the pages that held
        plaintext (or the retired key's blobs) are gone from the database, its free pages and
        the WAL."""
        if self._shared is not None:
            return
        try:
            with self._conn() as c:
                c.execute("VACUUM")
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError as exc:  # another process reading: no VACUUM now
            log.warning("VACUUM after sealing failed (%s): old pages remain until the next", exc)

    def _after_sealing(self) -> None:
        """`recognizer restore` keeps the files it replaced in `pre-restore-*` folders: each
        such store is sealed too (with this key, which must open it), its index files (derived
        data) removed; a folder this key cannot seal is removed."""
        if self._memory:
            return
        here = Path(self.path)
        for folder in sorted(here.parent.glob("pre-restore-*")):
            if not folder.is_dir():
                continue
            try:
                if (folder / here.name).is_file():
                    SqliteStore(folder / here.name, self.cipher).close()
                for index in folder.glob("*.faiss"):
                    index.unlink()
                log.info("sealed the store kept in %s", folder)
            except Exception as exc:  # whatever failed, the copy must not stay plain
                log.warning("removed %s: its store could not be sealed (%s)", folder, exc)
                shutil.rmtree(folder)

    def close(self) -> None:
        """Close every connection, once no call uses one: a connection closed under a running
        statement can crash the process, so after `interrupt` the calls get a moment to end,
        and connections still busy then are left to the process's exit."""
        busy = not self.wait_idle(2.0 if self._stopping else 10.0)
        self.health.close()
        with self._conns_lock:
            self._closed = True
            if busy:
                log.warning("store calls still running at close: connections left open")
            else:
                for c in self._conns:
                    c.close()
            self._conns.clear()

    def _read_meta(self, c: Any) -> dict[str, str] | None:
        return _meta(c)

    # --- change log ---------------------------------------------------------------------------

    def changes_since(self, seq: int, model: str, settled_only: bool = True) -> list[Change]:
        """Changes after `seq`, in commit order (SQLite commits one writer at a time, so seq
        order is commit order and every committed change is settled)."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT seq, op, label, model FROM changes WHERE seq > ? AND model = ?"
                " ORDER BY seq",
                (int(seq), model),
            ).fetchall()
        return [Change(int(r[0]), r[1], int(r[2]), r[3]) for r in rows]

    def current_seq(self) -> int:
        """The highest change seq ever committed (sqlite_sequence survives log pruning)."""
        with self._conn() as c:
            r = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(r[0]) if r else 0

    def backlog(self, seq: int, model: str) -> tuple[int, float]:
        """(changes after `seq`, seconds since the oldest was made). SQLite keeps no change
        times (its one node applies its own writes as it makes them), so the age is 0."""
        with self._conn() as c:
            n = c.execute(
                "SELECT COUNT(*) FROM changes WHERE seq > ? AND model = ?", (int(seq), model)
            ).fetchone()[0]
        return int(n), 0.0

    # --- watching decisions (WatchDecisions) ----------------------------------------------------

    def _decision_committed(self) -> None:
        self._decided.set()

    def wait_for_decision(self, timeout_s: float) -> bool:
        """Block until a decision commits in this process, or `timeout_s`. One waiter (the
        server's decision feed): a wake-up lost between the wait and the clear is harmless,
        as the feed reads after it wakes and polls anyway."""
        woke = self._decided.wait(timeout_s)
        self._decided.clear()
        return woke

    def decision_mark(self, decision_id: str) -> DecisionMark | None:
        """Where a decision stands (indexed by decision_id since schema 5)."""
        with self._conn() as c:
            r = c.execute(
                "SELECT rowid, created_at FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone()
        return DecisionMark(int(r[0]), float(r[1])) if r else None

    def decision_head(self) -> DecisionMark:
        """The last decision stored: a watch from here sees only later ones."""
        with self._conn() as c:
            r = c.execute("SELECT MAX(rowid) FROM decisions").fetchone()
        return DecisionMark(int(r[0] or 0))

    def decisions_after(
        self, mark: DecisionMark, limit: int
    ) -> list[tuple[DecisionMark, DecisionRow]]:
        """Decisions stored after `mark`, in commit order (the rowid: one writer at a time,
        and retention deletes the oldest rows, never the newest)."""
        with self._conn() as c:
            rows = c.execute(
                f"SELECT rowid, {self._DECISION_COLS} FROM decisions WHERE rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (mark.position, int(limit)),
            ).fetchall()
        return self._marked(rows)

    # --- maintenance --------------------------------------------------------------------------

    def backup(self, dest: Path) -> None:
        """Consistent online copy via sqlite3's backup API (safe while serving)."""
        dest = Path(dest)
        files.private_dir(dest.parent)
        files.create_private(dest)
        target = sqlite3.connect(str(dest))
        try:
            with self._conn() as c:
                c.backup(target)
        finally:
            target.close()
