"""Synthetic presentation attacks made from bona fide photos: prints and screen replays.

Development code (training and validation data for the liveness model, issue 27), never run
by the service. Every function takes a `numpy.random.Generator`: the same seed gives the same
frames, byte for byte, on one machine.

A bona fide photo becomes an attack *frame*: what a gate camera would capture when someone
holds a print or a phone/tablet showing the photo in front of it. The photo goes through the
medium, then the recapture:

print (:func:`make_print`), parameters drawn per frame from these ranges:
- gamut compression: channels mapped from 0..255 to [black, white], black 15..55,
  white 195..240; saturation kept 55..90%; an ink tint of +-6% per channel;
- halftone (p = 0.6) or ordered dither (otherwise): a rotated amplitude-modulated screen of
  period 2..5 px at 10..80 degrees, or a 4x4 Bayer matrix at 8..32 levels per channel,
  blended in at 25..70%;
- paper texture: multiplicative noise of 1.5..5%, smoothed at sigma 0.6..2 px;
- sheen: a broad specular highlight (Gaussian, sigma 15..45% of the print) adding 0..70
  grey levels, desaturating where it falls;
- paper edge: a white margin of 0..8% of the print side; the print covers 45..95% of the
  frame height (p = 0.75, so its edge and what is behind it are in view) or overfills the
  frame (p = 0.25, no edge in view);
- bending: a cylindrical bend of amplitude 0..6% of the print width with shading of
  0..25% across it;
- blur: Gaussian sigma 0.4..2.0 px (refocus on the print).

screen replay (:func:`make_replay`):
- gamma 0.6..1.5, a colour temperature shift (blue +0..12%, red -0..8%), brightness
  +-20 levels;
- pixel grid: the photo shown on a screen whose pixel pitch is 1.6..4.0 camera pixels,
  each screen pixel drawn as R, G, B sub-pixel stripes with a dark gap (fill 55..85%);
- moire: the grid resampled at a rotation of -8..8 degrees (it beats with the camera's
  sampling), plus a low-frequency interference term of 3..12% at period 6..40 px;
- bezel: a dark border (6..40 grey levels) of 3..12% of the screen side round the display;
  the screen covers 45..95% of the frame (p = 0.7) or overfills it (p = 0.3);
- glare: one to two elliptical reflections adding 20..110 grey levels;
- blur: Gaussian sigma 0.3..1.6 px.

Both then go through :func:`camera`: a random perspective (rotation -12..12 degrees,
keystone up to 6%), a background (smooth gradient plus a few soft rectangles plus noise) where
the medium does not cover the frame, resize to a 640x480 frame, sensor noise sigma 0.5..4
grey levels and JPEG quality 60..95. Bona fide photos get the same camera (minus the
perspective of a held medium): :func:`bona_fide_variant` rescales, adds noise and recompresses,
so a camera's sharpness, noise or compression never tells the classes apart by itself.
"""

from __future__ import annotations

import cv2
import numpy as np

FRAME = (480, 640)  # height, width of the generated frames
VERSION = 2  # bump when a change alters the frames (cached corpora are keyed by it)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _fit(img: np.ndarray, longest: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = longest / max(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (max(2, round(w * s)), max(2, round(h * s))), interpolation=interp)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.05 else img


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _blob(h: int, w: int, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    yy, xx = _grid(h, w)
    return np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2).astype(np.float32)


# --- the print -------------------------------------------------------------------------------


def _gamut(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    black, white = _u(rng, 15, 55), _u(rng, 195, 240)
    x = img.astype(np.float32)
    grey = x.mean(2, keepdims=True)
    x = grey + _u(rng, 0.55, 0.9) * (x - grey)
    x = black + (white - black) * x / 255.0
    return x * (1 + rng.uniform(-0.06, 0.06, 3).astype(np.float32))


def _halftone(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    yy, xx = _grid(h, w)
    if rng.random() < 0.6:
        period, ang = _u(rng, 2, 5), np.deg2rad(_u(rng, 10, 80))
        u = (xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period
        v = (-xx * np.sin(ang) + yy * np.cos(ang)) * 2 * np.pi / period
        screen = (0.5 + 0.25 * (np.cos(u) + np.cos(v)))[..., None]
        dots = (x / 255.0 > screen).astype(np.float32) * 255.0
    else:
        bayer = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])
        t = ((bayer + 0.5) / 16.0).astype(np.float32)
        t = np.tile(t, (h // 4 + 1, w // 4 + 1))[:h, :w, None]
        levels = float(rng.integers(8, 33))
        dots = np.floor(x / 255.0 * (levels - 1) + t) / (levels - 1) * 255.0
    a = _u(rng, 0.25, 0.7)
    return (1 - a) * x + a * dots


def _paper(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    noise = rng.standard_normal((h, w)).astype(np.float32)
    noise = _blur(noise, _u(rng, 0.6, 2.0))
    noise /= noise.std() + 1e-6
    x = x * (1 + _u(rng, 0.015, 0.05) * noise)[..., None]
    # sheen: a broad highlight, brighter and less saturated where it falls
    g = _blob(h, w, _u(rng, 0, h), _u(rng, 0, w), _u(rng, 0.15, 0.45) * h, _u(rng, 0.15, 0.45) * w)
    g = (g * _u(rng, 0, 70))[..., None]
    grey = x.mean(2, keepdims=True)
    k = np.clip(g / 120.0, 0, 1)
    return (1 - k) * x + k * grey + g


def _bend(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cylindrical bend: the print and a mask of where it is (the rest transparent)."""
    h, w = x.shape[:2]
    amp = _u(rng, 0, 0.06) * w
    pad = int(np.ceil(amp)) + 1
    big_y, big_x = _grid(h + 2 * pad, w)
    sy = (big_y - pad - amp * np.sin(np.pi * big_x / max(1, w - 1))).astype(np.float32)
    bent = cv2.remap(x.astype(np.float32), big_x, sy, cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    mask = cv2.remap(np.ones((h, w), np.float32), big_x, sy, cv2.INTER_LINEAR, borderValue=0.0)
    shade = 1 - _u(rng, 0, 0.25) * (1 - np.abs(np.cos(np.pi * big_x / max(1, w - 1))))
    if rng.random() < 0.5:
        shade = shade[:, ::-1]
    return bent * shade[..., None], mask


def make_medium_print(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The photo as a print (float32 BGR) and its coverage mask, before the recapture."""
    x = _gamut(_fit(photo, int(rng.integers(360, 720))), rng)
    x = _halftone(x, rng)
    h, w = x.shape[:2]
    m = int(_u(rng, 0, 0.08) * max(h, w))
    if m:
        paper_white = _u(rng, 205, 245)
        x = cv2.copyMakeBorder(x, m, m, m, m, cv2.BORDER_CONSTANT, value=(paper_white,) * 3)
    x = _paper(x, rng)
    x, mask = _bend(x, rng)
    x = _blur(x, _u(rng, 0.4, 2.0))
    return x, mask


# --- the screen ------------------------------------------------------------------------------


def make_medium_replay(
    photo: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The photo on a screen (float32 BGR, seen head-on) and its coverage mask."""
    pitch = _u(rng, 1.6, 4.0)
    side = int(rng.integers(360, 720))
    screen_px = _fit(photo, max(8, round(side / pitch)))  # the photo at screen resolution
    x = screen_px.astype(np.float32) / 255.0
    x = x ** _u(rng, 0.6, 1.5)
    x = x * 255.0 * np.array([1 + _u(rng, 0, 0.12), 1.0, 1 - _u(rng, 0, 0.08)], np.float32)
    x = x + _u(rng, -20, 20)
    sh, sw = x.shape[:2]
    out_h, out_w = round(sh * pitch), round(sw * pitch)
    yy, xx = _grid(out_h, out_w)
    ang = np.deg2rad(_u(rng, -8, 8))
    u = (xx * np.cos(ang) + yy * np.sin(ang)) / pitch  # screen pixel coordinates
    v = (-xx * np.sin(ang) + yy * np.cos(ang)) / pitch
    u, v = u.astype(np.float32), v.astype(np.float32)
    img = cv2.remap(x, u - 0.5, v - 0.5, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    fu, fv = u - np.floor(u), v - np.floor(v)
    fill = _u(rng, 0.55, 0.85)
    sub = np.minimum(np.floor(fu * 3), 2).astype(np.int64)  # which sub-pixel stripe
    lit = (np.abs(fu * 3 - sub - 0.5) < fill / 2) & (fv < 0.5 + fill / 2) & (fv > 0.5 - fill / 2)
    stripes = np.zeros_like(img)
    for c, chan in enumerate((2, 1, 0)):  # R, G, B stripes left to right; BGR order
        stripes[..., chan] = np.where((sub == c) & lit, 3.0, 0.0)
    img = img * (0.35 + 0.65 * stripes)
    period, mang = _u(rng, 6, 40), np.deg2rad(_u(rng, 0, 180))
    moire = 1 + _u(rng, 0.03, 0.12) * np.cos(
        2 * np.pi * (xx * np.cos(mang) + yy * np.sin(mang)) / period
    )
    img = img * moire[..., None]
    img = _blur(img, _u(rng, 0.3, 1.6))
    b = int(_u(rng, 0.03, 0.12) * max(out_h, out_w))
    bezel = _u(rng, 6, 40)
    img = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=(bezel,) * 3)
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = _u(rng, 0, h), _u(rng, 0, w)  # drawn in this order: centre, then size
        sy, sx = _u(rng, 0.08, 0.4) * h, _u(rng, 0.08, 0.4) * w
        g = _blob(h, w, cy, cx, sy, sx)
        img = img + (g * _u(rng, 20, 110))[..., None]
    return img, np.ones((h, w), np.float32)


# --- the camera ------------------------------------------------------------------------------


def _background(rng: np.random.Generator) -> np.ndarray:
    h, w = FRAME
    yy, xx = _grid(h, w)
    c0, c1 = rng.uniform(20, 230, 3), rng.uniform(20, 230, 3)
    ang = _u(rng, 0, 2 * np.pi)
    t = ((xx * np.cos(ang) + yy * np.sin(ang)) / (h + w) + 0.5)[..., None]
    bg = (1 - t) * c0 + t * c1
    for _ in range(int(rng.integers(0, 5))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = y0 + int(rng.integers(20, h)), x0 + int(rng.integers(20, w))
        bg[y0:y1, x0:x1] = rng.uniform(10, 245, 3)
    bg = _blur(bg.astype(np.float32), _u(rng, 1, 6))
    return bg + rng.normal(0, 3, bg.shape).astype(np.float32)


def _sensor(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frame = frame + rng.normal(0, _u(rng, 0.5, 4), frame.shape).astype(np.float32)
    img = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def camera(medium: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The medium held in front of a camera: a uint8 BGR frame of FRAME size."""
    fh, fw = FRAME
    mh, mw = medium.shape[:2]
    # the medium's height in the frame: its edge in view, or overfilling the frame
    cover = _u(rng, 0.55, 0.98) if rng.random() < 0.72 else _u(rng, 1.05, 1.6)
    s = cover * fh / mh
    ang = _u(rng, -12, 12)
    k = 0.06
    src = np.float32([[0, 0], [mw, 0], [mw, mh], [0, mh]])
    jitter = rng.uniform(-k, k, (4, 2)).astype(np.float32) * np.float32([mw, mh])
    c = np.float32([mw / 2, mh / 2])
    rot = cv2.getRotationMatrix2D((0.0, 0.0), ang, s)[:, :2].astype(np.float32)
    centre = np.float32([fw / 2 + _u(rng, -0.15, 0.15) * fw, fh / 2 + _u(rng, -0.1, 0.1) * fh])
    dst = ((src + jitter - c) @ rot.T + centre).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(medium, m, (fw, fh), flags=cv2.INTER_AREA)
    alpha = cv2.warpPerspective(mask, m, (fw, fh), flags=cv2.INTER_LINEAR)[..., None]
    frame = alpha * warped + (1 - alpha) * _background(rng)
    return _sensor(frame, rng)


def make_print(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A print of a bona fide photo (uint8 BGR) recaptured: a uint8 BGR 640x480 frame."""
    return camera(*make_medium_print(photo, rng), rng)


def make_replay(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A screen replay of a bona fide photo recaptured: a uint8 BGR 640x480 frame."""
    return camera(*make_medium_replay(photo, rng), rng)


def bona_fide_variant(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same bona fide photo through another camera: rescaled 0.6..1.6x, mild blur,
    brightness and contrast +-10%, white balance +-6% per channel, saturation 80..115%,
    sensor noise and JPEG (no medium, no perspective): a camera's colour rendering, like its
    sharpness, must not tell the classes apart by itself."""
    x = photo.astype(np.float32)
    h, w = x.shape[:2]
    s = _u(rng, 0.6, 1.6)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    x = cv2.resize(x, (max(8, round(w * s)), max(8, round(h * s))), interpolation=interp)
    x = _blur(x, _u(rng, 0, 1.0))
    x = (x - 128) * _u(rng, 0.9, 1.1) + 128 + _u(rng, -12, 12)
    x = x * (1 + rng.uniform(-0.06, 0.06, 3).astype(np.float32))
    grey = x.mean(2, keepdims=True)
    x = grey + _u(rng, 0.8, 1.15) * (x - grey)
    return _sensor(x, rng)
