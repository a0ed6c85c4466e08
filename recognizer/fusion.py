"""Calibrated fusion of plate and face evidence into one log-likelihood ratio (LLR).

Each factor becomes an LLR, log P(evidence | genuine payer) / P(evidence | impostor), with
distributions calibrated from data by `scripts/calibrate_fusion.py`:

- plate: the category of the plate evidence (exact read of a bound plate, bound plate among the
  candidates, no match, absent), with the impostor side including a prior rate of cloned plates
  (a clone is read like the genuine plate; no OCR can tell them apart);
- face: a linear (logistic-regression) calibration of the cosine score, the standard monotone
  calibration for biometric scores.

The factors are treated as independent given the hypothesis, so LLRs add. The false-accept
probability of a fused threshold t is

    FAR(t) = sum over plate categories c of  P(c | impostor) * P(face LLR >= t - LLR(c) | impostor)

where the impostor face tail (:class:`ImpostorTail`) is kept per population group: empirical
while a group holds at least `min_tail_count` scores above, beyond a conservative exponential
upper tail (the sample cannot show 1e-5 directly; where it extrapolates it says so), the
heaviest group's rate times a margin chosen by leaving each group out. A payer with k enrolled
faces scores by the best one, so an impostor gets k tries: 1 - (1 - tail)^k. When the face was
found by a 1:N search over N identities rather than compared 1:1 with the payer, its tail is
the chance that the best of N (x k) impostors passes, with the per-comparison tail never below
what the data can show, 1/(n_impostor + 1).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np


class PlateEvidence(StrEnum):
    EXACT = "exact"  # the best read equals a bound plate
    CANDIDATE = "candidate"  # a bound plate is among the reader's other candidates
    NO_MATCH = "no_match"  # a plate was read, but it is not this payer's
    ABSENT = "absent"  # no plate evidence at all (no frame, or nothing readable)


@dataclass(frozen=True, slots=True)
class LinearLLR:
    """llr(s) = slope * s + offset, in natural-log units."""

    slope: float
    offset: float

    def __call__(self, score: float) -> float:
        return self.slope * score + self.offset

    def inverse(self, llr: float) -> float:
        return (llr - self.offset) / self.slope


def fit_linear_llr(genuine: np.ndarray, impostor: np.ndarray, iters: int = 50) -> LinearLLR:
    """Prior-balanced logistic regression: the classes weigh equally, so the fitted log-odds
    are an LLR independent of how many pairs of each kind the data had."""
    s = np.concatenate([genuine, impostor]).astype(np.float64)
    y = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    w = np.where(y == 1, 0.5 / len(genuine), 0.5 / len(impostor))
    x = np.stack([s, np.ones_like(s)], axis=1)
    theta = np.zeros(2)
    for _ in range(iters):  # Newton-Raphson; converges in a handful of steps
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (w * (y - p))
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return LinearLLR(float(theta[0]), float(theta[1]))


Z95 = 1.6448536269514722  # one-sided 95% normal quantile


def _chi2_quantile(p_z: float, k: int) -> float:
    """Chi-square quantile with k degrees of freedom at the normal quantile p_z
    (Wilson-Hilferty; within 1% for k >= 10, which is all it is used for)."""
    c = 2.0 / (9.0 * k)
    return k * (1.0 - c + p_z * math.sqrt(c)) ** 3


@dataclass(frozen=True, slots=True)
class ImpostorTail:
    """P(score >= s | impostor), estimated so that it transfers to populations it has not seen.

    The impostor scores are kept per population (`groups`: e.g. asianfaces_cn, lfw_subset,
    att_orl, lfw10+misc), because a pooled sample dilutes the heaviest population's tail: the
    pooled rate was 2-4x optimistic on faces it had not seen (issue 17). For each group g:

    - empirical, k_g(s) / n_g, while at least `min_tail_count` of its scores lie at or above s;
    - beyond, where the data runs out, an exponential tail fitted to those top scores (the
      last `min_tail_count` exceedances over u_g) with its decay rate at the 95% lower
      confidence bound: rate(u_g) * exp(-lambda_lo * (s - u_g)). Impostor cosine scores have
      log-concave tails (Gaussian-like or lighter, being bounded by 1), and a log-concave
      tail falls at least as fast as the exponential that matches it at u_g, so this is an
      upper bound, not a guess; it says so (:meth:`extrapolated`).

    The estimate is the largest group's, times `margin` (a safety factor chosen by leaving
    each group out in turn: `python -m benchmarks calibration`). Below the rule-of-succession
    floor 1/(n+1) only the fitted tail speaks (a 1:1 estimate, marked extrapolated); the 1:N
    path never goes below the floor (see FusionModel.far).
    """

    groups: dict[str, tuple[float, ...]]  # group -> its impostor scores, sorted ascending
    min_tail_count: int = 25
    margin: float = 1.0

    @classmethod
    def fit(
        cls,
        impostor: np.ndarray | dict[str, np.ndarray],
        min_tail_count: int = 25,
        margin: float = 1.0,
    ) -> ImpostorTail:
        """From one array (one population) or a {group: scores} mapping."""
        raw = impostor if isinstance(impostor, dict) else {"all": impostor}
        groups = {
            g: tuple(float(v) for v in np.sort(np.asarray(x, np.float64)))
            for g, x in raw.items()
            if len(x) > min_tail_count
        }
        if not groups:
            raise ValueError(f"no group holds more than {min_tail_count} impostor scores")
        return cls(groups, min_tail_count, margin)

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.groups.values())

    @property
    def floor(self) -> float:
        """The smallest rate the data can show: with n impostor scores and none above, the
        rule of succession gives 1/(n+1)."""
        return 1.0 / (self.n + 1)

    def _group(self, scores: tuple[float, ...], s: float) -> tuple[float, bool]:
        n, m = len(scores), self.min_tail_count
        above = n - bisect_left(scores, s)
        if above >= m:
            return above / n, False
        u = scores[n - m - 1]  # the m top scores are exceedances over u
        excess = sum(scores[n - m :]) - m * u
        lam_lo = (m / max(excess, 1e-12)) * _chi2_quantile(-Z95, 2 * m) / (2 * m)
        return (m / n) * math.exp(-lam_lo * (s - u)), True

    def _estimate(self, score: float) -> tuple[float, bool]:
        best, extrapolated = 0.0, False
        for scores in self.groups.values():
            rate, ext = self._group(scores, score)
            if rate > best:
                best, extrapolated = rate, ext
        return min(1.0, self.margin * best), extrapolated

    def __call__(self, score: float) -> float:
        return self._estimate(float(score))[0]

    def extrapolated(self, score: float) -> bool:
        """True where the estimate comes from the fitted tail, not from counted scores."""
        return self._estimate(float(score))[1]

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "per-group empirical + exponential upper tail",
            "min_tail_count": self.min_tail_count,
            "margin": self.margin,
            "groups": {g: list(v) for g, v in self.groups.items()},
        }

    @classmethod
    def from_json(cls, t: dict) -> ImpostorTail:  # type: ignore[type-arg]
        if "groups" not in t:  # release 0.1 files: one pooled sample (its Gaussian is not used)
            scores = np.asarray(t["scores"], np.float64)
            return cls.fit(scores, max(1, min(int(t.get("min_tail_count", 10)), len(scores) - 1)))
        return cls({g: tuple(v) for g, v in t["groups"].items()}, t["min_tail_count"], t["margin"])


_MATCHES = (PlateEvidence.EXACT, PlateEvidence.CANDIDATE)


@dataclass(frozen=True, slots=True)
class PlateModel:
    """The plate factor: P(category | genuine) and P(category | impostor vehicle).

    An impostor vehicle either carries a clone of the payer's plate (prior q, a site
    parameter) or an unrelated plate. A clone is read exactly like the genuine plate, so

        P(c | impostor) = q * P(c | genuine) + (1 - q) * P(c | unrelated plate)

    for c in (exact, candidate), where P(c | unrelated plate) is the measured rate at which
    another plate's read lands on a bound plate (`misread`). The clone prior enters both
    categories, so a candidate match is never stronger evidence than an exact read (and the
    LLR of a candidate is capped at the exact one's, should the data ever say otherwise).
    """

    genuine: dict[str, float]
    misread: dict[str, float]  # "exact", "candidate": an unrelated plate read as a bound one
    clone_prior: float = 0.05
    # The reader's confidence (product of its per-character probabilities) below which an
    # exact read is not sure enough to pay alone on the plate-only tier, nor to turn its own
    # candidates into evidence against the plates they name. Chosen by
    # scripts/calibrate_fusion.py on crops and synthetic frames so that at most 0.5% of
    # correct reads fall below it; 0 in files made before it (no bar).
    sure_confidence: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.clone_prior < 1.0:
            raise ValueError(f"clone_prior must be within [0, 1), got {self.clone_prior}")
        if not 0.0 <= self.sure_confidence < 1.0:
            raise ValueError(f"sure_confidence must be within [0, 1), got {self.sure_confidence}")

    def impostor(self, clone_prior: float | None = None) -> dict[PlateEvidence, float]:
        q = self.clone_prior if clone_prior is None else clone_prior
        out = {c: q * self.genuine[c] + (1.0 - q) * self.misread[c] for c in _MATCHES}
        out[PlateEvidence.NO_MATCH] = 1.0 - sum(out.values())
        return out

    def llr(self, evidence: PlateEvidence, clone_prior: float | None = None) -> float:
        if evidence is PlateEvidence.ABSENT:
            return 0.0  # no evidence either way
        imp = self.impostor(clone_prior)
        value = math.log(self.genuine[evidence] / imp[evidence])
        if evidence is PlateEvidence.CANDIDATE:
            exact = math.log(self.genuine[PlateEvidence.EXACT] / imp[PlateEvidence.EXACT])
            value = min(value, exact)
        return value


def lowest_score_at(rate: Callable[[float], float], target: float) -> float:
    """The lowest cosine score whose `rate` (falling as the score rises) is at most `target`,
    by bisection over [-1, 1]; 1.0 when no score reaches it."""
    lo, hi = -1.0, 1.0
    if rate(hi) > target:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rate(mid) <= target else (mid, hi)
    return hi


def one_to_n(p: float, searched: int) -> float:
    """P(the best of `searched` independent impostors passes) when one passes with p:
    1 - (1 - p)^N, computed without cancellation for tiny p."""
    if searched <= 1 or p <= 0.0:
        return p
    if p >= 1.0:
        return 1.0
    return -math.expm1(searched * math.log1p(-p))


@dataclass(frozen=True, slots=True)
class FusionResult:
    plate_llr: float
    face_llr: float
    fused_llr: float
    estimated_far: float
    searched: int = 0  # 0: the face was compared 1:1; N: a 1:N estimate over N identities


@dataclass(frozen=True, slots=True)
class FusionModel:
    face_llr: LinearLLR
    face_tail: ImpostorTail
    plate: PlateModel
    face_llr_clip: float = 25.0  # a single factor never claims more than e^25
    meta: dict[str, object] = field(default_factory=dict)

    def face(self, score: float | None) -> float:
        if score is None:
            return 0.0
        return float(np.clip(self.face_llr(score), -self.face_llr_clip, self.face_llr_clip))

    def _face_tail_llr(self, llr: float) -> float:
        """P(face LLR >= llr | impostor)."""
        if llr <= -self.face_llr_clip:
            return 1.0
        if llr > self.face_llr_clip:
            return 0.0
        return self.face_tail(self.face_llr.inverse(llr))

    def far(
        self,
        threshold: float,
        *,
        face_present: bool = True,
        plate_present: bool = True,
        searched: int = 0,
        clone_prior: float | None = None,
        templates: int = 1,
    ) -> float:
        """P(fused LLR >= threshold | impostor) for the factors an event has.

        `searched` = N >= 1: the face was found by a 1:N search over N identities, so the
        face term is the chance that the best of N impostors scores this high.
        `templates` = k: each identity holds k enrolled faces and scores by its best one, so
        an impostor gets k comparisons per identity: 1 - (1 - p)^k (k x N in all for 1:N).
        Measured: with 2 and 3 photos per payer the observed false-match rate at the gate's
        operating score is 1.6x and 2x the one-photo rate (benchmarks/results/calibration)."""
        if plate_present:
            imp = self.plate.impostor(clone_prior)
            cats = [(c, imp[c], self.plate.llr(c, clone_prior)) for c in imp]
        else:
            cats = [(PlateEvidence.ABSENT, 1.0, 0.0)]
        k = max(1, int(templates))
        total = 0.0
        for _, p_c, llr_c in cats:
            rest = threshold - llr_c
            if face_present and searched:
                # 1:N multiplies any error of the extrapolated tail by N, so no comparison is
                # taken as rarer than the data can show (1/(n+1)).
                p_face = max(self._face_tail_llr(rest), self.face_tail.floor)
                total += p_c * one_to_n(p_face, searched * k)
            elif face_present:
                total += p_c * one_to_n(self._face_tail_llr(rest), k)
            else:
                total += p_c * (1.0 if rest <= 0 else 0.0)
        return min(total, 1.0)

    def face_score_at(self, fmr: float) -> float:
        """The lowest cosine score whose estimated 1:1 false-match rate (the impostor tail,
        extrapolated where the data runs out) is at most `fmr`: the policy's face floor."""
        return lowest_score_at(self.face_tail, fmr)

    def threshold_for(
        self,
        target_far: float,
        *,
        face_present: bool = True,
        plate_present: bool = True,
        searched: int = 0,
        templates: int = 1,
    ) -> float:
        """The smallest fused LLR threshold whose FAR is at most the target (bisection)."""
        lo, hi = -60.0, 60.0
        for _ in range(100):
            mid = (lo + hi) / 2
            far = self.far(
                mid,
                face_present=face_present,
                plate_present=plate_present,
                searched=searched,
                templates=templates,
            )
            if far > target_far:
                lo = mid
            else:
                hi = mid
        return hi

    def fuse(
        self,
        plate: PlateEvidence,
        face_score: float | None,
        *,
        searched: int = 0,
        clone_prior: float | None = None,
        templates: int = 1,
    ) -> FusionResult:
        """`templates`: enrolled faces of the identity the face was scored against (its best
        one counts), so the impostor side gets that many comparisons."""
        p = self.plate.llr(plate, clone_prior)
        f = self.face(face_score)
        fused = p + f
        far = self.far(
            fused,
            face_present=face_score is not None,
            plate_present=plate is not PlateEvidence.ABSENT,
            searched=searched if face_score is not None else 0,
            clone_prior=clone_prior,
            templates=templates,
        )
        return FusionResult(p, f, fused, far, searched)

    # --- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "face_llr": asdict(self.face_llr),
            "face_tail": self.face_tail.to_json(),
            "plate": {
                "genuine": self.plate.genuine,
                "misread": self.plate.misread,
                "clone_prior": self.plate.clone_prior,
                "sure_confidence": self.plate.sure_confidence,
            },
            "face_llr_clip": self.face_llr_clip,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict) -> FusionModel:  # type: ignore[type-arg]
        return cls(
            face_llr=LinearLLR(**data["face_llr"]),
            face_tail=ImpostorTail.from_json(data["face_tail"]),
            plate=_plate_from_json(data["plate"], data.get("meta", {})),
            face_llr_clip=data.get("face_llr_clip", 25.0),
            meta=data.get("meta", {}),
        )

    @classmethod
    def load(cls, path: Path) -> FusionModel:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")


def _plate_from_json(plate: dict, meta: dict) -> PlateModel:  # type: ignore[type-arg]
    """Current files hold the misread rates and the clone prior; files of release 0.1.0 held
    the impostor rates with the clone prior added to the exact one only."""
    if "misread" in plate:
        return PlateModel(
            plate["genuine"],
            plate["misread"],
            plate.get("clone_prior", 0.05),
            plate.get("sure_confidence", 0.0),
        )
    q = float(meta.get("clone_rate", 0.05))
    imp = plate["impostor"]
    misread = {"exact": max(imp["exact"] - q, 0.0), "candidate": imp["candidate"]}
    return PlateModel(plate["genuine"], misread, q)
