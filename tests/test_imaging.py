"""Image intake: formats, limits read from headers, and clear reasons for bad input."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from recognizer.errors import InvalidArgument
from recognizer.imaging import ImageLimits, decode, read_header


def encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims a huge size: a decompression-bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00" * 32
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


def test_byte_limit_checked_before_decode() -> None:
    data = encode(".png", IMAGE)
    with pytest.raises(InvalidArgument) as err:
        decode(data, ImageLimits(max_bytes=len(data) - 1))
    assert err.value.reason == "IMAGE_TOO_LARGE"
