"""The schema of both adapters, in one place: each database's baseline DDL and the steps
that bring it to SCHEMA_VERSION.

SQLite starts at version 1 (release 0.1.0's tables); PostgreSQL, added later, starts at
version 2. Every later version is one step per adapter, append only: a shipped step is never
edited, and it holds (frozen) any code it needs, so that changing live code cannot change
what an old database upgrades to. `tests/test_schema.py` migrates a new database of each kind
and checks that they end with the same tables, columns and indexes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from recognizer.store.sql import PUT_META, Connection

SCHEMA_VERSION = 6
POSTGRES_BASELINE_VERSION = 2

# Version 1 as release 0.1.0 created it; later versions are the steps below, applied in order
# on every open (a new database runs them too, so there is one path to each version).
SQLITE_BASELINE = """
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

# The schema as of version 2, the first version PostgreSQL runs (SQLite reached it through
# release 0.1.0's version 1 and the step to 2).
POSTGRES_BASELINE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    external_ref TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE templates (
    label BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- a sequence: never reused
    identity_id TEXT NOT NULL REFERENCES identities(id),
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BYTEA NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    quality DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX templates_identity ON templates(identity_id, model);
CREATE INDEX templates_model ON templates(model, label);
CREATE TABLE plates (
    plate TEXT NOT NULL,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (plate, identity_id)
);
CREATE INDEX plates_identity ON plates(identity_id);
CREATE TABLE payments (
    binding_id TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    payment_ref TEXT NOT NULL,
    factors TEXT NOT NULL,
    ceiling_minor BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX payments_identity ON payments(identity_id);
CREATE TABLE changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    label BIGINT NOT NULL,
    model TEXT NOT NULL,
    xid XID8 NOT NULL DEFAULT pg_current_xact_id(),  -- the writer: see the module docstring
    at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
CREATE INDEX changes_xid ON changes(xid, seq);
CREATE TABLE decisions (
    decision_id TEXT NOT NULL,
    gate_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    identity_id TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    payload BYTEA NOT NULL,
    inputs TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    input_digest TEXT NOT NULL DEFAULT '',
    UNIQUE (gate_id, event_id)
);
CREATE INDEX decisions_created ON decisions(created_at);
CREATE INDEX decisions_identity ON decisions(identity_id, created_at);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor_role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE sightings (
    plate TEXT NOT NULL,
    gate_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX sightings_plate ON sightings(plate, at);
"""

Migration = Callable[[Any], None]


def _frozen_legacy_digest(gate_id: str, event_id: str, inputs: dict[str, Any]) -> str:
    """The input digest ("gate-inputs.v1") of a decision recorded by release 0.1.0 (one frame
    per kind, whole-second observation times), as the gate computed it when version 2
    shipped. Frozen here: `gate.inputs.legacy_digest` is the live twin, and a test keeps them
    equal for as long as the live one exists."""
    vehicle = inputs.get("vehicle_image_sha256", "")
    face = inputs.get("face_image_sha256", "")
    fields = {
        "gate_id": gate_id,
        "event_id": event_id,
        "vehicle_sha256": [vehicle] if vehicle else [],
        "face_sha256": [face] if face else [],
        "plate_text": str(inputs.get("plate_text", "")),
        "amount_minor": int(inputs.get("amount_minor", 0)),
        "currency": str(inputs.get("currency", "")),
        "direction": str(inputs.get("direction", "unspecified")),
        "observed_at_ns": round(float(inputs.get("observed_at", 0) or 0) * 1e9),
    }
    body = json.dumps(
        ["gate-inputs.v1", fields], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def v2_decision_digest(c: Connection) -> None:
    """Decisions keep a digest of their inputs, so a replay can prove the inputs are the same.
    Rows of 0.1.0 get the digest of what they recorded. (SQLite only: PostgreSQL starts at 2.)"""
    c.execute("ALTER TABLE decisions ADD COLUMN input_digest TEXT NOT NULL DEFAULT ''")
    rows = c.execute("SELECT rowid, gate_id, event_id, inputs FROM decisions").fetchall()
    for rowid, gate_id, event_id, inputs in rows:
        digest = _frozen_legacy_digest(gate_id, event_id, json.loads(inputs or "{}"))
        c.execute("UPDATE decisions SET input_digest = ? WHERE rowid = ?", (digest, rowid))


def v3_template_counts(c: Connection) -> None:
    """Schema 3: each identity keeps its template count (indexed) and meta the identity
    count, written in the transactions that change them. The gate's 1:N estimate reads both
    on every search: a scan of every template took 1.6 s at 1M templates on PostgreSQL."""
    c.execute("ALTER TABLE identities ADD COLUMN templates INTEGER NOT NULL DEFAULT 0")
    c.execute(
        "UPDATE identities SET templates ="
        " (SELECT COUNT(*) FROM templates WHERE templates.identity_id = identities.id)"
    )
    c.execute("CREATE INDEX identities_templates ON identities(templates)")
    n = c.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
    c.execute(PUT_META, ("identities", str(int(n))))


def v4_sealed_fields(c: Connection) -> None:
    """Schema 4: personal fields may be sealed (store/sealing.py). A plate's column then holds
    its blind index, and the sealed plate text goes beside it (`plate_text`, in bindings and
    sightings) so that a key rotation can recompute the index. Rows already stored stay as
    they are, and meta `personal_fields` says so ("plain"): the first open with a template
    key seals them (SqlStore.seal_personal_fields), then says "sealed"."""
    c.execute("ALTER TABLE plates ADD COLUMN plate_text TEXT NOT NULL DEFAULT ''")
    c.execute("ALTER TABLE sightings ADD COLUMN plate_text TEXT NOT NULL DEFAULT ''")
    # Covering indexes for the gate's two lookups per event, so that neither reads the (now
    # wider) table rows: a plate's holders in binding order, and its newest sightings.
    c.execute("CREATE INDEX plates_lookup ON plates(plate, created_at, identity_id)")
    c.execute("DROP INDEX sightings_plate")
    c.execute("CREATE INDEX sightings_plate ON sightings(plate, at, gate_id, direction)")
    c.execute(PUT_META, ("personal_fields", "plain"))


def v5_decision_lookup(c: Connection) -> None:
    """Schema 5: decisions are indexed by decision_id. A WatchDecisions stream that resumes
    after a decision looks it up by id; without the index that read every decision row."""
    c.execute("CREATE INDEX decisions_decision ON decisions(decision_id)")


def v6_sealed_sources(c: Connection) -> None:
    """Schema 6: a template's `source` (free text the enrolling client sends, which may name
    the person) is sealed with the other personal fields. A store whose fields were sealed
    already is marked as not yet sealed again, so the next start with its key seals the
    sources (the rows sealed before are skipped: the sealing is resumable)."""
    c.execute("UPDATE meta SET value = 'plain' WHERE key = 'personal_fields'")


# version -> the step that brings version-1 to it, per adapter. Append only.
SQLITE_MIGRATIONS: dict[int, Migration] = {
    2: v2_decision_digest,
    3: v3_template_counts,
    4: v4_sealed_fields,
    5: v5_decision_lookup,
    6: v6_sealed_sources,
}
POSTGRES_MIGRATIONS: dict[int, Migration] = {
    3: v3_template_counts,
    4: v4_sealed_fields,
    5: v5_decision_lookup,
    6: v6_sealed_sources,
}
assert max(SQLITE_MIGRATIONS) == max(POSTGRES_MIGRATIONS) == SCHEMA_VERSION
