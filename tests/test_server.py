"""The server over real gRPC on a loopback port: health, auth, errors, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from recognizer.config import Config
from recognizer.service.runtime import Engines
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests.conftest import client_for, start_server
from tests.helpers import fake_engines
from tests.images import png_declaring


@pytest.fixture()
def fake_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path, fake_engines())
    assert running.runtime.wait(10)
    yield running
    running.stop(grace=0.5)


def jpeg() -> bytes:
    import cv2

    _, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    return buf.tobytes()


def rich_details(err: grpc.RpcError) -> list[object]:
    status = rpc_status.from_call(err)
    assert status is not None, "expected google.rpc rich status"
    out = []
    for d in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
        ):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out.append(msg)
    return out


def test_no_key_is_unauthenticated_and_wrong_role_is_denied(fake_server: RunningServer) -> None:
    req = recognition_pb2.DetectFacesRequest(image=jpeg())
    anonymous = client_for(fake_server, None)
    with pytest.raises(grpc.RpcError) as err:
        anonymous.recognition.DetectFaces(req)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED

    gate = client_for(fake_server, "gate")
    with pytest.raises(grpc.RpcError) as err:
        gate.recognition.DetectFaces(req, metadata=gate.metadata)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED

    wrong = client_for(fake_server, None)
    with pytest.raises(grpc.RpcError) as err:
        wrong.recognition.DetectFaces(req, metadata=(("x-api-key", "not-a-key"),))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED

    verifier = client_for(fake_server, "verifier")
    resp = verifier.recognition.DetectFaces(req, metadata=verifier.metadata)
    assert len(resp.faces) == 1 and resp.image_width == 64
    # a verifier may read but not write
    with pytest.raises(grpc.RpcError) as err:
        verifier.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name="x"), metadata=verifier.metadata
        )
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_unexpected_error_is_internal_without_trace(tmp_path: Path) -> None:
    running = start_server(tmp_path, fake_engines(crash=True))
    try:
        assert running.runtime.wait(10)
        c = client_for(running, "admin")
        with pytest.raises(grpc.RpcError) as err:
            c.recognition.DetectFaces(
                recognition_pb2.DetectFacesRequest(image=jpeg()), metadata=c.metadata
            )
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
        assert "id" in err.value.details()
    finally:
        running.stop(grace=0.5)


def test_models_not_ready_is_failed_precondition(tmp_path: Path) -> None:
    def never(config: Config) -> Engines:
        raise FileNotFoundError("models/yunet.onnx")

    running = start_server(tmp_path, never)
    try:
        assert not running.runtime.wait(10)
        c = client_for(running, "admin")
        assert c.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            c.recognition.DetectFaces(
                recognition_pb2.DetectFacesRequest(image=jpeg()), metadata=c.metadata
            )
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        running.stop(grace=0.5)


def test_metrics_count_calls(fake_server: RunningServer) -> None:
    c = client_for(fake_server, "admin")
    for _ in range(3):
        c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=jpeg()), metadata=c.metadata
        )
    resp = c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=c.metadata)
    by_name = {m.method: m for m in resp.methods}
    m = by_name["/recognizer.v1.RecognitionService/DetectFaces"]
    assert m.calls == 3 and m.errors == 0 and m.wall_seconds > 0


def test_reflection_lists_services(fake_server: RunningServer) -> None:
    c = client_for(fake_server, "verifier")
    stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=c.metadata
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "recognizer.v1.GateService",
        "recognizer.v1.RecognitionService",
        "recognizer.v1.IdentityService",
        "grpc.health.v1.Health",
    } <= names


# --- on the real models ---------------------------------------------------------------


def test_health_goes_serving_on_real_models(real_server: RunningServer) -> None:
    c = client_for(real_server, None)  # health needs no key: load balancers probe it
    assert c.wait_serving(60)
    assert c.health("recognizer.v1.GateService") == "SERVING"


BAD_IMAGES = {
    "empty": b"",
    "truncated_jpeg": None,  # filled from a real photo below
    "text_file": b"this is not an image\n" * 10,
    "png_60000x60000": png_declaring(60000, 60000),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_invalid_argument_and_server_stays_healthy(
    real_server: RunningServer, case: str
) -> None:
    from tests.conftest import dataset

    data = BAD_IMAGES[case]
    if data is None:
        photo = next(iter(sorted(dataset("faces", "lfw10").rglob("*.jpg"))))
        raw = photo.read_bytes()
        data = raw[: len(raw) // 2]
    c = client_for(real_server, "admin")
    for call, req in (
        (c.recognition.DetectFaces, recognition_pb2.DetectFacesRequest(image=data)),
        (c.recognition.ReadPlates, recognition_pb2.ReadPlatesRequest(image=data)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(req, metadata=c.metadata)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        details = rich_details(err.value)
        assert any(
            isinstance(d, error_details_pb2.BadRequest) and d.field_violations[0].field == "image"
            for d in details
        )
    assert c.health() == "SERVING"
