"""Metric functions for the benchmarks (NIST FRVT/FATE conventions), pure numpy.

Scores are similarities: higher means "same". A comparison is accepted when score >= t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DetCurve:
    thresholds: np.ndarray  # descending
    fmr: np.ndarray  # impostor scores >= t / n_impostor
    fnmr: np.ndarray  # genuine scores < t / n_genuine


def det_curve(genuine: np.ndarray, impostor: np.ndarray) -> DetCurve:
    """One point at every distinct score, from the strictest threshold to the loosest."""
    g = np.sort(np.asarray(genuine, np.float64))
    i = np.sort(np.asarray(impostor, np.float64))
    t = np.unique(np.concatenate([g, i]))[::-1]
    fmr = (len(i) - np.searchsorted(i, t, side="left")) / len(i)
    fnmr = np.searchsorted(g, t, side="left") / len(g)
    return DetCurve(t, fmr, fnmr)


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float:
    """The smallest threshold whose FMR is at most `fmr` (a tie at t counts as a match)."""
    i = np.sort(np.asarray(impostor, np.float64))
    allowed = math.floor(fmr * len(i))  # how many impostors may score >= t
    if allowed >= len(i):
        return float(i[0])
    # Accept strictly above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(i[len(i) - allowed - 1], np.inf))


def fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> float:
    t = threshold_at_fmr(impostor, fmr)
    return float(np.mean(np.asarray(genuine) < t))


def supports_fmr(n_impostor: int, fmr: float) -> bool:
    """Whether a sample can estimate this FMR at all: it needs >= 1/fmr impostor pairs
    (and more for a tight interval). Rule of 3: zero errors in n bound the rate by 3/n."""
    return n_impostor * fmr >= 1.0


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(genuine > impostor) + 0.5 P(tie), via ranks (Mann-Whitney U)."""
    g = np.asarray(genuine, np.float64)
    i = np.asarray(impostor, np.float64)
    allv = np.concatenate([g, i])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: len(g)].sum() - len(g) * (len(g) + 1) / 2.0
    return float(u / (len(g) * len(i)))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Equal error rate: where the DET crosses FMR = FNMR (midpoint of the crossing step)."""
    det = det_curve(genuine, impostor)
    k = int(np.argmin(np.abs(det.fmr - det.fnmr)))
    return float((det.fmr[k] + det.fnmr[k]) / 2.0)


def bootstrap_ci(
    genuine: np.ndarray,
    impostor: np.ndarray,
    statistic: str,
    *,
    fmr: float = 1e-3,
    reps: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile bootstrap CI of 'fnmr', 'eer' or 'auc', resampling both score sets."""
    rng = np.random.default_rng(seed)
    g = np.asarray(genuine)
    i = np.asarray(impostor)
    fns = {
        "fnmr": lambda a, b: fnmr_at_fmr(a, b, fmr),
        "eer": eer,
        "auc": roc_auc,
    }
    fn = fns[statistic]
    vals = [
        fn(g[rng.integers(0, len(g), len(g))], i[rng.integers(0, len(i), len(i))])
        for _ in range(reps)
    ]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def wilson_ci(errors: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for an error rate; with zero errors the upper bound is
    z^2 / (n + z^2), about 3.84 / n: the honest limit of what n trials can show."""
    if n <= 0:
        return 0.0, 1.0
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    if not len(values):
        return {f"p{int(q)}": float("nan") for q in qs}
    arr = np.asarray(values, np.float64)
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}


def rank1(true_ids: Sequence[str], predicted: Sequence[str]) -> float:
    return float(np.mean([t == p for t, p in zip(true_ids, predicted, strict=True)]))


def fnir_at_fpir(
    mated_scores: np.ndarray, mated_hit: np.ndarray, nonmated_scores: np.ndarray, fpir: float
) -> float:
    """Open-set identification (NIST FRVT 1:N): FNIR at the threshold giving `fpir`.

    mated_scores: the score of the correct identity's best candidate (or -inf if absent);
    mated_hit: whether that candidate is rank-1; nonmated_scores: the top score of searches
    whose person is not enrolled."""
    t = threshold_at_fmr(nonmated_scores, fpir)
    ok = np.asarray(mated_hit, bool) & (np.asarray(mated_scores) >= t)
    return float(1.0 - ok.mean())
