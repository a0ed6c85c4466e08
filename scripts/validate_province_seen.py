"""Choose PROVINCE_SEEN_MIN (recognizer/plate/pipeline.py) on validation data, in one command:

    .venv/bin/python scripts/validate_province_seen.py           # about 10 minutes on one core
    .venv/bin/python scripts/validate_province_seen.py --scale 0.05   # a quick smoke run

A province glyph painted over or under a sticker is read as some province all the same (see
PROVINCE_SEEN_MIN); the reader's probability of that first character, before the province is
re-decided, tells it from a province that was read. Every validation plate is read three ways:
as it is, with its province painted in the plate's own colour, and under a sticker of another
colour. Per threshold this prints
- false alarms: correct reads of the plates as they are (text right, province not repaired)
  whose province the threshold would mark as guessed: such a car needs a face or a tap
  instead of paying on the plate alone;
- covered plates caught: valid reads of the covered plates whose province is marked as guessed
  (by the threshold, or by the repair of a read that had lost its province).
Rule: the chosen threshold is the largest of GRID whose false alarms, over all sources
together, are at most MAX_FALSE_ALARMS of the correct reads.

Data (validation only: the street and scene frames are test sets and are never read here):
- real crops: the validation split of scripts/train_province.py (crop_split), which the
  province classifier did not train on; read_crop;
- synthetic crops (read_crop), synthetic 640x480 frames and far 1280x960 frames with small
  plates (the detector path), devtools/synth_plates.py at seeds used nowhere else.
Everything is seeded: the same command prints the same numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from devtools.synth_plates import (
    SynthConfig,
    cover,
    generate_dataset,
    plate_colour,
    province_box,
)
from recognizer.plate import pipeline as pl
from recognizer.plate.grammar import PROVINCES
from recognizer.plate.types import PlateResult
from scripts.train_province import crop_split, read_image

REPO = Path(__file__).resolve().parents[1]

SEED = 6161
GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
MAX_FALSE_ALARMS = 0.005
VARIANTS = ("clean", "painted", "sticker")
# Sticker colours (BGR): white and grey decals, red, yellow, black, orange.
STICKERS = (
    (255, 255, 255),
    (200, 200, 200),
    (40, 40, 200),
    (30, 200, 240),
    (30, 30, 30),
    (0, 120, 240),
)
# (name, seed offset, plates at --scale 1, config; None = the real crops)
SOURCES: tuple[tuple[str, int, int, SynthConfig | None], ...] = (
    ("real crops", 0, 0, None),
    ("synthetic crops", 0, 600, SynthConfig()),
    ("synthetic frames", 1, 600, SynthConfig(scene=True)),
    (
        "far frames",
        2,
        300,
        SynthConfig(scene=True, frame_size=(1280, 960), scene_plate_width=(70, 160)),
    ),
)


@dataclass(frozen=True, slots=True)
class Read:
    source: str
    variant: str
    truth: str
    text: str
    valid: bool
    repaired: bool  # the read had lost its province and got one (guessed whatever the threshold)
    seen: float | None  # pipeline.province_seen of a valid read with a province, else None

    def flagged(self, threshold: float) -> bool:
        return self.repaired or (self.seen is not None and self.seen < threshold)


class Spy:
    """Records pipeline.province_seen of every read as the pipeline decides its province."""

    def __init__(self) -> None:
        self.seen: dict[str, float | None] = {}
        self._orig = pl.PlateRecognizer._province_fix
        spy = self

        def fix(rec: pl.PlateRecognizer, ch: pl._Choice, *args: object) -> pl._Choice:
            out = spy._orig(rec, ch, *args)  # type: ignore[arg-type]
            has = ch.valid and ch.text[:1] in PROVINCES
            spy.seen[out.text] = pl.province_seen(ch) if has else None
            return out

        pl.PlateRecognizer._province_fix = fix  # type: ignore[method-assign]

    def reads(
        self, source: str, variant: str, truth: str, results: list[PlateResult]
    ) -> list[Read]:
        out = []
        for r in results:
            seen = self.seen.get(r.text)
            repaired = r.province_guessed and seen is None
            out.append(Read(source, variant, truth, r.text, r.pattern_valid, repaired, seen))
        self.seen.clear()
        return out


def _covered(
    img: np.ndarray, corners: np.ndarray, box: tuple[float, float, float, float], k: int
) -> Iterator[tuple[str, np.ndarray]]:
    yield "clean", img
    yield "painted", cover(img, corners, box, plate_colour(img, corners))
    yield "sticker", cover(img, corners, box, STICKERS[k % len(STICKERS)])


def samples(scale: float) -> Iterator[tuple[str, str, str, np.ndarray, bool]]:
    """(source, variant, truth, image, is a crop) for every validation plate and variant."""
    for name, offset, n, cfg in SOURCES:
        if cfg is None:
            val = crop_split()[1]
            for i, path in enumerate(val[: max(1, round(len(val) * scale))]):
                img = read_image(path)
                h, w = img.shape[:2]
                corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
                rng = np.random.default_rng([SEED, i])
                # The crops are tight: the province fills the left sixth, border included.
                box = (0.0, rng.uniform(0.15, 0.19), 0.0, 1.0)
                for variant, image in _covered(img, corners, box, int(rng.integers(1 << 16))):
                    yield name, variant, path.stem, image, True
            continue
        seed = SEED + offset
        for i, sp in enumerate(generate_dataset(max(1, round(n * scale)), seed, cfg)):
            rng = np.random.default_rng([seed, i, 1])
            box = province_box(sp.text, sp.plate_type, rng.uniform(0.1, 0.3))
            for variant, image in _covered(sp.image, sp.corners, box, int(rng.integers(1 << 16))):
                yield name, variant, sp.text, image, not cfg.scene


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "-"


def report(reads: list[Read]) -> float:
    """Print the tables; return the threshold the rule chooses."""
    names = [s[0] for s in SOURCES]
    correct = {s: [r for r in reads if r.source == s and r.variant == "clean"] for s in names}
    correct = {
        s: [r for r in rs if r.text == r.truth and not r.repaired] for s, rs in correct.items()
    }
    pooled = [r for rs in correct.values() for r in rs]
    print("False alarms: correct reads of uncovered plates whose province would be guessed")
    print("threshold  " + "  ".join(f"{s:>20}" for s in [*names, "all"]))
    chosen = 0.0
    for t in GRID:
        cells = [_pct(sum(r.flagged(t) for r in correct[s]), len(correct[s])) for s in names]
        k = sum(r.flagged(t) for r in pooled)
        cells.append(_pct(k, len(pooled)))
        print(f"{t:9.3f}  " + "  ".join(f"{c:>20}" for c in cells))
        if k <= MAX_FALSE_ALARMS * len(pooled):
            chosen = t
    print(f"\nchosen: {chosen} (the largest with false alarms <= {MAX_FALSE_ALARMS:.1%} of all)")
    for variant in VARIANTS[1:]:
        print(f"\nCovered plates ({variant}): valid reads whose province is guessed")
        head = ("repair alone", f"at {chosen}", "reads exact", "no valid read")
        print(f"{'':22}{head[0]:>20}{head[1]:>20}{head[2]:>14}{head[3]:>15}")
        for s in names:
            rs = [r for r in reads if r.source == s and r.variant == variant]
            valid = [r for r in rs if r.valid]
            plates = len({r.truth for r in reads if r.source == s})
            empty = plates - len({r.truth for r in valid})
            exact = sum(r.text == r.truth for r in valid)
            print(
                f"{s:22}{_pct(sum(r.repaired for r in valid), len(valid)):>20}"
                f"{_pct(sum(r.flagged(chosen) for r in valid), len(valid)):>20}"
                f"{exact:>14}{empty:>15}"
            )
    lowest = sorted((r.seen, r.source, r.truth) for r in pooled if r.seen is not None)[:8]
    print("\nlowest first-character probabilities of correct reads:")
    for seen, source, truth in lowest:
        print(f"  {seen:.4f}  {source:18} {truth}")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of every source to read")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    t0 = time.time()
    rec = pl.build_plate_recognizer()
    spy = Spy()
    reads: list[Read] = []
    for source, variant, truth, image, crop in samples(args.scale):
        results = [rec.read_crop(image)] if crop else rec.read(image)
        reads += spy.reads(source, variant, truth, [r for r in results if r.text])
    print(f"{len(reads)} reads in {time.time() - t0:.0f} s\n")
    chosen = report(reads)
    if chosen != pl.PROVINCE_SEEN_MIN:
        print(
            f"\nNOTE: pipeline.PROVINCE_SEEN_MIN is {pl.PROVINCE_SEEN_MIN}, the rule chose {chosen}"
        )


if __name__ == "__main__":
    main()
