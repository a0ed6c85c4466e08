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
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recognizer.gallery import files, keys
from recognizer.gallery.crypto import AesGcmCipher, CipherError, NullCipher, TemplateCipher
from recognizer.gallery.errors import AlreadyExists, InvalidArgument, NotFound

_NULL_CIPHER = NullCipher()
_IN_CHUNK = 500  # stay well under SQLite's bound-parameter limit

# Version 1 as release 0.1.0 created it; later versions are the migrations below, applied in
# order on every open (a new database runs them too, so there is one path to each version).
_BASELINE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    external_ref TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    label INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a label is never reused
    identity_id TEXT NOT NULL REFERENCES identities(id),
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    quality REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity_id, model);
CREATE INDEX IF NOT EXISTS templates_model ON templates(model, label);
CREATE TABLE IF NOT EXISTS plates (
    plate TEXT NOT NULL,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    created_at REAL NOT NULL,
    PRIMARY KEY (plate, identity_id)
);
CREATE INDEX IF NOT EXISTS plates_identity ON plates(identity_id);
CREATE TABLE IF NOT EXISTS payments (
    binding_id TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    payment_ref TEXT NOT NULL,
    factors TEXT NOT NULL,
    ceiling_minor INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_identity ON payments(identity_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    label INTEGER NOT NULL,
    model TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT NOT NULL,
    gate_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    identity_id TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    payload BLOB NOT NULL,
    inputs TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    UNIQUE (gate_id, event_id)
);
CREATE INDEX IF NOT EXISTS decisions_created ON decisions(created_at);
CREATE INDEX IF NOT EXISTS decisions_identity ON decisions(identity_id, created_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor_role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS sightings (
    plate TEXT NOT NULL,
    gate_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sightings_plate ON sightings(plate, at);
"""

Migration = Callable[[sqlite3.Connection], None]


def _v2_decision_digest(c: sqlite3.Connection) -> None:
    """Decisions keep a digest of their inputs, so a replay can prove the inputs are the same.
    Rows of 0.1.0 get the digest of what they recorded."""
    from recognizer.gate.inputs import legacy_digest  # the one definition of the digest

    c.execute("ALTER TABLE decisions ADD COLUMN input_digest TEXT NOT NULL DEFAULT ''")
    rows = c.execute("SELECT rowid, gate_id, event_id, inputs FROM decisions").fetchall()
    for rowid, gate_id, event_id, inputs in rows:
        digest = legacy_digest(gate_id, event_id, json.loads(inputs or "{}"))
        c.execute("UPDATE decisions SET input_digest = ? WHERE rowid = ?", (digest, rowid))


# version -> the step that brings version-1 to it. Append only; never edit a shipped step.
MIGRATIONS: dict[int, Migration] = {
    2: _v2_decision_digest,
}
SCHEMA_VERSION = max(MIGRATIONS)


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityRow:
    id: str
    display_name: str
    external_ref: str
    metadata: dict[str, str]
    created_at: float


@dataclass(frozen=True, slots=True)
class TemplateRow:
    label: int
    identity_id: str
    model: str
    dim: int
    source: str
    quality: float
    created_at: float
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DeleteCounts:
    templates: int
    plates: int
    payments: int


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: str  # 'add' | 'remove'
    label: int
    model: str


@dataclass(frozen=True, slots=True)
class PaymentRow:
    binding_id: str
    identity_id: str
    payment_ref: str
    factors: str
    ceiling_minor: int
    created_at: float


@dataclass(frozen=True, slots=True)
class DecisionRow:
    decision_id: str
    gate_id: str
    event_id: str
    outcome: str
    payload: bytes  # the serialised response, opaque to the store
    identity_id: str = ""
    inputs: str = "{}"  # JSON text
    created_at: float = 0.0
    input_digest: str = ""  # sha256 of the inputs (recognizer.gate.inputs): replay compares it


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    actor_role: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record to commit with the change it records. The store adds what only the
    change knows (new template labels, a new binding id) to `detail`."""

    actor_role: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SightingRow:
    plate: str
    gate_id: str
    direction: str
    at: float


def _template_aad(label: int, identity_id: str, model: str) -> bytes:
    return f"recognizer.template.v1|{label}|{identity_id}|{model}".encode()


def _chunks(items: list[int], size: int = _IN_CHUNK) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _write_audit(c: sqlite3.Connection, entry: AuditEntry | None, **found: Any) -> None:
    if entry is None:
        return
    detail = {**entry.detail, **found}
    c.execute(
        "INSERT INTO audit (at, actor_role, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (
            time.time(),
            entry.actor_role,
            entry.action,
            entry.target,
            json.dumps(detail, sort_keys=True),
        ),
    )


def _open_template(cipher: TemplateCipher, row: tuple[Any, ...]) -> np.ndarray:
    label, identity_id, model, dim, blob = row
    plain = cipher.decrypt(bytes(blob), _template_aad(label, identity_id, model))
    v = np.frombuffer(plain, dtype="<f4")
    if v.shape[0] != dim:
        raise ValueError(f"template {label}: {v.shape[0]} values, expected {dim}")
    return v.astype(np.float32)


def _legacy_view(c: sqlite3.Connection) -> keys.Legacy:
    """How the templates of a store without key records (release 0.1.0) are stored."""
    first = c.execute("SELECT dim, vector FROM templates ORDER BY label LIMIT 1").fetchone()

    def failures(cipher: AesGcmCipher) -> int:
        bad = 0
        for row in c.execute("SELECT label, identity_id, model, dim, vector FROM templates"):
            try:
                _open_template(cipher, row)
            except (CipherError, ValueError):
                bad += 1
        return bad

    if first is None:
        return keys.Legacy("empty", failures)
    return keys.Legacy("plain" if len(first[1]) == 4 * int(first[0]) else "sealed", failures)


def _ring(cipher: TemplateCipher) -> AesGcmCipher | NullCipher:
    if not isinstance(cipher, AesGcmCipher | NullCipher):
        raise TypeError(f"unsupported cipher {type(cipher).__name__}")
    return cipher


def _unlock(c: sqlite3.Connection, cipher: TemplateCipher) -> keys.Unlocked:
    return keys.unlock(keys.read_state(c), _ring(cipher), lambda: _legacy_view(c))


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
        return keys.unlock(None, _ring(cipher))
    return _peek(path, lambda c: _unlock(c, cipher))  # type: ignore[no-any-return]


def read_key_state(path: Path | str) -> keys.KeyState | None:
    """The key records of a store (None if there is none), without writing anything."""
    path = Path(path)
    return _peek(path, keys.read_state) if path.is_file() else None


class SqliteStore:
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
        with self._tx() as c:
            # A random id per database, so an index file built from another store is refused.
            c.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            self.store_id: str = c.execute(
                "SELECT value FROM meta WHERE key = 'store_id'"
            ).fetchone()[0]
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", unlocked.record.items())

    def _migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION, one transaction per step; returns the version
        found (0 for a new database). A database from a newer release is refused untouched."""
        with self._tx() as c:
            found = int(c.execute("PRAGMA user_version").fetchone()[0])
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {found}, newer than this release's "
                    f"{SCHEMA_VERSION}: upgrade recognizer, or restore a backup"
                )
            if found == 0:
                for statement in filter(str.strip, _BASELINE.split(";")):
                    c.execute(statement)
                c.execute("PRAGMA user_version = 1")
        version = max(found, 1)
        for target in sorted(v for v in MIGRATIONS if v > version):
            with self._tx() as c:
                MIGRATIONS[target](c)
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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
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

    def _truncate_wal(self) -> None:
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

    # --- identities ---------------------------------------------------------------------------

    @staticmethod
    def _identity(r: tuple[Any, ...]) -> IdentityRow:
        return IdentityRow(r[0], r[1], r[2], json.loads(r[3]), r[4])

    def create_identity(
        self,
        display_name: str,
        external_ref: str = "",
        metadata: dict[str, str] | None = None,
        audit: AuditEntry | None = None,
    ) -> IdentityRow:
        """`audit`'s target may be left empty: it becomes the new identity's id."""
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise InvalidArgument("metadata keys and values must be strings", field="metadata")
        row = IdentityRow(uuid.uuid4().hex, display_name, external_ref, meta, time.time())
        with self._tx() as c:
            c.execute(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?)",
                (row.id, row.display_name, row.external_ref, json.dumps(meta), row.created_at),
            )
            if audit is not None and not audit.target:
                audit = AuditEntry(audit.actor_role, audit.action, row.id, audit.detail)
            _write_audit(c, audit)
        return row

    def get_identity(self, identity_id: str) -> IdentityRow:
        with self._conn() as c:
            r = c.execute(
                "SELECT id, display_name, external_ref, metadata, created_at FROM identities"
                " WHERE id = ?",
                (identity_id,),
            ).fetchone()
        if r is None:
            raise NotFound(f"unknown identity {identity_id!r}", field="identity_id")
        return self._identity(r)

    def list_identities(self, limit: int, after: str = "") -> list[IdentityRow]:
        """Keyset pagination by id: pass the last id of a page to get the next."""
        if limit <= 0:
            raise InvalidArgument("limit must be positive", field="limit")
        with self._conn() as c:
            rows = c.execute(
                "SELECT id, display_name, external_ref, metadata, created_at FROM identities"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [self._identity(r) for r in rows]

    def count_identities(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    def max_templates_per_identity(self) -> int:
        """The most enrolled faces any one identity holds (0 when none): a 1:N search gives an
        impostor that many comparisons per identity (the gate's false-accept estimate)."""
        with self._conn() as c:
            row = c.execute(
                "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM templates GROUP BY identity_id)"
            ).fetchone()
        return int(row[0] or 0)

    @staticmethod
    def _require_identity(c: sqlite3.Connection, identity_id: str) -> None:
        if c.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
            raise NotFound(f"unknown identity {identity_id!r}", field="identity_id")

    def delete_identity(self, identity_id: str, audit: AuditEntry | None = None) -> DeleteCounts:
        """Rows, bindings and templates in one transaction; each label logged as a removal.
        The audit detail gets the removed template labels."""
        with self._tx() as c:
            self._require_identity(c, identity_id)
            labels = [
                int(r[0])
                for r in c.execute(
                    "SELECT label FROM templates WHERE identity_id = ? ORDER BY label",
                    (identity_id,),
                )
            ]
            c.execute(
                "INSERT INTO changes (op, label, model)"
                " SELECT 'remove', label, model FROM templates WHERE identity_id = ?"
                " ORDER BY label",
                (identity_id,),
            )
            n_t = c.execute("DELETE FROM templates WHERE identity_id = ?", (identity_id,)).rowcount
            n_p = c.execute("DELETE FROM plates WHERE identity_id = ?", (identity_id,)).rowcount
            n_b = c.execute("DELETE FROM payments WHERE identity_id = ?", (identity_id,)).rowcount
            c.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            _write_audit(c, audit, templates=labels)
        self._truncate_wal()
        return DeleteCounts(n_t, n_p, n_b)

    # --- templates ----------------------------------------------------------------------------

    def add_templates(
        self,
        identity_id: str,
        vectors: np.ndarray,
        model: str,
        source: str = "",
        quality: float = 0.0,
        audit: AuditEntry | None = None,
    ) -> list[TemplateRow]:
        """The audit detail gets the new labels as "templates"."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise InvalidArgument("vectors must be a non-empty (N, D) array", field="vectors")
        if not np.all(np.isfinite(x)):
            raise InvalidArgument("vectors contain NaN or infinity", field="vectors")
        if not model:
            raise InvalidArgument("model is required", field="model")
        x = x.astype("<f4", copy=False)
        now = time.time()
        rows: list[TemplateRow] = []
        with self._tx() as c:
            self._require_identity(c, identity_id)
            for v in x:
                # Insert first: the label (AUTOINCREMENT) is part of the cipher's AAD.
                cur = c.execute(
                    "INSERT INTO templates (identity_id, model, dim, vector, source, quality,"
                    " created_at) VALUES (?, ?, ?, x'', ?, ?, ?)",
                    (identity_id, model, x.shape[1], source, float(quality), now),
                )
                label = int(cur.lastrowid or 0)
                blob = self.cipher.encrypt(v.tobytes(), _template_aad(label, identity_id, model))
                c.execute("UPDATE templates SET vector = ? WHERE label = ?", (blob, label))
                c.execute(
                    "INSERT INTO changes (op, label, model) VALUES ('add', ?, ?)", (label, model)
                )
                rows.append(
                    TemplateRow(
                        label, identity_id, model, x.shape[1], source, float(quality), now, v.copy()
                    )
                )
            _write_audit(c, audit, templates=[r.label for r in rows])
        return rows

    def remove_template(self, identity_id: str, label: int, audit: AuditEntry | None = None) -> int:
        """Remove one template; returns how many of that model the identity has left."""
        with self._tx() as c:
            r = c.execute(
                "SELECT model FROM templates WHERE label = ? AND identity_id = ?",
                (int(label), identity_id),
            ).fetchone()
            if r is None:
                self._require_identity(c, identity_id)
                raise NotFound(
                    f"identity {identity_id!r} has no template {label}", field="template_id"
                )
            model = r[0]
            c.execute("DELETE FROM templates WHERE label = ?", (int(label),))
            c.execute(
                "INSERT INTO changes (op, label, model) VALUES ('remove', ?, ?)",
                (int(label), model),
            )
            remaining = int(
                c.execute(
                    "SELECT COUNT(*) FROM templates WHERE identity_id = ? AND model = ?",
                    (identity_id, model),
                ).fetchone()[0]
            )
            _write_audit(c, audit)
        self._truncate_wal()
        return remaining

    def _decrypt(
        self, label: int, identity_id: str, model: str, dim: int, blob: bytes
    ) -> np.ndarray:
        return _open_template(self.cipher, (label, identity_id, model, dim, blob))

    def templates(self, identity_id: str, model: str) -> list[TemplateRow]:
        """The identity's templates for one model, with decrypted vectors."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT label, identity_id, model, dim, source, quality, created_at, vector"
                " FROM templates WHERE identity_id = ? AND model = ? ORDER BY label",
                (identity_id, model),
            ).fetchall()
        return [
            TemplateRow(*r[:7], vector=self._decrypt(r[0], r[1], r[2], r[3], r[7])) for r in rows
        ]

    def template_labels(self, identity_id: str) -> list[int]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT label FROM templates WHERE identity_id = ? ORDER BY label", (identity_id,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def count_templates(self, model: str) -> int:
        with self._conn() as c:
            return int(
                c.execute("SELECT COUNT(*) FROM templates WHERE model = ?", (model,)).fetchone()[0]
            )

    def labels_for_model(self, model: str) -> np.ndarray:
        """Every template label of a model, sorted (for consistency checks)."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT label FROM templates WHERE model = ? ORDER BY label", (model,)
            ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors_for_labels(self, labels: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) of those labels that still exist, for replaying 'add' changes."""
        wanted = sorted({int(x) for x in labels})
        out_l: list[int] = []
        out_v: list[np.ndarray] = []
        with self._conn() as c:
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                for r in c.execute(
                    "SELECT label, identity_id, model, dim, vector FROM templates"
                    f" WHERE label IN ({marks}) ORDER BY label",
                    part,
                ):
                    out_l.append(int(r[0]))
                    out_v.append(self._decrypt(*r))
        if not out_l:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.asarray(out_l, np.int64), np.stack(out_v)

    def iter_templates(
        self, model: str, chunk_size: int = 65_536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) chunks of every template of a model, in label order.

        Each chunk is its own query (no lock or transaction held across a yield); wrap the
        loop in `snapshot()` for a view consistent with `current_seq()`.
        """
        last = 0
        while True:
            with self._conn() as c:
                rows = c.execute(
                    "SELECT label, identity_id, model, dim, vector FROM templates"
                    " WHERE model = ? AND label > ? ORDER BY label LIMIT ?",
                    (model, last, chunk_size),
                ).fetchall()
            if not rows:
                return
            labels = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            vectors = np.stack([self._decrypt(*r) for r in rows])
            last = int(labels[-1])
            yield labels, vectors

    def identity_for_labels(self, labels: Iterable[int]) -> dict[int, str]:
        wanted = sorted({int(x) for x in labels if int(x) >= 0})
        out: dict[int, str] = {}
        with self._conn() as c:
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                for label, identity_id in c.execute(
                    f"SELECT label, identity_id FROM templates WHERE label IN ({marks})", part
                ):
                    out[int(label)] = identity_id
        return out

    # --- change log ---------------------------------------------------------------------------

    def changes_since(self, seq: int, model: str) -> list[Change]:
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

    # --- plates -------------------------------------------------------------------------------

    def bind_plate(
        self,
        identity_id: str,
        plate: str,
        allow_shared: bool = False,
        audit: AuditEntry | None = None,
    ) -> None:
        """Idempotent for the same identity; AlreadyExists if another holds it (unless shared).
        A repeated bind is audited too (the call succeeded)."""
        if not plate:
            raise InvalidArgument("plate is required", field="plate")
        with self._tx() as c:
            self._require_identity(c, identity_id)
            holders = [
                r[0]
                for r in c.execute(
                    "SELECT identity_id FROM plates WHERE plate = ? ORDER BY created_at", (plate,)
                )
            ]
            if identity_id in holders:
                _write_audit(c, audit)
                return
            if holders and not allow_shared:
                raise AlreadyExists(
                    f"plate {plate} is already bound to identity {holders[0]}",
                    identity_id=holders[0],
                    field="plate",
                )
            c.execute("INSERT INTO plates VALUES (?, ?, ?)", (plate, identity_id, time.time()))
            _write_audit(c, audit)

    def unbind_plate(self, identity_id: str, plate: str, audit: AuditEntry | None = None) -> None:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM plates WHERE plate = ? AND identity_id = ?", (plate, identity_id)
            ).rowcount
            if n == 0:
                self._require_identity(c, identity_id)
                raise NotFound(f"plate {plate} is not bound to {identity_id!r}", field="plate")
            _write_audit(c, audit)

    def identities_for_plate(self, plate: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT identity_id FROM plates WHERE plate = ? ORDER BY created_at, identity_id",
                (plate,),
            ).fetchall()
        return [r[0] for r in rows]

    def plates_for(self, identity_id: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT plate FROM plates WHERE identity_id = ? ORDER BY plate", (identity_id,)
            ).fetchall()
        return [r[0] for r in rows]

    # --- payment bindings ---------------------------------------------------------------------

    def bind_payment(
        self,
        identity_id: str,
        payment_ref: str,
        factors: str,
        ceiling_minor: int,
        audit: AuditEntry | None = None,
    ) -> PaymentRow:
        """The audit detail gets the new binding id as "binding"."""
        if not payment_ref:
            raise InvalidArgument("payment_ref is required", field="payment_ref")
        if ceiling_minor < 0:
            raise InvalidArgument("ceiling_minor must not be negative", field="ceiling_minor")
        row = PaymentRow(
            uuid.uuid4().hex, identity_id, payment_ref, factors, int(ceiling_minor), time.time()
        )
        with self._tx() as c:
            self._require_identity(c, identity_id)
            c.execute(
                "INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?)",
                (
                    row.binding_id,
                    row.identity_id,
                    row.payment_ref,
                    row.factors,
                    row.ceiling_minor,
                    row.created_at,
                ),
            )
            _write_audit(c, audit, binding=row.binding_id)
        return row

    def unbind_payment(
        self, identity_id: str, binding_id: str, audit: AuditEntry | None = None
    ) -> None:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM payments WHERE binding_id = ? AND identity_id = ?",
                (binding_id, identity_id),
            ).rowcount
            if n == 0:
                self._require_identity(c, identity_id)
                raise NotFound(f"unknown payment binding {binding_id!r}", field="binding_id")
            _write_audit(c, audit)

    def payments_for(self, identity_id: str) -> list[PaymentRow]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT binding_id, identity_id, payment_ref, factors, ceiling_minor, created_at"
                " FROM payments WHERE identity_id = ? ORDER BY created_at, binding_id",
                (identity_id,),
            ).fetchall()
        return [PaymentRow(*r) for r in rows]

    # --- decisions ----------------------------------------------------------------------------

    _DECISION_COLS = (
        "decision_id, gate_id, event_id, outcome, payload, identity_id, inputs, created_at,"
        " input_digest"
    )

    @staticmethod
    def _decision(r: tuple[Any, ...]) -> DecisionRow:
        return DecisionRow(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6], r[7], r[8])

    def get_decision(self, gate_id: str, event_id: str) -> DecisionRow | None:
        with self._conn() as c:
            r = c.execute(
                f"SELECT {self._DECISION_COLS} FROM decisions WHERE gate_id = ? AND event_id = ?",
                (gate_id, event_id),
            ).fetchone()
        return self._decision(r) if r else None

    def put_decision(
        self,
        row: DecisionRow | None = None,
        /,
        sighting: tuple[str, str, str, float] | None = None,
        **fields: Any,
    ) -> DecisionRow:
        """Store a decision once per (gate_id, event_id); returns the row that stands.

        If the pair is already stored (a retry, or a concurrent writer that won), the existing
        row is returned unchanged. Accepts a DecisionRow or its fields as keywords. The plate
        `sighting` (plate, gate_id, direction, at) is recorded in the same transaction, and
        only when this call's decision is the one stored.
        """
        if row is None:
            if isinstance(fields.get("inputs"), dict):
                fields["inputs"] = json.dumps(fields["inputs"], sort_keys=True)
            fields.setdefault("created_at", time.time())
            row = DecisionRow(**fields)
        if not row.gate_id or not row.event_id:
            raise InvalidArgument("gate_id and event_id are required", field="event_id")
        created = row.created_at or time.time()
        with self._tx() as c:
            inserted = c.execute(
                f"INSERT INTO decisions ({self._DECISION_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gate_id, event_id) DO NOTHING",
                (
                    row.decision_id,
                    row.gate_id,
                    row.event_id,
                    row.outcome,
                    bytes(row.payload),
                    row.identity_id,
                    row.inputs,
                    created,
                    row.input_digest,
                ),
            ).rowcount
            if inserted and sighting is not None:
                self._insert_sighting(c, *sighting)
            r = c.execute(
                f"SELECT {self._DECISION_COLS} FROM decisions WHERE gate_id = ? AND event_id = ?",
                (row.gate_id, row.event_id),
            ).fetchone()
        return self._decision(r)

    def list_decisions(
        self, gate_id: str = "", identity_id: str = "", since: float = 0, limit: int = 100
    ) -> list[DecisionRow]:
        """Newest first, optionally filtered by gate and/or identity."""
        with self._conn() as c:
            rows = c.execute(
                f"SELECT {self._DECISION_COLS} FROM decisions"
                " WHERE (? = '' OR gate_id = ?) AND (? = '' OR identity_id = ?)"
                " AND created_at >= ? ORDER BY created_at DESC LIMIT ?",
                (gate_id, gate_id, identity_id, identity_id, float(since), int(limit)),
            ).fetchall()
        return [self._decision(r) for r in rows]

    def purge_decisions(self, older_than: float) -> int:
        """Retention: delete decisions created before `older_than` (epoch seconds)."""
        with self._tx() as c:
            return int(
                c.execute("DELETE FROM decisions WHERE created_at < ?", (older_than,)).rowcount
            )

    # --- plate sightings (clone / presence checks at the gate) --------------------------------

    @staticmethod
    def _insert_sighting(
        c: sqlite3.Connection, plate: str, gate_id: str, direction: str, at: float
    ) -> None:
        c.execute(
            "INSERT INTO sightings VALUES (?, ?, ?, ?)", (plate, gate_id, str(direction), float(at))
        )

    def record_sighting(self, plate: str, gate_id: str, direction: str, at: float) -> None:
        with self._tx() as c:
            self._insert_sighting(c, plate, gate_id, direction, at)

    def last_sighting(self, plate: str) -> SightingRow | None:
        with self._conn() as c:
            r = c.execute(
                "SELECT plate, gate_id, direction, at FROM sightings WHERE plate = ?"
                " ORDER BY at DESC LIMIT 1",
                (plate,),
            ).fetchone()
        return SightingRow(*r) if r else None

    def purge_sightings(self, older_than: float) -> int:
        with self._tx() as c:
            return int(c.execute("DELETE FROM sightings WHERE at < ?", (older_than,)).rowcount)

    # --- audit --------------------------------------------------------------------------------

    def audit(self, actor_role: str, action: str, target: str, detail: dict[str, Any]) -> None:
        """Append an audit record on its own, for actions that change nothing else here.
        Callers pass identifiers and outcomes, never images."""
        with self._tx() as c:
            _write_audit(c, AuditEntry(actor_role, action, target, detail))

    def list_audit(self, limit: int = 100) -> list[AuditRow]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT id, at, actor_role, action, target, detail FROM audit"
                " ORDER BY id DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

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

    # --- re-keying (recognizer keys encrypt|rotate; see rekey.py) ------------------------------

    def key_state(self) -> keys.KeyState:
        with self._conn() as c:
            state = keys.read_state(c)
        assert state is not None
        return state

    def begin_rekey(self, key_id: str, kcv: str) -> None:
        """Record the key being moved to, before any template is sealed with it."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (("pending_key_id", key_id), ("pending_kcv", kcv)),
            )

    def reseal(self, after: int, limit: int = 1000) -> tuple[int, int]:
        """Seal templates after label `after` under the cipher's primary key, `limit` rows per
        transaction. Returns (last label seen, rows rewritten); last label 0 when done."""
        assert isinstance(self.cipher, AesGcmCipher)
        rewritten = 0
        with self._tx() as c:
            rows = c.execute(
                "SELECT label, identity_id, model, dim, vector FROM templates WHERE label > ?"
                " ORDER BY label LIMIT ?",
                (int(after), int(limit)),
            ).fetchall()
            for row in rows:
                if self.cipher.key_id_of(row[4]) == self.cipher.primary_id:
                    continue
                plain = self.cipher.decrypt(bytes(row[4]), _template_aad(*row[:3]))
                blob = self.cipher.encrypt(plain, _template_aad(*row[:3]))
                c.execute("UPDATE templates SET vector = ? WHERE label = ?", (blob, row[0]))
                rewritten += 1
        self._truncate_wal()  # the old blobs' page images leave the WAL
        return (int(rows[-1][0]) if rows else 0), rewritten

    def finish_rekey(self) -> int:
        """Make the pending key the store's key, if every template is sealed with it.
        Returns how many are not (then nothing changes)."""
        assert isinstance(self.cipher, AesGcmCipher)
        state = self.key_state()
        prefix = self.cipher.primary_prefix
        with self._tx() as c:
            left = int(
                c.execute(
                    "SELECT COUNT(*) FROM templates WHERE substr(vector, 1, ?) != ?",
                    (len(prefix), prefix),
                ).fetchone()[0]
            )
            if left:
                return left
            record = keys.records(keys.SCHEME_AES, state.pending_key_id, state.pending_kcv)
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", record.items())
            c.execute("DELETE FROM meta WHERE key IN ('pending_key_id', 'pending_kcv')")
        return 0
