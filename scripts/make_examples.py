"""Make the images in examples/ (the README tour's files); see examples/SOURCES.md.

.venv/bin/python scripts/make_examples.py [--out examples] [--cache-dir .cache/wheels]

- car.jpg, car2.jpg: two frames of one car with the plate 京A12345, drawn here (a car's rear
  in flat shapes, the plate rendered by devtools/synth_plates.py at GA 36 geometry, seeded
  noise): this project's own work, under the project's licence. Needs a CJK font
  (`make fonts`).
- astronaut.jpg: the photograph of the astronaut Eileen Collins that scikit-image ships
  (skimage/data/astronaut.png; NASA, public domain), re-encoded as JPEG. Taken from the
  scikit-image wheel (`pip download --no-deps`, the one member, its sha256 checked), as
  `recognizer models fetch` takes model files: scikit-image itself is never installed.
- driver.jpg: a tighter, slightly darker crop of the same photograph (a gate's face camera).
  It is the same photograph, not a second one of her: no redistributable set of several photos
  of one person is shipped in a registry package, so the tour enrols one photo.

Deterministic: the same inputs give the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

from devtools.synth_plates import render_plate
from recognizer.plate.types import PlateType

ROOT = Path(__file__).resolve().parents[1]

PLATE = "京A12345"
SKIMAGE = "scikit-image==0.26.0"
ASTRONAUT_MEMBER = "skimage/data/astronaut.png"
ASTRONAUT_SHA256 = "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"


def car_frame(seed: int, size: tuple[int, int], plate_width: int, tilt: float) -> np.ndarray:
    """A car's rear seen by a gate camera: flat shapes, the plate at the bumper, noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    frame = ((1 - yy) * np.array((150, 140, 130)) + yy * np.array((70, 72, 75))).astype(np.uint8)
    frame = np.repeat(frame, w, axis=1)
    cx, body_w = w // 2, int(plate_width * 3.6)
    top, bottom = int(h * 0.22), int(h * 0.86)
    colour = tuple(int(c) for c in rng.integers(40, 200, 3))
    cv2.rectangle(frame, (cx - body_w // 2, top), (cx + body_w // 2, bottom), colour, -1)
    win_w = int(body_w * 0.7)
    cv2.rectangle(
        frame, (cx - win_w // 2, top + 20), (cx + win_w // 2, int(h * 0.45)), (45, 40, 38), -1
    )
    for side in (-1, 1):  # tail lights
        x = cx + side * int(body_w * 0.38)
        cv2.rectangle(frame, (x - 45, int(h * 0.5)), (x + 45, int(h * 0.58)), (30, 30, 200), -1)
    cv2.rectangle(  # bumper
        frame, (cx - body_w // 2, int(h * 0.74)), (cx + body_w // 2, bottom), (35, 35, 35), -1
    )
    cv2.ellipse(frame, (cx, bottom + 8), (body_w // 2, 14), 0, 0, 180, (20, 20, 20), -1)

    plate = render_plate(PLATE, PlateType.BLUE, scale=1.0)
    ph, pw = plate.shape[:2]
    th = plate_width * ph / pw
    x0, y0 = cx - plate_width / 2, h * 0.64 - th / 2
    d = tilt * th
    x1 = x0 + plate_width
    dst = np.float32([[x0, y0 + d], [x1, y0 - d], [x1, y0 + th - d], [x0, y0 + th + d]])
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(plate, m, (w, h), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), m, (w, h), flags=cv2.INTER_AREA)
    a = mask.astype(np.float32)[..., None] / 255
    frame = (frame * (1 - a) + warped * a).astype(np.float32)
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8) + rng.normal(0, 5, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def astronaut_png(cache_dir: Path) -> bytes:
    """skimage/data/astronaut.png from the scikit-image wheel, checked against its sha256."""
    name, version = SKIMAGE.split("==")
    prefix = f"{name.replace('-', '_')}-{version}-"
    wheels = sorted(cache_dir.glob(prefix + "*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*cmd, "-q", "-d", str(cache_dir), SKIMAGE], check=True)
        wheels = sorted(cache_dir.glob(prefix + "*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(ASTRONAUT_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ASTRONAUT_SHA256:
        raise SystemExit(f"{ASTRONAUT_MEMBER} in {wheels[0].name}: sha256 {digest}, not ours")
    return data


def jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "wheels")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "car.jpg").write_bytes(jpeg(car_frame(1, (1280, 720), 240, 0.04)))
    (args.out / "car2.jpg").write_bytes(jpeg(car_frame(2, (1280, 720), 200, -0.06)))
    photo = cv2.imdecode(np.frombuffer(astronaut_png(args.cache_dir), np.uint8), cv2.IMREAD_COLOR)
    (args.out / "astronaut.jpg").write_bytes(jpeg(photo, 95))
    crop = photo[20:330, 110:380].astype(np.float32) * 0.85 + 8  # the face, darker
    crop = cv2.resize(np.clip(crop, 0, 255).astype(np.uint8), None, fx=1.2, fy=1.2)
    (args.out / "driver.jpg").write_bytes(jpeg(crop, 85))
    for p in sorted(args.out.glob("*.jpg")):
        print(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}  {p.stat().st_size} B")


if __name__ == "__main__":
    main()
