"""Plate colour / type from HSV statistics of the plate background, aspect ratio and text."""

from __future__ import annotations

import cv2
import numpy as np

from recognizer.plate.grammar import plate_format
from recognizer.plate.types import PlateType

# An upright crop narrower than this is two-row (GA 36: 2.0 versus 3.1 for single-row).
TWO_ROW_CROP_ASPECT = 2.4


def colour_fractions(plate_bgr: np.ndarray) -> dict[str, float]:
    """Share of the central plate area that is blue, yellow, green, white or black.

    The centre avoids the frame and the margin; the background is the majority colour
    because characters cover only about a quarter of a plate.
    """
    h, w = plate_bgr.shape[:2]
    core = plate_bgr[int(h * 0.15) : max(int(h * 0.85), 1), int(w * 0.05) : max(int(w * 0.95), 1)]
    hsv = cv2.cvtColor(core, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chroma = (sat > 70) & (val > 60)
    n = max(len(hue), 1)
    return {
        "blue": float(np.sum(chroma & (hue >= 95) & (hue <= 135)) / n),
        "yellow": float(np.sum(chroma & (hue >= 12) & (hue < 35)) / n),
        "green": float(np.sum(chroma & (hue >= 35) & (hue < 95)) / n),
        "white": float(np.sum((sat < 50) & (val > 150)) / n),
        "black": float(np.sum(val < 70) / n),
    }


def dominant_colour(plate_bgr: np.ndarray) -> str:
    fr = colour_fractions(plate_bgr)
    return max(fr, key=lambda k: fr[k])


def classify(plate_bgr: np.ndarray, text: str, *, two_row: bool | None = None) -> PlateType:
    """Plate type from colour, shape and the (normalised) text.

    The text decides where it is unambiguous (警, 学, new-energy format, 使/领/港/澳 on
    black); the colour decides the rest. `two_row` overrides the aspect-ratio guess when
    the caller already knows the layout.
    """
    h, w = plate_bgr.shape[:2]
    if two_row is None:
        two_row = w / max(h, 1) < TWO_ROW_CROP_ASPECT
    fmt = plate_format(text)
    colour = dominant_colour(plate_bgr)
    if text.endswith("警"):
        return PlateType.WHITE_POLICE
    if text.endswith("学"):
        return PlateType.LEARNER
    if fmt is not None and fmt.startswith("new_energy"):
        return PlateType.GREEN_NEW_ENERGY
    if text and (text[0] == "使" or text[-1] in "使领港澳"):
        return PlateType.BLACK
    if colour == "yellow":
        return PlateType.YELLOW_TWO_ROW if two_row else PlateType.YELLOW
    if colour == "green":
        return PlateType.GREEN_NEW_ENERGY
    if colour == "white":
        return PlateType.WHITE_OTHER
    if colour == "black":
        return PlateType.BLACK
    if colour == "blue":
        return PlateType.BLUE
    return PlateType.UNKNOWN
