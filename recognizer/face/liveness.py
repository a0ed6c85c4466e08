"""Liveness (presentation-attack detection): one score per detected face, higher = live.

The one entry is :meth:`LivenessStage.assess` (image, faces) -> one :class:`Liveness` per
face. Each face is scored on a square crop *with context* around its detection box (the
border of a printed photo and the hand holding it are cues), resized to the model's input.

Model input spec (the shipped model and any user model, see README "Liveness"):
- input 0: float32 [N, 3, H, W], BGR, 0..255 (H and W from the model; 128 if dynamic);
- the crop: a square of side `context` x max(box width, box height), centred on the box
  centre, parts outside the image filled with grey (127, 127, 127), resized by area;
  `context` comes from the model metadata key "context" (default 2.4);
- output 0: [N] or [N, 1], the probability that the face is live, 0..1;
- optional metadata "attack_threshold" and "live_threshold" (config values override them):
  score < attack_threshold is ATTACK, score >= live_threshold is LIVE, between is UNCERTAIN.

Pure numpy + OpenCV: no gRPC types; results are frozen slotted dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recognizer import models as model_store
from recognizer.face.types import Face, Liveness, LivenessDecision
from recognizer.models import DEFAULT_MODELS_DIR, ModelInfo
from recognizer.onnx import ModelError, OnnxModel, sha256_file
from recognizer.vision import to_bgr3

SHIPPED_MODEL = "pad_nuaa"  # manifest name of the model trained by scripts/train_pad.py
DEFAULT_CONTEXT = 2.4
DEFAULT_SIZE = 128
PAD_VALUE = 127


@dataclass(frozen=True, slots=True)
class LivenessThresholds:
    attack: float  # score < attack: likely a presentation attack
    live: float  # score >= live: live; between: uncertain

    def __post_init__(self) -> None:
        if not 0.0 <= self.attack <= self.live <= 1.0:
            raise ValueError(
                f"liveness thresholds need 0 <= attack <= live <= 1, got {self.attack}, {self.live}"
            )

    def decide(self, score: float) -> LivenessDecision:
        if score < self.attack:
            return LivenessDecision.ATTACK
        if score >= self.live:
            return LivenessDecision.LIVE
        return LivenessDecision.UNCERTAIN


def context_box(box: np.ndarray, context: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop around a detection box, in image pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(2, round(context * max(x2 - x1, y2 - y1, 1.0)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return round(cx - side / 2), round(cy - side / 2), side


def context_crop(
    image_bgr: np.ndarray, box: np.ndarray, size: tuple[int, int], context: float
) -> np.ndarray:
    """The face with its surroundings: a square around the box, grey outside the image,
    resized by area averaging to `size` (height, width). uint8 BGR."""
    img = to_bgr3(image_bgr)
    h, w = img.shape[:2]
    x0, y0, side = context_box(box, context)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(w, x0 + side), min(h, y0 + side)
    square = np.full((side, side, 3), PAD_VALUE, np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        square[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = img[cy0:cy1, cx0:cx1]
    th, tw = size
    interp = cv2.INTER_AREA if side > max(th, tw) else cv2.INTER_LINEAR
    return cv2.resize(square, (tw, th), interpolation=interp)


class LivenessStage:
    """An ONNX PAD model, its crop geometry and its decision thresholds."""

    def __init__(
        self,
        model: OnnxModel,
        thresholds: LivenessThresholds | None = None,
        *,
        context: float | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        self.model = model
        meta = model.metadata
        self.context = float(context if context is not None else meta.get("context", 0) or 0)
        if self.context <= 0:
            self.context = DEFAULT_CONTEXT
        shape = model.input_shapes[0]
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ModelError(
                f"liveness model {model.path}: input 0 must be [N, 3, H, W], got {shape}"
            )
        self.size = (
            shape[2] if isinstance(shape[2], int) else DEFAULT_SIZE,
            shape[3] if isinstance(shape[3], int) else DEFAULT_SIZE,
        )
        self.thresholds = thresholds or LivenessThresholds(
            float(meta.get("attack_threshold", 0.5)), float(meta.get("live_threshold", 0.5))
        )
        self.info = info

    def crops(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """The model input for these faces: float32 [N, 3, H, W], BGR 0..255."""
        img = to_bgr3(image_bgr)
        batch = [context_crop(img, f.box, self.size, self.context) for f in faces]
        return np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32)

    def scores(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros(0, np.float32)
        out = np.asarray(self.model.run(self.crops(image_bgr, faces))[0], np.float32)
        return np.clip(out.reshape(len(faces), -1)[:, -1], 0.0, 1.0)

    def assess(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> list[Liveness]:
        """One liveness result per face, in order (one model call for all of them)."""
        return [
            Liveness(float(s), self.thresholds.decide(float(s)))
            for s in self.scores(image_bgr, faces)
        ]


def build_liveness(
    models_dir: Path = DEFAULT_MODELS_DIR,
    *,
    model_path: Path | None = None,
    model_sha256: str = "",
    thresholds: LivenessThresholds | None = None,
) -> LivenessStage:
    """The shipped model (verified against the manifest), or a user's model: `model_path`
    with its `model_sha256`, which must match (a user model is never run unchecked)."""
    if model_path is None:
        model, info = model_store.load(SHIPPED_MODEL, models_dir)
        return LivenessStage(model, thresholds, info=info)
    path = Path(model_path)
    if not model_sha256:
        raise ModelError(
            f"liveness_model {path} needs liveness_model_sha256 (its sha256, "
            "`sha256sum MODEL`): a user model is never run unchecked"
        )
    if not path.is_file():
        raise ModelError(f"liveness_model {path} is missing")
    digest = sha256_file(path)
    model = OnnxModel(path, sha256=model_sha256.lower(), name=path.stem, version="user")
    info = ModelInfo("liveness", path.stem, "user", digest)
    return LivenessStage(model, thresholds, info=info)
