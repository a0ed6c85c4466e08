"""The client retries what is safe to repeat, after the server's pushback, and nothing else.

A real server on 127.0.0.1 with one slot per method and no queue: a call held in the slot
makes the next one refused for overload (RESOURCE_EXHAUSTED, RetryInfo and
`grpc-retry-pushback-ms`). The engines are doubles whose first call waits for the test, so
which call is refused does not depend on timing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from recognizer.client import Client, describe_error
from recognizer.config import Config
from recognizer.gate.types import Authorized
from recognizer.service.errors import PUSHBACK_HEADER
from recognizer.service.runtime import Engines
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import KEYS, client_for, start_server
from tests.helpers import error_reason

WAIT_S = 30.0  # a bound on a hang only
AUTHORIZE = "/recognizer.v1.GateService/Authorize"
ENROLL = "/recognizer.v1.IdentityService/EnrollFace"


@dataclass
class HeldFirst:
    """An engine double whose first call waits until `release` is set."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: int = 0
    model_versions: tuple[Any, ...] = ()  # as a face pipeline reports them

    def _call(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S)

    def authorize(self, request: Any) -> Authorized:
        self._call()
        response = gate_pb2.AuthorizeResponse(
            decision_id=uuid.uuid4().hex, outcome=gate_pb2.OUTCOME_STEP_UP
        )
        return Authorized(response.SerializeToString(), False)

    def enroll(self, identity_id: str, images: Any, **kwargs: Any) -> list[Any]:
        self._call()
        return []

    def close(self) -> None:
        self.release.set()


@pytest.fixture()
def held() -> HeldFirst:
    return HeldFirst()


@pytest.fixture()
def server(tmp_path: Path, held: HeldFirst) -> Iterator[RunningServer]:
    def engines(config: Config) -> Engines:
        return Engines(faces=held, plates=None, identity=held, gate=held)

    running = start_server(tmp_path, runtime_factory=engines, max_in_flight=1, max_queue=0)
    try:
        assert running.runtime.wait(WAIT_S)
        yield running
    finally:
        held.release.set()
        running.stop(grace=1.0)


def calls(running: RunningServer, method: str) -> tuple[int, int]:
    """(calls, errors) the server has seen of `method`."""
    stats = running.metrics.snapshot().get(method)
    return (stats.calls, stats.errors) if stats else (0, 0)


def authorize(c: Client, event_id: str) -> gate_pb2.AuthorizeResponse:
    return c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="G-1",
            event_id=event_id,
            vehicle_image=b"frame bytes: the engine double does not decode them",
            amount_minor=100,
            currency="CNY",
        ),
        metadata=c.metadata,
        timeout=WAIT_S,
    )


def release_after_a_refusal(running: RunningServer, method: str, held: HeldFirst) -> None:
    """Free the held slot once the server has refused a call of `method`."""
    refused = threading.Event()
    while not refused.wait(0.001):  # bounded by the server's answer, WAIT_S at most
        if calls(running, method)[1] >= 1 or held.release.is_set():
            refused.set()
    held.release.set()


def test_the_server_sends_its_retry_delay_as_grpc_pushback(
    server: RunningServer, held: HeldFirst
) -> None:
    c = client_for(server, "gate")  # no retries: the refusal itself is seen
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(authorize, c, "E-1")
        assert held.entered.wait(WAIT_S)
        with pytest.raises(grpc.RpcError) as err:
            authorize(c, "E-2")
        held.release.set()
        first.result(WAIT_S)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(err.value) == "OVERLOADED"
    pushback = dict(err.value.trailing_metadata() or ())[PUSHBACK_HEADER]
    assert int(pushback) > 0
    c.close()


def test_a_refused_authorize_is_retried_after_the_pushback_and_succeeds(
    server: RunningServer, held: HeldFirst
) -> None:
    c = Client.connect(f"127.0.0.1:{server.port}", KEYS["gate"])  # retrying, as shipped
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(authorize, c, "E-1")
            assert held.entered.wait(WAIT_S)
            second: Future[gate_pb2.AuthorizeResponse] = pool.submit(authorize, c, "E-2")
            release_after_a_refusal(server, AUTHORIZE, held)
            assert second.result(WAIT_S).decision_id  # the retry, once the slot was free
            first.result(WAIT_S)
        seen, refused = calls(server, AUTHORIZE)
        assert refused >= 1 and seen == 2 + refused  # both succeeded; the refusals retried
        assert held.calls == 2
    finally:
        c.close()


def test_enroll_face_is_never_retried(server: RunningServer, held: HeldFirst) -> None:
    ok, png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    assert ok
    request = identity_pb2.EnrollFaceRequest(identity_id="someone", images=[png.tobytes()])
    c = Client.connect(f"127.0.0.1:{server.port}", KEYS["admin"])  # retrying, as shipped
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.identity.EnrollFace, request, metadata=c.metadata, timeout=WAIT_S)
            assert held.entered.wait(WAIT_S)
            with pytest.raises(grpc.RpcError) as err:
                c.identity.EnrollFace(request, metadata=c.metadata, timeout=WAIT_S)
            # The client has given up: had it retried, the server would have seen more.
            assert calls(server, ENROLL) == (1, 1)  # the held call has not ended yet
            held.release.set()
            first.result(WAIT_S)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert calls(server, ENROLL) == (2, 1) and held.calls == 1
    finally:
        c.close()


def test_no_server_is_said_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"
    c = Client.connect(target)
    try:
        with pytest.raises(grpc.RpcError) as err:
            c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), timeout=WAIT_S)
    finally:
        c.close()
    assert describe_error(err.value, target) == f"No server at {target}"
    from tests.helpers import cli

    listed = cli("identities", "list", "--target", target, "--api-key", "k")
    assert listed.returncode != 0
    assert f"No server at {target}" in listed.stderr and "Traceback" not in listed.stderr
