"""Seeded synthetic Chinese plates for tests and benchmarks.

Renders every plate type at GA 36 geometry with a real CJK font, then degrades it
(perspective, blur, noise, lighting, JPEG). Returns the image with its exact ground truth.

OpenCV's putText cannot draw CJK and opencv-python-headless ships without cv2.freetype, so
glyphs are rasterised once per character with Pillow (a dev/benchmark dependency, imported
lazily) and everything else is numpy/OpenCV.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from recognizer.plate.grammar import DIGITS, LETTERS_NO_IO, NEV_CLASS, PROVINCES
from recognizer.plate.types import PlateType

FONT_PACKAGES = "fonts-wqy-zenhei (or fonts-noto-cjk)"
_FONT_GLOBS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/**/*CJK*.tt[cf]",
    "/usr/share/fonts/**/*CJK*.otf",
    "/usr/share/fonts/**/wqy*.tt[cf]",
)


class FontNotFoundError(RuntimeError):
    """No CJK font on this machine."""


def find_cjk_font() -> Path:
    for pattern in _FONT_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return Path(hits[0])
    raise FontNotFoundError(
        "no CJK font found for synthetic plates; install the Debian package "
        f"{FONT_PACKAGES}: `apt-get install -y fonts-wqy-zenhei`"
    )


# Sans-serif (hei) faces of Simplified Chinese that look like the plate lettering, to train on
# more than one font: "path#index" names a face of a collection (the SC face of Noto's).
# Debian packages: fonts-wqy-zenhei fonts-wqy-microhei fonts-noto-cjk fonts-noto-cjk-extra.
TRAINING_FONT_PACKAGES = "fonts-wqy-zenhei fonts-wqy-microhei fonts-noto-cjk fonts-noto-cjk-extra"
_NOTO = "/usr/share/fonts/opentype/noto/NotoSansCJK-{}.ttc#2"
TRAINING_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    *(_NOTO.format(w) for w in ("DemiLight", "Regular", "Medium", "Bold", "Black")),
)


def font_installed(font: str) -> bool:
    """The file of `font` ("path" or "path#index") is on this machine."""
    return Path(font.partition("#")[0]).exists()


def training_fonts() -> list[str]:
    """The TRAINING_FONTS installed here (the default font first when it is among them)."""
    return [f for f in TRAINING_FONTS if font_installed(f)]


@lru_cache(maxsize=4096)
def _glyph(ch: str, font_path: str) -> np.ndarray:
    """Tight uint8 ink mask of one character (rendered large, cropped to its ink).
    `font_path` may name a face of a collection: "path#index"."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pragma: no cover - depends on the dev extra
        raise RuntimeError("synthetic plates need Pillow (the dev extra) for CJK glyphs") from exc
    path, _, index = font_path.partition("#")
    font = ImageFont.truetype(path, 120, index=int(index or 0))
    canvas = Image.new("L", (180, 180), 0)
    ImageDraw.Draw(canvas).text((20, 10), ch, fill=255, font=font)
    mask = np.asarray(canvas)
    ys, xs = np.nonzero(mask > 40)
    if ys.size == 0:
        raise ValueError(f"font {font_path} has no glyph for {ch!r}")
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


# Colours (BGR) of background / characters per plate type.
_STYLE: dict[PlateType, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    PlateType.BLUE: ((160, 70, 15), (245, 245, 245)),
    PlateType.YELLOW: ((20, 185, 235), (20, 20, 20)),
    PlateType.YELLOW_TWO_ROW: ((20, 185, 235), (20, 20, 20)),
    PlateType.GREEN_NEW_ENERGY: ((90, 190, 60), (20, 20, 20)),
    PlateType.WHITE_POLICE: ((240, 240, 240), (20, 20, 20)),
    PlateType.BLACK: ((25, 25, 25), (240, 240, 240)),
    PlateType.LEARNER: ((20, 185, 235), (20, 20, 20)),
}
_RED = (30, 30, 200)

# Fixed type proportions for benchmark sets (sum to 1).
DEFAULT_PROPORTIONS: dict[PlateType, float] = {
    PlateType.BLUE: 0.25,
    PlateType.YELLOW: 0.125,
    PlateType.YELLOW_TWO_ROW: 0.15,
    PlateType.GREEN_NEW_ENERGY: 0.15,
    PlateType.WHITE_POLICE: 0.1,
    PlateType.BLACK: 0.1,
    PlateType.LEARNER: 0.125,
}


@dataclass(frozen=True, slots=True)
class SynthConfig:
    scene: bool = False  # paste into a larger frame (for the detector path)
    frame_size: tuple[int, int] = (640, 480)  # (w, h) of scene frames
    plate_height: tuple[int, int] = (28, 64)  # px of a single-row plate in crops
    scene_plate_width: tuple[int, int] = (110, 220)  # px plate width in scenes
    max_tilt: float = 0.12  # perspective jitter, fraction of the plate size
    # Turn about the plate's vertical axis (degrees, uniform in the range, either side), seen
    # by a pinhole camera `yaw_distance` plate widths away: the near edge taller than the far
    # one, the plate foreshortened by cos(yaw). (0, 0), the default, draws no extra random
    # number, so existing seeds give the same plates.
    yaw: tuple[float, float] = (0.0, 0.0)
    yaw_distance: float = 2.5
    blur: tuple[float, float] = (0.0, 1.2)  # Gaussian sigma at output scale
    noise: tuple[float, float] = (0.0, 8.0)  # Gaussian noise sigma, grey levels
    jpeg_quality: tuple[int, int] = (40, 95)
    proportions: Mapping[PlateType, float] = field(
        default_factory=lambda: dict(DEFAULT_PROPORTIONS)
    )


@dataclass(frozen=True, slots=True)
class SynthPlate:
    image: np.ndarray  # BGR uint8
    text: str  # exact ground truth, normalised (no dot)
    plate_type: PlateType
    corners: np.ndarray  # (4, 2) float32 TL, TR, BR, BL of the plate in `image`


def random_text(rng: np.random.Generator, ptype: PlateType) -> str:
    """A random plate string valid under GA 36 for the given type."""
    alnum = LETTERS_NO_IO + DIGITS

    def pick(chars: str, k: int = 1) -> str:
        return "".join(chars[i] for i in rng.integers(0, len(chars), k))

    def tail(k: int) -> str:
        # Real plates are mostly digits; about a quarter letters keeps confusions (0/D, 8/B)
        # well represented.
        return "".join(
            pick(LETTERS_NO_IO) if rng.random() < 0.25 else pick(DIGITS) for _ in range(k)
        )

    head = pick(PROVINCES) + pick(LETTERS_NO_IO)
    if ptype is PlateType.GREEN_NEW_ENERGY:
        if rng.random() < 0.7:
            return head + pick(NEV_CLASS) + pick(alnum) + pick(DIGITS, 4)
        return head + pick(DIGITS, 5) + pick(NEV_CLASS)
    if ptype is PlateType.WHITE_POLICE:
        return head + tail(4) + "警"
    if ptype is PlateType.LEARNER:
        return head + tail(4) + "学"
    if ptype is PlateType.BLACK and rng.random() < 0.5:
        return "粤Z" + tail(4) + pick("港澳")
    return head + tail(5)


def _draw(
    canvas: np.ndarray,
    ch: str,
    x: float,
    y: float,
    w: float,
    h: float,
    colour: tuple[int, int, int],
    font: str,
) -> None:
    """Alpha-blend one glyph stretched into the cell (x, y, w, h)."""
    g = _glyph(ch, font)
    x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
    a = cv2.resize(g, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    roi = canvas[y0:y1, x0:x1].astype(np.float32)
    roi = roi * (1 - a[..., None]) + np.array(colour, np.float32) * a[..., None]
    canvas[y0:y1, x0:x1] = roi.astype(np.uint8)


def plate_size_mm(ptype: PlateType) -> tuple[float, float]:
    """(width, height) of a plate of the type in millimetres (GA 36)."""
    if ptype is PlateType.YELLOW_TWO_ROW:
        return 440.0, 220.0
    return (480.0, 140.0) if ptype is PlateType.GREEN_NEW_ENERGY else (440.0, 140.0)


def _row_metrics(ptype: PlateType) -> tuple[float, float, float]:
    """Single-row character width, gap, and the wider gap after the issuer letter (mm)."""
    return (43.0, 9.0, 49.0) if ptype is PlateType.GREEN_NEW_ENERGY else (45.0, 12.0, 34.0)


def char_cells(text: str, ptype: PlateType) -> list[tuple[float, float, float, float]]:
    """The cell (x, y, w, h) in millimetres each character of `text` is drawn into."""
    if ptype is PlateType.YELLOW_TWO_ROW:
        # Top row: 2 chars 80x60 mm centred; bottom row: 5 chars 65x110 mm.
        top = [(110.0 + 140 * i, 15.0, 80.0, 60.0) for i in range(min(len(text), 2))]
        return top + [(27.5 + 80 * i, 90.0, 65.0, 110.0) for i in range(len(text) - 2)]
    w_mm = plate_size_mm(ptype)[0]
    cw, gap, big = _row_metrics(ptype)
    x = (w_mm - (len(text) * cw + (len(text) - 2) * gap + big)) / 2
    cells = []
    for i in range(len(text)):
        cells.append((x, 25.0, cw, 90.0))
        x += cw + (big if i == 1 else gap)
    return cells


def render_plate(
    text: str, ptype: PlateType, font: str | None = None, scale: float = 0.5
) -> np.ndarray:
    """Clean, upright plate at GA 36 geometry; `scale` pixels per millimetre."""
    font = font or str(find_cjk_font())
    bg, fg = _STYLE[ptype]
    two_row = ptype is PlateType.YELLOW_TWO_ROW
    nev = ptype is PlateType.GREEN_NEW_ENERGY
    w_mm, h_mm = plate_size_mm(ptype)
    W, H = round(w_mm * scale), round(h_mm * scale)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = bg
    if nev:  # new-energy plates fade from pale green at the top to green at the bottom
        t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        img[:] = ((1 - t) * np.array((225, 245, 220)) + t * np.array(bg)).astype(np.uint8)
    border = fg if ptype in (PlateType.BLUE, PlateType.BLACK) else (20, 20, 20)
    m = max(1, round(4 * scale))
    cv2.rectangle(img, (m, m), (W - 1 - m, H - 1 - m), border, max(1, round(3 * scale)))
    s = scale
    for i, (ch, (x, y, w, h)) in enumerate(zip(text, char_cells(text, ptype), strict=True)):
        _draw(img, ch, x * s, y * s, w * s, h * s, _RED if ch in "警" else fg, font)
        if i == 1 and not two_row:  # separator dot between the issuer letter and the serial
            c = (round((x + w + _row_metrics(ptype)[2] / 2) * s), round(70 * s))
            cv2.circle(img, c, max(1, round(5 * s)), fg, -1)
    return img


# --- covering a plate's province (painted over, a sticker): validation of reads ---------------
def plate_point(corners: np.ndarray, u: float, v: float) -> np.ndarray:
    """The point (u, v) of a plate, as fractions of its width and height from the top left,
    between its corners (TL, TR, BR, BL)."""
    tl, tr, br, bl = np.asarray(corners, np.float64)
    top, bottom = tl + (tr - tl) * u, bl + (br - bl) * u
    return top + (bottom - top) * v


def _quad(corners: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    u0, u1, v0, v1 = box
    pts = [plate_point(corners, u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
    return np.round(pts).astype(np.int32)


def plate_colour(image: np.ndarray, corners: np.ndarray) -> tuple[float, ...]:
    """The median colour inside the plate: its background (the glyphs are the minority)."""
    mask = cv2.fillConvexPoly(np.zeros(image.shape[:2], np.uint8), _quad(corners, (0, 1, 0, 1)), 1)
    return tuple(float(c) for c in np.median(image[mask.astype(bool)], axis=0))


def cover(
    image: np.ndarray,
    corners: np.ndarray,
    box: tuple[float, float, float, float],
    colour: tuple[float, ...],
) -> np.ndarray:
    """A copy of `image` with the plate region `box` (u0, u1, v0, v1; fractions of the plate,
    see plate_point) filled with `colour`."""
    return cv2.fillConvexPoly(image.copy(), _quad(corners, box), colour)


def province_box(
    text: str, ptype: PlateType, margin: float = 0.0
) -> tuple[float, float, float, float]:
    """Where the province glyph of `text` is printed, as (u0, u1, v0, v1) fractions of the
    plate, grown by `margin` of the glyph's size on every side and clipped to the plate."""
    x, y, w, h = char_cells(text, ptype)[0]
    pw, ph = plate_size_mm(ptype)
    u0, u1 = (x - margin * w) / pw, (x + w + margin * w) / pw
    v0, v1 = (y - margin * h) / ph, (y + h + margin * h) / ph
    return max(u0, 0.0), min(u1, 1.0), max(v0, 0.0), min(v1, 1.0)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth random colour field plus texture: a stand-in for car body and street."""
    # Muted colours: saturated fields would dominate the colour statistics of tight crops.
    small = rng.integers(0, 256, (4, 4, 1)) * 0.6 + rng.integers(0, 256, (4, 4, 3)) * 0.4
    small = small.astype(np.uint8)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    tex = rng.normal(0, 12, (h, w, 1))
    return np.clip(bg.astype(np.float32) + tex, 0, 255).astype(np.uint8)


def _degrade(rng: np.random.Generator, img: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    out = img.astype(np.float32)
    # Lighting: global gain/offset plus a linear shading gradient across the image.
    h, w = out.shape[:2]
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    out = out * rng.uniform(0.6, 1.2) * shade[..., None] + rng.uniform(-25, 25)
    sigma = rng.uniform(*cfg.blur)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0, rng.uniform(*cfg.noise), out.shape)
    out8 = np.clip(out, 0, 255).astype(np.uint8)
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", out8, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else out8


def generate(
    rng: np.random.Generator,
    ptype: PlateType,
    config: SynthConfig = SynthConfig(),
    font: str | None = None,
) -> SynthPlate:
    """One degraded synthetic plate (a crop with a small random margin, or a scene)."""
    font = font or str(find_cjk_font())
    text = random_text(rng, ptype)
    clean = render_plate(text, ptype, font, scale=rng.uniform(0.35, 0.6))
    ph, pw = clean.shape[:2]
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    if config.scene:
        fw, fh = config.frame_size
        tw = rng.uniform(*config.scene_plate_width)
    else:
        base_h = rng.uniform(*config.plate_height)
        # Two-row plates are taller than single-row ones of the same width.
        tw = base_h * 440 / 140 if ptype is not PlateType.YELLOW_TWO_ROW else base_h * 2 * 440 / 220
    th = tw * ph / pw
    jitter = rng.uniform(-config.max_tilt, config.max_tilt, (4, 2)) * [tw, th]
    dst = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32) + jitter.astype(np.float32)
    if config.yaw != (0.0, 0.0):
        yaw = np.deg2rad(rng.uniform(*config.yaw)) * rng.choice((-1.0, 1.0))
        dst = yawed(dst, tw, th, float(yaw), config.yaw_distance)
    angle = np.deg2rad(rng.uniform(-6, 6))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    dst = dst @ rot.T
    dst -= dst.min(0)
    if config.scene:
        fw, fh = config.frame_size
        span = dst.max(0)
        off = rng.uniform([0, 0], np.maximum([fw, fh] - span, 1))
        size = (fw, fh)
    else:
        span = dst.max(0)
        off = rng.uniform(0.0, 0.08, 2) * span + 1
        size = tuple(int(v) for v in np.ceil(span + off + rng.uniform(0.0, 0.08, 2) * span + 1))
    dst = (dst + off).astype(np.float32)
    bg = _background(rng, size[0], size[1])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(clean, m, size, flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), m, size, flags=cv2.INTER_AREA)
    a = mask.astype(np.float32)[..., None] / 255
    frame = (bg * (1 - a) + warped * a).astype(np.uint8)
    return SynthPlate(_degrade(rng, frame, config), text, ptype, dst)


def yawed(corners: np.ndarray, w: float, h: float, yaw: float, distance: float) -> np.ndarray:
    """Corners of a w x h plate turned by `yaw` radians about its vertical axis, projected by a
    pinhole camera `distance` plate widths away (focal length = distance, so an unturned plate
    keeps its size)."""
    c = np.asarray(corners, np.float64) - [w / 2, h / 2]
    f = distance * w
    x, z = c[:, 0] * np.cos(yaw), c[:, 0] * np.sin(yaw)
    k = f / (f + z)
    out = np.stack([x * k, c[:, 1] * k], 1)
    return (out - out.min(0)).astype(np.float32)


def type_schedule(n: int, proportions: Mapping[PlateType, float]) -> list[PlateType]:
    """Exactly round(n * p) plates per type (largest remainders fill the rest), interleaved."""
    total = sum(proportions.values())
    raw = {t: n * p / total for t, p in proportions.items()}
    counts = {t: int(v) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: raw[t] - counts[t], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[t] += 1
    order: list[PlateType] = []
    left = dict(counts)
    while len(order) < n:
        for t in proportions:
            if left[t]:
                order.append(t)
                left[t] -= 1
    return order


def generate_dataset(
    n: int, seed: int = 0, config: SynthConfig = SynthConfig(), fonts: Sequence[str] = ()
) -> Iterator[SynthPlate]:
    """n plates in the config's fixed type proportions; the same seed gives the same set.
    Plate i is drawn in fonts[i % len(fonts)], or in the default font."""
    fonts = fonts or (str(find_cjk_font()),)
    for i, ptype in enumerate(type_schedule(n, config.proportions)):
        # One generator per sample: item i does not depend on how many came before.
        yield generate(np.random.default_rng([seed, i]), ptype, config, fonts[i % len(fonts)])
