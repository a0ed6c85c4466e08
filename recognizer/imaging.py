"""Decode untrusted image bytes into a BGR uint8 array, within limits.

The dimensions are read from the container header *before* any pixel is decoded, so a small
file that declares 60000x60000 pixels (a decompression bomb) is refused without allocating.
A JPEG's EXIF orientation is read from the header too and applied here, after the decoder
has checked the stored size against the header (phones store portraits rotated).

A JPEG that a camera or its network cut short by a few bytes (the end-of-image marker and the
tail of the last scan) is decoded as far as it goes, as most image viewers do; one that lost
more than a few rows stays CORRUPT_IMAGE, so the client sends the frame again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from recognizer import deadline
from recognizer.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    # 16 MP: a 12-MP phone photo (4032x3024) passes; decode and detection time grow with it.
    max_pixels: int = 16_000_000
    max_side: int = 12_000
    min_side: int = 8


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: str  # "jpeg" | "png" | "webp"
    width: int  # as stored
    height: int
    orientation: int = 1  # EXIF orientation, 1..8 (1: stored upright)

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the orientation is applied: 5..8 swap the sides."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def _bad(message: str, field: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, field=field, reason=reason)


def _png_size(data: bytes) -> tuple[int, int, int]:
    # IHDR is always the first chunk: 8-byte signature, length, "IHDR", width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("PNG without IHDR")
    w, h = struct.unpack(">II", data[16:24])
    return w, h, 1


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


_ORIENTATION_TAG = 0x0112


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of IFD0 in an EXIF TIFF block; 1 if absent or malformed."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            at = ifd + 2 + 12 * k
            tag, kind, _, value = struct.unpack(order + "HHIH", tiff[at : at + 10])
            if tag == _ORIENTATION_TAG:
                return value if kind == 3 and 1 <= value <= 8 else 1  # 3: SHORT
    except struct.error:
        return 1  # a truncated EXIF block says nothing about orientation
    return 1


def _jpeg_size(data: bytes) -> tuple[int, int, int]:
    # Walk the marker segments until a start-of-frame, which holds height and width; an
    # EXIF APP1 segment on the way holds the orientation.
    i = 2
    n = len(data)
    orientation = 1
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
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[i + 10 : i + 2 + seg_len])
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h, orientation
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + seg_len
    raise ValueError("JPEG without a frame header")


def _webp_size(data: bytes) -> tuple[int, int, int]:
    # WebP EXIF orientation is not applied (the decoder ignores it too): always 1.
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF, 1
    if chunk == b"VP8L" and len(data) >= 25:
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h, 1
    if chunk == b"VP8X" and len(data) >= 30:
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h, 1
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
        w, h, orientation = parse(data)
    except (ValueError, struct.error) as exc:
        raise _bad(f"{field}: corrupt {fmt} header ({exc})", field, "CORRUPT_IMAGE") from exc
    return ImageHeader(fmt, w, h, orientation)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> upright pixels for an EXIF orientation 1..8 (TIFF 6.0 semantics:
    where the stored 0th row and 0th column lie in the upright image)."""
    t = image.transpose(1, 0, *range(2, image.ndim))
    view = {
        1: image,
        2: image[:, ::-1],  # mirrored left-right
        3: image[::-1, ::-1],  # upside down
        4: image[::-1],  # mirrored top-bottom
        5: t,  # transposed
        6: t[:, ::-1],  # turned 90 degrees clockwise
        7: t[::-1, ::-1],  # transverse
        8: t[::-1],  # turned 90 degrees counter-clockwise
    }[orientation]
    return np.ascontiguousarray(view)


_EOI = b"\xff\xd9"  # a JPEG's end-of-image marker
# A JPEG cut short decodes its lost blocks flat (the last block's colour repeated): at most this
# share of the rows may be lost that way, about one block row of 16 px on a 480-px frame.
MAX_LOST_ROWS = 0.03
_FLAT = 2  # a lost row's range per channel (the decoder's upsampling blurs its edge)
_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _cut_short_jpeg(data: bytes) -> np.ndarray | None:
    """The picture a JPEG cut short still holds, or None when it is not cut short (it ends
    with its end-of-image marker) or it lost more than MAX_LOST_ROWS of its rows."""
    if data.endswith(_EOI):
        return None
    image = cv2.imdecode(np.frombuffer(data + _EOI, np.uint8), _FLAGS)
    if image is None:
        return None
    tail = image[-(int(MAX_LOST_ROWS * image.shape[0]) + 1) :]
    lost = (tail.max(axis=1).astype(np.int16) - tail.min(axis=1)).max(axis=1) <= _FLAT
    # Every row of the tail flat: more than the allowed rows are lost (or the picture's bottom
    # is flat, and then what was lost cannot be told: refused as before).
    return None if lost.all() else image


def decode(data: bytes, limits: ImageLimits = ImageLimits(), field: str = "image") -> np.ndarray:
    """Bytes -> upright HxWx3 BGR uint8. Raises InvalidArgument with a reason for anything
    else, and DeadlineExceeded when the call's budget has no time left for decoding."""
    with deadline.stage("decode"):
        return _decode(data, limits, field)


def _decode(data: bytes, limits: ImageLimits, field: str) -> np.ndarray:
    if not data:
        raise _bad(f"{field}: empty", field, "EMPTY_IMAGE")
    if len(data) > limits.max_bytes:
        raise _bad(
            f"{field}: {len(data)} bytes exceeds the limit of {limits.max_bytes}",
            field,
            "IMAGE_TOO_LARGE",
        )
    header = read_header(data, field)
    w, h = header.upright_size
    if min(w, h) < limits.min_side:
        raise _bad(f"{field}: {w}x{h} is too small", field, "IMAGE_TOO_SMALL")
    if max(w, h) > limits.max_side or w * h > limits.max_pixels:
        raise _bad(
            f"{field}: declared {w}x{h} exceeds the limit of {limits.max_pixels} pixels "
            f"or {limits.max_side} per side",
            field,
            "IMAGE_TOO_LARGE",
        )
    # IMREAD_COLOR folds grayscale, 16-bit and alpha images into 8-bit BGR. The decoder
    # must not rotate: its output is checked against the stored size in the header, and
    # the orientation is applied below, the same way whatever the OpenCV build does.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS)
    if image is None and header.format == "jpeg":
        image = _cut_short_jpeg(data)
    if image is None:
        raise _bad(
            f"{field}: the {header.format} data is corrupt or truncated", field, "CORRUPT_IMAGE"
        )
    if image.shape[1] != header.width or image.shape[0] != header.height:
        # The header lied about the size; refuse rather than trust either.
        raise _bad(f"{field}: header size disagrees with the decoded image", field, "CORRUPT_IMAGE")
    return orient(image, header.orientation)
