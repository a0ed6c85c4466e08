"""Plate detector: RetinaFace-style box + 4 corners (zeusees License-Plate-Detector weights).

Decoding parameters were fitted on the CCPD scenes (corner error of a few pixels at 640):
BGR minus (104, 117, 123), priors with min sizes 24/48, 96/192, 384/768 on strides
8/16/32, variances (0.1, 0.2); landmarks come out in CCPD order BR, BL, TL, TR.
The network is fully convolutional, so the frame is letterboxed to a long side of
``input_size`` and a short side padded only to a multiple of 32 (less work than a square).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recognizer.onnx import OnnxModel
from recognizer.vision import blob, letterbox, nms, to_bgr3

_MEAN_FILL = (104, 117, 123)
_LEVELS = ((8, (24.0, 48.0)), (16, (96.0, 192.0)), (32, (384.0, 768.0)))
_VARIANCE = (0.1, 0.2)
_CORNER_ORDER = (2, 3, 0, 1)  # model BR, BL, TL, TR -> TL, TR, BR, BL


# A second look at a frame where no plate was read (see PlateRecognizer.read): the frame at
# its own size up to 1280 px, and boxes from a score of 0.1. Chosen on synthetic frames only
# (640x480, 1280x960 and 1920x1080, 700 frames, 95 with no read): 45 of those read exactly and
# 10 wrongly, as precise as first reads there (78-88% right); 1280 at the usual 0.2 read 36
# (7 wrong), the usual sizes at 0.1 17 (10 wrong). Checked on other seeds (300 640x480 and
# 200 1280x960 frames): exact reads 270 -> 276 and 137 -> 153, frames with no read 15 -> 8
# and 39 -> 15; median frame time on the far set 113 -> 134 ms (a fifth had no read).
RETRY_SIZE = 1280
RETRY_THRESHOLD = 0.1


@dataclass(frozen=True, slots=True)
class PlateDetection:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in frame pixels
    corners: np.ndarray  # (4, 2) float32 TL, TR, BR, BL in frame pixels
    score: float


@lru_cache(maxsize=16)
def _priors(height: int, width: int) -> np.ndarray:
    """(N, 4) cx, cy, w, h in pixels, in the order the network emits them."""
    out = []
    for step, sizes in _LEVELS:
        fh, fw = -(-height // step), -(-width // step)
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = ((xs + 0.5) * step).ravel()
        cy = ((ys + 0.5) * step).ravel()
        for_cell = [np.stack([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], 1) for s in sizes]
        # Anchors of one cell are adjacent in the output: interleave the sizes.
        out.append(np.stack(for_cell, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


# One detector pass: boxes (K, 4), corners (K, 4, 2) in frame pixels and scores (K,).
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]


class PlateDetector:
    """Plates in a frame. A frame much larger than ``input_size`` is also searched at
    ``large_size``: shrunk to 576, a far plate in a 1400-pixel frame falls below the
    smallest anchors (24 px); both passes' boxes go through one NMS."""

    def __init__(
        self,
        model: OnnxModel,
        input_size: int = 576,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        max_plates: int = 8,
        large_size: int | None = None,
        large_from: float = 1.5,
        retry_size: int = RETRY_SIZE,
        retry_threshold: float = RETRY_THRESHOLD,
    ) -> None:
        self.model = model
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_plates = max_plates
        self.large_size = large_size
        self.large_from = large_from  # long side / input_size from which the second pass runs
        self.retry_size = retry_size
        self.retry_threshold = retry_threshold

    def sizes_for(self, image_bgr: np.ndarray) -> tuple[int, ...]:
        long_side = max(image_bgr.shape[:2])
        if self.large_size and long_side >= self.input_size * self.large_from:
            return (self.input_size, min(self.large_size, long_side))
        return (self.input_size,)

    def retry_sizes(self, image_bgr: np.ndarray) -> tuple[int, ...]:
        """Sizes of a second look at a frame where nothing was read: the usual ones and the
        frame's own long side, up to ``retry_size`` (never upsampled)."""
        sizes = self.sizes_for(image_bgr)
        extra = min(self.retry_size, max(image_bgr.shape[:2]))
        return (*sizes, extra) if extra > max(sizes) else sizes

    def detect_again(self, image_bgr: np.ndarray) -> list[PlateDetection]:
        """The second look: ``retry_sizes`` at the lower ``retry_threshold``."""
        return self.detect(image_bgr, self.retry_sizes(image_bgr), self.retry_threshold)

    def preprocess(
        self, image_bgr: np.ndarray, size: int | None = None
    ) -> tuple[np.ndarray, float]:
        h, w = image_bgr.shape[:2]
        scale = (size or self.input_size) / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        # Padding is the mean colour, i.e. zero after normalisation.
        lb = letterbox(to_bgr3(image_bgr), ph, pw, scale=scale, fill=_MEAN_FILL)
        return blob(lb.canvas, _MEAN_FILL), scale

    def candidates(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
    ) -> list[Candidates]:
        """The model's boxes at each size, before any NMS: what `detect` merges. A caller
        may run a pass ahead of time (in another thread) and hand it to `detect`."""
        sizes = sizes or self.sizes_for(image_bgr)
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return [self._candidates(image_bgr, size, threshold) for size in sizes]

    def _candidates(self, image_bgr: np.ndarray, size: int, threshold: float) -> Candidates:
        """Boxes (K, 4), corners (K, 4, 2) in frame pixels and scores (K,) above threshold."""
        x, scale = self.preprocess(image_bgr, size)
        loc, conf, landms = self.model.run(x)
        pri = _priors(x.shape[2], x.shape[3])
        scores = conf[0, :, 1]
        idx = np.flatnonzero(scores >= threshold)
        p, lc, lm = pri[idx], loc[0, idx], landms[0, idx].reshape(-1, 4, 2)
        centre = p[:, :2] + lc[:, :2] * _VARIANCE[0] * p[:, 2:]
        size_wh = p[:, 2:] * np.exp(lc[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centre - size_wh / 2, centre + size_wh / 2], 1) / scale
        corners = (p[:, None, :2] + lm * _VARIANCE[0] * p[:, None, 2:]) / scale
        h, w = image_bgr.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h])
        return boxes, corners[:, _CORNER_ORDER], scores[idx]

    def detect(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
        keep: Sequence[PlateDetection] = (),
        settled: Sequence[PlateDetection] = (),
        found: Sequence[Candidates] | None = None,
    ) -> list[PlateDetection]:
        """Plates at each input size (default `sizes_for`), through one NMS; boxes scoring
        at least `score_threshold` (default: the detector's own). `keep`: detections of an
        earlier pass over the same frame, which enter the NMS with the new boxes (a pass at
        another size adds the plates it alone finds); the ones that survive are returned as
        the same objects, so a caller knows which plates it has already read. `settled`: such
        detections whose plates were read for sure; they outrank every other box (a new box
        of the same plate would only be read again). `found`: `candidates` of these sizes,
        already computed."""
        if found is None:
            found = self.candidates(image_bgr, sizes, score_threshold)
        old = [*settled, *keep]
        boxes = np.concatenate([*(d.box[None] for d in old), *(f[0] for f in found)])
        corners = np.concatenate([*(d.corners[None] for d in old), *(f[1] for f in found)])
        scores = np.concatenate([[d.score for d in old], *(f[2] for f in found)])
        boxes, corners = boxes.reshape(-1, 4), corners.reshape(-1, 4, 2)
        if scores.size == 0:
            return []
        rank = scores.copy()
        rank[: len(settled)] += 2.0  # above any score (scores are probabilities)
        picked = nms(boxes, rank, self.nms_threshold, self.max_plates)
        return [
            old[k]
            if k < len(old)
            else PlateDetection(
                boxes[k].astype(np.float32), corners[k].astype(np.float32), float(scores[k])
            )
            for k in picked
        ]
