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
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recognizer.store import files, keys, schema
from recognizer.store.crypto import NullCipher, TemplateCipher
from recognizer.store.rows import Change
from recognizer.store.sql import SqlStore, legacy_view, ring

__all__ = ["SqliteStore", "check_key", "read_key_state"]

_NULL_CIPHER = NullCipher()


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
    # Reads only: closing the last connection then leaves the files as they were.
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
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._open()
        yield c

    @contextmanager
    def _tx(self, serial: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock).
        SQLite has one writer at a time, so every transaction is serial."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:  # also when COMMIT itself failed
                    c.execute("ROLLBACK")
                raise

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

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
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
