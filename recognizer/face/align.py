"""5-point similarity alignment to the standard ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

from recognizer.vision import to_bgr3  # shared gray/BGRA handling

ALIGNED_SIZE = 112
# A bilinear warp reads 2x2 source pixels per output pixel, so shrinking by more than 2x
# skips detail and aliases (large photos of near faces). Below this scale the face region is
# first shrunk by area averaging, and the warp then only has to shrink by about 1x.
MAX_DIRECT_DOWNSCALE = 0.5

# Where the eyes, nose tip and mouth corners of a frontal face sit in a 112x112 crop, in the
# order the detectors emit them (image-left eye first). Both SFace and ArcFace were trained
# on crops made with this template.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(landmarks: np.ndarray) -> np.ndarray:
    """2x3 matrix (rotation, uniform scale, translation) taking landmarks onto the template."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    # LMEDS, not RANSAC: with 5 points there is nothing to vote out, and it is deterministic.
    matrix, _ = cv2.estimateAffinePartial2D(src, ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks (all equal): fall back to least squares
        matrix = _umeyama(src, ARCFACE_TEMPLATE)
    return matrix.astype(np.float32)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991); tolerates degenerate input."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var = (s**2).sum() / len(src)
    scale = float((sig * np.diag(sign)).sum() / var) if var > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity matrix (output pixels per input pixel)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def _prescale(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, warp matrix to the crop): the face region shrunk by area averaging to the
    crop's scale when a direct warp would alias, else the input as it is."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    matrix = similarity_transform(lm)
    scale = warp_scale(matrix)
    if scale >= MAX_DIRECT_DOWNSCALE:
        return image, matrix
    # Only the pixels the crop can see (plus a little for the filter) are resized.
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32) * ALIGNED_SIZE
    src = cv2.transform(corners[None], cv2.invertAffineTransform(matrix))[0]
    margin = 2.0 / scale
    h, w = image.shape[:2]
    x0, y0 = (max(0, int(np.floor(v - margin))) for v in src.min(0))
    x1, y1 = (
        min(w, int(np.ceil(src[:, 0].max() + margin))),
        min(h, int(np.ceil(src[:, 1].max() + margin))),
    )
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies outside the image: nothing to shrink
        return image, matrix
    region = image[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    small = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    factor = np.array([size[0] / (x1 - x0), size[1] / (y1 - y0)], np.float32)
    return small, similarity_transform((lm - np.array([x0, y0], np.float32)) * factor)


def align(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112x3 BGR face crop for 5 landmarks given in image pixels."""
    image, matrix = _prescale(to_bgr3(image_bgr), landmarks)
    return cv2.warpAffine(
        image,
        matrix,
        (ALIGNED_SIZE, ALIGNED_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
