"""Validation of the liveness recipe that mirrors the field (issue 27), on a corpus of
benchmarks/pad_corpus.py: every fold leaves people *and* a camera or subjects out, its model
and thresholds come from its training part only (benchmarks/pad_model.py `train`: inner folds
of the same shape), and it is reported on the left-out part at those thresholds.

- :func:`leave_set_out`: each colour face set (a camera, with its synthetic attacks) left out
  in turn; NUAA and the other sets train.
- :func:`leave_subjects_out`: NUAA subjects left out (one per fold, or `k` groups); every
  face set trains.
- :func:`cross_attack`: a model trained on bona fide + prints only, scored on the replays
  of the left-out face set, and a model trained on bona fide + replays only (no print at all,
  NUAA's real ones included), scored on the left-out set's prints and on NUAA's real prints
  of left-out subjects.

APCER: attacks at or above the fold's live threshold (accepted as LIVE). BPCER: bona fide
below it (not LIVE). "called ATTACK": bona fide below the fold's attack threshold, but for
faces cropped with a shrunk context, which the service never calls ATTACK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks import pad_model as pm
from benchmarks.pad_corpus import Corpus


@dataclass(frozen=True, slots=True)
class Rate:
    errors: int
    total: int

    @property
    def rate(self) -> float:
        return self.errors / self.total if self.total else float("nan")


@dataclass(frozen=True, slots=True)
class FoldReport:
    protocol: str  # "leave set out", "leave NUAA subjects out", "prints only", ...
    left_out: str  # the set or subjects
    l2: str  # each head's L2 strength
    attack_threshold: float
    live_threshold: float
    bpcer: Rate  # real (non-synthetic) bona fide of the left-out part, not LIVE
    called_attack: Rate  # the same, below the attack threshold
    bpcer_variants: Rate  # synthetic bona fide variants (another camera) not LIVE
    apcer_print: Rate
    apcer_replay: Rate


def _rate(mask: np.ndarray) -> Rate:
    return Rate(int(mask.sum()), int(mask.size))


def synthetic_sources(c: Corpus) -> frozenset[str]:
    return frozenset(np.unique(c.source[c.synthetic]).tolist())


def fit(c: Corpus, x: np.ndarray, train: np.ndarray) -> pm.Trained:
    """The recipe on the `train` samples, less those cropped with a shrunk context (they are
    scored wherever they are left out, never trained on: benchmarks/pad_corpus.py)."""
    t = train & c.trainable
    return pm.train(x[t], c.live[t], c.group[t], c.source[t], synthetic_sources(c))


def report(
    protocol: str,
    left_out: str,
    c: Corpus,
    x: np.ndarray,
    trained: pm.Trained,
    test: np.ndarray,
) -> tuple[FoldReport, np.ndarray]:
    s = pm.predict(trained.classifier, x[test])
    th = trained.thresholds
    kind, syn = c.kind[test], c.synthetic[test]
    bona = (kind == "live") & ~syn
    var = (kind == "live") & syn
    # A face cropped with a shrunk context is never called ATTACK (liveness.SHRUNK).
    attack = (s < th.attack) & c.trainable[test]
    return (
        FoldReport(
            protocol,
            left_out,
            trained.l2,
            th.attack,
            th.live,
            _rate(s[bona] < th.live),
            _rate(attack[bona]),
            _rate(s[var] < th.live),
            _rate(s[kind == "print"] >= th.live),
            _rate(s[kind == "replay"] >= th.live),
        ),
        s,
    )


def face_sets(c: Corpus) -> list[str]:
    return sorted(synthetic_sources(c))


def real_sources(c: Corpus) -> list[str]:
    return sorted(set(np.unique(c.source).tolist()) - synthetic_sources(c))


def leave_set_out(c: Corpus, x: np.ndarray) -> list[FoldReport]:
    out = []
    for name in face_sets(c):
        test = c.source == name
        out.append(report("leave set out", name, c, x, fit(c, x, ~test), test)[0])
    return out


def subject_folds(subjects: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """k groups of subjects (0 or >= len: one subject per fold), in sorted order."""
    subs = sorted(subjects)
    if k <= 0 or k >= len(subs):
        return [(s,) for s in subs]
    return [tuple(subs[i::k]) for i in range(k)]


def leave_subjects_out(c: Corpus, x: np.ndarray, k: int = 0) -> list[FoldReport]:
    out = []
    for src in real_sources(c):
        subjects = sorted(set(c.group[c.source == src].tolist()))
        for fold in subject_folds(subjects, k):
            test = np.isin(c.group, fold)
            name = ",".join(g.split("/", 1)[1] for g in fold)
            out.append(report(f"leave {src} subjects out", name, c, x, fit(c, x, ~test), test)[0])
    return out


def cross_attack(c: Corpus, x: np.ndarray, k: int = 3) -> list[FoldReport]:
    """Prints-only and replays-only models, each scored on the attack type it never saw, of
    people it never saw."""
    out = []
    no_replay = c.kind != "replay"
    no_print = c.kind != "print"
    for name in face_sets(c):
        test = c.source == name
        replays, prints = test & (c.kind == "replay"), test & (c.kind == "print")
        out.append(report("prints only", name, c, x, fit(c, x, ~test & no_replay), replays)[0])
        out.append(report("replays only", name, c, x, fit(c, x, ~test & no_print), prints)[0])
    for src in real_sources(c):
        subjects = sorted(set(c.group[c.source == src].tolist()))
        for fold in subject_folds(subjects, k):
            test = np.isin(c.group, fold)
            name = f"{src} " + ",".join(g.split("/", 1)[1] for g in fold)
            out.append(report("replays only", name, c, x, fit(c, x, ~test & no_print), test)[0])
    return out


def pooled(folds: Sequence[FoldReport], field: str) -> Rate:
    rates = [getattr(f, field) for f in folds]
    return Rate(sum(r.errors for r in rates), sum(r.total for r in rates))
