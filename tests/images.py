"""Image bytes built for tests: encoded frames, headers that lie about their size, EXIF
orientations."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


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


def with_exif_orientation(jpeg: bytes, orientation: int, order: str = ">") -> bytes:
    """The JPEG with an EXIF APP1 segment right after SOI whose IFD0 holds one tag:
    Orientation (0x0112, SHORT). `order` is the TIFF byte order, ">" (MM) or "<" (II)."""
    tiff = (
        (b"MM" if order == ">" else b"II")
        + struct.pack(order + "HI", 42, 8)  # magic, offset of IFD0
        + struct.pack(order + "H", 1)  # one entry
        + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(order + "I", 0)  # no next IFD
    )
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


# How a camera stores an upright picture for each orientation: the inverse of what the tag
# tells a viewer to do (written out independently of recognizer.imaging.orient).
STORE = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # the viewer turns it back clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def stored_as(upright: np.ndarray, orientation: int, order: str = ">") -> bytes:
    stored = np.ascontiguousarray(STORE[orientation](upright))
    return with_exif_orientation(
        encode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95]), orientation, order
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim width x height."""
    data = bytearray(encode(".jpg", np.full((16, 16), 128, np.uint8)))
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)
