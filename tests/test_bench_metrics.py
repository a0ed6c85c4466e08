"""Benchmark metric functions on tiny data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from devtools import metrics as m


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


def test_plate_text_checks_count_grammar_generic_and_truncated_reads() -> None:
    from benchmarks.plates import PlateOutcome, SystemRun, text_checks, truncated

    outcomes = (
        PlateOutcome("a.jpg", "皖AD14488", "皖AD1448", "green_new_energy", "green_new_energy"),
        PlateOutcome("b.jpg", "皖A12345", "皖A1234", "yellow", "yellow_two_row"),
        PlateOutcome("c.jpg", "皖A12345", "", "blue", ""),  # no read is not a truncated read
        PlateOutcome("d.jpg", "皖A12345", "皖A12345", "blue", "blue"),
    )
    texts = ("皖AD1448", "皖A1234", "D9823", "湘A669", "皖A12345")
    run = SystemRun("ours", outcomes, 0, {}, 0, texts)
    assert [truncated(o) for o in outcomes] == [True, True, False, False]
    c = text_checks(run)
    # 皖AD1448 is an ordinary 7-character plate; 皖A1234 and 湘A669 are no plate of either
    # pattern (a CJK character); D9823 passes the generic pattern alone.
    assert (c.texts, c.cn_valid, c.generic_only, c.neither) == (5, 2, 1, 2)
    assert (c.truncated_8, c.truncated_two_row) == (1, 1)


def test_the_gate_mix_sends_seven_payers_in_ten() -> None:
    from benchmarks.service import AUTH_MIX, GateEvents, authorize_calls

    sent: list[bytes] = []

    class _Gate:
        def Authorize(self, request: object, **kw: object) -> None:
            sent.append(request.vehicle_image)  # type: ignore[attr-defined]

    class _Client:
        gate, metadata = _Gate(), ()

    events = GateEvents(((b"p1", b"f"), (b"p2", b"f")), ((b"s1", b"f"), (b"s2", b"f")))
    mix = authorize_calls(_Client(), events)[AUTH_MIX]
    for i in range(100):
        mix(i)
    assert sum(v.startswith(b"p") for v in sent) == 70
    assert set(sent) == {b"p1", b"p2", b"s1", b"s2"}  # every event of both kinds is sent
