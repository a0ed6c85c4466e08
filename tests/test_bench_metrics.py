"""Benchmark metric functions on tiny data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import metrics as m


def test_det_with_three_impostors_has_the_expected_points() -> None:
    det = m.det_curve(np.array([0.9, 0.8]), np.array([0.1, 0.5, 0.85]))
    assert det.thresholds.tolist() == [0.9, 0.85, 0.8, 0.5, 0.1]
    assert det.fmr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1])
    # genuine below t: 0.8 at t=0.9 and t=0.85; none from t=0.8 down
    assert det.fnmr.tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.0])


def test_threshold_and_fnmr_at_fmr() -> None:
    imp = np.arange(10) / 10.0  # 0.0 .. 0.9
    gen = np.array([0.95, 0.85, 0.5])
    t = m.threshold_at_fmr(imp, 0.1)  # one impostor (0.9) may pass
    assert 0.8 < t <= 0.8 + 1e-12
    assert np.mean(imp >= t) == pytest.approx(0.1)
    assert m.fnmr_at_fmr(gen, imp, 0.1) == pytest.approx(1 / 3)
    assert m.fnmr_at_fmr(gen, imp, 0.0) == pytest.approx(2 / 3)  # only 0.95 beats 0.9


def test_auc_and_eer_known_answers() -> None:
    assert m.roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert m.roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert m.roc_auc(np.array([2.0, 0.0]), np.array([1.0])) == 0.5
    assert m.eer(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0


def test_wilson_interval() -> None:
    lo, hi = m.wilson_ci(0, 1000)
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(3.8415 / 1003.8415, rel=1e-3)
    lo, hi = m.wilson_ci(50, 100)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)


def test_supports_fmr_rule() -> None:
    assert m.supports_fmr(1000, 1e-3) and not m.supports_fmr(999, 1e-3)


def test_fnir_at_fpir() -> None:
    nonmated = np.array([0.1, 0.2, 0.3, 0.4])
    mated = np.array([0.9, 0.35, 0.5])
    hit = np.array([True, True, False])
    # FPIR 0.25: one non-mated search may pass, so t is just above 0.3: 0.9 and 0.35 are
    # found at rank 1 above t, the third search's rank-1 candidate is wrong.
    assert m.fnir_at_fpir(mated, hit, nonmated, 0.25) == pytest.approx(1 / 3)
    assert m.fnir_at_fpir(mated, hit, nonmated, 0.0) == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    gen, imp = rng.normal(1, 0.3, 300), rng.normal(0, 0.3, 3000)
    lo, hi = m.bootstrap_ci(gen, imp, "eer", reps=100)
    assert lo <= m.eer(gen, imp) <= hi
