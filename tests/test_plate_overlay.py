"""Burned-in camera text erased from a warped plate line (recognizer/plate/overlay.py)."""

from __future__ import annotations

import numpy as np

from recognizer.plate.overlay import erase_overlay

_BLUE = (150, 60, 20)


def _line(glyph: int) -> np.ndarray:
    """A 176x48 blue plate line with glyph strokes of brightness `glyph` in rows 8-40."""
    line = np.zeros((48, 176, 3), np.uint8)
    line[:] = _BLUE
    for x in range(10, 170, 24):
        line[8:40, x : x + 5] = glyph
    return line


def test_a_stamp_brighter_than_the_glyphs_is_painted_with_the_plates_colour() -> None:
    line = _line(170)
    line[40:46, 20:120] = 255  # a timestamp's stroke under the glyphs' feet
    out = erase_overlay(line)
    assert (out[41:45, 22:118] == _BLUE).all()
    assert (out[10:38, 10:15] == 170).all()  # the plate's own glyphs stay
    assert (line[40:46, 20:120] == 255).all()  # the caller's line is not changed


def test_a_plate_without_a_stamp_or_too_bright_to_tell_is_left_alone() -> None:
    plain = _line(170)
    assert erase_overlay(plain) is plain
    bright = _line(250)  # overexposed glyphs: nothing can be brighter than the plate
    bright[40:46, 20:120] = 255
    assert erase_overlay(bright) is bright
