"""The storage contract: what every adapter behind `recognizer.store.ports.Store` must do.

Parametrised over adapters: the embedded SQLite store (file and in-memory, plaintext and
encrypted) and PostgreSQL (plaintext and encrypted), on a real server the tests start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from recognizer.errors import AlreadyExists, NotFound
from recognizer.store.crypto import AesGcmCipher
from recognizer.store.ports import Store
from recognizer.store.postgres import PostgresStore
from recognizer.store.rows import AuditEntry, DecisionRow, SightingMoved, SightingRow
from recognizer.store.sqlite import SqliteStore

MODEL = "contract-model"
DIM = 8

KEY = bytes(range(32))

# Each adapter from (a scratch folder, a new PostgreSQL database's URL or "").
ADAPTERS: dict[str, Callable[[Path, str], Store]] = {
    "sqlite-file": lambda tmp, url: SqliteStore(tmp / "recognizer.db"),
    "sqlite-memory": lambda tmp, url: SqliteStore(":memory:"),
    "sqlite-encrypted": lambda tmp, url: SqliteStore(
        tmp / "recognizer.db", cipher=AesGcmCipher(KEY)
    ),
    "postgres": lambda tmp, url: PostgresStore(url),
    "postgres-encrypted": lambda tmp, url: PostgresStore(url, cipher=AesGcmCipher(KEY)),
}


@pytest.fixture(params=sorted(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("pg_url") if request.param.startswith("postgres") else ""
    s = ADAPTERS[request.param](tmp_path, url)
    yield s
    s.close()


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def admin(action: str, target: str = "") -> AuditEntry:
    return AuditEntry("admin", action, target, {})


def test_the_adapter_satisfies_every_port(store: Store) -> None:
    assert isinstance(store, Store) and store.store_id


def test_identities(store: Store) -> None:
    ids = [store.create_identity(f"p{k}", external_ref=f"e{k}").id for k in range(5)]
    assert store.count_identities() == 5
    assert store.get_identity(ids[0]).display_name == "p0"
    first = store.list_identities(3)
    rest = store.list_identities(3, after=first[-1].id)
    assert [r.id for r in first + rest] == sorted(ids)
    store.delete_identity(ids[0])
    assert store.count_identities() == 4
    with pytest.raises(NotFound):
        store.get_identity(ids[0])
    with pytest.raises(NotFound):
        store.delete_identity(ids[0])


def test_templates_and_the_change_log(store: Store) -> None:
    who = store.create_identity("t").id
    start = store.current_seq()
    vectors = unit(3)
    rows = store.add_templates(who, vectors, MODEL)
    labels = [r.label for r in rows]
    assert labels == sorted(labels) and store.template_labels(who) == labels
    got = np.stack([r.vector for r in store.templates(who, MODEL)])
    np.testing.assert_allclose(got, vectors, atol=1e-6)
    assert store.count_templates(MODEL) == 3 and store.max_templates_per_identity() == 3
    assert list(store.labels_for_model(MODEL)) == labels
    found, vecs = store.vectors_for_labels([labels[1], 10**9])
    assert list(found) == [labels[1]] and vecs.shape == (1, DIM)
    assert store.identity_for_labels(labels) == dict.fromkeys(labels, who)
    assert store.remove_template(who, labels[0]) == 2
    assert store.max_templates_per_identity() == 2  # kept with the change, not scanned
    with pytest.raises(NotFound):
        store.remove_template(who, labels[0])
    store.delete_identity(who)
    changes = store.changes_since(start, MODEL)
    assert [c.op for c in changes] == ["add"] * 3 + ["remove"] * 3
    # Positions never go back (one transaction's changes may share one), and once settled
    # the log has nothing after current_seq().
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and store.current_seq() >= seqs[-1]
    assert store.changes_since(store.current_seq(), MODEL) == []
    assert store.backlog(start, MODEL)[0] == 6 and store.backlog(seqs[-1], MODEL)[0] == 0
    assert sorted(c.label for c in changes if c.op == "remove") == labels
    chunks = list(store.iter_templates(MODEL))
    assert chunks == []


def test_bindings(store: Store) -> None:
    a, b = store.create_identity("a").id, store.create_identity("b").id
    store.bind_plate(a, "京A12345")
    store.bind_plate(a, "京A12345")  # idempotent for the holder
    with pytest.raises(AlreadyExists):
        store.bind_plate(b, "京A12345")
    store.bind_plate(b, "京A12345", allow_shared=True)
    assert store.identities_for_plate("京A12345") == [a, b] and store.plates_for(a) == ["京A12345"]
    store.unbind_plate(b, "京A12345")
    with pytest.raises(NotFound):
        store.unbind_plate(b, "京A12345")
    pay = store.bind_payment(a, "ref-1", "plate_and_face", 500)
    assert [p.binding_id for p in store.payments_for(a)] == [pay.binding_id]
    store.unbind_payment(a, pay.binding_id)
    assert store.payments_for(a) == []
    with pytest.raises(NotFound):
        store.bind_payment("nobody", "ref", "plate", 0)


def test_decisions_are_stored_once_and_carry_their_sighting(store: Store) -> None:
    first = DecisionRow("d1", "G", "E", "allow", b"one", created_at=90.0, input_digest="x")
    assert store.put_decision(first, sighting=("京A12345", "G", "entry", 100.0)) == first
    again = DecisionRow("d2", "G", "E", "deny", b"two", created_at=95.0, input_digest="y")
    assert store.put_decision(again, sighting=("京B00000", "G", "entry", 200.0)) == first
    assert store.get_decision("G", "E") == first and store.get_decision("G", "F") is None
    sighting = store.last_sighting("京A12345")
    assert sighting is not None and sighting.at == 100.0
    assert store.last_sighting("京B00000") is None  # the losing write recorded nothing
    store.put_decision(DecisionRow("d3", "G", "E2", "deny", b"3", created_at=50.0))
    assert next(d.decision_id for d in store.list_decisions(gate_id="G")) == "d1"
    assert store.purge_decisions(60.0) == 1
    assert store.purge_sightings(150.0) == 0  # the plate's only sighting is its latest


def test_purging_sightings_keeps_each_plates_latest(store: Store) -> None:
    """Issue 32: retention deletes old sightings but never a plate's latest, so a car that
    entered long ago and is still parked keeps its entry (by time, not by direction)."""
    for plate, direction, at in [
        ("京A11111", "exit", 10.0),
        ("京A11111", "entry", 20.0),  # parked since: the latest, kept however old
        ("京B22222", "entry", 10.0),
        ("京B22222", "exit", 30.0),
        ("京B22222", "entry", 200.0),  # recent: kept
        ("京C33333", "unspecified", 300.0),
    ]:
        store.record_sighting(plate, "G", direction, at)
    assert store.purge_sightings(100.0) == 3
    assert store.last_sighting("京A11111") == SightingRow("京A11111", "G", "entry", 20.0, "entry")
    assert store.last_sighting("京B22222") == SightingRow("京B22222", "G", "entry", 200.0, "entry")
    assert store.purge_sightings(1000.0) == 0  # every plate is down to its latest
    assert store.last_sighting("京C33333") is not None


def test_the_audit_lists_by_time_actor_and_target_in_pages(store: Store) -> None:
    store.audit_all(
        [AuditEntry(f"key-{i % 2}", "read_personal", f"id-{i % 3}", {"n": i}) for i in range(12)]
    )
    rows = store.list_audit(1000)
    assert [r.detail["n"] for r in rows] == list(range(11, -1, -1))  # newest first
    assert {r.detail["n"] for r in store.list_audit(1000, actor="key-1")} == {1, 3, 5, 7, 9, 11}
    assert {r.detail["n"] for r in store.list_audit(1000, target="id-0")} == {0, 3, 6, 9}
    both = store.list_audit(1000, actor="key-0", target="id-0")
    assert {r.detail["n"] for r in both} == {0, 6}
    first = store.list_audit(5)
    second = store.list_audit(5, before_id=first[-1].id)
    assert [r.detail["n"] for r in first + second] == list(range(11, 1, -1))
    middle = rows[6].at
    assert all(r.at >= middle for r in store.list_audit(1000, since=middle))
    assert all(r.at < middle for r in store.list_audit(1000, until=middle))
    assert store.list_audit(1000, since=middle, until=middle) == []
    assert store.list_audit(1000, actor="nobody") == []


def test_a_decision_made_from_a_sighting_that_moved_is_not_stored(store: Store) -> None:
    """Issue 26: `seen` is the plate's last sighting the decision was made from. When another
    decision for the plate was recorded since, nothing is stored and SightingMoved carries
    the sighting that stands; a decision made from it is then stored."""
    plate = "京A54321"

    def row(n: int) -> DecisionRow:
        return DecisionRow(f"d{n}", "G", f"E{n}", "allow", b"x", created_at=float(n))

    assert store.put_decision(row(1), sighting=(plate, "G", "entry", 1.0), seen=None) == row(1)
    stood = store.last_sighting(plate)
    assert stood == SightingRow(plate, "G", "entry", 1.0, "entry")
    with pytest.raises(SightingMoved) as moved:
        store.put_decision(row(2), sighting=(plate, "G", "entry", 2.0), seen=None)
    assert moved.value.last == stood
    assert store.get_decision("G", "E2") is None and store.last_sighting(plate) == stood
    assert store.put_decision(row(2), sighting=(plate, "G", "entry", 2.0), seen=stood) == row(2)
    # The same event already stored (another node decided it): its row stands, moved or not.
    assert store.put_decision(row(2), sighting=(plate, "G", "exit", 3.0), seen=stood) == row(2)
    assert store.put_decision(row(1), sighting=(plate, "G", "exit", 3.0), seen=None) == row(1)
    # Without `seen` nothing is checked, as before.
    store.put_decision(row(4), sighting=(plate, "G", "exit", 4.0))
    assert store.last_sighting(plate) == SightingRow(plate, "G", "exit", 4.0, "exit")
    # A sighting without a direction is the last one, and presence is still the last named.
    store.put_decision(row(5), sighting=(plate, "G", "unspecified", 5.0))
    assert store.last_sighting(plate) == SightingRow(plate, "G", "unspecified", 5.0, "exit")
    store.put_decision(row(6), sighting=("京A00006", "G", "unspecified", 6.0))
    assert store.last_sighting("京A00006") == SightingRow("京A00006", "G", "unspecified", 6.0, "")


def test_a_change_and_its_audit_record_commit_together(store: Store) -> None:
    before = len(store.list_audit(1000))
    who = store.create_identity("x", audit=admin("create_identity")).id
    with pytest.raises(NotFound):
        store.bind_plate("nobody", "京A12345", audit=admin("bind_plate", "nobody"))
    with pytest.raises(AlreadyExists):
        other = store.create_identity("y").id
        store.bind_plate(who, "京A12345")
        store.bind_plate(other, "京A12345", audit=admin("bind_plate", other))
    store.add_templates(who, unit(1), MODEL, audit=admin("enroll_face", who))
    store.delete_identity(who, audit=admin("delete_identity", who))
    actions = [r.action for r in store.list_audit(1000)[: len(store.list_audit(1000)) - before]]
    assert sorted(actions) == ["create_identity", "delete_identity", "enroll_face"]
    created = next(r for r in store.list_audit(1000) if r.action == "create_identity")
    assert created.target == who  # an empty target becomes the new identity's id
