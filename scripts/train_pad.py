"""Train the shipped liveness (presentation-attack) model: models/trained/pad_nuaa.onnx.

One command, deterministic (Newton steps from zero, single-threaded; seed fixed anyway):

    .venv/bin/pip install -e '.[pad-train]'      # onnx only; `dev` has it too
    .venv/bin/python scripts/train_pad.py

Data: a folder laid out `live/<subject>/*.jpg`, `print/<subject>/*.jpg` (default
../shared/datasets/pad/nuaa: NUAA Photograph Imposter Database, Tan et al. ECCV 2010,
research use). Each frame's largest YuNet face is cropped with context exactly as the service
crops it (recognizer/face/liveness.py), the fixed features are computed by the feature part of
the very graph that is shipped (benchmarks/pad_model.py), and a logistic regression is fitted
in numpy. The L2 strength and both decision thresholds are chosen from leave-one-subject-out
scores (subject-disjoint validation: a subject's frames are never on both sides). The script
prints the sha256 for models/manifest.toml. Claims: print attacks, NUAA-like conditions only.

Subject 0001 is held out by default (`--hold-out`, "" for none): the shipped model never sees
it, so the tests that score its frames (tests/test_liveness*.py) and the end-to-end gate test
enrolled with it check the model on a subject it was not trained on.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, and the same sums on every run

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pad_model as pm  # noqa: E402
from recognizer import models as model_store  # noqa: E402
from recognizer.face.detector import YuNetDetector  # noqa: E402
from recognizer.onnx import sha256_file  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "pad" / "nuaa"
DEFAULT_OUT = ROOT / "models" / "trained" / "pad_nuaa.onnx"
HOLD_OUT = "0001"  # never trained on: the tests' subject


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--hold-out", default=HOLD_OUT, help="comma-separated subjects to leave out")
    args = ap.parse_args(argv)
    np.random.seed(pm.SEED)

    held = set(filter(None, args.hold_out.split(",")))
    samples = [s for s in pm.load_pad_folder(args.data) if s.subject not in held]
    subjects = sorted({s.subject for s in samples})
    if len(subjects) < 3:
        print(f"need at least 3 subjects for subject-disjoint validation, got {subjects}")
        return 2
    det_model, _ = model_store.load("yunet")
    crops = pm.crop_samples(samples, YuNetDetector(det_model).detect)
    feat = pm.features(pm.session(pm.build_graph(None)), crops.crops)
    live = np.array([s.live for s in crops.samples])
    groups = np.array([s.subject for s in crops.samples])
    trained = pm.train(feat, live, groups)
    th = trained.thresholds
    oof = trained.oof_scores
    apcer = float(np.mean(oof[~live] >= th.live))
    bpcer = float(np.mean(oof[live] < th.live))
    meta = {
        "attack_threshold": f"{th.attack:.6f}",
        "live_threshold": f"{th.live:.6f}",
        "l2": str(trained.l2),
        "subjects": ",".join(subjects),
        "held_out": ",".join(sorted(held)),
        "samples": f"{int(live.sum())} live, {int((~live).sum())} print",
        "loso_apcer": f"{apcer:.4f}",
        "loso_bpcer": f"{bpcer:.4f}",
        "claims": "print attacks, NUAA-like conditions",
        "data": "NUAA Photograph Imposter Database (Tan et al., ECCV 2010), research use",
        "training": "python scripts/train_pad.py",
    }
    data = pm.build_graph(trained.classifier, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"frames: {len(samples)} ({len(crops.no_face)} without a face), subjects {subjects}")
    print(f"held out: {sorted(held)}")
    print(f"l2 {trained.l2}; leave-one-subject-out at live_threshold {th.live:.4f}: ")
    print(f"  APCER {apcer:.2%}  BPCER {bpcer:.2%}; attack_threshold {th.attack:.4f}")
    print(f"wrote {args.out} ({len(data)} bytes)")
    print(f'sha256 = "{sha256_file(args.out)}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
