"""Image intake over a real server: EXIF-rotated portraits on the real models, per-RPC pixel
caps, and the two message-size limits (the handler's INVALID_ARGUMENT below gRPC's own cap,
gRPC's bare RESOURCE_EXHAUSTED above it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from recognizer.client import Client
from recognizer.config import load_config
from recognizer.face.types import Face, Quality, Selection
from recognizer.imaging import ImageLimits
from recognizer.service.runtime import Engines
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests.conftest import KEYS, client_for, dataset, require_models, start_server
from tests.helpers import violation
from tests.images import jpeg_declaring, stored_as

# --- configuration --------------------------------------------------------------------------


def test_per_rpc_pixel_caps_from_toml_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[rpc_max_pixels]\nReadPlates = 24000000\n")
    cfg = load_config(toml, env={})
    assert cfg.limits_for("ReadPlates").max_pixels == 24_000_000
    assert cfg.limits_for("DetectFaces") == ImageLimits()  # the 16-MP default
    env = {"RECOGNIZER_RPC_MAX_PIXELS": "DetectFaces=1000, EnrollFace=2000"}
    cfg = load_config(toml, env=env)
    assert cfg.limits_for("DetectFaces").max_pixels == 1000
    assert cfg.limits_for("EnrollFace").max_pixels == 2000
    # gRPC's cap leaves room for two images at the limit and for a whole Authorize burst
    assert cfg.max_receive_bytes > 2 * cfg.image_limits.max_bytes
    assert cfg.max_receive_bytes > cfg.authorize_max_bytes >= 3 * cfg.image_limits.max_bytes
    with pytest.raises(ValueError, match="unknown RPCs"):
        load_config(env={"RECOGNIZER_RPC_MAX_PIXELS": "DetectFace=1000"})
    with pytest.raises(ValueError):
        load_config(env={"RECOGNIZER_RPC_MAX_PIXELS": "DetectFaces"})


# --- limits over a server with fake engines -------------------------------------------------


class OneFace:
    """A face pipeline that finds one face in any image, without models."""

    model_versions = ()

    def detect(self, image: np.ndarray, selection: Selection) -> list[tuple[Face, Quality]]:
        face = Face(np.array([1, 2, 30, 40], np.float32), np.zeros((5, 2), np.float32), 0.9)
        return [(face, Quality(0.8, 30.0, 100.0, 0.0, 0.0, 0.0, 0.9, True, ()))]


class NoPlates:
    model_versions = ()

    def read(self, image: np.ndarray, max_candidates: int = 5) -> list:
        return []


@pytest.fixture()
def capped(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path,
        lambda config: Engines(faces=OneFace(), plates=NoPlates()),
        rpc_max_pixels={"DetectFaces": 1000},
    )
    assert running.runtime.wait(10)
    yield running
    running.stop(grace=1.0)


def jpeg(h: int = 64, w: int = 64) -> bytes:
    return cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))[1].tobytes()


def test_each_rpc_has_its_own_pixel_cap(capped: RunningServer) -> None:
    c = client_for(capped, "admin")  # DetectFaces and ReadPlates (not the verifier's)
    image = jpeg()  # 4096 pixels: over DetectFaces' cap of 1000, under ReadPlates' default
    with pytest.raises(grpc.RpcError) as err:
        c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image), metadata=c.metadata, timeout=30
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err.value) == ("IMAGE_TOO_LARGE", "image")
    r = c.recognition.ReadPlates(
        recognition_pb2.ReadPlatesRequest(image=image), metadata=c.metadata, timeout=30
    )
    assert (r.image_width, r.image_height) == (64, 64)
    c.close()


def test_authorize_frames_have_the_authorize_pixel_cap(tmp_path: Path) -> None:
    """The gate decodes its frames itself (after the replay check): with its own cap."""
    require_models("default")
    running = start_server(tmp_path, rpc_max_pixels={"Authorize": 1000})
    try:
        assert running.runtime.wait(180), "models failed to load"
        c = client_for(running, "admin")
        image = jpeg()  # 4096 pixels: over Authorize's cap of 1000, under the others' default
        with pytest.raises(grpc.RpcError) as err:
            c.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id="G-1", event_id="e-1", plate_text="京A12345", face_image=image
                ),
                metadata=c.metadata,
                timeout=60,
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violation(err.value) == ("IMAGE_TOO_LARGE", "face_image")
        r = c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image), metadata=c.metadata, timeout=60
        )
        assert (r.image_width, r.image_height) == (64, 64)
        c.close()
    finally:
        running.stop(grace=1.0)


def test_a_small_file_declaring_a_huge_frame_is_refused_before_decoding(
    capped: RunningServer,
) -> None:
    c = client_for(capped, "gate")
    with pytest.raises(grpc.RpcError) as err:
        c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=jpeg_declaring(11000, 3600)),
            metadata=c.metadata,
            timeout=30,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err.value) == ("IMAGE_TOO_LARGE", "image")
    c.close()


def test_message_size_limits(capped: RunningServer) -> None:
    # A client that sends more than the server takes, so the server's own cap is what answers.
    cap = capped.runtime.config.max_receive_bytes
    c = Client.connect(f"127.0.0.1:{capped.port}", KEYS["gate"], max_message_bytes=2 * cap)
    limit = capped.runtime.config.image_limits.max_bytes
    # Over the image limit but under gRPC's cap: the handler names the field.
    with pytest.raises(grpc.RpcError) as err:
        c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=jpeg() + b"\0" * limit),
            metadata=c.metadata,
            timeout=30,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err.value) == ("IMAGE_TOO_LARGE", "image")
    # Over gRPC's own cap (max_receive_bytes): gRPC refuses it before any handler, with
    # RESOURCE_EXHAUSTED and no RetryInfo, so a client must not take it for overload.
    with pytest.raises(grpc.RpcError) as err:
        c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=b"\xff\xd8\xff" + b"\0" * cap),
            metadata=c.metadata,
            timeout=30,
        )
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err.value)
    assert status is None or not any(
        d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details
    )
    c.close()


# --- EXIF orientation on the real models ----------------------------------------------------


def portrait() -> np.ndarray:
    path = dataset("faces", "asianfaces_cn", "Cao_Lei", "Cao_Lei_0001.jpg")
    image = cv2.imread(str(path))
    if image is None or image.shape[0] <= image.shape[1]:
        pytest.skip(f"{path} is not a readable portrait photo")
    return image


def centre(box) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2])


def test_rotated_portraits_find_the_face_in_every_orientation(real_server: RunningServer) -> None:
    upright = portrait()
    h, w = upright.shape[:2]
    c = client_for(real_server, "admin")
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name="exif"), metadata=c.metadata
    )
    centres = []
    for orientation in range(1, 9):
        data = stored_as(upright, orientation)
        found = c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=data), metadata=c.metadata, timeout=60
        )
        assert (found.image_width, found.image_height) == (w, h), orientation
        assert len(found.faces) >= 1, f"no face with EXIF orientation {orientation}"
        centres.append(centre(found.faces[0].box))
        enrolled = c.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=ident.identity_id, images=[data], force=True, source="exif-test"
            ),
            metadata=c.metadata,
            timeout=60,
        )
        assert len(enrolled.faces) == 1, orientation
        assert np.linalg.norm(centre(enrolled.faces[0].face.box) - centres[-1]) < 0.05 * w
    # The same face, in the same upright place, whatever the stored orientation.
    spread = np.linalg.norm(np.array(centres) - centres[0], axis=1)
    assert spread.max() < 0.05 * w, spread
    c.close()


def test_a_camera_frame_cut_short_is_read_and_one_cut_in_half_is_refused(
    real_server: RunningServer,
) -> None:
    # A real street camera's JPEG that lost its last 15 bytes (the sample set keeps it so).
    frame = dataset("plates", "street") / "豫U00000.jpg"
    data = frame.read_bytes()
    assert not data.endswith(b"\xff\xd9"), "the sample is no longer cut short"
    c = client_for(real_server, "admin")
    read = c.recognition.ReadPlates(
        recognition_pb2.ReadPlatesRequest(image=data), metadata=c.metadata, timeout=60
    )
    assert (read.image_width, read.image_height) == (1920, 1080)
    assert "豫U00000" in [p.text for p in read.plates]
    with pytest.raises(grpc.RpcError) as err:
        c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=data[: len(data) // 2]),
            metadata=c.metadata,
            timeout=60,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err.value) == ("CORRUPT_IMAGE", "image")
    c.close()
