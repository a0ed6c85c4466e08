"""Plate geometry: corner warp to an upright crop, and the two-row split."""

from __future__ import annotations

import cv2
import numpy as np

# Canonical warp sizes (w, h). GA 36 plates are 440x140 mm single-row (480x140 green) and
# 440x220 mm two-row. Warping to a fixed shape undoes the perspective squeeze that makes a
# tilted single-row plate look narrow (CCPD: PP-OCRv4 47/48 versus 45/48 when keeping the
# measured aspect). The single-row line is wider than the plate's 3.1: the readers were
# trained on stretched crops (the LPRNet crops are 94x24, 3.9). Measured: warps of 160-176
# read 47/48 CCPD scenes, 184-192 read 46; upright crops read best stretched to 3.83
# (crops 97.7% versus 97.3% at 3.67; synthetic 91% versus 89%).
SINGLE_ROW_SIZE = (176, 48)
CROP_LINE_ASPECT = 184 / 48
TWO_ROW_SIZE = (160, 80)
# Frame-space width/height below which a plate may be two-row. Perspective pushes tilted
# single-row CCPD plates down to 1.7, so the ratio alone decides only below 1.6.
TWO_ROW_MAX_ASPECT = 2.7
SURELY_TWO_ROW_ASPECT = 1.6


def corner_aspect(corners: np.ndarray) -> float:
    """Width/height of the quadrilateral TL, TR, BR, BL (mean of opposite edges)."""
    c = np.asarray(corners, np.float32)
    w = (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / 2
    h = (np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2
    return float(w / max(float(h), 1e-6))


def expand_corners(corners: np.ndarray, mx: float, my: float) -> np.ndarray:
    """Push the corners outward by fractions of the plate's width/height.

    Detector corners hug the plate frame; readers were trained on crops with a little
    margin and clip edge characters without it.
    """
    c = np.asarray(corners, np.float32)
    right = ((c[1] - c[0]) + (c[2] - c[3])) / 2
    down = ((c[3] - c[0]) + (c[2] - c[1])) / 2
    dx, dy = right * mx, down * my
    return np.stack([c[0] - dx - dy, c[1] + dx - dy, c[2] + dx + dy, c[3] - dx + dy])


def warp_plate(
    image_bgr: np.ndarray,
    corners: np.ndarray,
    size: tuple[int, int] = SINGLE_ROW_SIZE,
    margin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Perspective-warp the plate TL, TR, BR, BL to an upright (w, h) image.

    No margin by default: the detector's corners sit on the plate frame, and on CCPD a
    margin cost PP-OCRv4 one or two plates.
    """
    w, h = size
    src = expand_corners(corners, *margin).astype(np.float32)
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(
        image_bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


# Two-row layout (GA 36, 440x220 mm): the top row (province + letter) takes about the
# upper 35% and sits in the middle 60% of the width; the bottom row fills the rest.
TOP_ROW = (0.0, 0.40)
TOP_COLS = (0.15, 0.85)
BOTTOM_ROW = (0.33, 1.0)


def top_row(plate_bgr: np.ndarray) -> np.ndarray:
    """The top row (province and issuer letter) of an upright two-row plate."""
    h, w = plate_bgr.shape[:2]
    return plate_bgr[
        int(h * TOP_ROW[0]) : round(h * TOP_ROW[1]),
        int(w * TOP_COLS[0]) : round(w * TOP_COLS[1]),
    ]


def split_two_row(plate_bgr: np.ndarray) -> np.ndarray:
    """Cut the top row off and put it left of the bottom row, both at the bottom's height."""
    h = plate_bgr.shape[0]
    top = top_row(plate_bgr)
    bottom = plate_bgr[int(h * BOTTOM_ROW[0]) : h]
    bh = bottom.shape[0]
    tw = max(1, round(top.shape[1] * bh / max(top.shape[0], 1)))
    top = cv2.resize(top, (tw, bh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.hstack([top, bottom]))


def to_single_row_line(plate_bgr: np.ndarray) -> np.ndarray:
    """Resize an upright single-row crop to the canonical line aspect (height kept)."""
    h = plate_bgr.shape[0]
    w = round(h * CROP_LINE_ASPECT)
    return cv2.resize(plate_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
