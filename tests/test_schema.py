"""One schema, two databases: a new store of each adapter ends with the same tables, columns
and indexes, and a shipped migration step keeps computing what it computed when it shipped."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from recognizer.gate.inputs import legacy_digest
from recognizer.store import schema
from recognizer.store.postgres import PostgresStore
from recognizer.store.sqlite import SqliteStore


def _sqlite_shape(path: Path) -> dict[str, object]:
    import sqlite3

    c = sqlite3.connect(str(path))
    try:
        tables = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        columns = {t: sorted(r[1] for r in c.execute(f"PRAGMA table_info({t})")) for t in tables}
        indexes = sorted(
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        )
    finally:
        c.close()
    return {"columns": columns, "indexes": indexes}


def _postgres_shape(url: str) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        ).fetchall()
        indexes = sorted(
            r[0]
            for r in c.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'"
            )
        )
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return {"columns": {t: sorted(c) for t, c in sorted(columns.items())}, "indexes": indexes}


def test_both_adapters_migrate_a_new_database_to_the_same_tables_columns_and_indexes(
    tmp_path: Path, pg_url: str
) -> None:
    SqliteStore(tmp_path / "recognizer.db").close()
    PostgresStore(pg_url, pool_size=1).close()
    sqlite_shape = _sqlite_shape(tmp_path / "recognizer.db")
    pg_shape = _postgres_shape(pg_url)
    # PostgreSQL's change log also records the writer's transaction and the time (followers
    # read by them); everything else is the one schema.
    pg_columns = pg_shape["columns"]
    assert isinstance(pg_columns, dict)
    pg_columns["changes"] = [c for c in pg_columns["changes"] if c not in ("xid", "at")]
    pg_indexes = pg_shape["indexes"]
    assert isinstance(pg_indexes, list)
    pg_shape["indexes"] = [i for i in pg_indexes if i != "changes_xid"]
    assert sqlite_shape == pg_shape
    assert "decisions" in sqlite_shape["columns"]  # type: ignore[operator]


def test_every_version_after_each_baseline_has_a_step() -> None:
    assert sorted(schema.SQLITE_MIGRATIONS) == list(range(2, schema.SCHEMA_VERSION + 1))
    assert sorted(schema.POSTGRES_MIGRATIONS) == list(
        range(schema.POSTGRES_BASELINE_VERSION + 1, schema.SCHEMA_VERSION + 1)
    )


@pytest.mark.parametrize(
    "recorded",
    [
        {},
        {"vehicle_image_sha256": "ab" * 32, "plate_text": "皖A12345", "amount_minor": 500},
        {
            "face_image_sha256": "cd" * 32,
            "currency": "CNY",
            "direction": "entry",
            "observed_at": 1700000000.25,
        },
    ],
)
def test_the_frozen_digest_of_the_version_2_step_equals_the_live_legacy_digest(
    recorded: dict[str, object],
) -> None:
    frozen = schema._frozen_legacy_digest("G-1", "E-1", recorded)
    assert frozen == legacy_digest("G-1", "E-1", recorded)
    assert frozen != schema._frozen_legacy_digest("G-1", "E-2", recorded)
