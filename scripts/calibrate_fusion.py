"""Write models/fusion_<profile>.json: the calibrated plate and face LLR models for Authorize.

- Face: genuine and impostor cosine scores from models/face_calibration_<profile>.json (made by
  scripts/calibrate_faces.py on the real sample faces, pairs within each population group) ->
  a linear LLR by prior-balanced logistic regression, and the impostor tail: per group,
  empirical while 25 scores lie above, a conservative exponential upper tail beyond, the
  largest group's rate times the margin chosen by leaving each group out (ImpostorTail).
- Plate: the real reader on the real plate crops (file name = plate text) and on seeded
  synthetic plates pasted into frames (so the detector's misses count too), the two sources
  weighted equally: P(category | genuine) = how often the true plate is the best read (exact),
  among the other candidates (candidate), or neither (no_match), counted as the gate counts
  them (a best read whose province was guessed is a candidate);
  misread rates = how often a read lands exactly on / has among its candidates another plate
  of the set (rule of succession, so never 0). The impostor side is derived from them and the
  clone prior q (a cloned plate is read like the genuine one; OCR cannot tell them apart):
  P(c | impostor) = q * P(c | genuine) + (1 - q) * misread(c); see recognizer/fusion.py.

Usage: python scripts/calibrate_fusion.py [--profile default] [--crops DIR] [--frames 300]
       [--clone-rate 0.05] [--reuse-plate]

--reuse-plate keeps the plate rates (genuine, misread, their stats) of the existing
models/fusion_<profile>.json and redoes the face part only: the plate part reads 1000 crops
and 300 synthetic frames (a few minutes) and does not depend on the face calibration.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from devtools.datasets import DATASETS, parse_crop_name
from devtools.synth_plates import SynthConfig, generate_dataset
from recognizer.face.calibration import FaceCalibration
from recognizer.fusion import FusionModel, PlateModel, fit_linear_llr
from recognizer.plate.grammar import PROVINCES, normalize
from recognizer.plate.pipeline import PlateRecognizer, build_plate_recognizer
from recognizer.plate.types import PlateResult

ROOT = Path(__file__).resolve().parent.parent

# Every character a plate can hold: provinces, letters and digits (look-alikes).
ALPHABET = sorted(set(PROVINCES) | set("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
SURE_QUANTILE = 0.005  # at most this share of correct reads may fall below the sure bar
DEFAULT_CROPS = DATASETS / "plates" / "crops"


@dataclass(frozen=True, slots=True)
class Seen:
    """One read of an image, as much as the gate's plate rules need."""

    text: str
    confidence: float
    guessed: bool
    valid: bool
    candidate_texts: tuple[str, ...]


Read = tuple[str, list[Seen]]  # truth, the image's reads


def crop_truth(path: Path) -> str:
    return normalize(parse_crop_name(path.name))


def expand(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.repeat(values, counts)


def _read(truth: str, reads: list[PlateResult]) -> Read:
    return truth, [
        Seen(r.text, r.confidence, r.province_guessed, r.pattern_valid, r.candidate_texts)
        for r in reads
    ]


def _counted(read: Read, sure: float) -> tuple[str, list[str], list[str]]:
    """An image's reads as the gate counts them (gate/evidence.py): a read's text is exact
    unless its province was guessed; `candidate_texts` are candidates, except those of a
    sure read (valid, province seen, confidence >= the bar), which are evidence against."""
    truth, seen = read
    exact = [r.text for r in seen if not r.guessed]
    cands = [
        t
        for r in seen
        if not (r.valid and not r.guessed and r.confidence >= sure)
        for t in r.candidate_texts
    ]
    return truth, exact, cands


def sure_bar(sources: dict[str, list[Read]]) -> tuple[float, dict[str, float]]:
    """The largest confidence bar below which at most SURE_QUANTILE of each source's correct
    reads (exact, province seen) fall; with the share each source loses at it."""
    correct = {
        name: np.array(
            [
                r.confidence
                for truth, seen in reads
                for r in seen
                if r.text == truth and not r.guessed
            ]
        )
        for name, reads in sources.items()
    }
    bar = min(float(np.quantile(c, SURE_QUANTILE, method="lower")) for c in correct.values())
    return bar, {name: float(np.mean(c < bar)) for name, c in correct.items()}


def look_alikes(text: str) -> set[str]:
    """Plates one character from `text` (the same length, one position changed to any
    character the readers know): what a hostile driver would bind to a payer he targets."""
    return {text[:i] + ch + text[i + 1 :] for i in range(len(text)) for ch in ALPHABET} - {text}


def _crop_reads(recognizer: PlateRecognizer, crops: Path, limit: int | None) -> list[Read]:
    files = sorted(p for p in crops.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:limit]
    out = []
    for path in tqdm(files, desc="crops", unit="crop"):
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        out.append(_read(crop_truth(path), [recognizer.read_crop(image, max_candidates=5)]))
    return out


def _frame_reads(recognizer: PlateRecognizer, n: int, seed: int) -> list[Read]:
    """Synthetic plates pasted into frames, read like a gate frame (detector included)."""
    out = []
    config = SynthConfig(scene=True)
    for plate in tqdm(generate_dataset(n, seed, config), total=n, desc="frames", unit="frame"):
        out.append(_read(plate.text, recognizer.read(plate.image, max_candidates=5)))
    return out


def _rates(reads: list[Read], bound: set[str], sure: float) -> dict[str, float]:
    n = len(reads)
    counted = [_counted(r, sure) for r in reads]
    exact = sum(truth in tops for truth, tops, _ in counted)
    cand = sum(truth not in tops and truth in alts for truth, tops, alts in counted)
    return {
        "exact": exact / n,
        "candidate": cand / n,
        "no_match": (n - exact - cand) / n,
        # a read landing exactly / among the candidates on someone else's bound plate
        "misread_exact": sum(
            any(t != truth and t in bound for t in tops) for truth, tops, _ in counted
        )
        / n,
        "misread_candidate": sum(
            any(t != truth and t in bound for t in alts) for truth, _, alts in counted
        )
        / n,
        # the same against look-alikes: every plate one character from the car's own bound
        # to a payer (a targeted attacker's choice, not a random plate)
        "lookalike_exact": sum(bool(set(tops) & look_alikes(truth)) for truth, tops, _ in counted)
        / n,
        "lookalike_candidate": sum(
            bool(set(alts) & look_alikes(truth)) for truth, _, alts in counted
        )
        / n,
    }


def plate_model(
    crops: Path, clone_rate: float, limit: int | None, frames: int, seed: int
) -> tuple[PlateModel, dict]:
    """Genuine rates averaged over real crops and synthetic gate frames (the frames carry
    the detector's misses, which crops alone would hide)."""
    recognizer = build_plate_recognizer()
    sources = {"crops": _crop_reads(recognizer, crops, limit)}
    if frames:
        sources["synthetic_frames"] = _frame_reads(recognizer, frames, seed)
    bound = {truth for reads in sources.values() for truth, _ in reads}
    sure, below = sure_bar(sources)
    rates = {name: _rates(reads, bound, sure) for name, reads in sources.items()}
    total = sum(len(r) for r in sources.values())
    floor = 1 / (total + 1)  # one pseudo-count keeps every LLR finite

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rates.values()]))

    genuine = {k: max(mean(k), floor) for k in ("exact", "candidate", "no_match")}
    # A candidate's impostor rate is the look-alike one where that is higher: a hostile
    # driver binds (or targets a payer with) a plate one character from his own. Exact
    # misreads keep the random-plate rate: an exact read of a look-alike is what the clone
    # prior already covers (the same plate read as the payer's).
    misread = {
        "exact": max(mean("misread_exact"), floor),
        "candidate": max(mean("misread_candidate"), mean("lookalike_candidate"), floor),
    }
    stats = {
        "sources": {k: len(v) for k, v in sources.items()},
        "rates": rates,
        "bound_plates": len(bound),
        "sure_confidence": sure,
        "correct_reads_below_sure": below,
        "misread_used": {
            "exact": "misread_exact (random bound plates)",
            "candidate": "max(misread_candidate, lookalike_candidate)",
        },
    }
    return PlateModel(genuine, misread, clone_rate, sure), stats


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
    ap.add_argument("--frames", type=int, default=300, help="synthetic gate frames to read")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--reuse-plate",
        action="store_true",
        help="keep the plate rates of the existing fusion json (face part only; quick)",
    )
    args = ap.parse_args()
    if not args.crops.is_dir():
        raise SystemExit(f"plate crops not found at {args.crops}")
    face = FaceCalibration.load(ROOT / "models" / f"face_calibration_{args.profile}.json")
    genuine = expand(face.genuine_values, face.genuine_counts)
    impostor = expand(face.impostor_values, face.impostor_counts)
    out = args.out or ROOT / "models" / f"fusion_{args.profile}.json"
    if args.reuse_plate:
        old = FusionModel.load(out)
        plate = PlateModel(
            old.plate.genuine, old.plate.misread, args.clone_rate, old.plate.sure_confidence
        )
        stats = {**old.meta.get("plate_stats", {}), "reused_from": old.meta.get("made", "")}
    else:
        plate, stats = plate_model(args.crops, args.clone_rate, args.limit, args.frames, args.seed)
    if face.tail is None:
        raise SystemExit("the face calibration has no impostor_groups: rerun calibrate_faces.py")
    model = FusionModel(
        face_llr=fit_linear_llr(genuine, impostor),
        face_tail=face.tail,
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
            "note": "Face LLR: prior-balanced logistic regression on cosine scores (pairs within "
            "each population group). Face impostor tail: per group, empirical while "
            f"{face.tail.min_tail_count} scores lie above, beyond an exponential tail fitted to "
            "those top scores with its decay at the 95% lower bound (an upper bound for "
            "log-concave tails; an extrapolation, and marked so); the largest group's rate "
            f"times margin {face.tail.margin} (chosen by leaving each group out: "
            "python -m benchmarks calibration). Plate impostor rate of a category = clone "
            "prior x genuine rate + (1 - clone prior) x measured misread rate; the clone prior "
            "is a site parameter (policy clone_prior).",
        },
    )
    model.save(out)
    for target in (1e-2, 1e-3, 1e-5):
        t = model.threshold_for(target)
        print(f"target FAR {target:.0e}: fused LLR threshold {t:.2f}")
    print(f"plate genuine {plate.genuine}\nplate impostor {plate.impostor()}\nwrote {out}")


if __name__ == "__main__":
    main()
