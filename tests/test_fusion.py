"""Fusion math on data with known answers."""

from __future__ import annotations

import itertools
import json
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
    lowest_score_at,
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


def test_impostor_tail_is_empirical_then_a_conservative_exponential() -> None:
    imp = np.arange(100) / 100.0  # 0.00 .. 0.99
    tail = ImpostorTail.fit(imp, min_tail_count=10)
    assert tail(0.5) == pytest.approx(0.5)  # 50 of 100 scores are >= 0.5
    assert tail(0.90) == pytest.approx(0.10)
    assert not tail.extrapolated(0.90) and tail.extrapolated(0.95) and tail.extrapolated(2.0)
    values = [tail(s) for s in np.linspace(-1, 3, 400)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert 0.0 < tail(2.0) < tail(1.0) < 0.1


@pytest.mark.parametrize("seed", range(5))
def test_the_exponential_tail_bounds_a_gaussian_impostor_tail_from_above(seed: int) -> None:
    """Where the data runs out the estimate must not be optimistic: for Gaussian impostors
    (a log-concave tail, like cosine scores) the fitted tail lies above the true one."""
    rng = np.random.default_rng(seed)
    tail = ImpostorTail.fit(rng.normal(0.0, 0.1, 20_000), min_tail_count=25)
    for s in np.linspace(0.33, 0.6, 10):  # from the last counted scores to 6 sigma
        true = 0.5 * math.erfc(s / 0.1 / math.sqrt(2))
        assert tail(s) >= true, s


def test_the_heaviest_group_speaks_and_the_margin_multiplies() -> None:
    rng = np.random.default_rng(1)
    light, heavy = rng.normal(0.0, 0.08, 50_000), rng.normal(0.05, 0.1, 5_000)
    pooled = ImpostorTail.fit(np.concatenate([light, heavy]))
    tail = ImpostorTail.fit({"light": light, "heavy": heavy})
    one = ImpostorTail.fit({"heavy": heavy})
    for s in (0.2, 0.3, 0.4):
        assert tail(s) == pytest.approx(one(s))  # the heavy group, not a diluted pool
        assert tail(s) > pooled(s)
    safer = ImpostorTail.fit({"light": light, "heavy": heavy}, margin=2.0)
    assert safer(0.3) == pytest.approx(2 * tail(0.3))
    assert tail.n == 55_000 and tail.floor == pytest.approx(1 / 55_001)
    again = ImpostorTail.from_json(json.loads(json.dumps(safer.to_json())))
    assert again(0.45) == safer(0.45)


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
    # extrapolates lower (0.6 is six impostor standard deviations out; the 1:1 estimate
    # there is the fitted upper tail, and says so).
    assert m.face_tail.extrapolated(0.6)
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


@pytest.mark.parametrize("profile", ["default", "insightface"])
def test_shipped_face_tail_transfers_to_a_left_out_population(profile: str) -> None:
    """Issue 17: calibrated without one population, the estimate at FMR 1e-3 must not be
    optimistic by more than 1.5x on that population (95% upper bound of what it shows)."""
    from benchmarks.calibration import check

    tail = FusionModel.load(MODELS / f"fusion_{profile}.json").face_tail
    assert {"asianfaces_cn", "lfw_subset", "att_orl", "lfw10+misc"} <= set(tail.groups)
    for left_out, scores in tail.groups.items():
        others = {g: np.asarray(v) for g, v in tail.groups.items() if g != left_out}
        fold = ImpostorTail.fit(others, tail.min_tail_count, tail.margin)
        result = check(fold, 1e-3, np.asarray(scores))
        assert result.ratio <= 1.5, (left_out, result)


def test_several_templates_give_an_impostor_several_tries() -> None:
    m = model()
    one = m.fuse(PlateEvidence.ABSENT, 0.3)
    two = m.fuse(PlateEvidence.ABSENT, 0.3, templates=2)
    assert two.fused_llr == one.fused_llr
    assert two.estimated_far == pytest.approx(one_to_n(one.estimated_far, 2))
    assert m.threshold_for(1e-3, templates=3) > m.threshold_for(1e-3)
    n1 = m.fuse(PlateEvidence.ABSENT, 0.3, searched=10, templates=3).estimated_far
    assert n1 == pytest.approx(m.fuse(PlateEvidence.ABSENT, 0.3, searched=30).estimated_far)


# --- issue 26: what a mutant of fusion.py could move unseen ----------------------------------


def _balanced_gradient(genuine: np.ndarray, impostor: np.ndarray, slope: float, offset: float):  # type: ignore[no-untyped-def]
    """The prior-balanced logistic loss's gradient at (slope, offset), written out anew."""
    total = np.zeros(2)
    for scores, label in ((genuine, 1.0), (impostor, 0.0)):
        p = 1.0 / (1.0 + np.exp(-(slope * scores + offset)))
        r = (label - p) * (0.5 / len(scores))
        total += np.array([np.sum(r * scores), np.sum(r)])
    return total


def test_the_llr_fit_is_a_stationary_point_whatever_the_class_sizes() -> None:
    """The classes weigh equally: 2,000 genuine and 20,000 impostor scores give the LLR that
    equal counts give (the same slope and offset), and the fit is converged, not stopped
    early (the balanced loss's gradient vanishes there)."""
    rng = np.random.default_rng(7)
    gen = rng.normal(0.3, 0.1, 2_000)
    imp = rng.normal(0.0, 0.1, 20_000)
    fit = fit_linear_llr(gen, imp)
    grad = _balanced_gradient(gen, imp, fit.slope, fit.offset)
    assert np.abs(grad).max() < 1e-9, grad
    assert fit.slope == pytest.approx(30.0, rel=0.06)
    assert fit.offset == pytest.approx(-4.5, rel=0.08)
    swapped = fit_linear_llr(imp + 0.3, gen + 0.3)  # the same shapes, the sizes swapped
    assert (
        np.abs(_balanced_gradient(imp + 0.3, gen + 0.3, swapped.slope, swapped.offset)).max() < 1e-9
    )


def test_one_to_n_edges() -> None:
    assert one_to_n(0.1, 0) == 0.1 and one_to_n(0.1, 1) == 0.1
    assert one_to_n(0.0, 50) == 0.0 and one_to_n(1.0, 50) == 1.0
    assert one_to_n(0.1, 2) == pytest.approx(0.19)


def test_the_face_llr_is_clipped_both_ways() -> None:
    m = model()
    clip = m.face_llr_clip
    assert m.face(-5.0) == -clip and m.face(5.0) == clip
    assert -clip < m.face(0.15) < clip and m.face(None) == 0.0
    # The impostor tail in LLR terms: certain below the clip, impossible above it.
    assert m._face_tail_llr(-clip) == 1.0 and m._face_tail_llr(-clip - 1.0) == 1.0
    assert 0.0 < m._face_tail_llr(clip) < 1e-3 and m._face_tail_llr(clip + 1e-9) == 0.0


@pytest.mark.parametrize(
    "kw",
    [{}, {"face_present": False}, {"plate_present": False}, {"searched": 20}, {"templates": 3}],
)
def test_threshold_for_meets_the_target_under_each_setting(kw: dict) -> None:
    m = model()
    t = m.threshold_for(1e-2, **kw)
    assert m.far(t, **kw) <= 1e-2 < m.far(t - 1e-3, **kw)
    if kw:
        assert t != pytest.approx(m.threshold_for(1e-2), abs=1e-6)


def test_a_saved_model_has_the_shipped_files_fields() -> None:
    shipped = json.loads((MODELS / "fusion_default.json").read_text(encoding="utf-8"))
    fresh = model().to_json()
    assert set(fresh) == set(shipped)
    assert set(fresh["face_tail"]) == set(shipped["face_tail"])
    assert fresh["face_tail"]["kind"] == shipped["face_tail"]["kind"]
    assert fresh["face_llr_clip"] == FusionModel.from_json(shipped).face_llr_clip == 25.0


def _custom_model() -> FusionModel:
    rng = np.random.default_rng(11)
    tail = ImpostorTail.fit(
        {"a": rng.normal(0.0, 0.1, 400), "b": rng.normal(0.05, 0.1, 300)},
        min_tail_count=13,
        margin=1.7,
    )
    fit = fit_linear_llr(rng.normal(0.3, 0.1, 500), rng.normal(0.0, 0.1, 500))
    plate = PlateModel(PLATE.genuine, PLATE.misread, clone_prior=0.07)
    return FusionModel(fit, tail, plate, face_llr_clip=12.5, meta={"made": "test"})


def test_a_model_round_trips_with_every_field_off_its_default(tmp_path: Path) -> None:
    m = _custom_model()
    path = tmp_path / "fusion.json"
    m.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == m.to_json()
    back = FusionModel.load(path)
    assert back.face_llr == m.face_llr and back.plate == m.plate
    assert back.face_tail.groups == m.face_tail.groups
    assert (back.face_tail.min_tail_count, back.face_tail.margin) == (13, 1.7)
    assert back.face_llr_clip == 12.5 and back.meta == {"made": "test"}
    # A file without the optional fields takes their defaults.
    bare = m.to_json()
    del bare["face_llr_clip"], bare["meta"]
    del bare["plate"]["clone_prior"]  # type: ignore[attr-defined]
    old = FusionModel.from_json(bare)
    assert old.face_llr_clip == 25.0 and old.meta == {} and old.plate.clone_prior == 0.05


def test_one_array_is_one_group_with_the_default_tail_count() -> None:
    tail = ImpostorTail.fit(np.random.default_rng(3).normal(0.0, 0.1, 100))
    assert set(tail.groups) == {"all"} and tail.min_tail_count == 25 and tail.margin == 1.0


def test_release_0_1_files_pooled_tail_and_impostor_rates() -> None:
    scores = [float(v) for v in np.linspace(-0.3, 0.3, 30)]
    assert ImpostorTail.from_json({"scores": scores}).min_tail_count == 10
    assert ImpostorTail.from_json({"scores": scores, "min_tail_count": 50}).min_tail_count == 29
    assert ImpostorTail.from_json({"scores": scores, "min_tail_count": 0}).min_tail_count == 1
    legacy = {"genuine": PLATE.genuine, "impostor": {"exact": 0.12, "candidate": 0.03}}
    with_rate = FusionModel.from_json(
        {
            "face_llr": {"slope": 30.0, "offset": -4.5},
            "face_tail": {"scores": scores},
            "plate": legacy,
            "meta": {"clone_rate": 0.1},
        }
    ).plate
    assert with_rate == PlateModel(PLATE.genuine, {"exact": 0.12 - 0.1, "candidate": 0.03}, 0.1)
    without = FusionModel.from_json(
        {
            "face_llr": {"slope": 30.0, "offset": -4.5},
            "face_tail": {"scores": scores},
            "plate": legacy,
        }
    ).plate
    assert without == PlateModel(PLATE.genuine, {"exact": 0.12 - 0.05, "candidate": 0.03}, 0.05)


def test_a_plate_model_refuses_a_clone_prior_of_one() -> None:
    assert PlateModel(PLATE.genuine, PLATE.misread, 0.0).clone_prior == 0.0
    with pytest.raises(ValueError) as err:
        PlateModel(PLATE.genuine, PLATE.misread, 1.0)
    assert str(err.value) == "clone_prior must be within [0, 1), got 1.0"


def test_far_sums_the_plate_categories_and_takes_the_clone_prior_asked() -> None:
    m = model()
    for q in (None, 0.3):
        imp = m.plate.impostor(q)
        for t in (-2.0, 0.0, 3.0, 6.0):
            expected = sum(imp[c] * m._face_tail_llr(t - m.plate.llr(c, q)) for c in imp)
            assert m.far(t, clone_prior=q) == pytest.approx(expected, rel=1e-12), (q, t)
    assert m.far(3.0, clone_prior=0.3) != m.far(3.0)
    # No plate: the face alone; no face either: nothing beats a positive threshold.
    assert m.far(2.0, plate_present=False) == m._face_tail_llr(2.0)
    assert m.far(0.5, plate_present=False, face_present=False) == 0.0
    assert m.far(-0.5, plate_present=False, face_present=False) == 1.0
    assert m.far(-100.0) <= 1.0


def test_the_chi2_quantile_is_within_one_percent() -> None:
    from recognizer.fusion import Z95, _chi2_quantile

    # Chi-square quantiles (k = 20, 50; 5% and 95%), from the tables.
    for p_z, k, table in ((-Z95, 20, 10.851), (-Z95, 50, 34.764), (Z95, 50, 67.505)):
        assert _chi2_quantile(p_z, k) == pytest.approx(table, rel=0.01), (p_z, k)


def test_the_fitted_tail_beyond_the_data_by_hand() -> None:
    from recognizer.fusion import Z95, _chi2_quantile

    scores = np.arange(1, 41) * 0.01  # n = 40
    tail = ImpostorTail.fit({"g": scores}, min_tail_count=10)
    assert tail(0.31) == pytest.approx(10 / 40) and not tail.extrapolated(0.31)
    u = 0.30  # the 10 top scores exceed it
    excess = float(np.sum(scores[30:])) - 10 * u
    lam = (10 / excess) * _chi2_quantile(-Z95, 20) / 20
    assert tail(0.45) == pytest.approx((10 / 40) * math.exp(-lam * (0.45 - u)), rel=1e-9)
    assert tail.extrapolated(0.45)
    # The margin multiplies, and the estimate never exceeds 1.
    wide = ImpostorTail.fit({"g": scores}, min_tail_count=10, margin=1.7)
    assert wide(0.45) == pytest.approx(1.7 * tail(0.45)) and wide(-1.0) == 1.0


def test_a_group_needs_more_scores_than_the_tail_count() -> None:
    rng = np.random.default_rng(5)
    tail = ImpostorTail.fit({"small": rng.normal(0, 0.1, 25), "big": rng.normal(0, 0.1, 26)})
    assert set(tail.groups) == {"big"}
    with pytest.raises(ValueError) as err:
        ImpostorTail.fit({"small": rng.normal(0, 0.1, 25)})
    assert str(err.value) == "no group holds more than 25 impostor scores"


def test_far_of_a_1n_search_sums_the_plate_categories() -> None:
    m = model()
    imp = m.plate.impostor()
    for t in (-2.0, 0.0, 3.0):
        expected = sum(
            imp[c] * one_to_n(max(m._face_tail_llr(t - m.plate.llr(c)), m.face_tail.floor), 5 * 2)
            for c in imp
        )
        assert m.far(t, searched=5, templates=2) == pytest.approx(expected, rel=1e-12), t


def test_the_sure_bar_round_trips_and_defaults_to_none_in_older_files() -> None:
    model = FusionModel(
        fit_linear_llr(np.array([0.6, 0.7]), np.array([0.0, 0.1])),
        ImpostorTail.fit(np.linspace(-0.2, 0.2, 200)),
        PlateModel(PLATE.genuine, PLATE.misread, 0.05, sure_confidence=0.3),
    )
    data = json.loads(json.dumps(model.to_json()))
    assert data["plate"]["sure_confidence"] == 0.3
    assert FusionModel.from_json(data).plate.sure_confidence == 0.3
    del data["plate"]["sure_confidence"]  # a file made before the bar
    assert FusionModel.from_json(data).plate.sure_confidence == 0.0
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="sure_confidence must be within"):
            PlateModel(PLATE.genuine, PLATE.misread, 0.05, sure_confidence=bad)


def test_lowest_score_at_bisects_the_cosine_range() -> None:
    def step(at: float, below: float = 1.0, above: float = 0.0):  # type: ignore[no-untyped-def]
        return lambda s: below if s < at else above

    assert lowest_score_at(step(0.3), 0.0) == pytest.approx(0.3, abs=1e-9)
    assert lowest_score_at(lambda s: 0.0, 0.5) == pytest.approx(-1.0, abs=1e-9)  # any score
    assert lowest_score_at(step(1.5), 0.0) == 1.0  # no score in [-1, 1] reaches it
    # A rate equal to the target at the top of the range still bisects.
    assert lowest_score_at(step(0.3, 0.5, 0.2), 0.2) == pytest.approx(0.3, abs=1e-9)
