"""Authorize bursts end to end: a real server on port 0, the real models, real sample frames
(CCPD scenes, LFW faces) sent by a real client on 127.0.0.1."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from recognizer.client import Client
from recognizer.fusion import FusionModel
from recognizer.service.runtime import fusion_path
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import KEYS, dataset
from tests.helpers import ALLOW, DENY, STEP_UP, blurred, codes, scene, violation
from tests.helpers import error_reason as reason
from tests.helpers import lfw_face as face
from tests.helpers import make_payer as payer

RANK = {DENY: 0, STEP_UP: 1, ALLOW: 2}
MiB = 1024 * 1024


# On the session server (`real_server`, B- gates, `TEST_POLICIES`) this module binds a scene
# of its own; its payer's plate is always sent, so its face is judged 1:1 against them.
OWN, OTHER = 9, 10


@pytest.fixture(scope="module")
def server(real_server: RunningServer) -> RunningServer:
    return real_server


def scene_path(k: int) -> Path:
    return sorted(dataset("plates", "scenes").iterdir())[k]


def occluded(k: int) -> bytes:
    """Scene k with its plate covered (a frame where the plate cannot be read): the CCPD file
    name records the plate's box."""
    path = scene_path(k)
    img = cv2.imread(str(path))
    (x1, y1), (x2, y2) = (map(int, p.split("&")) for p in path.stem.split("-")[2].split("_"))
    pad = 12
    img[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad] = 90
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def reencoded(data: bytes, quality: int = 85) -> bytes:
    """The same frame as other bytes (a later frame of a still car)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def request(gate: str = "B-1", **fields: object) -> gate_pb2.AuthorizeRequest:
    base: dict[str, object] = {
        "amount_minor": 5000,
        "currency": "CNY",
        "event_id": uuid.uuid4().hex,
    }
    base.update(fields)
    return gate_pb2.AuthorizeRequest(gate_id=gate, **base)


def call(c: Client, req: gate_pb2.AuthorizeRequest) -> gate_pb2.AuthorizeResponse:
    return c.gate.Authorize(req, metadata=c.metadata, timeout=120)


def refused(c: Client, req: gate_pb2.AuthorizeRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(c, req)
    return err.value


def stored(c: Client, gate: str) -> list[gate_pb2.DecisionRecord]:
    from recognizer.v1 import gate_pb2 as g

    return list(
        c.admin.ListDecisions(g.ListDecisionsRequest(gate_id=gate), metadata=c.metadata).decisions
    )


@pytest.fixture(scope="module")
def powell(c: Client) -> tuple[str, str]:
    """A payer (one enrolled photo) whose PLATE_AND_FACE binding is on scene OWN's plate."""
    _, truth = scene(OWN)
    return payer(c, "Colin_Powell", [truth], identity_pb2.FACTOR_PLATE_AND_FACE), truth


def powell_faces() -> list[bytes]:
    return [face("Colin_Powell", k) for k in (3, 4, 5)]


def test_a_later_vehicle_frame_with_a_readable_plate_allows(
    c: Client, powell: tuple[str, str]
) -> None:
    identity_id, truth = powell
    frame, _ = scene(OWN)
    hidden = occluded(OWN)
    # One frame with the plate covered: no plate, so a PLATE_AND_FACE payer is not allowed.
    alone = call(c, request(vehicle_image=hidden, face_image=face("Colin_Powell", 3)))
    assert alone.outcome != ALLOW and "PLATE_NOT_FOUND" in codes(alone), codes(alone)
    # The same event as a burst whose later frames show the plate: allowed, and the third
    # frame is never read (the vote settled on a bound plate at the second).
    burst = call(
        c,
        request(
            vehicle_images=[hidden, frame, reencoded(frame)],
            face_images=powell_faces(),
        ),
    )
    assert burst.outcome == ALLOW, (codes(burst), burst.estimated_far)
    assert burst.identity_id == identity_id and burst.plate.text == truth
    assert "PLATE_EXACT_MATCH" in codes(burst) and "FACE_MATCH" in codes(burst)
    assert burst.vehicle_frames_read == 2
    assert 0 <= burst.face_frame < 3


def test_another_cars_frame_does_not_make_a_burst_stronger(
    c: Client, powell: tuple[str, str]
) -> None:
    frame, truth = scene(OWN)
    other, other_truth = scene(OTHER)
    assert other_truth != truth
    faces = powell_faces()
    right = call(c, request(vehicle_images=[frame, reencoded(frame)], face_images=faces))
    for order in ([other, frame, reencoded(frame)], [frame, other, reencoded(frame)]):
        mixed = call(c, request(vehicle_images=order, face_images=faces))
        assert RANK[mixed.outcome] <= RANK[right.outcome], codes(mixed)
        assert mixed.fused_llr <= right.fused_llr + 1e-9
        assert mixed.estimated_far >= right.estimated_far - 1e-15
    # The other car alone with the payer's face is not the payer's plate.
    wrong = call(c, request(vehicle_images=[other, reencoded(other)], face_images=faces))
    assert wrong.outcome != ALLOW and "PLATE_EXACT_MATCH" not in codes(wrong)


def padded(data: bytes, size: int) -> bytes:
    """A real JPEG followed by padding up to `size` bytes (decoders stop at its end)."""
    return data + b"\0" * (size - len(data))


def test_too_many_frames_or_bytes_are_refused_and_store_nothing(
    server: RunningServer, c: Client, powell: tuple[str, str]
) -> None:
    frame, _ = scene(OWN)
    cfg = server.runtime.config
    gate = "B-limits"
    event = uuid.uuid4().hex
    too_many = request(gate, vehicle_image=frame, vehicle_images=[frame] * 4, event_id=event)
    err = refused(c, too_many)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err) == ("TOO_MANY_FRAMES", "vehicle_images")
    # Three frames at the per-image byte limit fit the burst limit: the event is decided
    # (afresh: the refusal above stored nothing under its id).
    big = padded(frame, cfg.image_limits.max_bytes)
    sender = Client.connect(
        f"127.0.0.1:{server.port}", KEYS["admin"], max_message_bytes=2 * cfg.max_receive_bytes
    )
    three = call(sender, request(gate, vehicle_images=[big] * 3, event_id=event))
    assert not three.replayed and three.plate.text, codes(three)
    # One more mebibyte is over the burst limit: INVALID_ARGUMENT naming it.
    over = request(
        gate,
        vehicle_images=[big] * 3,
        face_image=padded(face("Colin_Powell", 3), MiB),
        event_id=uuid.uuid4().hex,
    )
    err = refused(sender, over)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err) == ("BURST_TOO_LARGE", "vehicle_images")
    assert str(cfg.authorize_max_bytes) in err.details()
    # Over gRPC's own cap: gRPC refuses it itself, a bare RESOURCE_EXHAUSTED (no RetryInfo).
    huge = request(gate, vehicle_images=[big] * 4, event_id=uuid.uuid4().hex)
    err = refused(sender, huge)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and reason(err) == ""
    sender.close()
    assert [d.event_id for d in stored(c, gate)] == [event]


def test_a_burst_replays_and_another_frame_set_is_a_reused_event(
    c: Client, powell: tuple[str, str]
) -> None:
    frame, _ = scene(OWN)
    vehicle = [occluded(OWN), frame, reencoded(frame)]
    faces = powell_faces()
    req = request("B-replay", vehicle_images=vehicle, face_images=faces)
    first = call(c, req)
    again = call(c, req)
    assert not first.replayed and again.replayed
    assert again.decision_id == first.decision_id and again.outcome == first.outcome
    variants = {
        "vehicle frames reordered": dict(vehicle_images=[vehicle[1], vehicle[0], vehicle[2]]),
        "a vehicle frame dropped": dict(vehicle_images=vehicle[:2]),
        "face frames reordered": dict(face_images=faces[::-1]),
        "a face frame dropped": dict(face_images=faces[1:]),
        "a face frame added": dict(face_images=[*faces, face("Colin_Powell", 6)]),
    }
    for name, change in variants.items():
        other = gate_pb2.AuthorizeRequest()
        other.CopyFrom(req)
        for key, frames in change.items():
            other.ClearField(key)
            getattr(other, key).extend(frames)
        err = refused(c, other)
        assert err.code() is grpc.StatusCode.ALREADY_EXISTS, name
        assert reason(err) == "EVENT_ID_REUSED", name
    (record,) = stored(c, "B-replay")
    assert len(record.vehicle_images_sha256) == 3 and len(record.face_images_sha256) == 3
    assert record.vehicle_image_sha256 == record.vehicle_images_sha256[0]


def test_a_single_field_request_and_a_one_frame_burst_are_the_same_event(
    c: Client, powell: tuple[str, str]
) -> None:
    frame, _ = scene(OWN)
    single = request("B-single", vehicle_image=frame, face_image=face("Colin_Powell", 3))
    first = call(c, single)
    as_burst = gate_pb2.AuthorizeRequest()
    as_burst.CopyFrom(single)
    as_burst.ClearField("vehicle_image")
    as_burst.vehicle_images.append(frame)
    again = call(c, as_burst)
    assert again.replayed and again.decision_id == first.decision_id
    assert first.vehicle_frames_read == 1 and first.face_frame == 0


STRANGERS = ["Jacques_Chirac", "Hugo_Chavez", "Gerhard_Schroeder"]


def test_a_payer_photo_mixed_into_a_strangers_burst_never_allows(
    c: Client, powell: tuple[str, str]
) -> None:
    """An attacker holds up one real photo of the payer among their own frames, at the payer's
    car (the plate is read exactly): whichever frame has the best quality, no ALLOW."""
    frame, _ = scene(OWN)
    payer_photo = face("Colin_Powell", 3)
    for name in STRANGERS[:2]:
        own = [face(name, k) for k in (1, 2)]
        for order in set(itertools.permutations([payer_photo, *own])):
            r = call(c, request(vehicle_image=frame, face_images=list(order)))
            assert r.outcome != ALLOW, (name, codes(r), r.face_score)
            if "FACE_MATCH" in codes(r):  # the payer's photo was the frame used
                assert "FACE_FRAMES_DISAGREE" in codes(r), codes(r)


def test_a_strangers_burst_counts_every_frame_as_a_try(
    c: Client, powell: tuple[str, str], server: RunningServer
) -> None:
    """Four frames of a stranger at the payer's car: the best-scoring frame is used (later
    frames are chosen by their front view, a little noisier than the full score), and the
    estimate counts four tries, so the burst's estimated FAR is never below its best frame's
    sent alone, and nothing is allowed."""
    fusion = FusionModel.load(fusion_path(server.runtime.config))
    frame, _ = scene(OWN)
    for name in STRANGERS:
        frames = [face(name, k) for k in range(1, 5)]
        r = call(c, request(vehicle_image=frame, face_images=frames))
        assert r.outcome != ALLOW, (name, codes(r))
        alone = [call(c, request(vehicle_image=frame, face_image=f)) for f in frames]
        best = max(range(4), key=lambda k: alone[k].face_score)
        used = alone[r.face_frame]
        assert r.face_score == pytest.approx(used.face_score, abs=1e-6)
        # Front views score 0.004 +- 0.009 below full ones: a frame passed over is at most
        # that noise better than the one used.
        assert used.face_score >= alone[best].face_score - 0.03
        # Four frames are four tries: the burst's estimate is the fused evidence's FAR over
        # four comparisons, above what one frame with the same evidence would be given.
        assert r.estimated_far == pytest.approx(fusion.far(r.fused_llr, templates=4), rel=1e-6)
        assert r.estimated_far > fusion.far(r.fused_llr, templates=1), (name, r.fused_llr)


def test_a_burst_stops_at_a_first_frame_that_allows_and_goes_on_when_it_does_not(
    c: Client, powell: tuple[str, str]
) -> None:
    """Exit early: later frames are only glimpsed, and the better one is analysed in full
    only when the first frame does not already allow (the decision cannot get better)."""
    frame, _ = scene(OWN)
    good, better = face("Colin_Powell", 2), face("Colin_Powell", 6)
    weak = blurred(face("Colin_Powell", 1), 5.0)
    alone = {
        name: call(c, request(vehicle_image=frame, face_image=f))
        for name, f in (("good", good), ("better", better), ("weak", weak))
    }
    assert alone["good"].outcome == ALLOW and alone["better"].outcome == ALLOW
    assert alone["better"].face_score > alone["good"].face_score + 0.05
    assert alone["weak"].outcome != ALLOW and alone["weak"].face_score > 0
    # The first frame allows: it is the frame used, scored as when sent alone.
    r = call(c, request(vehicle_image=frame, face_images=[good, better]))
    assert r.outcome == ALLOW and r.face_frame == 0, (r.face_frame, codes(r))
    assert r.face_score == pytest.approx(alone["good"].face_score, abs=1e-6)
    # It does not: the better later frame is completed and used, and allows.
    r = call(c, request(vehicle_image=frame, face_images=[weak, better]))
    assert r.outcome == ALLOW and r.face_frame == 1, (r.face_frame, codes(r))
    assert r.face_score == pytest.approx(alone["better"].face_score, abs=1e-6)
    assert "FACE_FRAMES_DISAGREE" not in codes(r)
