"""`bench pad DIR`: presentation-attack detection (liveness), ISO/IEC 30107-3 metrics.

- Leave-subjects-out cross-validation on DIR (`live/<subject>/`, `print/<subject>/`): each
  fold's model (the recipe of `scripts/train_pad.py`: fixed ONNX features + logistic
  regression, regularisation and thresholds from leave-one-subject-out scores of the training
  subjects only) scores the held-out subjects; the decision threshold is never picked on the
  test fold. Per fold and pooled: APCER, BPCER, ACER at the training folds' threshold, and
  BPCER at APCER = 1% and 5% with a DET plot of the pooled out-of-fold scores.
- Latency per face of the shipped stage, measured in the same run as face detection.
- What the shipped stage does to genuine users: the BPCER on each face sample set (press
  photos, ID-style portraits, grayscale, tight grey crops): how many bona fide photos fail a
  required liveness check (not LIVE) and how many would be called an attack (ATTACK).

APCER: attacks accepted as bona fide (score >= threshold); BPCER: bona fide rejected.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import pad_model as pm
from benchmarks.datasets import discover_face_sets
from benchmarks.metrics import fnmr_at_fmr, percentiles, wilson_ci
from benchmarks.report import Report, decode_file, fmt, pct, plot_det, progress, shown
from recognizer.face.types import LivenessDecision


@dataclass(frozen=True, slots=True)
class FoldResult:
    subjects: tuple[str, ...]
    l2: float
    threshold: float  # live threshold from the training subjects
    attack_threshold: float
    n_bona: int
    n_attack: int
    apcer_errors: int
    bpcer_errors: int

    @property
    def apcer(self) -> float:
        return self.apcer_errors / max(1, self.n_attack)

    @property
    def bpcer(self) -> float:
        return self.bpcer_errors / max(1, self.n_bona)

    @property
    def acer(self) -> float:
        return (self.apcer + self.bpcer) / 2


def _folds(subjects: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """k groups of subjects (0 or >= len: one subject per fold), in sorted order."""
    subs = sorted(subjects)
    if k <= 0 or k >= len(subs):
        return [(s,) for s in subs]
    return [tuple(subs[i::k]) for i in range(k)]


def cross_validate(
    x: np.ndarray, live: np.ndarray, groups: np.ndarray, k: int
) -> tuple[list[FoldResult], np.ndarray]:
    """Per fold results and every sample's out-of-fold score."""
    scores = np.zeros(len(live))
    results = []
    for fold in _folds(sorted(set(groups.tolist())), k):
        test = np.isin(groups, fold)
        trained = pm.train(x[~test], live[~test], groups[~test])
        s = pm.predict(trained.classifier, x[test])
        scores[test] = s
        t = trained.thresholds.live
        lt = live[test]
        results.append(
            FoldResult(
                fold,
                trained.l2,
                t,
                trained.thresholds.attack,
                int(lt.sum()),
                int((~lt).sum()),
                int(np.sum(s[~lt] >= t)),
                int(np.sum(s[lt] < t)),
            )
        )
    return results, scores


@dataclass(frozen=True, slots=True)
class FaceSetResult:
    name: str
    grayscale: bool
    images: int
    faces: int
    not_live: int  # fails a required liveness check (UNCERTAIN or ATTACK)
    attack: int  # called an attack: DENY at a gate, refused at enrolment with the switch on

    @property
    def bpcer(self) -> float:
        return self.not_live / max(1, self.faces)

    @property
    def attack_rate(self) -> float:
        return self.attack / max(1, self.faces)


def face_sets_bpcer(root: Path, pipeline: Any, quick: bool) -> list[FaceSetResult]:
    out = []
    for fs in discover_face_sets(root):
        images = fs.images[::3] if quick else fs.images
        faces = not_live = attack = 0
        for im in progress(images, desc=f"liveness {fs.name}"):
            img = decode_file(im.path)
            if img is None:
                continue
            found = pipeline.detect(img, _largest())
            if not found:
                continue
            faces += 1
            lv = found[0][2]
            not_live += lv.decision is not LivenessDecision.LIVE
            attack += lv.decision is LivenessDecision.ATTACK
        out.append(FaceSetResult(fs.name, fs.grayscale, len(images), faces, not_live, attack))
    return out


def _largest() -> Any:
    from recognizer.face.types import Selection

    return Selection.LARGEST


def run(
    dataset: Path,
    out: Path,
    *,
    faces_root: Path | None,
    folds: int = 0,
    quick: bool = False,
) -> Path:
    from recognizer.face.pipeline import build_face_pipeline

    pipeline = build_face_pipeline()  # YuNet + SFace + the shipped liveness stage
    stage = pipeline.liveness
    samples = pm.load_pad_folder(dataset)
    if quick:
        samples = samples[::4]
    # Detection and the liveness stage timed in the same run, per frame and per face.
    kept, crops, no_face, det_ms, live_ms, shipped = [], [], [], [], [], []
    for s in progress(samples, desc="detect + liveness"):
        img = decode_file(s.path)
        if img is None:
            no_face.append(s)
            continue
        t0 = time.perf_counter()
        faces = pipeline.detector.detect(img)
        t1 = time.perf_counter()
        if not faces:
            no_face.append(s)
            continue
        face = max(faces, key=lambda f: f.area)
        (lv,) = stage.assess(img, [face])
        t2 = time.perf_counter()
        det_ms.append((t1 - t0) * 1e3)
        live_ms.append((t2 - t1) * 1e3)
        kept.append(s)
        shipped.append(lv.score)
        crops.append(stage.crops(img, [face])[0])
    x = pm.features(stage.model, np.stack(crops))  # the feature part of the shipped graph
    live = np.array([s.live for s in kept])
    groups = np.array([s.subject for s in kept])
    fold_results, oof = cross_validate(x, live, groups, folds)

    bona, attack = oof[live], oof[~live]
    apcer_err = sum(f.apcer_errors for f in fold_results)
    bpcer_err = sum(f.bpcer_errors for f in fold_results)
    pooled = {
        "apcer": apcer_err / len(attack),
        "apcer_ci": wilson_ci(apcer_err, len(attack)),
        "bpcer": bpcer_err / len(bona),
        "bpcer_ci": wilson_ci(bpcer_err, len(bona)),
        "bpcer_at_apcer_1pct": fnmr_at_fmr(bona, attack, 0.01),
        "bpcer_at_apcer_5pct": fnmr_at_fmr(bona, attack, 0.05),
        "n_bona": len(bona),
        "n_attack": len(attack),
    }
    pooled["acer"] = (pooled["apcer"] + pooled["bpcer"]) / 2
    out.mkdir(parents=True, exist_ok=True)
    det_png = plot_det(
        out / "pad_det.png",
        {"pooled out-of-fold": (bona, attack)},
        f"PAD, leave-subjects-out on {dataset.name} (print attacks)",
        xlabel="APCER (attacks accepted)",
        ylabel="BPCER (bona fide rejected)",
    )

    # The shipped model on subjects it never saw (train_pad.py holds some out).
    shipped_s = np.array(shipped)
    held = set(filter(None, stage.model.metadata.get("held_out", "").split(",")))
    ho = np.isin(groups, sorted(held)) if held else np.zeros(len(groups), bool)
    th = stage.thresholds
    held_out = None
    if ho.any():
        hl, hs = live[ho], shipped_s[ho]
        held_out = {
            "subjects": sorted(held),
            "n_bona": int(hl.sum()),
            "n_attack": int((~hl).sum()),
            "apcer": float(np.mean(hs[~hl] >= th.live)) if (~hl).any() else None,
            "bpcer": float(np.mean(hs[hl] < th.live)) if hl.any() else None,
            "attack_decisions_on_bona": float(np.mean(hs[hl] < th.attack)) if hl.any() else None,
        }

    face_sets = face_sets_bpcer(faces_root, pipeline, quick) if faces_root else []
    latency = {"detect_ms": percentiles(det_ms), "liveness_ms_per_face": percentiles(live_ms)}

    rep = Report("Presentation-attack detection (liveness)")
    rep.p(
        f"Data: `{shown(dataset)}`, {len(samples)} frames "
        f"({int(live.sum())} bona fide, {int((~live).sum())} print attacks with a face; "
        f"{len(no_face)} without a detected face, not scored), "
        f"{len(set(groups.tolist()))} subjects. **Claims are limited to print attacks in "
        "NUAA-like conditions** (one webcam, one room, photo and plain paper prints): no "
        "screen replays, masks or cut-outs were measured."
    )
    rep.h("Leave-subjects-out cross-validation")
    rep.p(
        "Each fold's model is trained on the other subjects only (features: the fixed part of "
        "the shipped graph; classifier, L2 strength and thresholds: from leave-one-subject-out "
        "scores of the training subjects). The threshold is the training subjects' equal-error "
        "point, never picked on the test fold. APCER = attacks scored >= threshold; "
        "BPCER = bona fide below it; ACER = their mean."
    )
    rep.table(
        ["test subjects", "bona fide", "attacks", "L2", "threshold", "APCER", "BPCER", "ACER"],
        [
            [
                ",".join(f.subjects),
                f.n_bona,
                f.n_attack,
                f.l2,
                fmt(f.threshold, 3),
                pct(f.apcer),
                pct(f.bpcer),
                pct(f.acer),
            ]
            for f in fold_results
        ],
    )
    rep.table(
        ["pooled", "value", "95% CI"],
        [
            ["APCER", pct(pooled["apcer"]), _ci(pooled["apcer_ci"])],
            ["BPCER", pct(pooled["bpcer"]), _ci(pooled["bpcer_ci"])],
            ["ACER", pct(pooled["acer"]), ""],
            ["BPCER @ APCER = 1%", pct(pooled["bpcer_at_apcer_1pct"]), ""],
            ["BPCER @ APCER = 5%", pct(pooled["bpcer_at_apcer_5pct"]), ""],
        ],
    )
    rep.p(
        "BPCER at a fixed APCER is read off the pooled out-of-fold scores (one model per "
        "fold, so the scores of different folds come from different models)."
    )
    rep.image(det_png, "DET")
    rep.h("Latency (same run as detection, one core)")
    rep.table(
        ["stage", "p50 ms", "p95 ms", "p99 ms"],
        [
            ["face detection (YuNet, 640x480 frame)", *_ms(latency["detect_ms"])],
            ["liveness per face (crop + model)", *_ms(latency["liveness_ms_per_face"])],
        ],
    )
    rep.h("The shipped model")
    rep.p(
        f"`models/trained/pad_nuaa.onnx` (trained by `scripts/train_pad.py` on subjects "
        f"{stage.model.metadata.get('subjects', '?')}): attack below {th.attack:.3f}, live "
        f"from {th.live:.3f}, uncertain between."
    )
    if held_out:
        rep.p(
            f"On its held-out subject(s) {', '.join(held_out['subjects'])} "
            f"({held_out['n_bona']} bona fide, {held_out['n_attack']} attacks): APCER "
            f"{pct(held_out['apcer'])}, BPCER {pct(held_out['bpcer'])}, bona fide called "
            f"ATTACK {pct(held_out['attack_decisions_on_bona'])}."
        )
    if face_sets:
        rep.h("Genuine users: BPCER on the face sample sets (shipped model)")
        rep.p(
            "Bona fide photos of real people, not prints held to a webcam: `not LIVE` fail a "
            "required liveness check (STEP_UP or DENY at a gate); `ATTACK` would be DENY at a "
            "gate with `require_liveness` and refused by EnrollFace with "
            "`enroll_require_liveness`. These sets are unlike the NUAA webcam frames the "
            "model was trained on."
        )
        rep.table(
            ["set", "kind", "faces", "BPCER (not LIVE)", "called ATTACK"],
            [
                [
                    r.name,
                    "grayscale" if r.grayscale else "colour",
                    r.faces,
                    pct(r.bpcer),
                    pct(r.attack_rate),
                ]
                for r in face_sets
            ],
        )
    rep.results = {
        "dataset": shown(dataset),
        "folds": [
            {
                "subjects": f.subjects,
                "l2": f.l2,
                "threshold": f.threshold,
                "attack_threshold": f.attack_threshold,
                "n_bona": f.n_bona,
                "n_attack": f.n_attack,
                "apcer": f.apcer,
                "bpcer": f.bpcer,
                "acer": f.acer,
            }
            for f in fold_results
        ],
        "pooled": pooled,
        "latency": latency,
        "no_face": [shown(s.path) for s in no_face],
        "shipped": {
            "attack_threshold": th.attack,
            "live_threshold": th.live,
            "held_out": held_out,
        },
        "face_sets": [
            {
                "name": r.name,
                "grayscale": r.grayscale,
                "images": r.images,
                "faces": r.faces,
                "bpcer": r.bpcer,
                "attack_rate": r.attack_rate,
            }
            for r in face_sets
        ],
        "quick": quick,
    }
    return rep.write(out)


def _ci(ci: tuple[float, float]) -> str:
    return f"{pct(ci[0])} – {pct(ci[1])}"


def _ms(p: dict[str, float]) -> list[str]:
    return [fmt(p["p50"], 2), fmt(p["p95"], 2), fmt(p["p99"], 2)]
