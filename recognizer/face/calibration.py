"""Face score calibration: the threshold and the empirical error rates behind it.

Written by scripts/calibrate_faces.py from genuine and impostor cosine scores on the sample
faces. Scores are stored either as plain lists or, compactly, as {"values": [...],
"counts": [...]} (scores rounded to 1e-4 with their multiplicities).

Files that hold the impostor scores per population group (`impostor_groups`, written since
issue 17) estimate the false-match rate with the same per-group tail as the gate's fusion
(:class:`recognizer.fusion.ImpostorTail`: the largest group's rate, an exponential upper tail
where a group's data runs out, times the margin chosen by leaving each group out); older files
use the pooled empirical rate.

Honest floor: a score above every impostor seen does not mean FMR 0. With n impostor
comparisons and none at or above the score, the rule of succession gives 1/(n+1), so
:meth:`FaceCalibration.fmr_at` never reports less than that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recognizer.fusion import ImpostorTail, lowest_score_at

SCORE_FLOOR_NOTE = (
    "fmr_at returns 1/(n_impostor+1) for scores above every impostor score: the data can "
    "not show a lower false-match rate than that, so none is claimed."
)


def _distribution(raw: Any) -> tuple[np.ndarray, np.ndarray]:
    """(unique sorted values, counts) from a list of scores or a {values, counts} dict."""
    if isinstance(raw, dict):
        values = np.asarray(raw["values"], dtype=np.float64)
        counts = np.asarray(raw["counts"], dtype=np.int64)
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        uniq, inverse = np.unique(values, return_inverse=True)
        return uniq, np.bincount(inverse, weights=counts).astype(np.int64)
    uniq, counts = np.unique(np.asarray(raw, dtype=np.float64), return_counts=True)
    return uniq, counts.astype(np.int64)


def compact(scores: np.ndarray, decimals: int = 4) -> dict[str, list[float] | list[int]]:
    """Scores as rounded values with counts: small JSON, same error rates to 1e-4."""
    uniq, counts = np.unique(
        np.round(np.asarray(scores, dtype=np.float64), decimals), return_counts=True
    )
    return {"values": [round(float(v), decimals) for v in uniq], "counts": counts.tolist()}


@dataclass(frozen=True, slots=True)
class FaceCalibration:
    threshold: float
    impostor_values: np.ndarray = field(repr=False)  # unique scores, ascending
    impostor_counts: np.ndarray = field(repr=False)
    genuine_values: np.ndarray = field(repr=False)
    genuine_counts: np.ndarray = field(repr=False)
    model: str = ""
    note: str = ""
    score_floor_note: str = SCORE_FLOOR_NOTE
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    tail: ImpostorTail | None = field(default=None, repr=False)  # per-group, when the file has it

    @property
    def n_impostor(self) -> int:
        return int(self.impostor_counts.sum())

    @property
    def n_genuine(self) -> int:
        return int(self.genuine_counts.sum())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceCalibration:
        iv, ic = _distribution(data["impostor_scores"])
        gv, gc = _distribution(data.get("genuine_scores", []))
        if ic.sum() == 0:
            raise ValueError("face calibration holds no impostor scores")
        known = {"threshold", "impostor_scores", "genuine_scores", "model", "note"}
        tail = None
        if data.get("impostor_groups"):
            tail = ImpostorTail.fit(
                {g: np.repeat(*_distribution(raw)) for g, raw in data["impostor_groups"].items()},
                int(data.get("tail_min_count", 25)),
                float(data.get("tail_margin", 1.0)),
            )
            known.add("impostor_groups")
        return cls(
            threshold=float(data["threshold"]),
            impostor_values=iv,
            impostor_counts=ic,
            genuine_values=gv,
            genuine_counts=gc,
            model=str(data.get("model", "")),
            note=str(data.get("note", "")),
            meta={k: v for k, v in data.items() if k not in known},
            tail=tail,
        )

    @classmethod
    def load(cls, path: Path | str) -> FaceCalibration:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def fmr_at(self, score: float) -> float:
        """The per-group tail estimate when the file has groups, else the fraction of impostor
        scores >= score, linearly interpolated; never below the floor 1/(n_impostor+1)."""
        n = self.n_impostor
        if self.tail is not None:
            return max(self.tail(float(score)), 1.0 / (n + 1))
        # at_or_above[j]: impostors scoring >= values[j]; falls as the score rises
        at_or_above = n - np.concatenate([[0], np.cumsum(self.impostor_counts)[:-1]])
        s = float(score)
        if s <= self.impostor_values[0]:
            return 1.0
        if s > self.impostor_values[-1]:
            return 1.0 / (n + 1)
        rate = float(np.interp(s, self.impostor_values, at_or_above / n))
        return max(rate, 1.0 / (n + 1))

    def score_at(self, fmr: float) -> float:
        """The lowest score whose estimated false-match rate is at most `fmr` (bisection over
        the cosine range; fmr_at falls as the score rises)."""
        return lowest_score_at(self.fmr_at, fmr)

    def fnmr_at(self, score: float) -> float:
        """Fraction of genuine scores < score, linearly interpolated; 0 with no genuine data."""
        n = self.n_genuine
        if n == 0:
            return 0.0
        below = np.concatenate([[0], np.cumsum(self.genuine_counts)[:-1]])
        s = float(score)
        if s <= self.genuine_values[0]:
            return 0.0
        if s > self.genuine_values[-1]:
            return 1.0
        return float(np.interp(s, self.genuine_values, below / n))
