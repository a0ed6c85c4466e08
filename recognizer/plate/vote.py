"""Plate reads of several frames of one event, voted into one read per plate.

A frame may show several plates (a second car), so the reads are first tracked across frames:
a read joins the plate whose candidates share a text with its own (the most shared; one read
per frame each), else it starts a new plate. Per plate, its frames' grammar-valid candidates
are pooled and each text scores the sum over those frames of its log-probability there. A
text a frame's read did not list counts as at most `MISSING_PROBABILITY` in that frame (and
never more than the least likely text the read did list): the frame saw the plate and read
something else. A frame where a plate was not seen does not vote on it, and reads with no
valid text do not vote at all. The voted read's province is guessed unless a frame read it
(see `province_guessed`). Pure: no model, no store.
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


def province_guessed(text: str, reads: Sequence[PlateResult]) -> bool:
    """Whether the voted `text` has a guessed province: some frame's read guessed one, and no
    read that saw its province glyph (one not guessed) put this province first. A frame that
    saw the province backs it whichever frames read the rest; a guess that outvotes the
    frames that saw another province stays a guess."""
    return any(r.province_guessed for r in reads) and not any(
        not r.province_guessed and r.text[:1] == text[:1] for r in reads
    )


def vote(
    frames: Sequence[Sequence[PlateResult]],
    valid: Callable[[str], bool],
    max_candidates: int = 5,
) -> PlateResult | None:
    """The voted read of a burst, or None when no frame read a valid text.

    Its text is the winning text, its candidates the best `max_candidates` texts with the
    per-frame geometric mean of their probabilities; box, corners, type and character
    confidences come from the frame read that gave the winner its highest probability."""
    voters = [r for reads in frames for r in reads if _texts(r, valid)]
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
        province_guessed=province_guessed(best, voters),
    )


def _texts(read: PlateResult, valid: Callable[[str], bool]) -> set[str]:
    return {c.text for c in read.candidates if valid(c.text)}


def vote_plates(
    frames: Sequence[Sequence[PlateResult]],
    valid: Callable[[str], bool],
    max_candidates: int = 5,
) -> list[PlateResult]:
    """One voted read per plate tracked across the frames, the plate seen in most frames
    first (then the most confident); [] when no frame read a valid text."""
    tracks: list[tuple[set[str], dict[int, PlateResult]]] = []  # (texts, frame -> read)
    for f, reads in enumerate(frames):
        for read in reads:
            texts = _texts(read, valid)
            if not texts:
                continue
            open_ = [t for t in tracks if f not in t[1] and t[0] & texts]
            if open_:
                pool, seen = max(open_, key=lambda t: len(t[0] & texts))
                pool |= texts
                seen[f] = read
            else:
                tracks.append((set(texts), {f: read}))
    voted = [
        (len(seen), vote([[r] for r in seen.values()], valid, max_candidates)) for _, seen in tracks
    ]
    ranked = sorted(
        ((n, v) for n, v in voted if v is not None), key=lambda nv: (-nv[0], -nv[1].confidence)
    )
    return [v for _, v in ranked]
