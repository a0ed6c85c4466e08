"""Gate decisions end to end through the real Authorize RPC on the real models:
ALLOW on both factors, idempotent retries, and every fraud signal."""

from __future__ import annotations

import itertools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from recognizer.client import Client
from recognizer.service.runtime import fusion_path
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2
from tests import helpers
from tests.conftest import client_for, missing
from tests.helpers import codes, violation
from tests.helpers import lfw_face as face

_plates = (f"京A{n:05d}" for n in itertools.count(10000))
# Scene 3's plate is this module's own on the session server (each module binds other
# scenes); its 1:N search must find only its own payer, so that one is Arnold_Schwarzenegger,
# whom no other module on the session server enrols.
SCENE = 3
ALONE_IN_GALLERY = "Arnold_Schwarzenegger"


def scene() -> tuple[bytes, str]:
    return helpers.scene(SCENE)


@pytest.fixture(scope="module")
def server(real_server: RunningServer) -> RunningServer:
    """The session server: it carries this module's policy (G- gates, `TEST_POLICIES`)."""
    if not fusion_path(real_server.runtime.config).is_file():
        missing("no fusion calibration; run scripts/calibrate_fusion.py")
    return real_server


def payer(c: Client, name: str, plates: list[str]) -> str:
    return helpers.make_payer(c, name, plates, payment_ref=f"ref-{name}")


def authorize(
    c: Client, gate: str = "G-1", *, when: float | None = None, **fields: object
) -> gate_pb2.AuthorizeResponse:
    req = gate_pb2.AuthorizeRequest(
        gate_id=gate, event_id=uuid.uuid4().hex, amount_minor=1000, currency="CNY", **fields
    )
    if when is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(when * 1e9))
        req.observed_at.CopyFrom(ts)
    return c.gate.Authorize(req, metadata=c.metadata)


@pytest.fixture(scope="module")
def powell(c: Client) -> tuple[str, str]:
    _, truth = scene()
    return payer(c, "Colin_Powell", [truth]), truth


def test_allow_on_a_real_frame_and_face(c: Client, powell: tuple[str, str]) -> None:
    identity_id, truth = powell
    frame, _ = scene()
    r = authorize(c, vehicle_image=frame, face_image=face("Colin_Powell", 3))
    assert r.outcome == gate_pb2.OUTCOME_ALLOW, codes(r)
    assert r.identity_id == identity_id and r.payment_ref == "ref-Colin_Powell"
    assert r.plate.text == truth and {"PLATE_EXACT_MATCH", "FACE_MATCH"} <= codes(r)
    assert r.fused_llr == pytest.approx(r.plate_llr + r.face_llr, abs=1e-6)
    assert 0 < r.estimated_far <= 1e-5
    assert r.policy_id == "test-gates" and {m.role for m in r.models} >= {
        "face_detector",
        "face_embedder",
    }
    assert not r.replayed and r.decision_id


def test_a_hundred_concurrent_retries_give_one_decision(c: Client) -> None:
    plate = next(_plates)
    payer(c, "Hugo_Chavez", [plate])
    req = gate_pb2.AuthorizeRequest(
        gate_id="G-retry",
        event_id="evt-42",
        plate_text=plate,
        face_image=face("Hugo_Chavez", 2),
        amount_minor=100,
    )

    def call(_: int) -> gate_pb2.AuthorizeResponse:
        # A gate retries when told the server is busy, after the delay it was given.
        for _attempt in range(200):
            try:
                return c.gate.Authorize(req, metadata=c.metadata)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                time.sleep(0.05)
        raise AssertionError("never admitted")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, range(100)))
    assert len({a.decision_id for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    assert len({a.outcome for a in answers}) == 1
    records = c.admin.ListDecisions(
        gate_pb2.ListDecisionsRequest(gate_id="G-retry"), metadata=c.metadata
    ).decisions
    assert [r.event_id for r in records] == ["evt-42"]
    assert records[0].face_image_sha256 and len(records[0].SerializeToString()) < 20_000


def test_face_not_among_the_plates_payers_is_denied(c: Client) -> None:
    plate = next(_plates)
    payer(c, "Gerhard_Schroeder", [plate])
    payer(c, "Jacques_Chirac", [next(_plates)])
    r = authorize(c, plate_text=plate, face_image=face("Jacques_Chirac", 4))
    assert r.outcome == gate_pb2.OUTCOME_DENY
    assert "FACE_NOT_AMONG_PAYERS" in codes(r)


def test_cloned_plate_at_two_gates_too_soon(c: Client) -> None:
    plate = next(_plates)
    payer(c, "Tony_Blair", [plate])
    now = time.time()
    first = authorize(c, "G-north", when=now, plate_text=plate, face_image=face("Tony_Blair", 1))
    assert "PLATE_CLONE_SUSPECTED" not in codes(first)
    second = authorize(
        c, "G-south", when=now + 30, plate_text=plate, face_image=face("Tony_Blair", 2)
    )
    assert "PLATE_CLONE_SUSPECTED" in codes(second)
    assert second.outcome != gate_pb2.OUTCOME_ALLOW


def test_entry_twice_and_exit_without_entry(c: Client) -> None:
    plate, other = next(_plates), next(_plates)
    payer(c, "Vladimir_Putin", [plate, other])
    now = time.time()
    entry = gate_pb2.DIRECTION_ENTRY
    exit_ = gate_pb2.DIRECTION_EXIT
    ok = authorize(
        c, when=now, plate_text=plate, direction=entry, face_image=face("Vladimir_Putin", 1)
    )
    assert not codes(ok) & {"ENTRY_WITHOUT_EXIT", "EXIT_WITHOUT_ENTRY"}
    again = authorize(
        c, when=now + 600, plate_text=plate, direction=entry, face_image=face("Vladimir_Putin", 2)
    )
    assert "ENTRY_WITHOUT_EXIT" in codes(again) and again.outcome != gate_pb2.OUTCOME_ALLOW
    orphan = authorize(
        c, when=now, plate_text=other, direction=exit_, face_image=face("Vladimir_Putin", 3)
    )
    assert "EXIT_WITHOUT_ENTRY" in codes(orphan) and orphan.outcome != gate_pb2.OUTCOME_ALLOW


def test_unreadable_plate_face_identifies_among_payers(c: Client) -> None:
    identity_id = payer(c, ALONE_IN_GALLERY, [next(_plates)])
    blank = cv2.imencode(".jpg", np.full((480, 640, 3), 70, np.uint8))[1].tobytes()
    r = authorize(c, vehicle_image=blank, face_image=face(ALONE_IN_GALLERY, 5))
    assert r.identity_id == identity_id
    assert {"PLATE_NOT_FOUND", "FACE_IDENTIFIED_AMONG_PAYERS"} <= codes(r)


def test_unknown_vehicle_is_denied(c: Client) -> None:
    r = authorize(c, plate_text=next(_plates))
    assert r.outcome == gate_pb2.OUTCOME_DENY and "UNKNOWN_VEHICLE" in codes(r)
    assert not r.payment_ref


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"amount_minor": -5}, "amount_minor"),
        ({"plate_text": ""}, "vehicle_image"),
        ({"direction": 7}, "direction"),
        ({"vehicle_image": b"not an image"}, "vehicle_image"),
    ],
)
def test_bad_requests_are_invalid_argument(c: Client, fields: dict, field: str) -> None:
    base = {"gate_id": "G-1", "event_id": uuid.uuid4().hex, "plate_text": "京A12345"}
    base.update(fields)
    with pytest.raises(grpc.RpcError) as err:
        c.gate.Authorize(gate_pb2.AuthorizeRequest(**base), metadata=c.metadata)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert violation(err.value)[1] == field, err.value.details()


def test_gate_role_may_authorize_but_not_enrol(server: RunningServer) -> None:
    gate = client_for(server, "gate")
    r = gate.gate.Authorize(
        gate_pb2.AuthorizeRequest(gate_id="G-9", event_id="x", plate_text=next(_plates)),
        metadata=gate.metadata,
    )
    assert r.outcome == gate_pb2.OUTCOME_DENY
    with pytest.raises(grpc.RpcError) as err:
        gate.identity.CreateIdentity(identity_pb2.CreateIdentityRequest(), metadata=gate.metadata)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_each_enrolled_face_is_one_more_try_for_an_impostor(
    c: Client, server: RunningServer
) -> None:
    """A payer scores by the best of their k enrolled faces, so the estimate counts k tries."""
    from recognizer.fusion import FusionModel

    fusion = FusionModel.load(fusion_path(server.runtime.config))
    plate = next(_plates)
    identity_id = payer(c, "Donald_Rumsfeld", [plate])
    probe = face("Donald_Rumsfeld", 4)
    one = authorize(c, plate_text=plate, face_image=probe)
    c.identity.EnrollFace(
        identity_pb2.EnrollFaceRequest(
            identity_id=identity_id, images=[face("Donald_Rumsfeld", 1)], force=True
        ),
        metadata=c.metadata,
    )
    two = authorize(c, plate_text=plate, face_image=probe)
    for r, k in ((one, 1), (two, 2)):
        assert r.identity_id == identity_id
        expected = fusion.far(r.fused_llr, templates=k)
        assert r.estimated_far == pytest.approx(expected, rel=1e-6), k
    # Whatever the new photo scored, the same evidence counts one try more than it did with
    # one photo enrolled.
    assert two.estimated_far > fusion.far(two.fused_llr, templates=1)
