"""Decode untrusted image bytes into a BGR uint8 array, within limits.

The dimensions are read from the container header *before* any pixel is decoded, so a small
file that declares 60000x60000 pixels (a decompression bomb) is refused without allocating.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from recognizer.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    min_side: int = 8


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: str  # "jpeg" | "png" | "webp"
    width: int
    height: int


def _bad(message: str, field: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, field=field, reason=reason)


def _png_size(data: bytes) -> tuple[int, int]:
    # IHDR is always the first chunk: 8-byte signature, length, "IHDR", width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("PNG without IHDR")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # Walk the marker segments until a start-of-frame, which holds height and width.
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + seg_len
    raise ValueError("JPEG without a frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X" and len(data) >= 30:
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    raise ValueError("WebP without a known bitstream chunk")


def read_header(data: bytes, field: str = "image") -> ImageHeader:
    """Identify the format and declared size from the header alone."""
    if data.startswith(b"\xff\xd8\xff"):
        fmt, parse = "jpeg", _jpeg_size
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        fmt, parse = "png", _png_size
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, parse = "webp", _webp_size
    else:
        raise _bad(f"{field}: not a JPEG, PNG or WebP image", field, "UNSUPPORTED_FORMAT")
    try:
        w, h = parse(data)
    except (ValueError, struct.error) as exc:
        raise _bad(f"{field}: corrupt {fmt} header ({exc})", field, "CORRUPT_IMAGE") from exc
    return ImageHeader(fmt, w, h)


def decode(data: bytes, limits: ImageLimits = ImageLimits(), field: str = "image") -> np.ndarray:
    """Bytes -> HxWx3 BGR uint8. Raises InvalidArgument with a reason for anything else."""
    if not data:
        raise _bad(f"{field}: empty", field, "EMPTY_IMAGE")
    if len(data) > limits.max_bytes:
        raise _bad(
            f"{field}: {len(data)} bytes exceeds the limit of {limits.max_bytes}",
            field,
            "IMAGE_TOO_LARGE",
        )
    header = read_header(data, field)
    w, h = header.width, header.height
    if min(w, h) < limits.min_side:
        raise _bad(f"{field}: {w}x{h} is too small", field, "IMAGE_TOO_SMALL")
    if max(w, h) > limits.max_side or w * h > limits.max_pixels:
        raise _bad(
            f"{field}: declared {w}x{h} exceeds the limit of {limits.max_pixels} pixels "
            f"or {limits.max_side} per side",
            field,
            "IMAGE_TOO_LARGE",
        )
    # IMREAD_COLOR folds grayscale, 16-bit and alpha images into 8-bit BGR.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise _bad(
            f"{field}: the {header.format} data is corrupt or truncated", field, "CORRUPT_IMAGE"
        )
    if image.shape[1] != w or image.shape[0] != h:
        # The header lied about the size; refuse rather than trust either.
        raise _bad(f"{field}: header size disagrees with the decoded image", field, "CORRUPT_IMAGE")
    return image
