"""Helpers shared by the end-to-end tests: sample images, payers, rich-status details."""

from __future__ import annotations

from pathlib import Path

import cv2
import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from recognizer.client import Client
from recognizer.v1 import identity_pb2
from tests.conftest import dataset


def lfw_face(name: str, k: int) -> bytes:
    """The k-th photo of an lfw10 identity."""
    return sorted(dataset("faces", "lfw10", name).iterdir())[k].read_bytes()


def _scene_path(k: int) -> tuple[Path, str]:
    """The k-th CCPD frame's path and the plate its file name records."""
    from benchmarks.datasets import parse_ccpd_name

    path = sorted(dataset("plates", "scenes").iterdir())[k]
    truth = parse_ccpd_name(path.name)
    assert truth, f"{path.name} holds no CCPD plate record"
    return path, truth


def scene(k: int) -> tuple[bytes, str]:
    """The k-th CCPD frame and the plate its file name records."""
    path, truth = _scene_path(k)
    return path.read_bytes(), truth


def _scene_plate(k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The k-th CCPD frame decoded; its plate's corners (TL, TR, BR, BL; the file name lists
    them from the bottom right, clockwise); and the plate's text."""
    path, truth = _scene_path(k)
    br, bl, tl, tr = (np.array(p.split("&"), float) for p in path.stem.split("-")[3].split("_"))
    return cv2.imread(str(path)), np.array([tl, tr, br, bl]), truth


def _png(img: np.ndarray) -> bytes:
    """Lossless, so a test reads the same pixels wherever it runs."""
    return cv2.imencode(".png", np.ascontiguousarray(img))[1].tobytes()


def scene_without_province(k: int, cut: float = 0.13) -> tuple[bytes, str]:
    """The k-th CCPD frame with everything left of `cut` of its plate's width cut away, so the
    province glyph is out of the frame and the rest of the plate in it (a car half past the
    camera's edge); and the plate's text."""
    from benchmarks.synth_plates import plate_point

    img, corners, truth = _scene_plate(k)
    x = round(max(plate_point(corners, cut, 0.0)[0], plate_point(corners, cut, 1.0)[0]))
    return _png(img[:, x:]), truth


def scene_with_province_painted(k: int, width: float = 0.15) -> tuple[bytes, str]:
    """The k-th CCPD frame with the left `width` of its plate, the province glyph, painted in
    the plate's own colour (a sticker, dirt); and the plate's text."""
    from benchmarks.synth_plates import cover, plate_colour

    img, corners, truth = _scene_plate(k)
    return _png(cover(img, corners, (0.0, width, 0.0, 1.0), plate_colour(img, corners))), truth


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call, or ""."""
    status = rpc_status.from_call(err)
    for d in status.details if status else ():
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info.reason
    return ""


def make_payer(
    c: Client,
    name: str | None,
    plates: list[str],
    factors: int = identity_pb2.FACTOR_PLATE_AND_FACE,
    payment_ref: str = "",
) -> str:
    """An identity with the first lfw10 photo of `name` enrolled (none for name=None), the
    plates bound, and one payment binding; returns its id."""
    md = c.metadata
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=name or "no face"), metadata=md
    )
    if name:
        c.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=ident.identity_id, images=[lfw_face(name, 0)], force=True
            ),
            metadata=md,
        )
    for p in plates:
        c.identity.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=p), metadata=md
        )
    c.identity.BindPayment(
        identity_pb2.BindPaymentRequest(
            identity_id=ident.identity_id,
            payment_ref=payment_ref or f"ref-{ident.identity_id}",
            factors=factors,
        ),
        metadata=md,
    )
    return ident.identity_id


def blurred(data: bytes, sigma: float) -> bytes:
    """The photo out of focus (a frame that caught the driver moving)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.GaussianBlur(img, (0, 0), sigma))[1].tobytes()
