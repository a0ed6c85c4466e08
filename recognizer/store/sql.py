"""The SQL both adapters share: every port method whose SQL is portable, in one place.

Statements use qmark (`?`) placeholders and SQL that SQLite and PostgreSQL both accept
(`ON CONFLICT`, `RETURNING`, `substr` on blobs). An adapter supplies connections and
transactions (`_conn`, `_tx`), its schema and migrations, the change log's read side, and
backup. `_tx(serial=True)` is the adapter's single-writer transaction: check-then-write
invariants (a plate bound to one identity, a template added to an existing identity) hold
because such transactions never interleave, on SQLite through its write lock and on
PostgreSQL through an advisory lock. Writes that a unique key already orders (decisions,
sightings, audit) pass serial=False.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from recognizer.errors import AlreadyExists, InvalidArgument, NotFound
from recognizer.store import keys
from recognizer.store.crypto import AesGcmCipher, CipherError, NullCipher, TemplateCipher
from recognizer.store.rows import (
    UNCHECKED,
    AuditEntry,
    AuditRow,
    DecisionMark,
    DecisionRow,
    DeleteCounts,
    IdentityRow,
    PaymentRow,
    PlateHolder,
    SightingMoved,
    SightingRow,
    TemplateRow,
    open_template,
    template_aad,
)
from recognizer.store.sealing import PREFIX_CHARS, FieldSealer

log = logging.getLogger("recognizer.store.sql")
T = TypeVar("T")
_IN_CHUNK = 500  # stay well under SQLite's bound-parameter limit
_SIGHTING_PAGE = 1  # last_sighting reads the newest first (it nearly always names a direction)
_NEWEST_SIGHTING = (  # the covering index (plate, at, gate_id, direction) answers it
    "SELECT gate_id, direction, at FROM sightings WHERE plate = ? ORDER BY at DESC LIMIT 1"
)
_LAST_SIGHTINGS: dict[int, str] = {}  # last_sighting's query by the number of plate indexes
NOTIFY_CHANNEL = "recognizer_changes"
PUT_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


def _count_identities(c: Connection, delta: int) -> None:
    c.execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key = 'identities'",
        (int(delta),),
    )


def _count_templates(c: Connection, identity_id: str, delta: int) -> None:
    c.execute(
        "UPDATE identities SET templates = templates + ? WHERE id = ?", (int(delta), identity_id)
    )


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the shared SQL needs of a connection: sqlite3's, or the PostgreSQL wrapper."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, params: Iterable[Any], /) -> Any: ...


def _in(values: tuple[str, ...]) -> str:
    """`= ?` for one value (the usual case: one key, one index), else `IN (?, ...)`."""
    return "= ?" if len(values) == 1 else f"IN ({','.join('?' * len(values))})"


def _chunks(items: list[T], size: int = _IN_CHUNK) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def write_audit(c: Connection, sealer: FieldSealer, entry: AuditEntry | None, **found: Any) -> None:
    if entry is None:
        return
    detail = json.dumps({**entry.detail, **found}, sort_keys=True)
    plain = "" if sealer.sealed else detail  # sealed: never written in plaintext, even briefly
    # Inserted first: the row's id is part of the sealed detail's associated data.
    audit_id = c.execute(
        "INSERT INTO audit (at, actor_role, action, target, detail) VALUES (?, ?, ?, ?, ?)"
        " RETURNING id",
        (time.time(), entry.actor_role, entry.action, entry.target, plain),
    ).fetchone()[0]
    if sealer.sealed:
        sealed = sealer.seal(detail, "audit.detail", (audit_id,))
        c.execute("UPDATE audit SET detail = ? WHERE id = ?", (sealed, audit_id))


def legacy_view(c: Connection) -> keys.Legacy:
    """How the templates of a store without key records (release 0.1.0) are stored."""
    first = c.execute("SELECT dim, vector FROM templates ORDER BY label LIMIT 1").fetchone()

    def failures(cipher: AesGcmCipher) -> int:
        bad = 0
        for row in c.execute("SELECT label, identity_id, model, dim, vector FROM templates"):
            try:
                open_template(cipher, row)
            except (CipherError, ValueError):
                bad += 1
        return bad

    if first is None:
        return keys.Legacy("empty", failures)
    return keys.Legacy("plain" if len(first[1]) == 4 * int(first[0]) else "sealed", failures)


def ring(cipher: TemplateCipher) -> AesGcmCipher | NullCipher:
    if not isinstance(cipher, AesGcmCipher | NullCipher):
        raise TypeError(f"unsupported cipher {type(cipher).__name__}")
    return cipher


class SqlStore:
    """The shared port methods; see the adapters (SqliteStore, PostgresStore)."""

    cipher: TemplateCipher
    store_id: str

    # --- what an adapter provides ---------------------------------------------------------------

    def _conn(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _tx(self, serial: bool = True) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _after_delete(self) -> None:
        """Called after a transaction that deleted templates (SQLite folds its WAL)."""

    def _changed(self, c: Connection) -> None:
        """Called inside a transaction that appended to the change log (wake followers)."""

    def _read_meta(self, c: Connection) -> dict[str, str] | None:
        """The meta table, or None when the database has none yet."""
        raise NotImplementedError

    def _probe_write(self) -> bool:
        """While the disk is full: can a write commit again? (A real one: a row rewritten.)"""
        try:
            with self._tx(serial=False) as c:
                c.execute("UPDATE meta SET value = value WHERE key = 'store_id'")
        except Exception:
            return False
        return True

    def _record_store(self, record: dict[str, str]) -> str:
        """After the key check and the migrations: the store's id (made on first open) and
        the key records the check asked to write. Returns the id."""
        with self._tx(serial=False) as c:
            # A random id per database, so an index file built from another store is refused.
            c.execute(
                "INSERT INTO meta VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING",
                (uuid.uuid4().hex,),
            )
            store_id = str(c.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])
            c.executemany(PUT_META, record.items())
        return store_id

    # --- identities ---------------------------------------------------------------------------

    def _identity(self, r: tuple[Any, ...]) -> IdentityRow:
        name, ref, meta = (
            self.sealer.open(v, f"identities.{col}", (r[0],))
            for v, col in ((r[1], "display_name"), (r[2], "external_ref"), (r[3], "metadata"))
        )
        return IdentityRow(r[0], name, ref, json.loads(meta), r[4])

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
        with self._tx(serial=False) as c:
            c.execute(
                "INSERT INTO identities (id, display_name, external_ref, metadata, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    row.id,
                    *(
                        self.sealer.seal(v, f"identities.{col}", (row.id,))
                        for v, col in (
                            (row.display_name, "display_name"),
                            (row.external_ref, "external_ref"),
                            (json.dumps(meta), "metadata"),
                        )
                    ),
                    row.created_at,
                ),
            )
            _count_identities(c, +1)
            if audit is not None and not audit.target:
                audit = AuditEntry(audit.actor_role, audit.action, row.id, audit.detail)
            write_audit(c, self.sealer, audit)
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
            r = c.execute("SELECT value FROM meta WHERE key = 'identities'").fetchone()
        return int(r[0]) if r else 0

    def max_templates_per_identity(self) -> int:
        """The most enrolled faces any one identity holds (0 when none): a 1:N search gives an
        impostor that many comparisons per identity (the gate's false-accept estimate)."""
        with self._conn() as c:
            row = c.execute("SELECT MAX(templates) FROM identities").fetchone()
        return int(row[0] or 0)

    @staticmethod
    def _require_identity(c: Connection, identity_id: str) -> None:
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
            self._changed(c)
            n_t = c.execute("DELETE FROM templates WHERE identity_id = ?", (identity_id,)).rowcount
            n_p = c.execute("DELETE FROM plates WHERE identity_id = ?", (identity_id,)).rowcount
            n_b = c.execute("DELETE FROM payments WHERE identity_id = ?", (identity_id,)).rowcount
            c.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            _count_identities(c, -1)
            write_audit(c, self.sealer, audit, templates=labels)
        self._after_delete()
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
                # Insert first: the label (never reused) is part of the cipher's AAD, and the
                # row identity of the sealed source (client free text: it may name someone).
                label = int(
                    c.execute(
                        "INSERT INTO templates (identity_id, model, dim, vector, source, quality,"
                        " created_at) VALUES (?, ?, ?, ?, '', ?, ?) RETURNING label",
                        (identity_id, model, x.shape[1], b"", float(quality), now),
                    ).fetchone()[0]
                )
                blob = self.cipher.encrypt(v.tobytes(), template_aad(label, identity_id, model))
                sealed = self.sealer.seal(source, "templates.source", (label,))
                c.execute(
                    "UPDATE templates SET vector = ?, source = ? WHERE label = ?",
                    (blob, sealed, label),
                )
                c.execute(
                    "INSERT INTO changes (op, label, model) VALUES ('add', ?, ?)", (label, model)
                )
                rows.append(
                    TemplateRow(
                        label, identity_id, model, x.shape[1], source, float(quality), now, v.copy()
                    )
                )
            self._changed(c)
            _count_templates(c, identity_id, len(rows))
            write_audit(c, self.sealer, audit, templates=[r.label for r in rows])
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
            self._changed(c)
            _count_templates(c, identity_id, -1)
            remaining = int(
                c.execute(
                    "SELECT COUNT(*) FROM templates WHERE identity_id = ? AND model = ?",
                    (identity_id, model),
                ).fetchone()[0]
            )
            write_audit(c, self.sealer, audit)
        self._after_delete()
        return remaining

    def _decrypt(
        self, label: int, identity_id: str, model: str, dim: int, blob: bytes
    ) -> np.ndarray:
        return open_template(self.cipher, (label, identity_id, model, dim, blob))

    def templates(self, identity_id: str, model: str) -> list[TemplateRow]:
        """The identity's templates for one model, with decrypted vectors."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT label, identity_id, model, dim, source, quality, created_at, vector"
                " FROM templates WHERE identity_id = ? AND model = ? ORDER BY label",
                (identity_id, model),
            ).fetchall()
        return [self._template_row(r) for r in rows]

    def templates_for(
        self, identity_ids: Iterable[str], model: str
    ) -> dict[str, list[TemplateRow]]:
        """Several identities' templates for one model in one query (the gate scores a face
        against every payer a plate names); identities without one are absent."""
        wanted = sorted(set(identity_ids))
        out: dict[str, list[TemplateRow]] = {}
        if not wanted:
            return out
        with self._conn() as c:
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                rows = c.execute(
                    "SELECT label, identity_id, model, dim, source, quality, created_at, vector"
                    f" FROM templates WHERE identity_id IN ({marks}) AND model = ?"
                    " ORDER BY identity_id, label",
                    (*part, model),
                ).fetchall()
                for r in rows:
                    out.setdefault(r[1], []).append(self._template_row(r))
        return out

    def _template_row(self, r: Any) -> TemplateRow:
        """A row of (label, identity_id, model, dim, source, quality, created_at, vector)."""
        vector = self._decrypt(r[0], r[1], r[2], r[3], r[7])
        source = self.sealer.open(r[4], "templates.source", (r[0],))
        return TemplateRow(r[0], r[1], r[2], r[3], source, r[5], r[6], vector=vector)

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
        blinds = self.sealer.blinds(plate)
        with self._tx() as c:
            self._require_identity(c, identity_id)
            holders = [
                r[0]
                for r in c.execute(
                    f"SELECT identity_id FROM plates WHERE plate {_in(blinds)} ORDER BY created_at",
                    blinds,
                )
            ]
            if identity_id in holders:
                write_audit(c, self.sealer, audit)
                return
            if holders and not allow_shared:
                raise AlreadyExists(
                    f"plate {plate} is already bound to identity {holders[0]}",
                    identity_id=holders[0],
                    field="plate",
                )
            self._insert_plate(c, identity_id, plate, time.time())
            write_audit(c, self.sealer, audit)

    def _insert_plate(self, c: Connection, identity_id: str, plate: str, created: float) -> None:
        blind = self.sealer.blind(plate)
        sealed = self.sealer.seal(plate, "plates.plate_text", (identity_id, blind))
        c.execute(
            "INSERT INTO plates (plate, identity_id, created_at, plate_text) VALUES (?, ?, ?, ?)",
            (blind, identity_id, created, sealed if self.sealer.sealed else ""),
        )

    def unbind_plate(self, identity_id: str, plate: str, audit: AuditEntry | None = None) -> None:
        blinds = self.sealer.blinds(plate)
        with self._tx() as c:
            n = c.execute(
                f"DELETE FROM plates WHERE plate {_in(blinds)} AND identity_id = ?",
                (*blinds, identity_id),
            ).rowcount
            if n == 0:
                self._require_identity(c, identity_id)
                raise NotFound(f"plate {plate} is not bound to {identity_id!r}", field="plate")
            write_audit(c, self.sealer, audit)

    def identities_for_plate(self, plate: str) -> list[str]:
        blinds = self.sealer.blinds(plate)
        with self._conn() as c:
            rows = c.execute(
                f"SELECT identity_id FROM plates WHERE plate {_in(blinds)}"
                " ORDER BY created_at, identity_id",
                blinds,
            ).fetchall()
        return [r[0] for r in rows]

    def plate_holders(self, plates: Iterable[str]) -> dict[str, list[PlateHolder]]:
        """Who holds each of several plates, with each holder's payment bindings, in one query
        (the texts a gate event read: the read and its candidates). Holders come in binding
        order, as identities_for_plate gives them; plates no one holds are absent."""
        # Each plate under every index it may be stored under (one, but during a re-key).
        plate_of = {b: p for p in sorted(set(plates)) for b in self.sealer.blinds(p)}
        wanted = sorted(plate_of)
        out: dict[str, list[PlateHolder]] = {}
        if not wanted:
            return out
        rows: list[Any] = []
        with self._conn() as c:
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                rows += c.execute(
                    "SELECT p.plate, p.identity_id, pay.binding_id, pay.payment_ref,"
                    " pay.factors, pay.ceiling_minor, pay.created_at"
                    " FROM plates p LEFT JOIN payments pay ON pay.identity_id = p.identity_id"
                    f" WHERE p.plate IN ({marks})"
                    " ORDER BY p.plate, p.created_at, p.identity_id, pay.created_at,"
                    " pay.binding_id",
                    part,
                ).fetchall()
        payments: dict[tuple[str, str], list[PaymentRow]] = {}
        for blind, identity_id, binding_id, ref, factors, ceiling, created in rows:
            plate = plate_of[blind]
            held = payments.get((plate, identity_id))
            if held is None:
                held = payments[(plate, identity_id)] = []
                out.setdefault(plate, []).append(PlateHolder(identity_id))
            if binding_id is not None:
                ref = self.sealer.open(ref, "payments.payment_ref", (binding_id,))
                held.append(
                    PaymentRow(binding_id, identity_id, ref, factors, int(ceiling), created)
                )
        return {
            plate: [PlateHolder(h.identity_id, tuple(payments[(plate, h.identity_id)])) for h in hs]
            for plate, hs in out.items()
        }

    def plates_for(self, identity_id: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT plate, plate_text FROM plates WHERE identity_id = ?", (identity_id,)
            ).fetchall()
        return sorted(self._plate_text(identity_id, blind, text) for blind, text in rows)

    def _plate_text(self, identity_id: str, blind: str, sealed: str) -> str:
        """A binding's plate: sealed beside its index or, in a plaintext row (no key, or a
        store being sealed), the index column itself."""
        return self.sealer.open(sealed or blind, "plates.plate_text", (identity_id, blind))

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
                    self.sealer.seal(row.payment_ref, "payments.payment_ref", (row.binding_id,)),
                    row.factors,
                    row.ceiling_minor,
                    row.created_at,
                ),
            )
            write_audit(c, self.sealer, audit, binding=row.binding_id)
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
            write_audit(c, self.sealer, audit)

    def payments_for(self, identity_id: str) -> list[PaymentRow]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT binding_id, identity_id, payment_ref, factors, ceiling_minor, created_at"
                " FROM payments WHERE identity_id = ? ORDER BY created_at, binding_id",
                (identity_id,),
            ).fetchall()
        return [
            PaymentRow(r[0], r[1], self.sealer.open(r[2], "payments.payment_ref", (r[0],)), *r[3:])
            for r in rows
        ]

    # --- decisions ----------------------------------------------------------------------------

    _DECISION_COLS = (
        "decision_id, gate_id, event_id, outcome, payload, identity_id, inputs, created_at,"
        " input_digest"
    )

    def _decision(self, r: tuple[Any, ...]) -> DecisionRow:
        key = (r[1], r[2])  # gate_id, event_id
        payload = self.sealer.open_bytes(r[4], "decisions.payload", key)
        inputs = self.sealer.open(r[6], "decisions.inputs", key)
        digest = self.sealer.open(r[8], "decisions.input_digest", key)
        return DecisionRow(r[0], r[1], r[2], r[3], payload, r[5], inputs, r[7], digest)

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
        seen: SightingRow | None = UNCHECKED,
        **fields: Any,
    ) -> DecisionRow:
        """Store a decision once per (gate_id, event_id); returns the row that stands.

        If the pair is already stored (a retry, or a concurrent writer that won), the existing
        row is returned unchanged. Accepts a DecisionRow or its fields as keywords. The plate
        `sighting` (plate, gate_id, direction, at) is recorded in the same transaction, and
        only when this call's decision is the one stored.

        With `seen` (the plate's last sighting the decision was made from), the plate is
        locked for the transaction and its last sighting read again: when it moved (another
        decision for the plate was recorded since), nothing is stored and SightingMoved
        carries the sighting that stands, so the caller decides again. Decisions that read
        and then write one plate's presence are serialised that way, on every node.
        """
        if row is None:
            if isinstance(fields.get("inputs"), dict):
                fields["inputs"] = json.dumps(fields["inputs"], sort_keys=True)
            fields.setdefault("created_at", time.time())
            row = DecisionRow(**fields)
        if not row.gate_id or not row.event_id:
            raise InvalidArgument("gate_id and event_id are required", field="event_id")
        created = row.created_at or time.time()
        key = (row.gate_id, row.event_id)
        select = f"SELECT {self._DECISION_COLS} FROM decisions WHERE gate_id = ? AND event_id = ?"
        with self._tx(serial=False) as c:
            if sighting is not None and seen is not UNCHECKED:
                self._lock_plate(c, sighting[0])
                last = self._last_sighting(c, sighting[0])
                if last != seen:
                    stored = c.execute(select, (row.gate_id, row.event_id)).fetchone()
                    if stored is None:
                        raise SightingMoved(last)
                    return self._decision(stored)  # another node recorded this very event
            inserted = c.execute(
                f"INSERT INTO decisions ({self._DECISION_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gate_id, event_id) DO NOTHING",
                (
                    row.decision_id,
                    row.gate_id,
                    row.event_id,
                    row.outcome,
                    self.sealer.seal_bytes(row.payload, "decisions.payload", key),
                    row.identity_id,
                    self.sealer.seal(row.inputs, "decisions.inputs", key),
                    created,
                    self.sealer.seal(row.input_digest, "decisions.input_digest", key),
                ),
            ).rowcount
            if inserted and sighting is not None:
                self._insert_sighting(c, *sighting)
            if inserted:
                self._notify_decision(c)
            r = c.execute(select, (row.gate_id, row.event_id)).fetchone()
        if inserted:
            self._decision_committed()
        return self._decision(r)

    def _notify_decision(self, c: Connection) -> None:
        """Inside the transaction that stored a new decision (PostgreSQL: NOTIFY on commit)."""

    def _decision_committed(self) -> None:
        """After that transaction committed (SQLite: wake this process's watchers)."""

    def _marked(self, rows: Iterable[Any]) -> list[tuple[DecisionMark, DecisionRow]]:
        """Rows of (position, the decision columns...) as watchers read them."""
        return [(DecisionMark(int(r[0]), float(r[8])), self._decision(r[1:])) for r in rows]

    def _lock_plate(self, c: Connection, plate: str) -> None:
        """Hold one plate's sightings for the rest of the transaction. A write transaction
        holds SQLite's one write lock already (BEGIN IMMEDIATE: every process, every thread);
        PostgreSQL takes an advisory lock per plate."""

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
        with self._tx(serial=False) as c:
            return int(
                c.execute("DELETE FROM decisions WHERE created_at < ?", (older_than,)).rowcount
            )

    # --- plate sightings (clone / presence checks at the gate) --------------------------------

    def _insert_sighting(
        self, c: Connection, plate: str, gate_id: str, direction: str, at: float
    ) -> None:
        sealer = self.sealer
        blind, at, direction = sealer.blind(plate), float(at), str(direction)
        key = (blind, at)  # the AAD holds str(at): the float's shortest repr
        fetched = (  # as last_sighting fetches it back
            sealer.seal(gate_id, "sightings.gate_id", key),
            sealer.seal(direction, "sightings.direction", key),
            at,
        )
        c.execute(
            "INSERT INTO sightings (plate, gate_id, direction, at, plate_text)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                blind,
                *fetched,
                sealer.seal(plate, "sightings.plate_text", key) if sealer.sealed else "",
            ),
        )
        # The next event of this plate reads this row back (last_sighting): no AES-GCM then.
        sealer.remember_sighting(blind, fetched, gate_id, direction)

    def record_sighting(self, plate: str, gate_id: str, direction: str, at: float) -> None:
        with self._tx(serial=False) as c:
            self._insert_sighting(c, plate, gate_id, direction, at)

    def last_sighting(self, plate: str) -> SightingRow | None:
        with self._conn() as c:
            return self._last_sighting(c, plate)

    def _last_sighting(self, c: Connection, plate: str) -> SightingRow | None:
        """The plate's newest sighting, with its presence: the direction of the newest one that
        named a direction (sealed, so found here rather than in SQL; most sightings name one,
        so the newest nearly always does: one indexed row, one cache lookup)."""
        blinds = self.sealer.blinds(plate)
        if len(blinds) == 1:  # one index (no rotation or sealing under way): the hot path
            r = c.execute(_NEWEST_SIGHTING, blinds).fetchone()
            if r is None:
                return None
            gate_id, direction = self.sealer.open_sighting(blinds[0], r)
            if direction != "unspecified":
                return SightingRow(plate, gate_id, direction, r[2], direction)
        sql = _LAST_SIGHTINGS.get(len(blinds)) or _LAST_SIGHTINGS.setdefault(
            len(blinds),
            f"SELECT plate, gate_id, direction, at FROM sightings WHERE plate {_in(blinds)}"
            " ORDER BY at DESC LIMIT ? OFFSET ?",
        )
        newest: tuple[str, str, str, float] | None = None
        offset, page = 0, _SIGHTING_PAGE
        while True:  # bounded: each page moves on through the plate's sightings
            rows = c.execute(sql, (*blinds, page, offset)).fetchall()
            for blind, gate_id, direction, at in rows:
                gate_id, direction = self.sealer.open_sighting(blind, (gate_id, direction, at))
                if newest is None:
                    newest = (plate, gate_id, direction, at)
                if direction != "unspecified":
                    return SightingRow(*newest, direction)
            if len(rows) < page:
                return SightingRow(*newest) if newest else None
            offset, page = offset + page, page * 8

    def purge_sightings(self, older_than: float) -> int:
        """Retention: delete sightings before `older_than`, but never a plate's latest one:
        a car that entered long ago and is still parked must not exit without an entry. (By
        time alone, not by direction, so that sealing the direction changes nothing here.)"""
        with self._tx(serial=False) as c:
            return int(
                c.execute(
                    "DELETE FROM sightings WHERE at < ? AND at <"
                    " (SELECT MAX(s.at) FROM sightings s WHERE s.plate = sightings.plate)",
                    (older_than,),
                ).rowcount
            )

    # --- audit --------------------------------------------------------------------------------

    def audit(self, actor_role: str, action: str, target: str, detail: dict[str, Any]) -> None:
        """Append an audit record on its own, for actions that change nothing else here.
        Callers pass identifiers and outcomes, never images."""
        with self._tx(serial=False) as c:
            write_audit(c, self.sealer, AuditEntry(actor_role, action, target, detail))

    def audit_all(self, entries: Iterable[AuditEntry]) -> None:
        """Append several audit records in one transaction (reads of personal fields: one row
        per identity read)."""
        with self._tx(serial=False) as c:
            for entry in entries:
                write_audit(c, self.sealer, entry)

    def list_audit(
        self,
        limit: int = 100,
        *,
        since: float = 0.0,
        until: float = 0.0,
        actor: str = "",
        target: str = "",
        before_id: int = 0,
    ) -> list[AuditRow]:
        """Newest first; filters: `since <= at < until` (0: open), the actor (the key's
        name), the target (an identity id), and `id < before_id` (0: from the newest)."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT id, at, actor_role, action, target, detail FROM audit"
                " WHERE at >= ? AND (? = 0 OR at < ?) AND (? = '' OR actor_role = ?)"
                " AND (? = '' OR target = ?) AND (? = 0 OR id < ?)"
                " ORDER BY id DESC LIMIT ?",
                (
                    float(since),
                    float(until),
                    float(until),
                    actor,
                    actor,
                    target,
                    target,
                    int(before_id),
                    int(before_id),
                    int(limit),
                ),
            ).fetchall()
        return [
            AuditRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                json.loads(self.sealer.open(r[5], "audit.detail", (r[0],))),
            )
            for r in rows
        ]

    # --- personal fields (sealing.py) ----------------------------------------------------------

    def _compact(self) -> None:
        """After a store's rows were sealed: drop the old plaintext pages (SQLite VACUUMs)."""

    def _after_sealing(self) -> None:
        """After the first seal: seal or remove plaintext copies beside the store (SQLite's
        `pre-restore-*` folders)."""

    def _seal_personal_fields(self) -> None:
        """Called by the adapters once the key is proven and the schema migrated: the sealer
        for this store's cipher and, on the first open with a key, the sealing of every row
        stored in plaintext before (resumable: a rerun continues), then compaction."""
        with self._conn() as c:
            state = (self._read_meta(c) or {}).get("personal_fields", "plain")
        self.sealer = FieldSealer(self.cipher, lenient=state != "sealed")
        if not self.sealer.sealed or self.cipher.plaintext_ok or state == "sealed":
            return  # plaintext mode, `keys encrypt` (it seals them), or done already
        sealed = self.reseal_personal()
        with self._tx() as c:
            c.execute(PUT_META, ("personal_fields", "sealed"))
        self.sealer = FieldSealer(self.cipher)
        self._compact()
        self._after_sealing()
        log.info("personal fields sealed: %d rows", sealed)

    # table -> (its key columns, sealed text columns, sealed byte columns); the first text
    # column tells whether a row is sealed under the primary key yet (sealing.PREFIX_CHARS).
    _SEALED_TABLES: ClassVar[
        dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]
    ] = {
        "identities": (("id",), ("display_name", "external_ref", "metadata"), ()),
        "payments": (("binding_id",), ("payment_ref",), ()),
        "decisions": (("gate_id", "event_id"), ("inputs", "input_digest"), ("payload",)),
        "audit": (("id",), ("detail",), ()),
        "plates": (("plate", "identity_id"), ("plate_text",), ()),
        "sightings": (("plate", "at"), ("gate_id", "direction", "plate_text"), ()),
        "templates": (("label",), ("source",), ()),
    }

    def _unsealed(self, table: str) -> str:
        marker = self._SEALED_TABLES[table][1][0]
        return f"FROM {table} WHERE substr({marker}, 1, {PREFIX_CHARS}) <> ?"

    def reseal_personal(
        self, batch: int = 1000, progress: Callable[[int], None] | None = None
    ) -> int:
        """Seal every personal field under the primary key (plaintext rows, or rows of the
        key being retired), `batch` rows per transaction; plate indexes are recomputed.
        Rows done are skipped, so a rerun after a crash continues. Returns rows rewritten."""
        assert self.sealer.sealed
        total = 0
        for table in self._SEALED_TABLES:
            with self._conn() as c:
                left = int(
                    c.execute(
                        f"SELECT COUNT(*) {self._unsealed(table)}", (self.sealer.prefix,)
                    ).fetchone()[0]
                )
            for _ in range(left // batch + 2):  # bounded: each batch seals what it reads
                with self._tx() as c:
                    n = self._reseal_batch(c, table, batch)
                self._after_delete()  # old page images leave the WAL
                total += n
                if progress is not None and n:
                    progress(total)
                if n < batch:
                    break
        return total

    def _reseal_batch(self, c: Connection, table: str, batch: int) -> int:
        keys_, texts, blobs = self._SEALED_TABLES[table]
        rows = c.execute(
            f"SELECT {', '.join((*keys_, *texts, *blobs))} {self._unsealed(table)} LIMIT ?",
            (self.sealer.prefix, int(batch)),
        ).fetchall()
        movers = {"plates": self._reseal_plate, "sightings": self._reseal_sighting}
        reseal = movers.get(table, self._reseal_row)
        # Only a plate's index moves (bindings, sightings); other keys are never written (an
        # identity column such as PostgreSQL's audit.id may not be).
        moved = keys_ if table in movers else ()
        sets = ", ".join(f"{col} = ?" for col in (*moved, *texts, *blobs))
        where = " AND ".join(f"{col} = ?" for col in (*keys_, texts[0]))
        for r in rows:
            key, values = tuple(r[: len(keys_)]), list(r[len(keys_) :])
            new_key, new_values = reseal(table, key, values)
            c.execute(
                f"UPDATE {table} SET {sets} WHERE {where}",
                (*(new_key if moved else ()), *new_values, *key, values[0]),
            )
        return len(rows)

    def _reseal_row(
        self, table: str, key: tuple[Any, ...], values: list[Any]
    ) -> tuple[tuple[Any, ...], list[Any]]:
        """A row whose key stays: each field opened and sealed again under the primary key."""
        _, texts, blobs = self._SEALED_TABLES[table]
        out: list[Any] = []
        for value, col in zip(values, (*texts, *blobs), strict=True):
            where = f"{table}.{col}"
            if col in texts:
                out.append(self.sealer.seal(self.sealer.open(value, where, key), where, key))
            else:
                out.append(
                    self.sealer.seal_bytes(self.sealer.open_bytes(value, where, key), where, key)
                )
        return key, out

    def _reseal_plate(
        self, table: str, key: tuple[Any, ...], values: list[Any]
    ) -> tuple[tuple[Any, ...], list[Any]]:
        """A binding: its index under the primary key, and its plate sealed beside it."""
        blind, identity_id = key
        text = self._plate_text(identity_id, blind, values[0])
        new = self.sealer.blind(text)
        return (new, identity_id), [self.sealer.seal(text, "plates.plate_text", (identity_id, new))]

    def _reseal_sighting(
        self, table: str, key: tuple[Any, ...], values: list[Any]
    ) -> tuple[tuple[Any, ...], list[Any]]:
        """A sighting: its plate's index under the primary key; gate, direction and plate
        sealed under the new row identity (index and time)."""
        blind, at = key
        old = (blind, float(at))
        gate_id = self.sealer.open(values[0], "sightings.gate_id", old)
        direction = self.sealer.open(values[1], "sightings.direction", old)
        text = self.sealer.open(values[2] or blind, "sightings.plate_text", old)
        new = self.sealer.blind(text)
        aad = (new, float(at))
        sealed = [
            self.sealer.seal(v, f"sightings.{col}", aad)
            for v, col in ((gate_id, "gate_id"), (direction, "direction"), (text, "plate_text"))
        ]
        return (new, at), sealed

    # --- re-keying (recognizer keys encrypt|rotate; see rekey.py) ------------------------------

    def key_state(self) -> keys.KeyState:
        with self._conn() as c:
            state = keys.state_of(self._read_meta(c))
        assert state is not None
        return state

    def begin_rekey(self, key_id: str, kcv: str) -> None:
        """Record the key being moved to, before any template is sealed with it."""
        with self._tx() as c:
            c.executemany(
                PUT_META,
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
                plain = self.cipher.decrypt(bytes(row[4]), template_aad(*row[:3]))
                blob = self.cipher.encrypt(plain, template_aad(*row[:3]))
                c.execute("UPDATE templates SET vector = ? WHERE label = ?", (blob, row[0]))
                rewritten += 1
        self._after_delete()  # the old blobs' page images leave the WAL
        return (int(rows[-1][0]) if rows else 0), rewritten

    def finish_rekey(self) -> int:
        """Make the pending key the store's key, if every template and personal field is
        sealed with it. Returns how many rows are not (then nothing changes)."""
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
            left += sum(
                int(
                    c.execute(
                        f"SELECT COUNT(*) {self._unsealed(t)}", (self.sealer.prefix,)
                    ).fetchone()[0]
                )
                for t in self._SEALED_TABLES
            )
            if left:
                return left
            record = keys.records(keys.SCHEME_AES, state.pending_key_id, state.pending_kcv)
            c.executemany(PUT_META, (*record.items(), ("personal_fields", "sealed")))
            c.execute("DELETE FROM meta WHERE key IN ('pending_key_id', 'pending_kcv')")
        self._compact()  # the retired key's (or plaintext) pages go
        return 0
