"""The Prometheus endpoint of a real server: scraped with the client library's own text
parser, its series move with real calls (requests, inference by model, gate decisions and
reasons, admission refusals, queue depth, gallery size)."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recognizer import __version__
from recognizer import models as model_store
from recognizer.service.runtime import Engines
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, recognition_pb2
from tests.conftest import client_for, loaded_server, start_server
from tests.helpers import lfw_face


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Its own server: it scrapes counters that other modules' calls would move.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with loaded_server(tmp_path_factory.mktemp("metrics"), metrics_port=free_port()) as running:
        yield running


def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in page.items() if n == name and set(labels.items()) <= set(ls))


def test_the_series_move_with_real_calls(server: RunningServer) -> None:
    c = client_for(server, "admin")
    before = scrape(server)
    detect = "/recognizer.v1.RecognitionService/DetectFaces"
    c.recognition.DetectFaces(
        recognition_pb2.DetectFacesRequest(image=lfw_face("Colin_Powell", 0)), metadata=c.metadata
    )
    decision = c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="M-1", event_id="m-1", plate_text="京A12345", amount_minor=700
        ),
        metadata=c.metadata,
    )
    authorize = "/recognizer.v1.GateService/Authorize"
    refusals = value(before, "recognizer_admission_rejections_total", method=authorize)
    for k in range(10):  # a deadline below min_deadline_ms that still reaches the server
        with pytest.raises(grpc.RpcError) as err:
            c.gate.Authorize(
                gate_pb2.AuthorizeRequest(gate_id="M-1", event_id=f"x-{k}", plate_text="京A12345"),
                metadata=c.metadata,
                timeout=0.04,
            )
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        if value(scrape(server), "recognizer_admission_rejections_total", method=authorize):
            break
    after = scrape(server)
    c.close()

    moved = value(after, "recognizer_requests_total", method=detect, code="OK") - value(
        before, "recognizer_requests_total", method=detect, code="OK"
    )
    assert moved == 1
    assert value(after, "recognizer_request_seconds_count", method=detect) >= 1
    assert value(
        after,
        "recognizer_request_seconds_count",
        grpc_service="recognizer.v1.RecognitionService",
        grpc_method="DetectFaces",
    ) == value(after, "recognizer_request_seconds_count", method=detect)
    assert value(after, "recognizer_inference_seconds_count", model="yunet") > value(
        before, "recognizer_inference_seconds_count", model="yunet"
    )
    outcome = gate_pb2.Outcome.Name(decision.outcome).removeprefix("OUTCOME_").lower()
    policy = decision.policy_id
    assert value(
        after, "recognizer_gate_decisions_total", policy_id=policy, outcome=outcome
    ) == 1 + value(before, "recognizer_gate_decisions_total", policy_id=policy, outcome=outcome)
    money = {
        "policy_id": policy,
        "outcome": outcome,
        "currency": server.runtime.config.policies.for_gate("M-1").currency,
    }
    assert value(after, "recognizer_gate_amount_minor_total", **money) == 700 + value(
        before, "recognizer_gate_amount_minor_total", **money
    )
    for r in decision.reasons:
        labels = {"policy_id": policy, "outcome": outcome, "reason": r.code}
        assert value(after, "recognizer_gate_reasons_total", **labels) == 1 + value(
            before, "recognizer_gate_reasons_total", **labels
        )
    # Bounded labels: no gate or event id on any series.
    assert not [k for k in after if {"gate_id", "event_id"} & {n for n, _ in k[1]}]
    assert value(after, "recognizer_admission_rejections_total", method=authorize) > refusals
    assert ("recognizer_gallery_templates", ()) in after
    assert ("recognizer_gallery_identities", ()) in after
    assert value(after, "recognizer_build_info", version=__version__, profile="default") == 1
    hashes = {e.name: e.sha256 for e in model_store.entries_for(["default"])}
    shown = {
        dict(ls)["model"]: dict(ls)["sha256"] for n, ls in after if n == "recognizer_model_info"
    }
    assert shown == hashes
    assert value(after, "process_resident_memory_bytes") > 0
    depth = [k for k in after if k[0] == "recognizer_queue_depth"]
    assert depth and all(after[k] == 0 for k in depth)  # nothing waits once the calls are done


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


def test_each_path_means_what_it_says(server: RunningServer) -> None:
    port = server.metrics_port
    status, page = get(port, "/metrics")
    assert status == 200 and "recognizer_requests_total" in page
    for path in ("/", "/metricsx", "/health", "/metrics/x"):
        status, page = get(port, path)
        assert status == 404 and "recognizer_" not in page
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz")[0] == 200
    # A store that cannot write: the writing services step aside, and so does /readyz,
    # while the process still answers /healthz.
    server.health_state.update(store_writable=False)
    try:
        assert get(port, "/readyz")[0] == 503
        assert get(port, "/healthz")[0] == 200
    finally:
        server.health_state.update(store_writable=True)
    assert get(port, "/readyz")[0] == 200
    server.health_state.update(replica_fresh=False)  # a replica that lags
    try:
        assert get(port, "/readyz")[0] == 503
    finally:
        server.health_state.update(replica_fresh=True)


def test_not_ready_while_the_models_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()

    def slow_engines(config):  # type: ignore[no-untyped-def]
        assert release.wait(60)
        return Engines(faces=None, plates=None)

    running = start_server(tmp_path, slow_engines, metrics_port=free_port())
    try:
        assert get(running.metrics_port, "/healthz")[0] == 200
        assert get(running.metrics_port, "/readyz")[0] == 503
        release.set()
        assert running.runtime.wait(30)
        assert get(running.metrics_port, "/readyz")[0] == 200
    finally:
        release.set()
        running.stop(grace=0.5)
