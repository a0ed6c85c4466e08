"""Authorize bursts without models: the plate vote, the face frame choice, the limits, and the
input digest (a request of the previous release keeps its digest, so stored decisions replay)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from recognizer.errors import InvalidArgument
from recognizer.face.pipeline import FacePipeline
from recognizer.face.types import Face, Liveness, LivenessDecision, Selection
from recognizer.gate.inputs import MAX_FRAMES, check_burst, frame_field, legacy_digest
from recognizer.plate.grammar import is_valid
from recognizer.plate.vote import MISSING_PROBABILITY, vote, vote_plates
from recognizer.service import convert, limits
from recognizer.v1 import gate_pb2
from tests.helpers import FakeEmbedder, read

MiB = 1024 * 1024


# --- the plate vote -------------------------------------------------------------------------


def valid(text: str) -> bool:
    return is_valid(text, "cn")


def test_a_single_frame_votes_for_its_own_read() -> None:
    only = read(("京A12345", 0.9), ("京A12346", 0.05))
    voted = vote([[only]], valid)
    assert voted is not None
    assert voted.text == "京A12345" and [c.text for c in voted.candidates] == [
        "京A12345",
        "京A12346",
    ]
    assert voted.candidates[0].probability == pytest.approx(0.9)


def test_log_probabilities_add_across_frames() -> None:
    # Each frame alone prefers another text; together the text both frames list wins.
    a = read(("京A12346", 0.6), ("京A12345", 0.35))
    b = read(("京A12348", 0.6), ("京A12345", 0.35))
    voted = vote([[a], [b]], valid)
    assert voted is not None and voted.text == "京A12345"
    # The winner's probability is the per-frame geometric mean of what the frames gave it.
    assert voted.candidates[0].probability == pytest.approx(0.35)
    missing = math.sqrt(0.6 * MISSING_PROBABILITY)
    assert voted.candidates[1].probability == pytest.approx(missing)
    # The read reported has no per-character confidences for a text no frame read as its
    # first choice, and its box comes from a frame that listed the winner.
    assert voted.char_confidences == ()


def test_invalid_texts_and_frames_without_reads_do_not_vote() -> None:
    junk = read(("A02M0//A82M83", 0.99))
    good = read(("京A12345", 0.4), box=7.0)
    voted = vote([[], [junk], [good]], valid)
    assert voted is not None and voted.text == "京A12345"
    assert [c.text for c in voted.candidates] == ["京A12345"]
    assert voted.candidates[0].probability == pytest.approx(0.4)  # one frame voted
    assert float(voted.box[0]) == 7.0 and voted.char_confidences == good.char_confidences
    assert vote([[], [junk]], valid) is None


def test_another_cars_frame_does_not_outvote_the_right_frames() -> None:
    right = [[read(("京A12345", 0.7), ("京A12346", 0.1))]] * 2
    other = [[read(("沪B99999", 0.99))]]
    mixed = vote(right + other, valid)
    alone = vote(right, valid)
    assert mixed is not None and alone is not None
    assert mixed.text == alone.text == "京A12345"
    assert mixed.candidates[0].probability <= alone.candidates[0].probability
    # Tracked per plate, the other car is a plate of its own and leaves the right one as is.
    tracked = vote_plates(right + other, valid)
    assert [v.text for v in tracked] == ["京A12345", "沪B99999"]
    assert tracked[0].candidates == alone.candidates


def test_plates_are_tracked_across_frames_by_shared_candidates() -> None:
    # Two cars in every frame: each keeps its own candidates (a single vote would let the
    # second car's texts crowd the first's alternatives out of the list).
    car = (("湘E8ZS83", 0.6), ("湘E87S83", 0.1), ("湘F8ZS83", 0.02))
    behind = (("鄂A0818P", 0.5), ("鄂AD818P", 0.4), ("皖A0818P", 0.05))
    later = (("鄂AD818P", 0.6), ("鄂A0818P", 0.3), ("皖A0818P", 0.05))
    frames = [[read(*car), read(*behind)], [read(*later), read(*car)], [read(*car)]]
    voted = vote_plates(frames, valid)
    # Seen in 3 frames, then in 2 (where the two frames' votes settle on 鄂AD818P).
    assert [v.text for v in voted] == ["湘E8ZS83", "鄂AD818P"]
    assert "湘F8ZS83" in [c.text for c in voted[0].candidates]
    assert {c.text for c in voted[1].candidates} == {t for t, _ in behind}
    # A frame that did not see a plate does not vote on it: the second car's probabilities
    # are the geometric means over the two frames that saw it.
    second = {c.text: c.probability for c in voted[1].candidates}
    assert second["鄂AD818P"] == pytest.approx(math.sqrt(0.4 * 0.6))
    assert second["鄂A0818P"] == pytest.approx(math.sqrt(0.5 * 0.3))
    assert vote_plates([[], [read(("A02M0//A82M83", 0.9))]], valid) == []


def test_ties_fall_the_same_way_whatever_the_frame_order() -> None:
    a = [read(("京A12345", 0.5))]
    b = [read(("京A12346", 0.5))]
    first = vote([a, b], valid)
    second = vote([b, a], valid)
    assert first is not None and second is not None and first.text == second.text


def test_a_voted_province_is_guessed_unless_a_frame_saw_it() -> None:
    # A province glyph out of view in every frame: each frame guessed, the vote too.
    hidden = read(("鲁A931Y9", 0.6), ("皖A931Y9", 0.2), guessed=True)
    other_guess = read(("皖A931Y9", 0.5), ("鲁A931Y9", 0.3), guessed=True)
    both = vote([[hidden], [other_guess]], valid)
    assert both is not None and both.province_guessed
    # A frame that saw the glyph backs the province it read...
    seen = read(("鲁A931Y9", 0.5))
    backed = vote([[hidden], [seen]], valid)
    assert backed is not None and backed.text == "鲁A931Y9" and not backed.province_guessed
    # ...even when another frame read the rest of the plate better.
    tail = vote([[hidden], [read(("鲁A931Y8", 0.3), ("鲁A931Y9", 0.2))]], valid)
    assert tail is not None and tail.text == "鲁A931Y9" and not tail.province_guessed
    # A guess that outvotes a frame that saw another province stays a guess.
    weak = read(("皖A931Y9", 0.01), ("鲁A931Y9", 0.009))
    outvoted = vote([[hidden], [hidden], [weak]], valid)
    assert outvoted is not None and outvoted.text == "鲁A931Y9" and outvoted.province_guessed
    # No guess anywhere: nothing is guessed; and tracking keeps the vote's answer.
    plain = vote([[seen], [read(("鲁A931Y9", 0.7))]], valid)
    assert plain is not None and not plain.province_guessed
    assert [v.province_guessed for v in vote_plates([[hidden], [other_guess]], valid)] == [True]


# --- the face frame -------------------------------------------------------------------------


class FakeDetector:
    """One face per frame whose size is the frame's first pixel value (0: no face)."""

    def detect(self, image: np.ndarray) -> list[Face]:
        size = float(image[0, 0, 0])
        if size == 0:
            return []
        x0, y0 = 100.0, 100.0
        box = np.array([x0, y0, x0 + size, y0 + size], np.float32)
        eye = size / 4
        marks = np.array(
            [
                [x0 + eye, y0 + eye],
                [x0 + 3 * eye, y0 + eye],
                [x0 + 2 * eye, y0 + 2 * eye],
                [x0 + 1.2 * eye, y0 + 3 * eye],
                [x0 + 2.8 * eye, y0 + 3 * eye],
            ],
            np.float32,
        )
        return [Face(box, marks, 0.9)]


class FakeLiveness:
    def __init__(self) -> None:
        self.frames: list[float] = []

    def assess(self, image: np.ndarray, faces: Sequence[Face]) -> list[Liveness]:
        self.frames.append(float(image[0, 0, 0]))
        return [Liveness(0.9, LivenessDecision.LIVE) for _ in faces]


def frame(size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    img[0, 0] = size
    return img


@pytest.fixture()
def pipeline() -> FacePipeline:
    return FacePipeline(FakeDetector(), FakeEmbedder(), liveness=FakeLiveness())  # type: ignore[arg-type]


def test_one_face_frame_costs_what_analyze_costs(pipeline: FacePipeline) -> None:
    (only,) = pipeline.analyze_frames([frame(160)])
    assert only.frame == 0
    assert pipeline.embedder.calls == [1]  # type: ignore[attr-defined]
    assert pipeline.liveness.frames == [160.0]  # type: ignore[union-attr]
    single = pipeline.analyze(frame(160), Selection.LARGEST)[0]
    assert single.quality == only.face.quality


def test_every_frame_with_a_face_is_analysed_in_one_embedding_call(
    pipeline: FacePipeline,
) -> None:
    found = pipeline.analyze_frames([frame(30), frame(0), frame(200)])
    assert [f.frame for f in found] == [0, 2]  # the frame without a face is left out
    assert pipeline.embedder.calls == [2]  # type: ignore[attr-defined]
    # Liveness is assessed on each frame's face: whichever is used carries its own.
    assert pipeline.liveness.frames == [30.0, 200.0]  # type: ignore[union-attr]
    assert all(f.face.liveness is not None for f in found)
    assert pipeline.analyze_frames([frame(0), frame(0)]) == ()
    assert pipeline.analyze_frames([]) == ()


def test_glimpses_embed_the_front_view_only_and_skip_liveness(pipeline: FacePipeline) -> None:
    seen = pipeline.glimpse_frames([frame(30), frame(0), frame(200)], first=1)
    assert [g.frame for g in seen] == [1, 3]  # numbered from `first`; no face, no glimpse
    embedder, liveness = pipeline.embedder, pipeline.liveness
    assert embedder.fronts == [2] and embedder.calls == [2]  # type: ignore[attr-defined]
    assert embedder.finished == []  # type: ignore[attr-defined]
    assert liveness.frames == []  # type: ignore[union-attr]
    np.testing.assert_allclose([np.linalg.norm(g.embedding) for g in seen], 1.0)
    assert pipeline.glimpse_frames([]) == ()


def test_completing_a_glimpse_adds_the_mirror_view_and_liveness(pipeline: FacePipeline) -> None:
    glimpse = pipeline.glimpse_frames([frame(30), frame(200)])[1]
    done = pipeline.complete(glimpse)
    assert done.frame == 1 and done.face.face is glimpse.face
    assert pipeline.embedder.finished == [1]  # type: ignore[attr-defined]
    # Liveness runs on the completed frame alone, on that frame's pixels.
    assert pipeline.liveness.frames == [200.0]  # type: ignore[union-attr]
    assert done.face.liveness == Liveness(0.9, LivenessDecision.LIVE)
    assert done.face.quality == glimpse.quality


# --- limits and digests ---------------------------------------------------------------------


def test_frame_counts_and_bytes_are_limited() -> None:
    four = [b"x"] * MAX_FRAMES
    check_burst(four, four, max_bytes=2 * MAX_FRAMES)
    with pytest.raises(InvalidArgument) as err:
        check_burst([*four, b"x"], [], max_bytes=10**9)
    assert err.value.reason == "TOO_MANY_FRAMES" and err.value.field == "vehicle_images"
    with pytest.raises(InvalidArgument) as err:
        check_burst([], [*four, b"x"], max_bytes=10**9)
    assert err.value.field == "face_images"
    with pytest.raises(InvalidArgument) as err:
        check_burst(four, four, max_bytes=2 * MAX_FRAMES - 1)
    assert err.value.reason == "BURST_TOO_LARGE" and str(2 * MAX_FRAMES - 1) in str(err.value)


def test_the_single_field_counts_as_the_first_frame() -> None:
    req = gate_pb2.AuthorizeRequest(
        gate_id="g", event_id="e", vehicle_image=b"a", vehicle_images=[b"b"] * MAX_FRAMES
    )
    limits.check(req)  # the repeated field alone is within its own limit
    with pytest.raises(InvalidArgument) as err:
        convert.gate_request(req, max_bytes=30 * MiB)
    assert err.value.reason == "TOO_MANY_FRAMES"
    req.ClearField("vehicle_image")
    assert len(convert.gate_request(req, max_bytes=30 * MiB).vehicle_images) == MAX_FRAMES
    req.vehicle_images.append(b"c")
    with pytest.raises(InvalidArgument):
        limits.check(req)


def test_frames_are_named_by_the_field_that_carried_them() -> None:
    assert frame_field("vehicle", 0, True) == "vehicle_image"
    assert frame_field("vehicle", 1, True) == "vehicle_images[0]"
    assert frame_field("face", 0, False) == "face_images[0]"
    assert frame_field("face", 2, False) == "face_images[2]"


def full_request(**changes: object) -> gate_pb2.AuthorizeRequest:
    fields: dict[str, object] = {
        "gate_id": "P1-north",
        "event_id": "evt-1",
        "vehicle_image": b"vehicle-frame",
        "face_image": b"face-frame",
        "plate_text": "京A12345",
        "amount_minor": 1500,
        "currency": "CNY",
        "direction": gate_pb2.DIRECTION_ENTRY,
        "observed_at": timestamp_pb2.Timestamp(seconds=1800000000, nanos=5),
    }
    fields.update(changes)
    return gate_pb2.AuthorizeRequest(**fields)  # type: ignore[arg-type]


def digest(req: gate_pb2.AuthorizeRequest) -> str:
    return convert.gate_request(req, max_bytes=30 * MiB).inputs.digest()


# Computed by the release before bursts (main at 64951ce) from the same requests: a stored
# decision of that release must replay, so these must never change.
PREVIOUS_RELEASE = {
    "full": "6ad1f3628f84682af3607860f59826c8a3ca1c8505df173a780390da43e08216",
    "vehicle only": "61d76d4c0d52eedc59af600f1ed39764535f15445ac2bb8a0dd5822eb77c1988",
}


def test_a_request_of_the_previous_release_keeps_its_digest() -> None:
    assert digest(full_request()) == PREVIOUS_RELEASE["full"]
    only = gate_pb2.AuthorizeRequest(
        gate_id="P1-north", event_id="evt-2", vehicle_image=b"vehicle-frame"
    )
    assert digest(only) == PREVIOUS_RELEASE["vehicle only"]
    # ... and the digest of a 0.1.0 record, rebuilt from its inputs column, is the same.
    inputs = convert.gate_request(full_request(), max_bytes=30 * MiB).inputs
    record = {**inputs.record(), "observed_at": 1800000000.0}
    assert legacy_digest("P1-north", "evt-1", record) == digest(
        full_request(observed_at=timestamp_pb2.Timestamp(seconds=1800000000))
    )


def test_the_digest_covers_every_frame_in_order() -> None:
    base = digest(full_request(vehicle_images=[b"v2", b"v3"], face_images=[b"f2"]))
    # The single field and the first repeated frame are the same frame.
    moved = full_request(vehicle_image=b"", vehicle_images=[b"vehicle-frame", b"v2", b"v3"])
    moved.face_images.append(b"f2")
    assert digest(moved) == base
    for other in (
        full_request(vehicle_images=[b"v3", b"v2"], face_images=[b"f2"]),  # reordered
        full_request(vehicle_images=[b"v2"], face_images=[b"f2"]),  # one dropped
        full_request(vehicle_images=[b"v2", b"v3"]),  # a face frame dropped
        full_request(vehicle_images=[b"v2", b"v3", b"v4"], face_images=[b"f2"]),  # one added
    ):
        assert digest(other) != base
    inputs = convert.gate_request(
        full_request(vehicle_images=[b"v2", b"v3"], face_images=[b"f2"]), max_bytes=30 * MiB
    ).inputs
    rec = inputs.record()
    assert len(rec["vehicle_images_sha256"]) == 3 and len(rec["face_images_sha256"]) == 2
    assert rec["vehicle_image_sha256"] == rec["vehicle_images_sha256"][0]


# --- the bench's bursts ---------------------------------------------------------------------


def test_bench_bursts_are_seeded_and_realistic(tmp_path: Path) -> None:
    from benchmarks.bursts import perturbed_frames, photo_frames

    photo = tmp_path / "a.jpg"
    photo.write_bytes(cv2.imencode(".jpg", frame(120))[1].tobytes())
    first = perturbed_frames(photo, 3, seed=7)
    assert first == perturbed_frames(photo, 3, seed=7)  # the same frames on every run
    assert first[0] == photo.read_bytes() and len(set(first)) == 3
    base = cv2.imdecode(np.frombuffer(first[0], np.uint8), cv2.IMREAD_COLOR)
    for data in first[1:]:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == base.shape  # a next frame of the same camera
    others = [tmp_path / f"{k}.jpg" for k in "bcd"]
    for p in others:
        p.write_bytes(p.name.encode())
    got = photo_frames(others[1], others, 3)
    assert got == [b"c.jpg", b"d.jpg", b"b.jpg"]  # the probe, then the next ones, wrapping
    assert photo_frames(photo, others[:1], 3) is None
