"""Fusion math on data with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from recognizer.fusion import (
    FusionModel,
    ImpostorTail,
    PlateEvidence,
    PlateModel,
    fit_linear_llr,
)

PLATE = PlateModel(
    genuine={"exact": 0.90, "candidate": 0.05, "no_match": 0.05},
    impostor={"exact": 0.01, "candidate": 0.01, "no_match": 0.98},
)


def model(seed: int = 0) -> FusionModel:
    rng = np.random.default_rng(seed)
    gen = rng.normal(0.3, 0.1, 20_000)
    imp = rng.normal(0.0, 0.1, 20_000)
    return FusionModel(fit_linear_llr(gen, imp), ImpostorTail.fit(imp), PLATE)


def test_linear_llr_recovers_the_gaussian_answer() -> None:
    # Equal variances: the true LLR is linear with slope (m1-m0)/s^2, offset (m0^2-m1^2)/(2s^2).
    m = model()
    assert m.face_llr.slope == pytest.approx(0.3 / 0.01, rel=0.05)
    assert m.face_llr.offset == pytest.approx(-0.09 / 0.02, rel=0.05)
    assert m.face_llr.inverse(m.face_llr(0.42)) == pytest.approx(0.42)


def test_impostor_tail_is_empirical_then_gaussian() -> None:
    imp = np.arange(100) / 100.0  # 0.00 .. 0.99
    tail = ImpostorTail.fit(imp, min_tail_count=10)
    assert tail(0.5) == pytest.approx(0.5)  # 50 of 100 scores are >= 0.5
    assert tail(0.90) == pytest.approx(0.10)
    beyond = tail(2.0)  # no data: the Gaussian fit speaks, and it is tiny
    z = (2.0 - imp.mean()) / imp.std(ddof=1)
    assert beyond == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    values = [tail(s) for s in np.linspace(-1, 3, 200)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_plate_llr_and_plate_only_far() -> None:
    m = model()
    assert m.plate.llr(PlateEvidence.EXACT) == pytest.approx(math.log(90))
    assert m.plate.llr(PlateEvidence.ABSENT) == 0.0
    # Plate only: an impostor passes a threshold at LLR(exact) only with an exact read.
    assert m.far(math.log(90), face_present=False) == pytest.approx(0.01)
    assert m.far(math.log(5), face_present=False) == pytest.approx(0.02)
    assert m.far(math.log(90) + 1e-9, face_present=False) == 0.0


def test_threshold_meets_its_target_and_is_tight() -> None:
    m = model()
    for target in (1e-2, 1e-3, 1e-5):
        t = m.threshold_for(target)
        assert m.far(t) <= target * 1.0001
        assert m.far(t - 0.05) > target


def test_fuse_adds_llrs_and_far_falls_with_evidence() -> None:
    m = model()
    weak = m.fuse(PlateEvidence.EXACT, 0.1)
    strong = m.fuse(PlateEvidence.EXACT, 0.7)
    assert strong.fused_llr == pytest.approx(strong.plate_llr + strong.face_llr)
    assert strong.estimated_far < weak.estimated_far
    face_only = m.fuse(PlateEvidence.ABSENT, 0.7)
    assert face_only.plate_llr == 0.0 and face_only.estimated_far > strong.estimated_far


def test_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = model()
    m.save(tmp_path / "f.json")
    again = FusionModel.load(tmp_path / "f.json")
    assert again.fuse(PlateEvidence.CANDIDATE, 0.5) == m.fuse(PlateEvidence.CANDIDATE, 0.5)
