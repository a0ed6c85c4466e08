"""Image intake: formats, limits read from headers, and clear reasons for bad input."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from recognizer.errors import InvalidArgument
from recognizer.imaging import ImageLimits, decode, read_header
from tests.images import (
    encode,
    jpeg_declaring,
    png_declaring,
    stored_as,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_decodes_supported_formats_to_bgr(ext: str) -> None:
    out = decode(encode(ext, IMAGE))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    header = read_header(encode(ext, IMAGE))
    assert (header.width, header.height) == (64, 48)


def test_lossless_webp_header() -> None:
    data = encode(".webp", IMAGE, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert (read_header(data).width, read_header(data).height) == (64, 48)


def test_grayscale_16bit_and_alpha_become_bgr8() -> None:
    gray = decode(encode(".png", IMAGE[:, :, 0]))
    deep = decode(encode(".png", (IMAGE[:, :, 0].astype(np.uint16) * 257)))
    alpha = decode(encode(".png", np.dstack([IMAGE, IMAGE[:, :, :1]])))
    for out in (gray, deep, alpha):
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "EMPTY_IMAGE"),
        (b"hello, this is a text file\n" * 4, "UNSUPPORTED_FORMAT"),
        (png_declaring(60000, 60000), "IMAGE_TOO_LARGE"),
        (png_declaring(20000, 20), "IMAGE_TOO_LARGE"),
        (png_declaring(1, 1), "IMAGE_TOO_SMALL"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 8, "CORRUPT_IMAGE"),
    ],
)
def test_bad_input_has_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode(data, field="vehicle_image")
    assert err.value.reason == reason
    assert err.value.field == "vehicle_image"


def test_truncated_jpeg_is_refused() -> None:
    data = encode(".jpg", RNG.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    with pytest.raises(InvalidArgument) as err:
        decode(data[: len(data) // 2])
    assert err.value.reason == "CORRUPT_IMAGE"


def textured(h: int = 480, w: int = 640) -> np.ndarray:
    """Smooth colour noise: no flat rows, and a JPEG of it has many bytes per block row."""
    small = RNG.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_a_jpeg_cut_short_by_a_few_bytes_decodes_as_far_as_it_goes() -> None:
    image = textured()
    data = encode(".jpg", image)
    whole = decode(data)
    for lost in (2, 15, 200):  # the end-of-image marker, and part of the last block row
        cut = decode(data[:-lost])
        assert cut.shape == whole.shape
        # What arrived decodes exactly as in the whole file: all but the last block rows.
        assert np.array_equal(cut[: -2 * 16], whole[: -2 * 16]), lost


@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_a_jpeg_that_lost_more_than_a_few_rows_is_refused(kept: float) -> None:
    data = encode(".jpg", textured())
    with pytest.raises(InvalidArgument) as err:
        decode(data[: int(len(data) * kept)])
    assert err.value.reason == "CORRUPT_IMAGE"


def test_byte_limit_checked_before_decode() -> None:
    data = encode(".png", IMAGE)
    with pytest.raises(InvalidArgument) as err:
        decode(data, ImageLimits(max_bytes=len(data) - 1))
    assert err.value.reason == "IMAGE_TOO_LARGE"


# --- EXIF orientation --------------------------------------------------------------------


def portrait_pattern() -> np.ndarray:
    """An 80x48 portrait with no symmetry: a gradient and a bright block near the top left."""
    y, x = np.mgrid[0:80, 0:48]
    img = np.dstack([x * 5, y * 3, (x + y) * 2]).astype(np.uint8)
    img[4:20, 4:16] = 255
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", [">", "<"])
def test_exif_orientation_is_applied(orientation: int, order: str) -> None:
    upright = portrait_pattern()
    data = stored_as(upright, orientation, order)
    assert read_header(data).orientation == orientation
    assert read_header(data).upright_size == (48, 80)
    out = decode(data)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright.astype(int)).mean() < 4  # JPEG noise only


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_agrees_with_pillow(orientation: int) -> None:
    """Pillow reads our tag the same way: a check on the test's EXIF writer and on decode."""
    pil = pytest.importorskip("PIL.Image")
    ops = pytest.importorskip("PIL.ImageOps")
    import io

    data = stored_as(portrait_pattern(), orientation)
    im = pil.open(io.BytesIO(data))
    assert im.getexif().get(0x0112) == orientation
    theirs = np.asarray(ops.exif_transpose(im).convert("RGB"))[:, :, ::-1]
    ours = decode(data)
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 4


def test_limits_apply_to_the_upright_size() -> None:
    data = stored_as(portrait_pattern(), 6)  # stored 80 wide, 48 high; upright 48x80
    with pytest.raises(InvalidArgument) as err:
        decode(data, ImageLimits(max_pixels=48 * 80 - 1))
    assert "48x80" in err.value.message
    assert decode(data, ImageLimits(max_pixels=48 * 80)).shape == (80, 48, 3)


@pytest.mark.parametrize(
    "tiff", [b"", b"MM\x00*", b"XX\x00*\x00\x00\x00\x08", b"MM\x00*\xff\xff\xff\xff"]
)
def test_malformed_exif_means_upright(tiff: bytes) -> None:
    jpeg = encode(".jpg", IMAGE)
    app1 = b"Exif\x00\x00" + tiff
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    assert read_header(data).orientation == 1
    assert decode(data).shape == (48, 64, 3)


# --- pixel caps ---------------------------------------------------------------------------


def test_a_small_file_declaring_40_megapixels_is_refused_by_default() -> None:
    data = jpeg_declaring(11000, 3600)
    assert len(data) < 10_000
    with pytest.raises(InvalidArgument) as err:
        decode(data, field="image")
    assert err.value.reason == "IMAGE_TOO_LARGE" and err.value.field == "image"


def test_a_12_megapixel_phone_photo_passes_the_default_limits() -> None:
    data = encode(".jpg", np.zeros((3024, 4032, 3), np.uint8))
    assert decode(data).shape == (3024, 4032, 3)
