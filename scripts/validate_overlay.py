"""Choose the stamp-erase bar (recognizer/plate/overlay.py) on synthetic frames only.

Seeded synthetic gate frames (devtools.synth_plates), each read as it is and with a
camera timestamp burned in over the plate's lower or upper edge (white, black outline, as
gate cameras draw it), at every grid value of (OVERLAY_MIN, OVERLAY_GAP) and with the erase
off. Prints exact reads per set; the street and scene frames are never read here.

    .venv/bin/python scripts/validate_overlay.py --frames 150 --seed 5151
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from devtools.synth_plates import SynthConfig, SynthPlate, generate_dataset
from recognizer.plate import overlay
from recognizer.plate.pipeline import build_plate_recognizer

GRID = ((200, 20), (200, 40), (200, 60), (180, 40), (220, 40))


def stamped(plate: SynthPlate, rng: np.random.Generator) -> np.ndarray:
    """The frame with a date and time drawn across the plate's lower (or upper) edge."""
    img = plate.image.copy()
    c = plate.corners
    top, bottom = float(c[:, 1].min()), float(c[:, 1].max())
    ph = bottom - top
    scale = ph * rng.uniform(0.3, 0.6) / 22  # HERSHEY_SIMPLEX digits are ~22 px at scale 1
    thick = max(1, round(scale * 2))
    text = f"20{rng.integers(10, 27)}/{rng.integers(1, 13):02d}/{rng.integers(1, 29):02d}"
    text += f" {rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(c[:, 0].min() + rng.uniform(-0.6, 0.3) * tw)
    if rng.random() < 0.7:  # the text's top inside the plate's lower part
        y = int(bottom - rng.uniform(0.25, 0.45) * ph + th)
    else:  # its bottom inside the plate's upper part
        y = int(top + rng.uniform(0.25, 0.45) * ph)
    if rng.random() < 0.7:
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 95))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--seed", type=int, default=5151)
    args = ap.parse_args()
    plates = list(generate_dataset(args.frames, args.seed, SynthConfig(scene=True)))
    rng = np.random.default_rng(args.seed)
    sets = {
        "clean": [(p.image, p.text) for p in plates],
        "stamped": [(stamped(p, rng), p.text) for p in plates],
    }
    rec = build_plate_recognizer()
    configs: list[tuple[int, int] | None] = [None, *GRID]
    for cfg in configs:
        rec.erase_stamps = cfg is not None
        if cfg is not None:
            overlay.OVERLAY_MIN, overlay.OVERLAY_GAP = cfg
        exact = {
            name: sum(any(r.text == t for r in rec.read(img)) for img, t in data)
            for name, data in sets.items()
        }
        label = "erase off" if cfg is None else f"min {cfg[0]}, gap {cfg[1]}"
        print(label, " ".join(f"{k} {v}/{len(sets[k])}" for k, v in exact.items()), flush=True)


if __name__ == "__main__":
    main()
