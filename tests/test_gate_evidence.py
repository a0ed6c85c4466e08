"""Evidence gathering with fakes (no models, no datasets): the face frame used carries its
own liveness, and with liveness required every face frame of a burst is assessed, whatever
their order. Each fake frame is a tiny array whose first pixel names the frame: its face's
direction in embedding space and its liveness."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from recognizer.face.types import (
    AnalyzedFace,
    Face,
    FrameFace,
    Glimpse,
    Liveness,
    LivenessDecision,
    Quality,
)
from recognizer.gallery.gallery import Match
from recognizer.gate.evidence import EvidenceGatherer
from recognizer.gate.types import Direction, GateEvent
from recognizer.store.rows import PaymentRow, PlateHolder, SightingRow

PLATE = "京A12345"
PAYER = "payer"
DIM = 8
BASE = np.eye(DIM, dtype=np.float32)[0]
# frame kind -> (cosine with the payer's enrolled face, liveness)
KINDS = {
    1: (0.90, Liveness(0.95, LivenessDecision.LIVE)),
    2: (0.70, Liveness(0.05, LivenessDecision.ATTACK)),
    3: (0.80, Liveness(0.50, LivenessDecision.UNCERTAIN)),
    4: (0.60, Liveness(0.90, LivenessDecision.LIVE)),
    5: (0.20, Liveness(0.92, LivenessDecision.LIVE)),  # a stranger: far below the bar
}


def vector(cos: float) -> np.ndarray:
    """A unit vector at `cos` to BASE (all frames one person: they agree with each other)."""
    v = np.zeros(DIM, np.float32)
    v[0], v[1] = cos, np.sqrt(1 - cos * cos)
    return v


def image(kind: int) -> np.ndarray:
    return np.full((2, 2, 3), kind, np.uint8)


def kind_of(img: np.ndarray) -> int:
    return int(img[0, 0, 0])


FACE = Face(np.zeros(4, np.float32), np.zeros((5, 2), np.float32), 0.99)
QUALITY = Quality(0.9, 120.0, 100.0, 0.0, 0.0, 0.0, 0.99, True)


class FakeFaces:
    def __init__(self) -> None:
        self.completed: list[int] = []

    def _analyzed(self, img: np.ndarray) -> AnalyzedFace:
        cos, live = KINDS[kind_of(img)]
        return AnalyzedFace(FACE, QUALITY, vector(cos), live)

    def analyze_frames(self, images: Sequence[np.ndarray]) -> tuple[FrameFace, ...]:
        return tuple(FrameFace(i, self._analyzed(img)) for i, img in enumerate(images))

    def glimpse_frames(
        self, images: Sequence[np.ndarray], first: int = 0, liveness: bool = False
    ) -> tuple[Glimpse, ...]:
        return tuple(
            Glimpse(
                first + i,
                FACE,
                QUALITY,
                vector(KINDS[kind_of(img)][0]),
                img,
                img,
                img,
                KINDS[kind_of(img)][1] if liveness else None,
            )
            for i, img in enumerate(images)
        )

    def complete(self, glimpse: Glimpse) -> FrameFace:
        self.completed.append(glimpse.frame)
        return FrameFace(glimpse.frame, self._analyzed(glimpse.image))


class FakeGallery:
    def templates_for(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        return {i: BASE[None, :] for i in ids if i == PAYER}

    def score_against(self, m: np.ndarray, vec: np.ndarray) -> float:
        return float(np.max(m @ vec))

    def identify(self, vec: np.ndarray, k: int, owners: dict) -> list:
        return [Match(PAYER, float(vec @ BASE), 0)]


class FakeCalibration:
    def score_at(self, fmr: float) -> float:
        return 0.3


class FakeIdentity:
    def __init__(self) -> None:
        self.faces = FakeFaces()
        self.gallery = FakeGallery()
        self.calibration = FakeCalibration()

    def threshold(self) -> float:
        return 0.5


class FakeStore:
    def __init__(self, last: SightingRow | None = None) -> None:
        self.last = last

    def plate_holders(self, texts: Iterable[str]) -> dict[str, list[PlateHolder]]:
        pay = PaymentRow("b1", PAYER, "ref", "plate_and_face", 0, 0.0)
        return {t: [PlateHolder(PAYER, (pay,))] for t in texts if t == PLATE}

    def last_sighting(self, plate: str) -> SightingRow | None:
        return self.last

    def payments_for(self, identity_id: str) -> list[PaymentRow]:
        return [PaymentRow("b1", PAYER, "ref", "plate_and_face", 0, 0.0)]

    def count_identities(self) -> int:
        return 1

    def max_templates_per_identity(self) -> int:
        return 1


class NoPlates:
    mode = "cn"
    model_versions = ()

    def read(self, image: np.ndarray, max_candidates: int = 5, enough=None) -> list:  # type: ignore[no-untyped-def]
        return []

    def sure_read(self, read: object) -> bool:
        return False


def gather(  # type: ignore[no-untyped-def]
    kinds: Sequence[int], liveness: bool, last: SightingRow | None = None, plate: str = PLATE
):
    identity = FakeIdentity()
    g = EvidenceGatherer(plates=NoPlates(), identity=identity, store=FakeStore(last))  # type: ignore[arg-type]
    try:
        event = GateEvent(
            gate_id="G-1",
            event_id="e",
            plate_text=plate,
            face_images=tuple(image(k) for k in kinds),
            amount_minor=100,
            direction=Direction.ENTRY,
        )
        return g.gather(event, 1000.0, liveness), identity.faces
    finally:
        g.close()


def test_the_frame_used_carries_its_own_liveness() -> None:
    # With liveness required every frame is assessed: the best frame (kind 1, frame 2) is
    # used, with its own liveness; the others' liveness is beside it.
    got, faces = gather([4, 2, 1], liveness=True)
    ev = got.evidence
    assert ev.face_frame == 2 and got.probe is not None
    assert ev.face_liveness == KINDS[1][1] == got.probe.liveness
    assert sorted(ev.burst_liveness, key=lambda lv: lv.score) == [KINDS[2][1], KINDS[4][1]]
    assert sorted(faces.completed) == [0, 1, 2] and not got.can_improve
    assert ev.payers[0].face_score == pytest.approx(0.9, abs=1e-6)
    assert ev.payers[0].frames == 3


def test_with_liveness_required_the_order_of_the_frames_changes_nothing() -> None:
    seen = set()
    for order in itertools.permutations([1, 2, 3, 4]):
        got, faces = gather(order, liveness=True)
        ev = got.evidence
        assert order[ev.face_frame] == 1 and ev.face_liveness == KINDS[1][1]
        assert sorted(faces.completed) == [0, 1, 2, 3]
        seen.add((ev.face_liveness, tuple(sorted(ev.burst_liveness, key=lambda lv: lv.score))))
    assert len(seen) == 1


def test_without_liveness_the_early_exit_stays() -> None:
    # The first frame is analysed in full; a later glimpse that might rate higher is left
    # pending (completed only if the decision could improve), and none is completed now.
    got, faces = gather([4, 1], liveness=False)
    assert faces.completed == [0] and got.can_improve
    assert got.evidence.face_frame == 0 and got.evidence.face_liveness == KINDS[4][1]
    assert got.evidence.burst_liveness == ()
    # A first frame far ahead leaves nothing pending.
    ahead, faces = gather([1, 4], liveness=False)
    assert faces.completed == [0] and not ahead.can_improve
    assert ahead.evidence.face_liveness == KINDS[1][1]


def test_a_strangers_face_far_below_the_bar_is_not_completed() -> None:
    # No payer is named and the front view scores far below the bar against everyone: the
    # mirror view cannot change the decision, so none is added; its liveness was assessed.
    got, faces = gather([5], liveness=False, plate="")
    assert faces.completed == [] and not got.can_improve and got.probe is not None
    assert got.evidence.face_found and got.evidence.face_liveness == KINDS[5][1]
    assert not got.evidence.payers and not got.evidence.face_elsewhere
    # The same face with a plate that names a payer is rated against the payer in full.
    named, faces = gather([5], liveness=False)
    assert faces.completed == [0]
    assert named.evidence.payers[0].face_score == pytest.approx(0.2, abs=1e-6)


def test_a_face_near_the_bar_is_completed_beside_the_plate() -> None:
    # Without a plate the face is found 1:N: near the bar it is completed at once, and the
    # payer it matches is searched with the full embedding.
    got, faces = gather([1], liveness=False, plate="")
    assert faces.completed == [0]
    assert [p.identity_id for p in got.evidence.payers] == [PAYER]
    # A burst of strangers far from the bar completes none of its frames.
    far, faces = gather([5, 5], liveness=False, plate="")
    assert faces.completed == [] and far.evidence.face_found


def test_a_moved_sighting_replaces_the_one_gathered() -> None:
    before = SightingRow(PLATE, "G-1", "exit", 900.0)
    got, _ = gather([1], liveness=False, last=before)
    assert got.last_seen == before and got.evidence.last_sighting is not None
    now = SightingRow(PLATE, "G-2", "entry", 990.0)
    moved = got.with_last(now)
    assert moved.last_seen == now
    last = moved.evidence.last_sighting
    assert last is not None and (last.gate_id, last.direction, last.at) == ("G-2", "entry", 990.0)
    assert moved.evidence.payers == got.evidence.payers
    assert got.with_last(None).evidence.last_sighting is None
