"""Choose the glimpse margin (recognizer/gate/evidence.py GLIMPSE_MARGIN) with face sets left out.

The gate completes a stranger's face (adds the mirror view) only when its front-view score
against the gallery comes within the margin of the bar: below that, the full embedding cannot
reach the bar, so completing it cannot change the decision. This measures, per face set, how
far a full embedding's score rises above its front view's against every other photo's full
embedding (the gallery holds full ones), over the pairs whose front-view score is below the
bar. The margin is chosen on the `--choose` sets and checked on the rest.

    .venv/bin/python scripts/validate_glimpse_margin.py --choose lfw_subset att_orl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from devtools.datasets import DATASETS, decode_file, discover_face_sets
from recognizer.face.calibration import FaceCalibration
from recognizer.face.pipeline import FacePipeline, build_face_pipeline
from recognizer.models import DEFAULT_MODELS_DIR


def _views(paths: list[Path], faces: FacePipeline) -> tuple[np.ndarray, np.ndarray]:
    """Front-view and full embeddings of the photos where a face was found."""
    fronts, fulls = [], []
    for path in paths:
        img = decode_file(path)
        if img is None:
            continue
        glimpses = faces.glimpse_frames([img])
        if not glimpses:
            continue
        fronts.append(glimpses[0].embedding)
        fulls.append(faces.complete(glimpses[0]).face.embedding)
    return np.asarray(fronts, np.float32), np.asarray(fulls, np.float32)


def rises(front: np.ndarray, full: np.ndarray, bar: float) -> np.ndarray:
    """Full score minus front score of each probe against every other photo, where the
    front-view score is below the bar."""
    s_front, s_full = front @ full.T, full @ full.T
    off = ~np.eye(len(full), dtype=bool)
    below = off & (s_front < bar)
    return (s_full - s_front)[below]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--choose", nargs="+", default=["lfw_subset", "att_orl"])
    ap.add_argument("--quantile", type=float, default=1.0, help="of the rises on --choose")
    ap.add_argument("--slack", type=float, default=2.0, help="times the chosen rise")
    args = ap.parse_args()
    faces = build_face_pipeline(liveness=False)
    bar = FaceCalibration.load(DEFAULT_MODELS_DIR / "face_calibration_default.json").threshold
    per_set: dict[str, np.ndarray] = {}
    for fs in discover_face_sets(DATASETS / "faces"):
        paths = [img.path for img in fs.images]
        front, full = _views(paths, faces)
        per_set[fs.name] = rises(front, full, bar)
        r = per_set[fs.name]
        print(
            f"{fs.name:14s} photos {len(full):4d} pairs below the bar {len(r):7d} "
            f"rise median {np.median(r):+.4f} p99.9 {np.quantile(r, 0.999):+.4f} max {r.max():+.4f}"
        )
    chosen = np.concatenate([per_set[n] for n in args.choose])
    margin = float(np.quantile(chosen, args.quantile)) * args.slack
    print(f"bar {bar}; margin from {args.choose}: {margin:.4f}")
    for name, r in per_set.items():
        if name not in args.choose:
            over = int((r > margin).sum())
            print(f"left out {name:14s} rises above the margin: {over} of {len(r)}")


if __name__ == "__main__":
    main()
