"""Plate detector: RetinaFace-style box + 4 corners (zeusees License-Plate-Detector weights).

Decoding parameters were fitted on the CCPD scenes (corner error of a few pixels at 640):
BGR minus (104, 117, 123), priors with min sizes 24/48, 96/192, 384/768 on strides
8/16/32, variances (0.1, 0.2); landmarks come out in CCPD order BR, BL, TL, TR.
The network is fully convolutional, so the frame is letterboxed to a long side of
``input_size`` and a short side padded only to a multiple of 32 (less work than a square).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from recognizer.onnx import OnnxModel

_MEAN = np.array([104.0, 117.0, 123.0], np.float32)
_LEVELS = ((8, (24.0, 48.0)), (16, (96.0, 192.0)), (32, (384.0, 768.0)))
_VARIANCE = (0.1, 0.2)
_CORNER_ORDER = (2, 3, 0, 1)  # model BR, BL, TL, TR -> TL, TR, BR, BL


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


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        order = rest[iou <= thr]
    return keep


class PlateDetector:
    def __init__(
        self,
        model: OnnxModel,
        input_size: int = 576,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        max_plates: int = 8,
    ) -> None:
        self.model = model
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_plates = max_plates

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image_bgr.shape[:2]
        scale = self.input_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        img = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(img, (nw, nh), interpolation=interp).astype(np.float32)
        # Padding is the mean colour, i.e. zero after normalisation.
        x = np.zeros((ph, pw, 3), np.float32)
        x[:nh, :nw] = resized - _MEAN
        return x.transpose(2, 0, 1)[None], scale

    def detect(self, image_bgr: np.ndarray) -> list[PlateDetection]:
        x, scale = self.preprocess(image_bgr)
        loc, conf, landms = self.model.run(x)
        pri = _priors(x.shape[2], x.shape[3])
        scores = conf[0, :, 1]
        idx = np.flatnonzero(scores >= self.score_threshold)
        if idx.size == 0:
            return []
        p, lc, lm = pri[idx], loc[0, idx], landms[0, idx].reshape(-1, 4, 2)
        centre = p[:, :2] + lc[:, :2] * _VARIANCE[0] * p[:, 2:]
        size = p[:, 2:] * np.exp(lc[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) / scale
        corners = (p[:, None, :2] + lm * _VARIANCE[0] * p[:, None, 2:]) / scale
        corners = corners[:, _CORNER_ORDER]
        h, w = image_bgr.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h])
        keep = _nms(boxes, scores[idx], self.nms_threshold)[: self.max_plates]
        return [
            PlateDetection(
                boxes[k].astype(np.float32), corners[k].astype(np.float32), float(scores[idx][k])
            )
            for k in keep
        ]
