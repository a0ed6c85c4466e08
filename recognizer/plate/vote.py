"""Plate reads of several frames of one event, voted into one read.

Every frame's grammar-valid candidates are pooled and each text scores the sum over frames
of its log-probability there (the best of the frame's reads that list it). A text a frame
did not list counts as at most `MISSING_PROBABILITY` in that frame (and never more than the
least likely text the frame did list): the frame saw a plate and it was not this one. Frames
that read no valid text do not vote. Pure: no model, no store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from recognizer.plate.types import PlateCandidate, PlateResult

MISSING_PROBABILITY = 1e-3  # about a fifth candidate of a clean read
_MIN_PROBABILITY = 1e-12  # a listed candidate of probability 0 still has a finite log


def _frame_votes(
    reads: Sequence[PlateResult], valid: Callable[[str], bool]
) -> dict[str, tuple[float, PlateResult]]:
    """One frame's valid texts with their best probability and the read that listed it."""
    out: dict[str, tuple[float, PlateResult]] = {}
    for read in reads:
        for cand in read.candidates:
            if not valid(cand.text):
                continue
            p = max(cand.probability, _MIN_PROBABILITY)
            if cand.text not in out or p > out[cand.text][0]:
                out[cand.text] = (p, read)
    return out


def vote(
    frames: Sequence[Sequence[PlateResult]],
    valid: Callable[[str], bool],
    max_candidates: int = 5,
) -> PlateResult | None:
    """The voted read of a burst, or None when no frame read a valid text.

    Its text is the winning text, its candidates the best `max_candidates` texts with the
    per-frame geometric mean of their probabilities; box, corners, type and character
    confidences come from the frame read that gave the winner its highest probability."""
    votes = [v for v in (_frame_votes(reads, valid) for reads in frames) if v]
    if not votes:
        return None
    floors = [math.log(min(MISSING_PROBABILITY, *(p for p, _ in v.values()))) for v in votes]
    texts = sorted({t for v in votes for t in v})  # sorted: ties fall the same way every time
    pairs = list(zip(votes, floors, strict=True))
    score = {t: sum(math.log(v[t][0]) if t in v else fl for v, fl in pairs) for t in texts}
    ranked = sorted(texts, key=lambda t: -score[t])[:max_candidates]
    best = ranked[0]
    _, source = max((v[best] for v in votes if best in v), key=lambda pr: pr[0])
    n = len(votes)
    cands = tuple(PlateCandidate(t, math.exp(score[t] / n)) for t in ranked)
    same = source.text == best
    return replace(
        source,
        text=best,
        confidence=cands[0].probability,
        char_confidences=source.char_confidences if same else (),
        candidates=cands,
        pattern_valid=True,
    )
