"""Write models/fusion_<profile>.json: the calibrated plate and face LLR models for Authorize.

- Face: genuine and impostor cosine scores from models/face_calibration_<profile>.json (made by
  scripts/calibrate_faces.py on the real sample faces) -> a linear LLR by prior-balanced
  logistic regression, and the impostor tail (empirical, Gaussian beyond the data).
- Plate: the real reader on the real plate crops (file name = plate text):
  P(category | genuine) = how often the true plate is the best read (exact), among the other
  candidates (candidate), or neither (no_match);
  P(exact | impostor) = the clone prior (a cloned plate reads exactly; OCR cannot see it) plus
  the measured rate at which a read lands exactly on another plate of the set;
  P(candidate | impostor) = the measured rate at which another plate of the set appears among
  a read's candidates (rule of succession, so never 0).

Usage: python scripts/calibrate_fusion.py [--profile default] [--crops DIR] [--clone-rate 0.05]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recognizer.face.calibration import FaceCalibration  # noqa: E402
from recognizer.fusion import FusionModel, ImpostorTail, PlateModel, fit_linear_llr  # noqa: E402
from recognizer.plate.grammar import normalize  # noqa: E402
from recognizer.plate.pipeline import build_plate_recognizer  # noqa: E402

DEFAULT_CROPS = ROOT.parent / "shared" / "datasets" / "plates" / "crops"


def crop_truth(path: Path) -> str:
    # "皖AD12345_1.jpg" -> "皖AD12345": a suffix tells duplicates apart.
    return normalize(re.sub(r"_\d+$", "", path.stem))


def expand(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.repeat(values, counts)


def plate_model(crops: Path, clone_rate: float, limit: int | None) -> tuple[PlateModel, dict]:
    recognizer = build_plate_recognizer()
    files = sorted(p for p in crops.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:limit]
    truths = [crop_truth(p) for p in files]
    bound = set(truths)
    exact = cand = misread_exact = misread_cand = 0
    for path, truth in tqdm(list(zip(files, truths, strict=True)), desc="plates", unit="crop"):
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        read = recognizer.read_crop(image, max_candidates=5)
        others = [c.text for c in read.candidates[1:]]
        if read.text == truth:
            exact += 1
        elif truth in others:
            cand += 1
        if read.text != truth and read.text in bound:
            misread_exact += 1  # this vehicle would have matched someone else's plate
        if any(t != truth and t in bound for t in others):
            misread_cand += 1
    n = len(files)
    genuine = {"exact": exact / n, "candidate": cand / n, "no_match": (n - exact - cand) / n}
    # Floors keep every LLR finite: one pseudo-count per category.
    genuine = {k: max(v, 1 / (n + 1)) for k, v in genuine.items()}
    imp_exact = clone_rate + (misread_exact + 1) / (n + 1)
    imp_cand = (misread_cand + 1) / (n + 1)
    impostor = {"exact": imp_exact, "candidate": imp_cand, "no_match": 1 - imp_exact - imp_cand}
    stats = {
        "crops": n,
        "exact": exact,
        "candidate": cand,
        "misread_exact": misread_exact,
        "misread_candidate": misread_cand,
        "bound_plates": len(bound),
    }
    return PlateModel(genuine, impostor), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", choices=["default", "insightface"])
    ap.add_argument("--crops", type=Path, default=DEFAULT_CROPS)
    ap.add_argument(
        "--clone-rate",
        type=float,
        default=0.05,
        help="prior P(an impostor vehicle carries the payer's plate); the product "
        "assumption 'plate alone errs about 1 in 20'",
    )
    ap.add_argument("--limit", type=int, default=None, help="use only the first N crops")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.crops.is_dir():
        raise SystemExit(f"plate crops not found at {args.crops}")
    face = FaceCalibration.load(ROOT / "models" / f"face_calibration_{args.profile}.json")
    genuine = expand(face.genuine_values, face.genuine_counts)
    impostor = expand(face.impostor_values, face.impostor_counts)
    plate, stats = plate_model(args.crops, args.clone_rate, args.limit)
    model = FusionModel(
        face_llr=fit_linear_llr(genuine, impostor),
        face_tail=ImpostorTail.fit(impostor),
        plate=plate,
        meta={
            "profile": args.profile,
            "made": dt.date.today().isoformat(),
            "face_pairs": {"genuine": len(genuine), "impostor": len(impostor)},
            "face_calibration_meta": {
                k: v for k, v in face.meta.items() if isinstance(v, str | int | float | list)
            },
            "plate_stats": stats,
            "clone_rate": args.clone_rate,
            "note": "Face LLR: prior-balanced logistic regression on cosine scores; the impostor "
            "tail beyond the last 10 impostor scores is a Gaussian fit (extrapolation). "
            "Plate impostor 'exact' = clone prior + measured misread rate.",
        },
    )
    out = args.out or ROOT / "models" / f"fusion_{args.profile}.json"
    model.save(out)
    for target in (1e-2, 1e-3, 1e-5):
        t = model.threshold_for(target)
        print(f"target FAR {target:.0e}: fused LLR threshold {t:.2f}")
    print(f"plate genuine {plate.genuine}\nplate impostor {plate.impostor}\nwrote {out}")


if __name__ == "__main__":
    main()
