"""Calibrated fusion of plate and face evidence into one log-likelihood ratio (LLR).

Each factor becomes an LLR, log P(evidence | genuine payer) / P(evidence | impostor), with
distributions calibrated from data by `scripts/calibrate_fusion.py`:

- plate: the category of the plate evidence (exact read of a bound plate, bound plate among the
  candidates, no match, absent), with the impostor side including a prior rate of cloned plates
  (a clone reads exactly; no OCR can see it);
- face: a linear (logistic-regression) calibration of the cosine score, the standard monotone
  calibration for biometric scores.

The factors are treated as independent given the hypothesis, so LLRs add. The false-accept
probability of a fused threshold t is

    FAR(t) = sum over plate categories c of  P(c | impostor) * P(face LLR >= t - LLR(c) | impostor)

where the impostor face tail is empirical while it holds at least `min_tail_count` scores and a
Gaussian fit beyond (the score-level extrapolation: the sample cannot show 1e-5 directly).
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


@dataclass(frozen=True, slots=True)
class PlateModel:
    """P(category | genuine) and P(category | impostor) for each plate evidence category."""

    genuine: dict[str, float]
    impostor: dict[str, float]

    def llr(self, evidence: PlateEvidence) -> float:
        if evidence is PlateEvidence.ABSENT:
            return 0.0  # no evidence either way
        return math.log(self.genuine[evidence] / self.impostor[evidence])


@dataclass(frozen=True, slots=True)
class FusionResult:
    plate_llr: float
    face_llr: float
    fused_llr: float
    estimated_far: float


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
        self, threshold: float, *, face_present: bool = True, plate_present: bool = True
    ) -> float:
        """P(fused LLR >= threshold | impostor) for the factors an event has."""
        cats = (
            [c for c in PlateEvidence if c is not PlateEvidence.ABSENT]
            if plate_present
            else [PlateEvidence.ABSENT]
        )
        total = 0.0
        for c in cats:
            p_c = self.plate.impostor[c] if plate_present else 1.0
            rest = threshold - self.plate.llr(c)
            if face_present:
                total += p_c * self._face_tail_llr(rest)
            else:
                total += p_c * (1.0 if rest <= 0 else 0.0)
        return total

    def threshold_for(
        self, target_far: float, *, face_present: bool = True, plate_present: bool = True
    ) -> float:
        """The smallest fused LLR threshold whose FAR is at most the target (bisection)."""
        lo, hi = -60.0, 60.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if self.far(mid, face_present=face_present, plate_present=plate_present) > target_far:
                lo = mid
            else:
                hi = mid
        return hi

    def fuse(self, plate: PlateEvidence, face_score: float | None) -> FusionResult:
        p = self.plate.llr(plate)
        f = self.face(face_score)
        fused = p + f
        far = self.far(
            fused,
            face_present=face_score is not None,
            plate_present=plate is not PlateEvidence.ABSENT,
        )
        return FusionResult(p, f, fused, far)

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
            "plate": {"genuine": self.plate.genuine, "impostor": self.plate.impostor},
            "face_llr_clip": self.face_llr_clip,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict) -> FusionModel:  # type: ignore[type-arg]
        t = data["face_tail"]
        return cls(
            face_llr=LinearLLR(**data["face_llr"]),
            face_tail=ImpostorTail(tuple(t["scores"]), t["mean"], t["std"], t["min_tail_count"]),
            plate=PlateModel(data["plate"]["genuine"], data["plate"]["impostor"]),
            face_llr_clip=data.get("face_llr_clip", 25.0),
            meta=data.get("meta", {}),
        )

    @classmethod
    def load(cls, path: Path) -> FusionModel:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
