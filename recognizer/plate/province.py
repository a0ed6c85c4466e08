"""The province (first character) of a Chinese plate: a small classifier trained by the project.

PP-OCRv4 is a general Chinese reader; on real street plates its first character is the weak
spot (湘 read as 浙 or 皖, 豫 as 皖). A plate's province sits in a fixed place: the left
fifth of a single-row plate, the left half of a two-row plate's top row. Detector corners
on real street frames often cut into that glyph (on the far plates of
../shared/datasets/plates/street, warps lost a third to all of it), so the window reaches
past the plate's left edge: frames are warped with a margin for it (``province_view``), and
crops, which carry their own margin, are widened by their border. The classifier sees that
patch in grey, and its graph holds everything after the crop: per-patch contrast
normalisation, fixed Sobel filters, eight unsigned orientation channels (polarity-free, so
white-on-blue and black-on-yellow look alike), 4x4-pixel cells, and a trained two-layer
perceptron over them (``scripts/train_province.py``; data and command in the manifest).

The pipeline multiplies its belief with the reader's: for the chosen plate text, the reader's
CTC likelihood of each province in the first place (all alignments, the rest of the text
fixed) times the classifier's probability raised to a weight validated on held-out crops and
synthetic plates (never on the street or scene frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from recognizer.onnx import OnnxModel
from recognizer.plate.grammar import PROVINCES
from recognizer.plate.rectify import SINGLE_ROW_SIZE, TWO_ROW_SIZE, warp_plate

PATCH_H, PATCH_W = 48, 40
# Windows (x0, x1, y0, y1) as fractions of the upright plate (its corners). GA 36: a
# single-row plate's province lies at 15-60 mm of 440 (16-60 of 480 on green plates); a
# two-row plate's at 110-190 mm across and 15-75 mm down of 440x220. The single-row window
# starts left of the plate: a detector's corners that cut 12% of the width off still leave
# the glyph whole in it.
SINGLE_ROW_WINDOW = (-0.12, 0.22, 0.0, 1.0)
TWO_ROW_WINDOW = (0.2, 0.48, 0.0, 0.4)
# The horizontal margin (fraction of the plate width, each side) of a frame's province view.
VIEW_MARGIN = 0.15
CLASSES = PROVINCES


def province_view(
    image_bgr: np.ndarray, corners: np.ndarray, two_row: bool, margin: float = VIEW_MARGIN
) -> np.ndarray:
    """The plate warped upright from a frame with ``margin`` of its width added either side,
    at the warp's scale (see province_patch)."""
    w, h = TWO_ROW_SIZE if two_row else SINGLE_ROW_SIZE
    return warp_plate(image_bgr, corners, (round(w * (1 + 2 * margin)), h), margin=(margin, 0.0))


def province_patch(
    plate_bgr: np.ndarray,
    two_row: bool,
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    margin: float = 0.0,
) -> np.ndarray:
    """(PATCH_H, PATCH_W) float32 grey patch in 0..1 around where the province is printed.

    ``margin``: the image holds the plate with that fraction of its width added either side
    (VIEW_MARGIN for ``province_view``; 0 for a crop, whose border is replicated past its
    edge). ``jitter`` shifts the window's edges (fractions of the plate size): training
    augmentation only.
    """
    h, w = plate_bgr.shape[:2]
    x0, x1, y0, y1 = TWO_ROW_WINDOW if two_row else SINGLE_ROW_WINDOW
    x0, x1 = (
        (x + j + margin) / (1 + 2 * margin) * w for x, j in ((x0, jitter[0]), (x1, jitter[1]))
    )
    y0, y1 = (y0 + jitter[2]) * h, (y1 + jitter[3]) * h
    grey = plate_bgr if plate_bgr.ndim == 2 else cv2.cvtColor(plate_bgr, cv2.COLOR_BGR2GRAY)
    # An affine map of the window onto the patch: windows reaching past the plate edge
    # replicate the border instead of shrinking.
    sx, sy = PATCH_W / max(x1 - x0, 1e-3), PATCH_H / max(y1 - y0, 1e-3)
    m = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float32)
    patch = cv2.warpAffine(
        grey, m, (PATCH_W, PATCH_H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
    return patch.astype(np.float32) / 255.0


class ProvinceClassifier:
    """Province probabilities (columns in ``CLASSES`` order) for plate images."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.name = model.name

    def predict(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        if not patches:
            return np.zeros((0, len(CLASSES)), np.float32)
        x = np.stack(patches)[:, None].astype(np.float32)
        (probs,) = self.model.run(x)
        return probs

    def predict_plates(self, plates: Sequence[tuple[np.ndarray, bool]]) -> np.ndarray:
        return self.predict([province_patch(img, two_row) for img, two_row in plates])
