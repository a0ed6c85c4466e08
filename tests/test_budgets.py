"""Call budgets in domain code: a call whose caller has gone, or whose deadline cannot hold
the next stage, stops before that stage (decode, face and plate models)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from recognizer import deadline
from recognizer.deadline import Budget, RecentCosts
from recognizer.errors import DeadlineExceeded
from recognizer.face.pipeline import FacePipeline
from recognizer.face.types import Face, Selection
from recognizer.imaging import decode
from recognizer.plate.detector import PlateDetection
from recognizer.plate.pipeline import PlateRecognizer
from recognizer.plate.reader import Reading

IMAGE = np.full((120, 160, 3), 100, np.uint8)


class Calls:
    def __init__(self) -> None:
        self.log: list[str] = []


class FakeDetector:
    def __init__(self, calls: Calls, on_detect=None) -> None:  # type: ignore[no-untyped-def]
        self.calls = calls
        self.on_detect = on_detect

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls.log.append("detect")
        if self.on_detect:
            self.on_detect()
        lm = np.array([[50, 50], [80, 50], [65, 65], [55, 80], [75, 80]], np.float32)
        return [Face(np.array([40, 40, 90, 95], np.float32), lm, 0.9)]


class FakeEmbedder:
    dim = 4

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.log.append("embed")
        return np.ones((len(crops), 4), np.float32) / 2


def expired() -> Budget:
    return Budget.after(-1.0)


def test_decode_is_refused_when_the_deadline_has_passed() -> None:
    data = cv2.imencode(".png", IMAGE)[1].tobytes()
    with deadline.running(expired()), pytest.raises(DeadlineExceeded):
        decode(data)
    assert decode(data).shape == IMAGE.shape  # outside a call: no budget, no check


def test_face_work_stops_at_the_next_stage_once_the_caller_is_gone() -> None:
    calls = Calls()
    gone = {"yes": False}

    def leave() -> None:
        gone["yes"] = True  # the client cancels while the detector runs

    pipeline = FacePipeline(FakeDetector(calls, leave), FakeEmbedder(calls))
    budget = Budget.after(30.0, lambda: gone["yes"])
    with deadline.running(budget), pytest.raises(DeadlineExceeded) as err:
        pipeline.analyze(IMAGE, Selection.LARGEST)
    assert calls.log == ["detect"], "the embedder must not run for a caller who has gone"
    assert err.value.reason == "CANCELLED"
    with deadline.running(expired()), pytest.raises(DeadlineExceeded):
        pipeline.detect(IMAGE, Selection.LARGEST)
    assert calls.log == ["detect"]


def test_a_face_stage_that_would_overrun_is_not_started() -> None:
    calls = Calls()
    costs = RecentCosts(half_life_s=1e9)
    costs.observe("face.embed", 3.0)  # recently the embedder took 3 s
    pipeline = FacePipeline(FakeDetector(calls), FakeEmbedder(calls))
    with deadline.running(Budget.after(1.0, costs=costs)), pytest.raises(DeadlineExceeded):
        pipeline.analyze(IMAGE, Selection.LARGEST)
    assert calls.log == ["detect"]
    assert costs.expected("face.detect") > 0, "the stage that ran was timed"


class PlateDet:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def sizes_for(self, image: np.ndarray) -> tuple[int, ...]:
        return (576,)

    def detect(
        self, image: np.ndarray, sizes: tuple[int, ...] | None = None
    ) -> list[PlateDetection]:
        self.calls.log.append("plate.detect")
        box = np.array([10, 10, 130, 50], np.float32)
        corners = np.array([[10, 10], [130, 10], [130, 50], [10, 50]], np.float32)
        return [PlateDetection(box, corners, 0.9)]


class Reader:
    name = "fake"

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        self.calls.log.append("plate.read")
        raise AssertionError("the reader must not run")

    def log_likelihoods(self, reading: Reading, texts: Sequence[str]) -> np.ndarray:
        return np.zeros(len(texts))


def test_plate_reading_stops_once_the_deadline_no_longer_holds_it() -> None:
    calls = Calls()
    costs = RecentCosts(half_life_s=1e9)
    costs.observe("plate.read", 5.0)
    rec = PlateRecognizer(PlateDet(calls), Reader(calls), None)
    with deadline.running(Budget.after(1.0, costs=costs)), pytest.raises(DeadlineExceeded):
        rec.read(IMAGE)
    assert calls.log == ["plate.detect"]
    with deadline.running(expired()), pytest.raises(DeadlineExceeded):
        rec.read(IMAGE)
    assert calls.log == ["plate.detect"], "nothing runs after the deadline"
