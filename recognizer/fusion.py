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

where the impostor face tail is empirical while it holds at least `min_tail_count` scores and a
Gaussian fit beyond (the score-level extrapolation: the sample cannot show 1e-5 directly).
When the face was found by a 1:N search over N identities rather than compared 1:1 with the
payer, its tail is the chance that the best of N impostors passes: 1 - (1 - tail)^N, with the
per-comparison tail never below what the data can show, 1/(n_impostor + 1).
"""

from __future__ import annotations

import json
import math
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


@dataclass(frozen=True, slots=True)
class ImpostorTail:
    """P(score >= s | impostor): empirical where at least `min_tail_count` scores lie above s;
    beyond, the larger of a Gaussian fit and the sparse empirical fraction."""

    scores: tuple[float, ...]  # sorted ascending
    mean: float
    std: float
    min_tail_count: int = 10

    @classmethod
    def fit(cls, impostor: np.ndarray, min_tail_count: int = 10) -> ImpostorTail:
        srt = np.sort(np.asarray(impostor, np.float64))
        return cls(
            tuple(float(v) for v in srt), float(srt.mean()), float(srt.std(ddof=1)), min_tail_count
        )

    @property
    def floor(self) -> float:
        """The smallest rate the data can show: with n impostor scores and none above, the
        rule of succession gives 1/(n+1)."""
        return 1.0 / (len(self.scores) + 1)

    def __call__(self, score: float) -> float:
        n = len(self.scores)
        above = n - int(np.searchsorted(self.scores, score, side="left"))
        if above >= self.min_tail_count:
            return above / n
        z = (score - self.mean) / self.std
        gauss = 0.5 * math.erfc(z / math.sqrt(2.0))
        # In the sparse tail take the larger (more cautious) of the fit and the few points
        # still above, capped at the value where the empirical part ends: monotone overall.
        return min(self.min_tail_count / n, max(gauss, above / n))


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

    def __post_init__(self) -> None:
        if not 0.0 <= self.clone_prior < 1.0:
            raise ValueError(f"clone_prior must be within [0, 1), got {self.clone_prior}")

    def impostor(self, clone_prior: float | None = None) -> dict[str, float]:
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
    ) -> float:
        """P(fused LLR >= threshold | impostor) for the factors an event has.

        `searched` = N >= 1: the face was found by a 1:N search over N identities, so the
        face term is the chance that the best of N impostors scores this high."""
        if plate_present:
            imp = self.plate.impostor(clone_prior)
            cats = [(c, imp[c], self.plate.llr(c, clone_prior)) for c in imp]
        else:
            cats = [(PlateEvidence.ABSENT, 1.0, 0.0)]
        total = 0.0
        for _, p_c, llr_c in cats:
            rest = threshold - llr_c
            if face_present and searched:
                # 1:N multiplies any error of the extrapolated tail by N, so no comparison is
                # taken as rarer than the data can show (1/(n+1)).
                p_face = max(self._face_tail_llr(rest), self.face_tail.floor)
                total += p_c * one_to_n(p_face, searched)
            elif face_present:
                total += p_c * self._face_tail_llr(rest)
            else:
                total += p_c * (1.0 if rest <= 0 else 0.0)
        return min(total, 1.0)

    def threshold_for(
        self,
        target_far: float,
        *,
        face_present: bool = True,
        plate_present: bool = True,
        searched: int = 0,
    ) -> float:
        """The smallest fused LLR threshold whose FAR is at most the target (bisection)."""
        lo, hi = -60.0, 60.0
        for _ in range(100):
            mid = (lo + hi) / 2
            far = self.far(
                mid, face_present=face_present, plate_present=plate_present, searched=searched
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
    ) -> FusionResult:
        p = self.plate.llr(plate, clone_prior)
        f = self.face(face_score)
        fused = p + f
        far = self.far(
            fused,
            face_present=face_score is not None,
            plate_present=plate is not PlateEvidence.ABSENT,
            searched=searched if face_score is not None else 0,
            clone_prior=clone_prior,
        )
        return FusionResult(p, f, fused, far, searched)

    # --- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "face_llr": asdict(self.face_llr),
            "face_tail": {
                "mean": self.face_tail.mean,
                "std": self.face_tail.std,
                "min_tail_count": self.face_tail.min_tail_count,
                "scores": list(self.face_tail.scores),
            },
            "plate": {
                "genuine": self.plate.genuine,
                "misread": self.plate.misread,
                "clone_prior": self.plate.clone_prior,
            },
            "face_llr_clip": self.face_llr_clip,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict) -> FusionModel:  # type: ignore[type-arg]
        t = data["face_tail"]
        return cls(
            face_llr=LinearLLR(**data["face_llr"]),
            face_tail=ImpostorTail(tuple(t["scores"]), t["mean"], t["std"], t["min_tail_count"]),
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
        return PlateModel(plate["genuine"], plate["misread"], plate.get("clone_prior", 0.05))
    q = float(meta.get("clone_rate", 0.05))
    imp = plate["impostor"]
    misread = {"exact": max(imp["exact"] - q, 0.0), "candidate": imp["candidate"]}
    return PlateModel(plate["genuine"], misread, q)
