"""Personal fields at rest (store/sealing.py): with a template key, names, references, plates,
decisions, audit details and where each car was seen are sealed, plates are found through a
blind index, a sealed value moved to another row is refused, a store of the previous release
is sealed on its first boot with its key, and a development store without a key stays as it
was. The end-to-end variant through the API is tests/test_sealed_fields_e2e.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from recognizer.errors import AlreadyExists
from recognizer.store.crypto import AesGcmCipher, NullCipher, TemplateKeyError, blind_index_key
from recognizer.store.postgres import PostgresStore
from recognizer.store.rows import AuditEntry, DecisionRow
from recognizer.store.schema import SCHEMA_VERSION
from recognizer.store.sealing import SealedFieldError
from recognizer.store.sql import SqlStore
from recognizer.store.sqlite import SqliteStore
from tests.keyfixtures import snapshot
from tests.personal import needles, scan

KEY, OTHER = bytes(range(32)), bytes(range(5, 37))
RELEASE = Path(__file__).parent / "data" / "release-ce6c065"
PEOPLE = [("李娜", "京A12345", "pay-lina-7731"), ("Ana Müller", "沪B67890", "pay-ana-0002")]


def fill(store: SqlStore) -> list[str]:
    """Two people with every personal field the store keeps; their ids."""
    ids = []
    for k, (name, plate, ref) in enumerate(PEOPLE):
        ident = store.create_identity(name, external_ref=f"crm-{name}", metadata={"note": name})
        audit = AuditEntry("admin", "bind_plate", ident.id, {"plate": plate})
        store.bind_plate(ident.id, plate, audit=audit)
        store.bind_payment(ident.id, ref, "plate_and_face", 500)
        for n, direction in enumerate(("entry", "unspecified")):
            at = 1000.0 + 10 * k + n
            payload = json.dumps({"plate": plate, "payment_ref": ref}, ensure_ascii=False)
            store.put_decision(
                DecisionRow(
                    f"d{k}{n}",
                    "G-1",
                    f"e{k}{n}",
                    "allow",
                    payload.encode(),
                    ident.id,
                    json.dumps({"plate_text": plate}, ensure_ascii=False),
                    at,
                    "f" * 64,
                ),
                sighting=(plate, f"G-{direction}", direction, at),
            )
        ids.append(ident.id)
    return ids


def check_reads(store: SqlStore, ids: list[str]) -> None:
    for k, (name, plate, ref) in enumerate(PEOPLE):
        ident = store.get_identity(ids[k])
        assert (ident.display_name, ident.external_ref, ident.metadata) == (
            name,
            f"crm-{name}",
            {"note": name},
        )
        assert store.plates_for(ids[k]) == [plate]
        assert store.identities_for_plate(plate) == [ids[k]]
        assert [p.payment_ref for p in store.payments_for(ids[k])] == [ref]
        holders = store.plate_holders([plate, "京Z00000"])
        assert list(holders) == [plate] and holders[plate][0].payments[0].payment_ref == ref
        last = store.last_sighting(plate)
        assert last is not None
        assert (last.plate, last.gate_id, last.direction, last.presence) == (
            plate,
            "G-unspecified",
            "unspecified",
            "entry",  # the newest sighting that named a direction
        )
        row = store.get_decision("G-1", f"e{k}0")
        assert row is not None and json.loads(row.payload)["payment_ref"] == ref
        assert json.loads(row.inputs) == {"plate_text": plate} and row.input_digest == "f" * 64
    details = [a.detail for a in store.list_audit() if a.action == "bind_plate"]
    assert sorted(d["plate"] for d in details) == sorted(p for _, p, _ in PEOPLE)


PATS = needles([p[0] for p in PEOPLE], [p[1] for p in PEOPLE], [p[2] for p in PEOPLE])


def sqlite_store(tmp: Path, cipher: AesGcmCipher | NullCipher) -> SqliteStore:
    return SqliteStore(tmp / "recognizer.db", cipher)


# --- at rest --------------------------------------------------------------------------------


def test_a_sealed_sqlite_store_holds_no_personal_string(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    ids = fill(store)
    check_reads(store, ids)
    assert scan([tmp_path], PATS) == []  # the database and its WAL, while open
    store.close()
    assert scan([tmp_path], PATS) == []
    again = sqlite_store(tmp_path, AesGcmCipher(KEY))
    check_reads(again, ids)
    again.close()


def test_a_sealed_postgres_store_holds_no_personal_string(pg_url: str, tmp_path: Path) -> None:
    from recognizer.store.postgres import _client_tool

    store = PostgresStore(pg_url, AesGcmCipher(KEY))
    try:
        ids = fill(store)
        check_reads(store, ids)
        dump = subprocess.run(
            [_client_tool("pg_dump"), "--format=plain", pg_url],
            check=True,
            capture_output=True,
        ).stdout
        assert len(dump) > 1000 and b"CREATE TABLE" in dump
        assert [h for raw, h in PATS.items() if raw in dump] == []
    finally:
        store.close()


def test_without_a_key_fields_stay_as_they_are(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path, NullCipher())
    ids = fill(store)
    check_reads(store, ids)
    store.close()
    with sqlite3.connect(tmp_path / "recognizer.db") as c:
        assert (
            c.execute("SELECT display_name FROM identities WHERE id = ?", (ids[0],)).fetchone()[0]
            == (PEOPLE[0][0])
        )
        assert (
            c.execute("SELECT plate FROM plates WHERE identity_id = ?", (ids[0],)).fetchone()[0]
            == (PEOPLE[0][1])
        )
        gates = {r[0] for r in c.execute("SELECT gate_id FROM sightings")}
    assert gates == {"G-entry", "G-unspecified"}


# --- the blind index ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sealed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "postgres":
        store: SqlStore = PostgresStore(request.getfixturevalue("pg_url"), AesGcmCipher(KEY))
    else:
        store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    yield store
    store.close()


def raw_rows(store: SqlStore, sql: str) -> list[tuple[object, ...]]:
    with store._conn() as c:
        return [tuple(r) for r in c.execute(sql).fetchall()]


def test_plates_are_found_through_a_keyed_blind_index(sealed: SqlStore) -> None:
    ids = fill(sealed)
    plate = PEOPLE[0][1]
    expected = hmac.digest(blind_index_key(KEY), plate.encode(), hashlib.sha256)[:16].hex()
    stored = raw_rows(sealed, f"SELECT plate FROM plates WHERE identity_id = '{ids[0]}'")
    assert stored == [(expected,)]
    # The same plate gives the same index in every table (the linkability the README states),
    # and another key gives another.
    seen = raw_rows(sealed, "SELECT DISTINCT plate FROM sightings")
    assert (expected,) in seen and len(seen) == len(PEOPLE)
    other = hmac.digest(blind_index_key(OTHER), plate.encode(), hashlib.sha256)[:16].hex()
    assert other != expected
    # Uniqueness and "already bound" through the index.
    with pytest.raises(AlreadyExists) as err:
        sealed.bind_plate(ids[1], plate)
    assert err.value.identity_id == ids[0]
    sealed.bind_plate(ids[0], plate)  # idempotent for its holder
    sealed.bind_plate(ids[1], plate, allow_shared=True)
    assert sealed.identities_for_plate(plate) == ids
    sealed.unbind_plate(ids[1], plate)
    assert sealed.identities_for_plate(plate) == [ids[0]]
    # Per-plate ordering of sightings: the newest stands, presence follows the newest that
    # named a direction.
    sealed.record_sighting(plate, "G-9", "exit", 5000.0)
    sealed.record_sighting(plate, "G-8", "entry", 4000.0)
    last = sealed.last_sighting(plate)
    assert last is not None and (last.gate_id, last.direction, last.at) == ("G-9", "exit", 5000.0)
    for n in range(12):  # more undirected sightings than a first page holds
        sealed.record_sighting(plate, "G-7", "unspecified", 6000.0 + n)
    last = sealed.last_sighting(plate)
    assert last is not None and (last.at, last.presence) == (6011.0, "exit")
    assert sealed.last_sighting("京Z00000") is None


# --- moved cells ----------------------------------------------------------------------------


SWAPS = [
    # (table, column, key column): the sealed cells of two rows are exchanged
    ("identities", "display_name", "id"),
    ("payments", "payment_ref", "binding_id"),
    ("decisions", "payload", "event_id"),
    ("decisions", "inputs", "event_id"),
    ("plates", "plate_text", "identity_id"),
    ("audit", "detail", "id"),
    ("sightings", "gate_id", "at"),
]


def reads(store: SqlStore, ids: list[str]) -> Callable[[str], object]:
    """What reads each table's sealed column, for the first person."""
    plate = PEOPLE[0][1]
    return {
        "identities": lambda: store.get_identity(ids[0]),
        "payments": lambda: store.payments_for(ids[0]),
        "decisions": lambda: store.get_decision("G-1", "e00"),
        "plates": lambda: store.plates_for(ids[0]),
        "audit": lambda: store.list_audit(),
        "sightings": lambda: store.last_sighting(plate),
    }.__getitem__  # type: ignore[return-value]


@pytest.mark.parametrize(("table", "column", "key"), SWAPS)
def test_a_sealed_value_moved_to_another_row_is_refused(
    tmp_path: Path, table: str, column: str, key: str
) -> None:
    store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    ids = fill(store)
    store.close()
    with sqlite3.connect(tmp_path / "recognizer.db") as c:
        where = {
            "decisions": " WHERE event_id IN ('e00', 'e10')",
            "sightings": " WHERE at IN (1000.0, 1001.0)",
        }
        rows = c.execute(
            f"SELECT {key}, {column} FROM {table}{where.get(table, '')} ORDER BY rowid"
        ).fetchall()
        (k1, v1), (k2, v2) = rows[0], rows[1]
        c.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (v2, k1))
        c.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (v1, k2))
    store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    try:
        with pytest.raises(SealedFieldError) as err:
            reads(store, ids)(table)()
        assert err.value.reason == "SEALED_FIELD_MOVED" and column in err.value.message
    finally:
        store.close()


def test_a_moved_sighting_is_refused_by_the_store_that_wrote_and_read_it(tmp_path: Path) -> None:
    """The store remembers the sightings it sealed and read (no AES-GCM on the gate's hot
    path), keyed by the sealed values and the row: values moved while it runs still fail."""
    store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    try:
        (_, p1, _), (_, p2, _) = PEOPLE
        store.record_sighting(p1, "G-1", "entry", 1000.0)
        store.record_sighting(p2, "G-2", "exit", 1001.0)
        for _ in range(2):  # written (remembered), then read (remembered)
            last = store.last_sighting(p1)
            assert last is not None and (last.gate_id, last.presence) == ("G-1", "entry")
        with sqlite3.connect(tmp_path / "recognizer.db") as c:
            (v1, d1), (v2, d2) = c.execute(
                "SELECT gate_id, direction FROM sightings ORDER BY at"
            ).fetchall()
            c.execute("UPDATE sightings SET gate_id = ?, direction = ? WHERE at = 1000.0", (v2, d2))
            c.execute("UPDATE sightings SET gate_id = ?, direction = ? WHERE at = 1001.0", (v1, d1))
        for plate in (p1, p2):
            with pytest.raises(SealedFieldError) as err:
                store.last_sighting(plate)
            assert err.value.reason == "SEALED_FIELD_MOVED"
    finally:
        store.close()


# --- the previous release -------------------------------------------------------------------


def release_copy(kind: str, dest: Path) -> tuple[Path, list[str]]:
    shutil.copytree(RELEASE / kind, dest)
    return dest, json.loads((RELEASE / f"{kind}-ids.json").read_text())


def release_pats() -> dict[bytes, str]:
    p = json.loads((RELEASE / "personal.json").read_text(encoding="utf-8"))
    return needles(p["names"], p["plates"], p["payment_refs"])


def test_the_fixture_is_the_previous_release_with_plaintext_fields(tmp_path: Path) -> None:
    # A copy, never the committed files: opening those in place leaves -shm/-wal beside them
    # until the connection is collected, and a copy or scan of the directory then (here or in
    # another xdist worker) saw them vanish mid-read.
    data, _ = release_copy("encrypted", tmp_path / "data")
    with closing(sqlite3.connect(data / "recognizer.db")) as c:
        # Schema 3: the last before personal fields were sealed (schema 4).
        assert int(c.execute("PRAGMA user_version").fetchone()[0]) == 3 < SCHEMA_VERSION
    assert scan([RELEASE / "encrypted"], release_pats())  # what the upgrade must remove


def test_the_previous_release_is_sealed_on_its_first_boot_with_its_key(tmp_path: Path) -> None:
    data, ids = release_copy("encrypted", tmp_path / "data")
    store = SqliteStore(data / "recognizer.db", AesGcmCipher(KEY))
    try:
        assert store.schema_upgraded_from == 3
        people = json.loads((RELEASE / "personal.json").read_text(encoding="utf-8"))
        for k, identity_id in enumerate(ids):
            assert store.get_identity(identity_id).display_name == people["names"][k]
            assert store.plates_for(identity_id) == [people["plates"][k]]
            assert store.identities_for_plate(people["plates"][k]) == [identity_id]
            assert [p.payment_ref for p in store.payments_for(identity_id)] == [
                people["payment_refs"][k]
            ]
            row = store.get_decision("G-1", f"evt-{k}")
            assert row is not None and json.loads(row.inputs)["plate_text"] == people["plates"][k]
        last = store.last_sighting(people["plates"][0])
        assert last is not None and (last.gate_id, last.direction) == ("G-2", "exit")
        # Database, WAL, free pages and the pre-restore copy: no personal string anywhere.
        assert scan([data], release_pats()) == []
    finally:
        store.close()
    assert scan([data], release_pats()) == []
    aside = data / "pre-restore-20260101T000000"
    assert not list(aside.glob("*.faiss"))  # derived data, removed
    kept = SqliteStore(aside / "recognizer.db", AesGcmCipher(KEY))  # sealed, still restorable
    assert (
        kept.get_identity(ids[0]).display_name
        == json.loads((RELEASE / "personal.json").read_text(encoding="utf-8"))["names"][0]
    )
    kept.close()


def test_the_previous_release_upgrades_in_plaintext_without_a_key(tmp_path: Path) -> None:
    data, ids = release_copy("plain", tmp_path / "data")
    store = SqliteStore(data / "recognizer.db", NullCipher())
    try:
        assert store.schema_upgraded_from == 3
        people = json.loads((RELEASE / "personal.json").read_text(encoding="utf-8"))
        assert store.get_identity(ids[1]).display_name == people["names"][1]
        assert store.identities_for_plate(people["plates"][1]) == [ids[1]]
    finally:
        store.close()
    with sqlite3.connect(data / "recognizer.db") as c:
        assert int(c.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
        state = c.execute("SELECT value FROM meta WHERE key = 'personal_fields'").fetchone()
    assert state == ("plain",)  # as that release kept them (allow_plaintext)


def test_a_sealed_store_refuses_the_wrong_key_and_stays_unchanged(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path, AesGcmCipher(KEY))
    fill(store)
    store.close()
    before = snapshot(tmp_path)
    for cipher in (AesGcmCipher(OTHER), NullCipher()):
        with pytest.raises(TemplateKeyError):
            sqlite_store(tmp_path, cipher)
    assert snapshot(tmp_path) == before


def test_allow_plaintext_is_off_unless_set() -> None:
    from recognizer.config import load_config

    assert load_config(env={}).allow_plaintext is False
    assert load_config(env={"RECOGNIZER_ALLOW_PLAINTEXT": "true"}).allow_plaintext is True


def test_plaintext_rows_are_sealed_on_the_first_open_with_a_key(sealed: SqlStore) -> None:
    """Both adapters: rows stored in plaintext (as schema 3 kept them, in a store whose
    templates are sealed) are sealed by the next open with the key, and read back."""
    plain = [
        "INSERT INTO identities (id, display_name, external_ref, metadata, created_at)"
        " VALUES ('id-1', '张伟', 'crm-1', '{\"note\": \"张伟\"}', 1.0)",
        "INSERT INTO plates (plate, identity_id, created_at) VALUES ('京A12345', 'id-1', 2.0)",
        "INSERT INTO payments VALUES ('b-1', 'id-1', 'pay-zw-0001', 'plate', 0, 3.0)",
        "INSERT INTO decisions (decision_id, gate_id, event_id, identity_id, outcome, payload,"
        " inputs, created_at, input_digest) VALUES ('d-1', 'G-1', 'e-1', 'id-1', 'allow',"
        " 'pay-zw-0001', '{\"plate_text\": \"京A12345\"}', 4.0, 'ab')",
        "INSERT INTO sightings (plate, gate_id, direction, at) VALUES ('京A12345', 'G-1',"
        " 'entry', 5.0)",
        "INSERT INTO audit (at, actor_role, action, target, detail) VALUES (6.0, 'admin',"
        " 'bind_plate', 'id-1', '{\"plate\": \"京A12345\"}')",
        "UPDATE meta SET value = 'plain' WHERE key = 'personal_fields'",
    ]
    with sealed._tx() as c:
        for sql in plain:
            c.execute(sql.replace("'pay-zw-0001', '{", "CAST('pay-zw-0001' AS BLOB), '{")
                      if isinstance(sealed, SqliteStore) else
                      sql.replace("'pay-zw-0001', '{", "'pay-zw-0001'::bytea, '{"))  # fmt: skip
    store = (
        SqliteStore(sealed.path, AesGcmCipher(KEY))
        if isinstance(sealed, SqliteStore)
        else PostgresStore(sealed.url, AesGcmCipher(KEY))
    )
    try:
        assert store.get_identity("id-1").display_name == "张伟"
        assert store.get_identity("id-1").metadata == {"note": "张伟"}
        assert store.plates_for("id-1") == ["京A12345"]
        assert store.identities_for_plate("京A12345") == ["id-1"]
        assert [p.payment_ref for p in store.payments_for("id-1")] == ["pay-zw-0001"]
        row = store.get_decision("G-1", "e-1")
        assert row is not None and row.payload == b"pay-zw-0001"
        last = store.last_sighting("京A12345")
        assert last is not None and (last.gate_id, last.direction, last.at) == ("G-1", "entry", 5.0)
        assert store.list_audit()[0].detail == {"plate": "京A12345"}
        for table, column in (("identities", "display_name"), ("plates", "plate"),
                              ("payments", "payment_ref"), ("decisions", "inputs"),
                              ("sightings", "gate_id"), ("audit", "detail")):  # fmt: skip
            values = [str(r[0]) for r in raw_rows(store, f"SELECT {column} FROM {table}")]
            assert not any("张伟" in v or "京A12345" in v or "pay-zw" in v for v in values)
    finally:
        store.close()
