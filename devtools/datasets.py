"""Sample datasets as the tests, calibration scripts and benchmarks read them.

Faces: a folder per identity (LFW layout); a root may hold several such datasets. Plates,
detected per folder: CCPD frames (the file name encodes the plate), crops (the stem is the
plate text) and street photos (``labels.jsonl`` lists every plate of each file). Any folder
laid out the same way works, so engineers can point every command at their own data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The shared sample data beside the checkout (README "Data"): every command's default.
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

FACE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp")
PLATE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# --- images ---------------------------------------------------------------------------------


def decode_file(path: Path) -> np.ndarray | None:
    """The server's own intake, so a benchmark sees exactly what a request would; None for a
    file the server would refuse (the street set holds one truncated camera JPEG)."""
    from recognizer.errors import InvalidArgument
    from recognizer.imaging import decode

    try:
        return decode(path.read_bytes(), field=path.name)
    except InvalidArgument:
        return None


# --- faces ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaceImage:
    identity: str
    path: Path


@dataclass(frozen=True, slots=True)
class FaceSet:
    name: str
    images: tuple[FaceImage, ...]
    grayscale: bool

    @property
    def identities(self) -> list[str]:
        return sorted({i.identity for i in self.images})


def _identity_images(folder: Path) -> list[FaceImage]:
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += [
            FaceImage(d.name, f)
            for f in sorted(d.iterdir())
            if f.is_file() and f.suffix.lower() in FACE_EXTS
        ]
    return out


def is_grayscale(paths: Sequence[Path], sample: int = 6) -> bool:
    """True when every sampled image has identical channels (or one channel)."""
    seen = 0
    for p in paths[:: max(1, len(paths) // sample)][:sample]:
        img = decode_file(p)
        if img is None:
            continue
        seen += 1
        if (
            img.ndim == 3
            and img.shape[2] >= 3
            and not (
                np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 1], img[..., 2])
            )
        ):
            return False
    return seen > 0


def discover_face_sets(root: Path, max_identities: int | None = None) -> list[FaceSet]:
    """``root`` itself when its subfolders hold images, else each dataset folder under it."""

    def make(name: str, folder: Path) -> FaceSet | None:
        images = _identity_images(folder)
        if max_identities is not None:
            keep = sorted({i.identity for i in images})[:max_identities]
            images = [i for i in images if i.identity in keep]
        if not images:
            return None
        return FaceSet(name, tuple(images), is_grayscale([i.path for i in images]))

    direct = make(root.name, root)
    if direct is not None:
        return [direct]
    sets = [make(d.name, d) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    return [s for s in sets if s is not None]


# --- plates -----------------------------------------------------------------------------------

# CCPD lookup tables, as published in the CCPD README (detectRecog/CCPD). "O" is the
# dataset's placeholder for "no character" and never appears on a real plate.
CCPD_PROVINCES = (
    "皖", "沪", "津", "渝", "冀", "晋", "蒙", "辽", "吉", "黑", "苏", "浙", "京", "闽", "赣",
    "鲁", "豫", "鄂", "湘", "粤", "桂", "琼", "川", "贵", "云", "藏", "陕", "甘", "青", "宁",
    "新", "警", "学", "O",
)  # fmt: skip
CCPD_ALPHABETS = (*"ABCDEFGHJKLMNPQRSTUVWXYZ", "O")
CCPD_ADS = (*"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", "O")

_CCPD_INDICES = re.compile(r"^\d+(?:_\d+){6,7}$")
_DUP_SUFFIX = re.compile(r"_\d+$")


def parse_ccpd_name(name: str) -> str | None:
    """Plate text of a CCPD file name, or None when the name is not CCPD-shaped.

    ``area-tilt-bbox-corners-indices-brightness-blur.jpg``: the indices are
    ``province_alphabet_ad_ad_ad_ad_ad[_ad]`` into the three tables above."""
    fields = Path(name).stem.split("-")
    if len(fields) != 7 or not _CCPD_INDICES.match(fields[4]):
        return None
    idx = [int(x) for x in fields[4].split("_")]
    try:
        chars = [CCPD_PROVINCES[idx[0]], CCPD_ALPHABETS[idx[1]], *(CCPD_ADS[i] for i in idx[2:])]
    except IndexError:
        return None
    text = "".join(chars)
    return None if "O" in text else text


def parse_crop_name(name: str) -> str:
    """The plate text of a crop file: its stem without a ``_N`` duplicate suffix."""
    return _DUP_SUFFIX.sub("", Path(name).stem)


def truth_type(text: str, colour: str | None = None) -> str:
    """A coarse plate type from the ground truth (colour from labels when there is one)."""
    if text.endswith("学"):
        return "learner"
    if text.endswith("警"):
        return "white_police"
    if text.endswith(("港", "澳")):
        return "black"
    if text.endswith("挂"):
        return "yellow"
    if len(text) == 8:
        return "green_new_energy"
    if colour:
        return {"green": "green_new_energy", "white": "white_other"}.get(colour, colour)
    return "ordinary_7"


@dataclass(frozen=True, slots=True)
class PlateSample:
    path: Path
    plates: tuple[str, ...]  # every plate in the image; the first is the named one
    colour: str | None = None


@dataclass(frozen=True, slots=True)
class PlateSet:
    name: str
    kind: str  # "ccpd" | "crops" | "street"
    samples: tuple[PlateSample, ...]

    @property
    def is_crops(self) -> bool:
        return self.kind == "crops"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PLATE_EXTS and p.is_file())


def load_plate_set(folder: Path) -> PlateSet | None:
    """Detect the folder's kind from its contents; None when it holds no labelled images."""
    labels = folder / "labels.jsonl"
    if labels.is_file():
        samples = []
        for line in labels.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                samples.append(
                    PlateSample(folder / row["file"], tuple(row["plates"]), row.get("color"))
                )
        return PlateSet(folder.name, "street", tuple(samples))
    images = _images(folder)
    if not images:
        return None
    ccpd = [(p, parse_ccpd_name(p.name)) for p in images]
    if sum(t is not None for _, t in ccpd) * 2 > len(images):
        return PlateSet(folder.name, "ccpd", tuple(PlateSample(p, (t,)) for p, t in ccpd if t))
    return PlateSet(
        folder.name, "crops", tuple(PlateSample(p, (parse_crop_name(p.name),)) for p in images)
    )


def discover_plate_sets(root: Path) -> list[PlateSet]:
    """``root`` itself when it is a dataset folder, else each dataset subfolder of it."""
    if (root / "labels.jsonl").is_file() or _images(root):
        found = load_plate_set(root)
        return [found] if found else []
    order = {"scenes": 0, "crops": 1, "street": 2}
    subs = sorted(
        (d for d in root.iterdir() if d.is_dir()), key=lambda d: (order.get(d.name, 9), d)
    )
    return [s for s in (load_plate_set(d) for d in subs) if s is not None]
