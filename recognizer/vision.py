"""Image plumbing shared by the face and plate stages: channels, letterbox, NMS. Pure numpy
and OpenCV, one implementation each, so both detectors treat images the same way."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def to_bgr3(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray 2-D, 1, 3 or 4 channels) as contiguous uint8 BGR.

    An image that already is one comes back as the same object, without a copy, so stage
    entries can accept any image while the pipeline pays for one conversion."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3:
        raise ValueError(f"expected an image of 2 or 3 dimensions, got shape {img.shape}")
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if channels == 3:
        return np.ascontiguousarray(img)
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


@dataclass(frozen=True, slots=True)
class Letterbox:
    """An image resized into a canvas at the top-left; divide by `scale` to map back."""

    canvas: np.ndarray  # (H, W, 3) uint8
    scale: float


def letterbox(
    image: np.ndarray,
    height: int,
    width: int,
    scale: float | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> Letterbox:
    """`image` (BGR) resized by `scale` (default: the largest that fits) into a height x width
    canvas of `fill`, at the top-left. Area-averaged when shrinking, so no aliasing."""
    h, w = image.shape[:2]
    if scale is None:
        scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if nw > width or nh > height:
        raise ValueError(f"scale {scale} makes {nw}x{nh}, larger than the {width}x{height} canvas")
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    # A border rather than a filled canvas: numpy broadcasting the fill colour over the whole
    # canvas cost ten times the resize (2 ms of a face detection's 13 on a 640x640 input).
    canvas = cv2.copyMakeBorder(
        resized, 0, height - nh, 0, width - nw, cv2.BORDER_CONSTANT, value=fill
    )
    return Letterbox(canvas, scale)


def blob(
    image: np.ndarray,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    swap_rb: bool = False,
) -> np.ndarray:
    """A network input (1, 3, H, W) float32, C-contiguous: `(image - mean) * scale` per channel
    (`mean` in the output's channel order; `swap_rb`: BGR in, RGB out). One pass per plane:
    numpy's astype, subtract and transpose with the copy onnxruntime then needs cost about 10 ms
    on a 960x608 plate-detector input; contiguous planes written in place take 1-2 ms."""
    h, w = image.shape[:2]
    out = np.empty((1, 3, h, w), np.float32)
    planes = cv2.split(image)
    if swap_rb:
        planes = planes[::-1]
    for c, plane in enumerate(planes):
        np.subtract(plane, np.float32(mean[c]), out=out[0, c])
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int = 0) -> np.ndarray:
    """Greedy non-maximum suppression over x1y1x2y2 boxes: indices kept, best score first.
    A box is dropped when its IoU with a kept one exceeds `iou_threshold`; `top_k` > 0 keeps
    at most that many."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size and (top_k <= 0 or len(keep) < top_k):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / (area[i] + area[rest] - inter + 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)
