"""Plate pipeline accuracy and latency on the sample datasets (dev script, no gRPC).

    .venv/bin/python scripts/plate_accuracy.py [--data ../shared/datasets/plates]
        [--sets scenes,crops,street,synth] [--synth-n 560] [--det-size 512]

Exact match = the full normalised plate string equals the ground truth.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer.plate.detector import PlateDetection
from recognizer.plate.pipeline import PlateRecognizer, build_plate_recognizer
from recognizer.plate.reader import Reading
from recognizer.plate.types import PlateType

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "plates"

# CCPD lookup tables (detectRecog/CCPD README): the plate-indices field of a CCPD file name
# indexes PROVINCES for the first character, ALPHABET for the second, ADS for the rest.
CCPD_PROVINCES = (
    "皖", "沪", "津", "渝", "冀", "晋", "蒙", "辽", "吉", "黑", "苏", "浙", "京", "闽", "赣",
    "鲁", "豫", "鄂", "湘", "粤", "桂", "琼", "川", "贵", "云", "藏", "陕", "甘", "青", "宁",
    "新", "警", "学", "O",
)  # fmt: skip
CCPD_ALPHABET = tuple("ABCDEFGHJKLMNPQRSTUVWXYZO")
CCPD_ADS = tuple("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789O")


def ccpd_text(name: str) -> str:
    idx = [int(v) for v in Path(name).stem.split("-")[4].split("_")]
    return CCPD_PROVINCES[idx[0]] + CCPD_ALPHABET[idx[1]] + "".join(CCPD_ADS[i] for i in idx[2:])


def imread(path: Path) -> np.ndarray | None:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if img is not None:
        return img
    try:  # a truncated camera JPEG: Pillow (dev extra) decodes what is there
        from PIL import Image, ImageFile

        ImageFile.LOAD_TRUNCATED_IMAGES = True
        with Image.open(path) as im:
            return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)
    except Exception:
        return None


class Stopwatch:
    def __init__(self) -> None:
        self.seconds = 0.0


class TimedDetector:
    def __init__(self, inner: object, sw: Stopwatch) -> None:
        self.inner, self.sw = inner, sw

    def detect(self, image_bgr: np.ndarray) -> list[PlateDetection]:
        t = time.perf_counter()
        out = self.inner.detect(image_bgr)  # type: ignore[attr-defined]
        self.sw.seconds += time.perf_counter() - t
        return out


class TimedReader:
    def __init__(self, inner: object, sw: Stopwatch) -> None:
        self.inner, self.sw = inner, sw
        self.name: str = inner.name  # type: ignore[attr-defined]

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        t = time.perf_counter()
        out = self.inner.read_batch(crops)  # type: ignore[attr-defined]
        self.sw.seconds += time.perf_counter() - t
        return out


class Bench:
    """Wraps the recogniser's parts with stopwatches to get per-stage latency."""

    def __init__(self, rec: PlateRecognizer) -> None:
        self.det, self.main, self.alt = Stopwatch(), Stopwatch(), Stopwatch()
        self.rec = PlateRecognizer(
            TimedDetector(rec.detector, self.det) if rec.detector else None,
            TimedReader(rec.reader, self.main),
            TimedReader(rec.alt_reader, self.alt) if rec.alt_reader else None,
            rec.mode,
        )
        self.stages: dict[str, list[float]] = defaultdict(list)

    def timed(self, fn: Callable[[], object]) -> object:
        before = (self.det.seconds, self.main.seconds, self.alt.seconds)
        t = time.perf_counter()
        out = fn()
        total = time.perf_counter() - t
        d = self.det.seconds - before[0]
        m = self.main.seconds - before[1]
        a = self.alt.seconds - before[2]
        for k, v in (("total", total), ("detect", d), ("read_main", m), ("read_alt", a)):
            self.stages[k].append(v * 1000)
        self.stages["rectify+grammar"].append((total - d - m - a) * 1000)
        return out

    def report(self, title: str) -> None:
        parts = [
            f"{k} med {np.median(v):.1f} p99 {np.percentile(v, 99):.1f}"
            for k, v in self.stages.items()
        ]
        print(f"  latency ms ({title}): " + "; ".join(parts))
        self.stages.clear()


def eval_scenes(b: Bench, root: Path, verbose: bool) -> None:
    files = sorted(root.glob("*.jpg"))
    ok = 0
    for f in files:
        img = imread(f)
        assert img is not None
        res = b.timed(lambda img=img: b.rec.read(img))
        texts = [r.text for r in res]  # type: ignore[attr-defined]
        hit = bool(texts) and texts[0] == ccpd_text(f.name)
        ok += hit
        if verbose and not hit:
            print("   miss", ccpd_text(f.name), texts)
    print(f"scenes: exact {ok}/{len(files)} = {ok / max(len(files), 1):.1%}")
    b.report("scenes, per frame")


def eval_crops(b: Bench, root: Path, verbose: bool) -> None:
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".png", ".jpeg"))
    ok = 0
    for f in files:
        truth = re.sub(r"_\d+$", "", f.stem)
        img = imread(f)
        assert img is not None
        res = b.timed(lambda img=img: b.rec.read_crop(img))
        hit = res.text == truth  # type: ignore[attr-defined]
        ok += hit
        if verbose and not hit:
            print("   miss", truth, res.text, res.reader)  # type: ignore[attr-defined]
    print(f"crops: exact {ok}/{len(files)} = {ok / max(len(files), 1):.1%}")
    b.report("crops, per crop")


def eval_street(b: Bench, root: Path, verbose: bool) -> None:
    rows = [json.loads(ln) for ln in (root / "labels.jsonl").read_text("utf-8").splitlines() if ln]
    first_ok = all_ok = all_n = 0
    per_colour: Counter[str] = Counter()
    per_colour_n: Counter[str] = Counter()
    for row in rows:
        img = imread(root / row["file"])
        if img is None:
            print("   unreadable", row["file"])
            texts: list[str] = []
        else:
            res = b.timed(lambda img=img: b.rec.read(img))
            texts = [r.text for r in res]  # type: ignore[attr-defined]
        hit = row["plates"][0] in texts
        first_ok += hit
        per_colour[row["color"]] += hit
        per_colour_n[row["color"]] += 1
        all_ok += sum(p in texts for p in row["plates"])
        all_n += len(row["plates"])
        if verbose and not hit:
            print("   miss", row["plates"], texts)
    print(
        f"street: named plate found {first_ok}/{len(rows)} = {first_ok / len(rows):.1%}; "
        f"all plates {all_ok}/{all_n} = {all_ok / all_n:.1%}; per colour "
        + ", ".join(f"{c} {per_colour[c]}/{per_colour_n[c]}" for c in sorted(per_colour_n))
    )
    b.report("street, per frame")


def eval_synth(b: Bench, n: int, seed: int, verbose: bool, scenes: bool) -> None:
    from recognizer.plate.synth import SynthConfig, generate_dataset

    ok: Counter[PlateType] = Counter()
    tot: Counter[PlateType] = Counter()
    type_ok: Counter[PlateType] = Counter()
    misses: list[tuple[str, str]] = []
    for s in generate_dataset(n, seed=seed, config=SynthConfig(scene=scenes)):
        if scenes:
            res = b.timed(lambda s=s: b.rec.read(s.image))
            text = res[0].text if res else ""  # type: ignore[index]
            ptype = res[0].plate_type if res else PlateType.UNKNOWN  # type: ignore[index]
        else:
            r = b.timed(lambda s=s: b.rec.read_crop(s.image))
            text, ptype = r.text, r.plate_type  # type: ignore[attr-defined]
        tot[s.plate_type] += 1
        ok[s.plate_type] += text == s.text
        type_ok[s.plate_type] += ptype == s.plate_type
        if text != s.text:
            misses.append((s.text, text))
    total = sum(tot.values())
    kind = "synthetic scenes" if scenes else "synthetic crops"
    print(
        f"{kind} (seed {seed}): exact {sum(ok.values())}/{total} = {sum(ok.values()) / total:.1%}"
    )
    for t in tot:
        print(
            f"  {t.value:18s} exact {ok[t]:4d}/{tot[t]:<4d} = {ok[t] / tot[t]:6.1%}   "
            f"type correct {type_ok[t] / tot[t]:6.1%}"
        )
    if verbose:
        print("   misses", misses[:40])
    b.report(f"{kind}, per image")


def ccpd_geometry(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(box x1,y1,x2,y2; corners TL,TR,BR,BL) from a CCPD name (corners listed from BR)."""
    f = Path(name).stem.split("-")
    box = np.array([float(v) for p in f[2].split("_") for v in p.split("&")], np.float32)
    pts = np.array([[float(v) for v in p.split("&")] for p in f[3].split("_")], np.float32)
    return box, pts[[2, 3, 0, 1]]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def detector_table(root: Path, sizes: list[int]) -> None:
    """Detector long-side resolution vs recall, corner error, exact reads and latency."""
    frames = [(imread(f), f.name) for f in sorted(root.glob("*.jpg"))]
    print(
        "| det long side | input (CCPD) | recall IoU>=0.5 | median corner err px | exact "
        "| detect ms med | frame ms med |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        rec = build_plate_recognizer(detector_size=size)
        det = rec.detector
        assert det is not None
        hits = exact = 0
        errs: list[float] = []
        t_det: list[float] = []
        t_all: list[float] = []
        shape = ""
        for img, name in frames:
            assert img is not None
            box, corners = ccpd_geometry(name)
            shape = "x".join(str(v) for v in det.preprocess(img)[0].shape[2:][::-1])  # type: ignore[attr-defined]
            t = time.perf_counter()
            dets = det.detect(img)
            t_det.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            res = rec.read(img)
            t_all.append((time.perf_counter() - t) * 1000)
            if dets and _iou(dets[0].box, box) >= 0.5:
                hits += 1
                errs.append(float(np.abs(dets[0].corners - corners).mean()))
            exact += bool(res) and res[0].text == ccpd_text(name)
        n = len(frames)
        print(
            f"| {size} | {shape} | {hits}/{n} | {np.median(errs):.1f} "
            f"| {exact}/{n} = {exact / n:.1%} | {np.median(t_det):.1f} | {np.median(t_all):.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sets", default="scenes,crops,street,synth")
    ap.add_argument("--synth-n", type=int, default=560)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--det-size", type=int, default=576)
    ap.add_argument("--synth-scenes", action="store_true", help="paste synthetic plates in frames")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument(
        "--det-table", default="", help="comma-separated detector sizes to tabulate on scenes"
    )
    args = ap.parse_args()
    if args.det_table:
        detector_table(args.data / "scenes", [int(v) for v in args.det_table.split(",")])
        return
    rec = build_plate_recognizer(detector_size=args.det_size)
    b = Bench(rec)
    sets = args.sets.split(",")
    if "scenes" in sets:
        eval_scenes(b, args.data / "scenes", args.verbose)
    if "crops" in sets:
        eval_crops(b, args.data / "crops", args.verbose)
    if "street" in sets:
        eval_street(b, args.data / "street", args.verbose)
    if "synth" in sets:
        eval_synth(b, args.synth_n, args.seed, args.verbose, args.synth_scenes)


if __name__ == "__main__":
    main()
