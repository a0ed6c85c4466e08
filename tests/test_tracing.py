"""Optional OpenTelemetry traces: an Authorize through the real server is one trace, its
request's span with a child span per stage (the SDK's in-memory exporter collects them)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from recognizer import tracing
from recognizer.client import Client
from recognizer.config import ConfigError, load_config
from recognizer.v1 import gate_pb2
from tests.helpers import scene

AUTHORIZE = "/recognizer.v1.GateService/Authorize"


@pytest.fixture()
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)  # back to the global provider: nothing recorded


def test_an_authorize_is_one_trace_with_its_stages(admin: Client, spans: Any) -> None:
    frame, _ = scene(2)
    request_id = f"trace-{uuid.uuid4().hex[:8]}"
    admin.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="G-trace",
            event_id=request_id,
            vehicle_image=frame,
            amount_minor=100,
            currency="CNY",
        ),
        metadata=(*admin.metadata, ("x-request-id", request_id)),
        timeout=60,
    )
    finished = spans.get_finished_spans()
    [root] = [s for s in finished if s.name == AUTHORIZE]
    assert root.attributes["request_id"] == request_id and root.parent is None
    inside = [s for s in finished if s.context.trace_id == root.context.trace_id and s is not root]
    names = {s.name for s in inside}
    assert {"decode", "plate.detect", "gate.store"} <= names, names
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time for s in inside)
    # The store's span is a direct child of the request's.
    [store] = [s for s in inside if s.name == "gate.store"]
    assert store.parent is not None and store.parent.span_id == root.context.span_id


def test_the_exporter_is_off_unless_named() -> None:
    assert load_config(env={}).trace_exporter == ""
    with pytest.raises(ConfigError):
        load_config(env={}, trace_exporter="jaeger")
    try:
        tracing.configure("console")  # the SDK is installed with the dev extra
    finally:
        tracing.install(None)
