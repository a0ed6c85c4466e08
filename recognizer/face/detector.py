"""Face detectors: YuNet (default) and SCRFD (opt-in), decoded here from raw ONNX outputs.

Both return faces in original image pixel coordinates, largest first. Both miss faces that
fill the whole frame, so an empty result triggers one retry on a padded copy of the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from recognizer.face.types import Face
from recognizer.onnx import OnnxModel
from recognizer.vision import blob, letterbox, nms, to_bgr3

# A face that fills the frame is seen again with this much border on every side (fraction
# of the longer image side); 0.5 makes the face about half the padded frame.
RETRY_PAD_FRACTION = 0.5
_STRIDES = (8, 16, 32)


@dataclass(frozen=True, slots=True)
class _Raw:
    """Decoded candidates in network-input pixels, before NMS."""

    boxes: np.ndarray  # (N, 4) x1y1x2y2
    landmarks: np.ndarray  # (N, 5, 2)
    scores: np.ndarray  # (N,)


def _nms(raw: _Raw, score_threshold: float, nms_threshold: float, top_k: int) -> _Raw:
    keep = raw.scores >= score_threshold
    boxes, lms, scores = raw.boxes[keep], raw.landmarks[keep], raw.scores[keep]
    idx = nms(boxes, scores, nms_threshold, top_k)
    return _Raw(boxes[idx], lms[idx], scores[idx])


class _Detector:
    """Shared flow: to BGR, run once, retry padded when empty, map back, sort by size."""

    def __init__(
        self, model: OnnxModel, score_threshold: float, nms_threshold: float, top_k: int
    ) -> None:
        self.model = model
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def _candidates(self, image_bgr: np.ndarray) -> tuple[_Raw, float]:
        """Raw candidates in network pixels and the scale from image to network pixels."""
        raise NotImplementedError

    def _detect_once(self, image_bgr: np.ndarray) -> list[Face]:
        raw, scale = self._candidates(image_bgr)
        kept = _nms(raw, self.score_threshold, self.nms_threshold, self.top_k)
        return [
            Face(
                (b / scale).astype(np.float32),
                (lm / scale).astype(np.float32),
                float(s),
            )
            for b, lm, s in zip(kept.boxes, kept.landmarks, kept.scores, strict=True)
        ]

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        img = to_bgr3(image_bgr)
        h, w = img.shape[:2]
        if h < 2 or w < 2:
            return []
        faces = self._detect_once(img)
        if not faces:
            pad = max(1, round(RETRY_PAD_FRACTION * max(h, w)))
            # Replicated edges would extend the face itself; a flat mid-grey border does not.
            padded = cv2.copyMakeBorder(
                img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(127, 127, 127)
            )
            shift = np.array([pad, pad], np.float32)
            faces = [
                Face(
                    f.box - np.tile(shift, 2),
                    f.landmarks - shift,
                    f.score,
                )
                for f in self._detect_once(padded)
            ]
        limit = np.array([w, h, w, h], np.float32)
        faces = [
            Face(np.clip(f.box, 0, limit).astype(np.float32), f.landmarks, f.score) for f in faces
        ]
        faces = [f for f in faces if f.area > 0]
        return sorted(faces, key=lambda f: f.area, reverse=True)


class YuNetDetector(_Detector):
    """YuNet 2023mar: fixed 1x3x640x640 input, BGR 0..255, anchor-free per-stride heads."""

    def __init__(
        self,
        model: OnnxModel,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
    ) -> None:
        super().__init__(model, score_threshold, nms_threshold, top_k)
        shape = model.input_shapes[0]
        self.height = int(shape[2]) if isinstance(shape[2], int) else 640
        self.width = int(shape[3]) if isinstance(shape[3], int) else 640
        names = model.output_names
        # Outputs are addressed by name so a re-export with another order still decodes.
        self._index = {n: i for i, n in enumerate(names)}

    def _candidates(self, image_bgr: np.ndarray) -> tuple[_Raw, float]:
        lb = letterbox(image_bgr, self.height, self.width)
        out = self.model.run(blob(lb.canvas))  # BGR, 0..255
        boxes, lms, scores = [], [], []
        for s in _STRIDES:
            cols = self.width // s
            cls = out[self._index[f"cls_{s}"]].reshape(-1)
            obj = out[self._index[f"obj_{s}"]].reshape(-1)
            bbox = out[self._index[f"bbox_{s}"]].reshape(-1, 4)
            kps = out[self._index[f"kps_{s}"]].reshape(-1, 5, 2)
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            # Decode only the cells that can survive the threshold: cheaper than all 8400.
            cand = np.nonzero(score >= self.score_threshold)[0]
            if len(cand) == 0:
                continue
            grid = np.stack([cand % cols, cand // cols], axis=1).astype(np.float32)
            centre = (grid + bbox[cand, :2]) * s
            size = np.exp(bbox[cand, 2:]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            lms.append((kps[cand] + grid[:, None, :]) * s)
            scores.append(score[cand])
        return _concat(boxes, lms, scores), lb.scale


class ScrfdDetector(_Detector):
    """SCRFD (bnkps): dynamic input, RGB (x-127.5)/128, 2 anchors per cell, distance boxes."""

    def __init__(
        self,
        model: OnnxModel,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        top_k: int = 50,
        max_side: int = 640,
    ) -> None:
        super().__init__(model, score_threshold, nms_threshold, top_k)
        self.max_side = max_side
        self.num_anchors = 2
        self._index = {n: i for i, n in enumerate(model.output_names)}

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        # Keep the aspect ratio; both sides a multiple of the largest stride.
        scale = self.max_side / max(h, w)
        return (
            max(32, math.ceil(h * scale / 32) * 32),
            max(32, math.ceil(w * scale / 32) * 32),
        )

    def _candidates(self, image_bgr: np.ndarray) -> tuple[_Raw, float]:
        ih, iw = self._input_size(*image_bgr.shape[:2])
        lb = letterbox(image_bgr, ih, iw)
        out = self.model.run(blob(lb.canvas, (127.5, 127.5, 127.5), 1 / 128.0, swap_rb=True))
        boxes, lms, scores = [], [], []
        for s in _STRIDES:
            cols = iw // s
            score = out[self._index[f"score_{s}"]].reshape(-1)
            dist = out[self._index[f"bbox_{s}"]].reshape(-1, 4) * s
            kps = out[self._index[f"kps_{s}"]].reshape(-1, 5, 2) * s
            cand = np.nonzero(score >= self.score_threshold)[0]
            if len(cand) == 0:
                continue
            cell = cand // self.num_anchors  # anchors of one cell are adjacent
            centre = np.stack([cell % cols, cell // cols], axis=1).astype(np.float32) * s
            d = dist[cand]
            boxes.append(np.concatenate([centre - d[:, :2], centre + d[:, 2:]], axis=1))
            lms.append(kps[cand] + centre[:, None, :])
            scores.append(score[cand])
        return _concat(boxes, lms, scores), lb.scale


def _concat(boxes: list[np.ndarray], lms: list[np.ndarray], scores: list[np.ndarray]) -> _Raw:
    if not scores:
        return _Raw(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0))
    return _Raw(np.concatenate(boxes), np.concatenate(lms), np.concatenate(scores))
