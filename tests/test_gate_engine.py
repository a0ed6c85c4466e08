"""GateEngine's idempotency and validation order, with a fake evidence gatherer and a real
in-memory store (no models): replay only for the same inputs, EVENT_ID_REUSED otherwise (also
for a caller joining a computation in flight), nothing stored for a caller whose deadline ran
out, and the replay check before the clock check and before any decode."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from recognizer import deadline
from recognizer.errors import AlreadyExists, DeadlineExceeded, InvalidArgument
from recognizer.gate import EventInputs, GateEngine, GateRequest
from recognizer.gate.evidence import Gathered
from recognizer.gate.types import Decision, GateEvent
from recognizer.policy import PolicySet
from recognizer.store.sqlite import SqliteStore
from tests.helpers import FUSION, evidence, payer, wait_until_joined

NOW = 1_800_000_000.0


class FakeGatherer:
    """Evidence for one matching payer; counts calls and can block until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def gather(self, event: GateEvent, now: float, liveness: bool = False) -> Gathered:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        return Gathered(evidence(payer(), now=now), None, None, False, None)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


@pytest.fixture()
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def engine(store: SqliteStore, gatherer: FakeGatherer, decoded: list[str]) -> GateEngine:
    def decode(data: bytes, field: str) -> np.ndarray:
        deadline.check("decode")  # as imaging.decode does
        decoded.append(field)
        return np.zeros((8, 8, 3), np.uint8)

    return GateEngine(
        evidence=gatherer,  # type: ignore[arg-type]
        store=store,
        fusion=FUSION,
        policies=PolicySet(),
        decode=decode,
        encode=encode,
        parse_plate=lambda text, field: text,
        clock=lambda: NOW,
    )


def encode(d: Decision) -> bytes:
    return f"{d.decision_id}|{d.outcome.value}".encode()


def request(**changes: object) -> GateRequest:
    inputs = EventInputs(
        gate_id="G-1",
        event_id="E-1",
        vehicle_sha256=("aa",),
        face_sha256=("bb",),
        amount_minor=100,
        currency="CNY",
    )
    inputs = dataclasses.replace(inputs, **changes)  # type: ignore[arg-type]
    return GateRequest(inputs, (b"vehicle",) if inputs.vehicle_sha256 else (), (b"face",))


def test_same_inputs_replay_other_inputs_are_refused(store: SqliteStore) -> None:
    g = FakeGatherer()
    eng = engine(store, g, [])
    first = eng.authorize(request())
    assert not first.replayed
    again = eng.authorize(request())
    assert again.replayed and again.payload == first.payload and g.calls == 1
    for change in (
        {"amount_minor": 99_999_999},
        {"face_sha256": ("cc",)},
        {"vehicle_sha256": ()},
        {"direction": "exit"},
        {"currency": "USD"},
        {"plate_text": "京A12345"},
        {"observed_at_ns": int(NOW * 1e9)},
    ):
        with pytest.raises(AlreadyExists) as err:
            eng.authorize(request(**change))
        assert err.value.reason == "EVENT_ID_REUSED"
    assert g.calls == 1 and len(store.list_decisions()) == 1


def test_replay_comes_before_the_clock_and_decoding(store: SqliteStore) -> None:
    decoded: list[str] = []
    eng = engine(store, FakeGatherer(), decoded)
    eng.authorize(request())
    assert decoded == ["vehicle_image", "face_image"]
    decoded.clear()
    eng._clock = lambda: NOW + 10 * 365 * 86400  # the server's clock moved on: still a replay
    assert eng.authorize(request()).replayed
    assert decoded == []


def test_a_joiner_with_other_inputs_is_refused_while_the_event_is_computed(
    store: SqliteStore,
) -> None:
    g = FakeGatherer()
    g.release.clear()
    eng = engine(store, g, [])
    results: list[object] = []
    owner = threading.Thread(target=lambda: results.append(eng.authorize(request())))
    owner.start()
    assert g.entered.wait(5)
    with pytest.raises(AlreadyExists) as err:
        eng.authorize(request(amount_minor=5))
    assert err.value.reason == "EVENT_ID_REUSED"
    joined: list[object] = []
    joiner = threading.Thread(target=lambda: joined.append(eng.authorize(request())))
    joiner.start()
    wait_until_joined(joiner)
    g.release.set()
    owner.join(5)
    joiner.join(5)
    assert g.calls == 1 and joined[0].replayed and joined[0].payload == results[0].payload


def test_a_caller_whose_deadline_ran_out_stores_nothing(store: SqliteStore) -> None:
    g = FakeGatherer()
    eng = engine(store, g, [])
    with deadline.running(deadline.Budget.after(-1.0)), pytest.raises(DeadlineExceeded):
        eng.authorize(request())
    assert store.list_decisions() == [] and store.last_sighting("京A12345") is None
    fresh = eng.authorize(request())  # the retry computes afresh
    assert not fresh.replayed and g.calls == 1


def test_a_cancelled_caller_stores_nothing(store: SqliteStore) -> None:
    g = FakeGatherer()
    eng = engine(store, g, [])
    cancelled = deadline.Budget(None, cancelled=lambda: True)
    with deadline.running(cancelled), pytest.raises(DeadlineExceeded) as err:
        eng.authorize(request())
    assert err.value.reason == "CANCELLED" and store.list_decisions() == []


@pytest.mark.parametrize("skew_s", [-601, 601, 10 * 365 * 86400])
def test_observed_at_far_from_the_server_clock_is_refused(
    store: SqliteStore, skew_s: float
) -> None:
    eng = engine(store, FakeGatherer(), [])
    with pytest.raises(InvalidArgument) as err:
        eng.authorize(request(observed_at_ns=int((NOW + skew_s) * 1e9)))
    assert err.value.field == "observed_at"
    assert store.list_decisions() == []
    ok = eng.authorize(request(event_id="E-2", observed_at_ns=int((NOW - 30) * 1e9)))
    assert not ok.replayed


def test_a_decision_from_the_previous_release_replays_for_its_inputs(
    store: SqliteStore,
) -> None:
    from recognizer.gate.inputs import legacy_digest

    recorded = {"face_image_sha256": "bb", "amount_minor": 100, "currency": "CNY"}
    store.put_decision(
        gate_id="G-1",
        event_id="E-1",
        decision_id="old",
        outcome="allow",
        payload=b"old-decision",
        inputs=recorded,
        input_digest=legacy_digest("G-1", "E-1", recorded),
    )
    eng = engine(store, FakeGatherer(), [])
    r = eng.authorize(request(vehicle_sha256=()))
    assert r.replayed and r.payload == b"old-decision"
    with pytest.raises(AlreadyExists):
        eng.authorize(request())


def test_a_joiner_decides_itself_when_the_first_caller_gave_up(store: SqliteStore) -> None:
    g = FakeGatherer()
    g.release.clear()
    eng = engine(store, g, [])
    # The first caller leaves while its evidence is being gathered.
    gone = deadline.Budget(None, cancelled=g.release.is_set)
    errors: list[BaseException] = []

    def first() -> None:
        with deadline.running(gone):
            try:
                eng.authorize(request())
            except DeadlineExceeded as exc:
                errors.append(exc)

    owner = threading.Thread(target=first)
    owner.start()
    assert g.entered.wait(5)
    joined: list[object] = []
    joiner = threading.Thread(target=lambda: joined.append(eng.authorize(request())))
    joiner.start()
    wait_until_joined(joiner)
    g.release.set()
    owner.join(5)
    joiner.join(5)
    assert errors and joined and not joined[0].replayed  # decided afresh, then stored once
    assert g.calls == 2 and len(store.list_decisions()) == 1


def test_a_bursts_first_corrupt_frame_in_order_is_the_error_and_nothing_is_stored(
    store: SqliteStore,
) -> None:
    """Later frames decode in a pool beside the first: the error still names the first bad
    frame in request order, whichever finished first, and no decision is made."""
    bad = {"vehicle_images[1]", "vehicle_images[2]", "face_images[0]"}  # frames 2, 3; face 1
    done: list[str] = []

    def decode(data: bytes, field: str) -> np.ndarray:
        if field in bad:
            raise InvalidArgument(f"{field}: corrupt", field=field, reason="CORRUPT_IMAGE")
        done.append(field)
        return np.zeros((8, 8, 3), np.uint8)

    g = FakeGatherer()
    eng = engine(store, g, [])
    eng._decode = decode
    inputs = dataclasses.replace(
        request().inputs, vehicle_sha256=("a", "b", "c", "d"), face_sha256=("e", "f")
    )
    frames = (b"v0", b"v1", b"v2", b"v3")
    for _ in range(20):  # the pool's timing varies; the error must not
        with pytest.raises(InvalidArgument) as err:
            eng.authorize(GateRequest(inputs, frames, (b"f0", b"f1"), True, False))
        assert err.value.field == "vehicle_images[1]", err.value.field  # frame 2 of 4
    assert "vehicle_image" in done and not any(f.startswith("face") for f in done)
    assert g.calls == 0 and store.list_decisions() == []
    eng.close()
