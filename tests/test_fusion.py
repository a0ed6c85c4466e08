"""Fusion math on data with known answers."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from recognizer.fusion import (
    FusionModel,
    ImpostorTail,
    PlateEvidence,
    PlateModel,
    fit_linear_llr,
    one_to_n,
)

MODELS = Path(__file__).resolve().parents[1] / "models"

PLATE = PlateModel(
    genuine={"exact": 0.90, "candidate": 0.05, "no_match": 0.05},
    misread={"exact": 0.01, "candidate": 0.01},
    clone_prior=0.0,  # impostor: exact 0.01, candidate 0.01, no_match 0.98
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


def test_a_candidate_is_never_stronger_evidence_than_an_exact_read() -> None:
    # A reader whose genuine candidates are rare and whose misreads never land among the
    # candidates would, by the raw ratio, trust a candidate more than an exact read.
    skewed = PlateModel(
        genuine={"exact": 0.90, "candidate": 0.09, "no_match": 0.01},
        misread={"exact": 0.05, "candidate": 1e-6},
        clone_prior=0.0,
    )
    assert skewed.llr(PlateEvidence.CANDIDATE) == pytest.approx(skewed.llr(PlateEvidence.EXACT))
    for q in (0.0, 0.01, 0.05, 0.2):
        assert PLATE.llr(PlateEvidence.CANDIDATE, q) <= PLATE.llr(PlateEvidence.EXACT, q)


def test_the_clone_prior_enters_every_matching_category() -> None:
    m = PlateModel(
        genuine={"exact": 0.9, "candidate": 0.05, "no_match": 0.05},
        misread={"exact": 0.001, "candidate": 0.002},
        clone_prior=0.05,
    )
    imp = m.impostor()
    assert imp[PlateEvidence.EXACT] == pytest.approx(0.05 * 0.9 + 0.95 * 0.001)
    assert imp[PlateEvidence.CANDIDATE] == pytest.approx(0.05 * 0.05 + 0.95 * 0.002)
    assert sum(imp.values()) == pytest.approx(1.0)
    # A plate can never prove more than 1 / clone prior, whatever the reader.
    assert m.llr(PlateEvidence.EXACT) < math.log(1 / 0.05)
    assert m.llr(PlateEvidence.EXACT, 0.2) < m.llr(PlateEvidence.EXACT)


def test_the_1n_face_term() -> None:
    m = model()
    one = m.fuse(PlateEvidence.ABSENT, 0.3)
    many = [m.fuse(PlateEvidence.ABSENT, 0.3, searched=n).estimated_far for n in (1, 10, 1000)]
    assert all(a < b for a, b in itertools.pairwise(many))
    assert one.estimated_far == pytest.approx(many[0])  # inside the data, N = 1 is 1:1
    # Never below what the data can show per comparison, 1/(n+1), even where the 1:1 tail
    # extrapolates lower (0.6 is six impostor standard deviations out).
    beyond = m.fuse(PlateEvidence.ABSENT, 0.6)
    assert beyond.estimated_far < m.face_tail.floor
    assert m.fuse(PlateEvidence.ABSENT, 0.6, searched=1).estimated_far == m.face_tail.floor
    assert many[1] == pytest.approx(-math.expm1(10 * math.log1p(-many[0])))
    assert one_to_n(0.5, 3) == pytest.approx(0.875) and one_to_n(1.0, 7) == 1.0


def test_a_release_0_1_0_fusion_file_still_loads() -> None:
    legacy = {
        "face_llr": {"slope": 30.0, "offset": -4.5},
        "face_tail": {"mean": 0.0, "std": 0.1, "min_tail_count": 10, "scores": [0.0, 0.1]},
        "plate": {
            "genuine": {"exact": 0.9, "candidate": 0.05, "no_match": 0.05},
            "impostor": {"exact": 0.051, "candidate": 0.002, "no_match": 0.947},
        },
        "meta": {"clone_rate": 0.05},
    }
    plate = FusionModel.from_json(legacy).plate
    assert plate.clone_prior == 0.05
    assert plate.misread == pytest.approx({"exact": 0.001, "candidate": 0.002})


@pytest.mark.parametrize("profile", ["default", "insightface"])
def test_shipped_calibrations_fit_the_plate_only_defaults(profile: str) -> None:
    """The shipped clone prior and the default plate-only target are consistent: an exact read
    can meet the target (the tier is reachable), a read of another plate cannot, and the
    engine accepts a policy that turns the tier on."""
    from recognizer.gate.engine import check_policies
    from recognizer.policy import GatePolicy, PolicySet

    m = FusionModel.load(MODELS / f"fusion_{profile}.json")
    policy = GatePolicy(policy_id="small-amounts", plate_only_max_minor=1000)
    exact = m.fuse(PlateEvidence.EXACT, None, clone_prior=policy.clone_prior)
    assert exact.estimated_far <= policy.plate_only_target_far
    assert m.plate.llr(PlateEvidence.CANDIDATE) <= m.plate.llr(PlateEvidence.EXACT)
    assert m.fuse(PlateEvidence.NO_MATCH, None).fused_llr < 0
    check_policies(PolicySet((policy,)), m)
    too_strict = GatePolicy(policy_id="x", plate_only_max_minor=1000, plate_only_target_far=0.01)
    with pytest.raises(ValueError, match="never allow"):
        check_policies(PolicySet((too_strict,)), m)
