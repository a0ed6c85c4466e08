"""The shared image plumbing: channels, letterbox and NMS, on data with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from recognizer.vision import blob, letterbox, nms, to_bgr3


def test_to_bgr3_converts_once_and_passes_bgr_through() -> None:
    bgr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), np.uint8)
    assert to_bgr3(bgr) is bgr  # no copy: a second call on the pipeline path costs nothing
    gray = bgr[:, :, 0]
    for image in (gray, gray[:, :, None], np.dstack([bgr, np.full((5, 7), 255, np.uint8)])):
        out = to_bgr3(image)
        assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(to_bgr3(gray)[:, :, 2], gray)
    with pytest.raises(ValueError):
        to_bgr3(np.zeros((4, 4, 2), np.uint8))


def test_letterbox_fits_and_maps_back() -> None:
    image = np.full((100, 200, 3), 50, np.uint8)
    lb = letterbox(image, 64, 64)
    assert lb.scale == pytest.approx(0.32) and lb.canvas.shape == (64, 64, 3)
    assert (lb.canvas[:32, :64] == 50).all() and (lb.canvas[32:] == 0).all()
    padded = letterbox(image, 64, 96, scale=0.4, fill=(1, 2, 3))
    assert (padded.canvas[:40, :80] == 50).all() and tuple(padded.canvas[-1, -1]) == (1, 2, 3)
    with pytest.raises(ValueError):
        letterbox(image, 10, 10, scale=1.0)


def test_nms_matches_opencv() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.hstack([xy, xy + rng.uniform(10, 60, (300, 2))])
    scores = rng.uniform(0, 1, 300)
    ours = nms(boxes, scores, 0.4)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()
    theirs = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, 0.4)).reshape(-1)
    np.testing.assert_array_equal(ours, theirs)
    assert len(nms(boxes, scores, 0.4, top_k=3)) == 3
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


@pytest.mark.parametrize("shape", [(608, 960, 3), (37, 53, 3), (2, 3, 3), (1, 1, 3)])
def test_blob_is_the_normalised_image_channels_first(shape: tuple[int, int, int]) -> None:
    # The detectors' inputs before blob() wrote the planes in place: the values must not move.
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    mean = np.array((104, 117, 123), np.float32)
    want = (img.astype(np.float32) - mean).transpose(2, 0, 1)[None]
    got = blob(img, (104, 117, 123))
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, want)
    rgb = img[:, :, ::-1].astype(np.float32)
    scrfd = ((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None]
    assert np.array_equal(blob(img, (127.5, 127.5, 127.5), 1 / 128.0, swap_rb=True), scrfd)
    assert np.array_equal(blob(img), img.transpose(2, 0, 1)[None].astype(np.float32))
