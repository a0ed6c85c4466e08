"""Store round trips per one-frame Authorize, counted through the real server on the real
models: every store call the gate makes goes through a counting wrapper.

The budget (issue "Architecture, step 1"): at most 6 calls, none repeated with the same
arguments. A later change may raise it only with a measurement in its note.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from recognizer.client import Client
from recognizer.policy import PolicySet
from recognizer.service.runtime import fusion_path
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2
from tests import helpers
from tests.conftest import client_for, loaded_server, missing
from tests.helpers import lfw_face as face

BUDGET = 6
POLICY = {"policy_id": "trips", "gates": ["T-*"], "plate_only_max_minor": 0, "target_far": 1e-5}


class CountingStore:
    """Passes every call to the store and records (method, arguments) while recording."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, str]] = []
        self.recording = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            # Iterables are read once here, so that their contents (not a generator's
            # address) say whether a call repeats another.
            args = tuple(
                a if isinstance(a, str | bytes | dict) or not hasattr(a, "__iter__") else tuple(a)
                for a in args
            )
            if self.recording:
                with self._lock:
                    self.calls.append((name, repr((args, sorted(kwargs)))))
            return attr(*args, **kwargs)

        return counted


# Its own server: its store is wrapped to count round trips (other modules' calls would count).
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with loaded_server(
        tmp_path_factory.mktemp("trips"), policies=PolicySet.from_config([POLICY])
    ) as running:
        if not fusion_path(running.runtime.config).is_file():
            missing("no fusion calibration; run scripts/calibrate_fusion.py")
        yield running


@pytest.fixture(scope="module")
def counted(server: RunningServer) -> CountingStore:
    """The one store behind the gate, wrapped where the gate and the gallery hold it."""
    engines = server.runtime.engines
    gate = engines.gate
    wrapper = CountingStore(gate.store)
    gate.store = wrapper
    gate.evidence.store = wrapper
    engines.gallery.store = wrapper
    return wrapper


def authorize(c: Client, counted: CountingStore, **fields: Any) -> gate_pb2.AuthorizeResponse:
    counted.calls.clear()
    counted.recording = True
    try:
        return c.gate.Authorize(
            gate_pb2.AuthorizeRequest(
                gate_id="T-1", event_id=uuid.uuid4().hex, amount_minor=1000, **fields
            ),
            metadata=c.metadata,
        )
    finally:
        counted.recording = False


def check_budget(counted: CountingStore, budget: int = BUDGET) -> list[str]:
    names = [name for name, _ in counted.calls]
    assert len(counted.calls) <= budget, names
    assert len(set(counted.calls)) == len(counted.calls), f"a query repeated: {names}"
    return names


@pytest.fixture(scope="module")
def admin(c: Client) -> Client:
    """The module server's admin client (conftest's `c`)."""
    return c


@pytest.fixture(scope="module")
def gate(server: RunningServer) -> Iterator[Client]:
    """A gate's key: the caller whose path is counted (an admin's Authorize also audits the
    personal fields it reads back)."""
    client = client_for(server, "gate")
    yield client
    client.close()


@pytest.fixture(scope="module")
def powell(admin: Client) -> str:
    _, truth = helpers.scene(0)
    return helpers.make_payer(admin, "Colin_Powell", [truth], payment_ref="ref-cp")


def test_a_payers_car_costs_at_most_six_store_calls(
    gate: Client, counted: CountingStore, powell: str
) -> None:
    frame, _ = helpers.scene(0)
    pid = powell
    r = authorize(gate, counted, vehicle_image=frame, face_image=face("Colin_Powell", 3))
    assert r.outcome == gate_pb2.OUTCOME_ALLOW and r.identity_id == pid
    names = check_budget(counted)
    # The decision lookup, the plate holders with bindings, the payer's faces, the 1:N
    # owners, the last sighting and the decision write: nothing per candidate or per view.
    assert names.count("plate_holders") == 1 and names[-1] == "put_decision"


def test_a_strangers_car_costs_at_most_six_store_calls(
    gate: Client, counted: CountingStore
) -> None:
    frame, _ = helpers.scene(1)  # no one holds this plate
    r = authorize(gate, counted, vehicle_image=frame, face_image=face("George_W_Bush", 1))
    assert r.outcome == gate_pb2.OUTCOME_DENY
    check_budget(counted)


def test_completing_a_bursts_frame_repeats_no_store_call(
    gate: Client, counted: CountingStore, powell: str
) -> None:
    """The first frame does not allow, so the better glimpse is completed: the evidence
    grows by that frame's 1:N search, and nothing asked before is asked again (the owners
    of the templates it finds were asked for the first frame)."""
    frame, _ = helpers.scene(0)
    weak = helpers.blurred(face("Colin_Powell", 1), 5.0)
    r = authorize(gate, counted, vehicle_image=frame, face_images=[weak, face("Colin_Powell", 6)])
    assert r.outcome == gate_pb2.OUTCOME_ALLOW and r.face_frame == 1 and r.identity_id == powell
    check_budget(counted)


def test_a_replay_costs_one_store_call(gate: Client, counted: CountingStore) -> None:
    frame, _ = helpers.scene(1)
    req = gate_pb2.AuthorizeRequest(
        gate_id="T-1", event_id=uuid.uuid4().hex, amount_minor=10, vehicle_image=frame
    )
    gate.gate.Authorize(req, metadata=gate.metadata)
    counted.calls.clear()
    counted.recording = True
    try:
        again = gate.gate.Authorize(req, metadata=gate.metadata)
    finally:
        counted.recording = False
    assert again.replayed
    assert [name for name, _ in counted.calls] == ["get_decision"]
