"""Bursts of frames for the benches, built two ways from the sample data.

- `photo_frames`: distinct photos of one person (where a set holds enough). Overstates what
  video frames of one second give: distinct photos differ more, so they vote more
  independently.
- `perturbed_frames`: one photo and copies with realistic, seeded perturbations (blur, JPEG
  re-encoding, a small shift and crop, brightness). Understates it: the copies share every
  flaw of the one photo.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def perturb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One plausible next frame of a camera: a little motion or focus blur, a shift with a
    crop of at most 4% a side (scaled back), a brightness and contrast change."""
    h, w = image.shape[:2]
    out = image
    sigma = float(rng.uniform(0.3, 1.4))
    out = cv2.GaussianBlur(out, (0, 0), sigma)
    left, right = (int(w * f) for f in rng.uniform(0.0, 0.04, 2))
    top, bottom = (int(h * f) for f in rng.uniform(0.0, 0.04, 2))
    out = out[top : h - bottom, left : w - right]
    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    gain = float(rng.uniform(0.8, 1.2))
    offset = float(rng.uniform(-20, 20))
    return cv2.convertScaleAbs(out, alpha=gain, beta=offset)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def perturbed_frames(path: Path, n: int, seed: int = 0) -> list[bytes]:
    """The photo as it is, then n - 1 perturbed copies, each re-encoded as JPEG at quality
    60-90. The same path and seed give the same frames on every run and machine."""
    data = path.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} does not decode")
    rng = np.random.default_rng([seed, zlib.crc32(path.name.encode("utf-8"))])
    return [data] + [_jpeg(perturb(image, rng), int(rng.integers(60, 91))) for _ in range(n - 1)]


def photo_frames(face: Path, photos: Sequence[Path], n: int) -> list[bytes] | None:
    """The photo, then the person's next distinct photos among `photos` (in order, wrapping
    round); None when there are fewer than n."""
    pool = list(photos) if face in photos else [face, *photos]
    if len(pool) < n:
        return None
    at = pool.index(face)
    return [pool[(at + k) % len(pool)].read_bytes() for k in range(n)]
