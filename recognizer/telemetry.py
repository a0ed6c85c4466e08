"""Prometheus metrics, with the standard client library, on their own HTTP port, with
`/healthz` (the process answers) and `/readyz` (the writing services are SERVING) beside it.

Counters and histograms are process-wide (one server per process in production); each
server's endpoint serves them together with its own gallery gauges, read at scrape time.
Series (all prefixed `recognizer_`):
- `requests_total{method,code}`, `request_seconds{method,grpc_service,grpc_method}`: every
  unary call;
- `inference_seconds{model}`: onnxruntime run time per model;
- `admission_rejections_total{method,reason}`, `queue_depth{method}`: overload;
- `gate_decisions_total{policy_id,outcome}`, `gate_reasons_total{policy_id,outcome,reason}`:
  Authorize, replays excluded;
- `gallery_templates`, `gallery_identities`: the face gallery's size;
- `build_info{version,profile}`, `model_info{model,sha256}`; and the client library's
  `process_*` series (CPU, memory, open files).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes…
REQUESTS = Counter(
    "recognizer_requests", "gRPC calls by method and status code", ["method", "code"],
    registry=REGISTRY,
)  # fmt: skip
LATENCY = Histogram(
    "recognizer_request_seconds", "gRPC handler wall time by method",
    ["method", "grpc_service", "grpc_method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
INFERENCE = Histogram(
    "recognizer_inference_seconds", "onnxruntime run time by model", ["model"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
REJECTIONS = Counter(
    "recognizer_admission_rejections", "calls refused before their work started",
    ["method", "reason"], registry=REGISTRY,
)  # fmt: skip
# Labels stay bounded: policies and reason codes are the configuration's and the code's,
# never a gate's or an event's id.
DECISIONS = Counter(
    "recognizer_gate_decisions",
    "Authorize decisions made (replays excluded), by policy and outcome",
    ["policy_id", "outcome"], registry=REGISTRY,
)  # fmt: skip
# A policy charges in one currency (the engine refuses any other), so currency adds no series.
AMOUNTS = Counter(
    "recognizer_gate_amount_minor",
    "amounts of the decisions made, in minor units, by policy, currency and outcome",
    ["policy_id", "currency", "outcome"], registry=REGISTRY,
)  # fmt: skip
REASONS = Counter(
    "recognizer_gate_reasons", "reason codes of the decisions made, by policy and outcome",
    ["policy_id", "outcome", "reason"], registry=REGISTRY,
)  # fmt: skip


def observe_call(method: str, code: str, seconds: float) -> None:
    REQUESTS.labels(method, code).inc()
    service, _, name = method.lstrip("/").rpartition("/")  # "/pkg.Service/Method"
    LATENCY.labels(method, service, name).observe(seconds)


def observe_inference(model: str, seconds: float) -> None:
    INFERENCE.labels(model).observe(seconds)


def observe_decision(
    policy_id: str, outcome: str, reasons: Iterable[str], amount_minor: int = 0, currency: str = ""
) -> None:
    DECISIONS.labels(policy_id, outcome).inc()
    AMOUNTS.labels(policy_id, currency, outcome).inc(max(0, amount_minor))
    for code in reasons:
        REASONS.labels(policy_id, outcome, code).inc()


@dataclass(frozen=True, slots=True)
class GalleryFigures:
    templates: int  # vectors in the index
    identities: int  # identities in the store
    replica: Any = None  # follower.ReplicaLag on a shared store, else None


class _Forward(Collector):
    """Serves the process-wide registry inside a server's own registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class _ServerCollector(Collector):
    """What one server knows at scrape time: its queues and its gallery."""

    def __init__(
        self,
        queues: Callable[[], Mapping[str, int]],
        gallery: Callable[[], GalleryFigures | None],
    ) -> None:
        self._queues = queues
        self._gallery = gallery

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "recognizer_queue_depth", "calls waiting for a slot, by method", labels=["method"]
        )
        for method, waiting in sorted(self._queues().items()):
            depth.add_metric([method], waiting)
        yield depth
        figures = self._gallery()
        if figures is None:  # models and index still loading
            return
        for name, value, doc in (
            ("templates", figures.templates, "face templates in the index"),
            ("identities", figures.identities, "identities in the store"),
        ):
            yield GaugeMetricFamily(f"recognizer_gallery_{name}", doc, value=value)
        if figures.replica is not None:
            for name, value, doc in (
                ("changes", figures.replica.changes, "template changes not yet in the index"),
                ("seconds", figures.replica.seconds, "age of the oldest change not applied"),
            ):
                yield GaugeMetricFamily(f"recognizer_replica_lag_{name}", doc, value=value)


@dataclass(frozen=True, slots=True)
class Build:
    version: str
    profile: str
    models: tuple[tuple[str, str], ...] = ()  # (model name, sha256) of the profile's files


class _BuildCollector(Collector):
    def __init__(self, build: Build) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "recognizer_build_info", "the release and profile running (always 1)",
            labels=["version", "profile"],
        )  # fmt: skip
        info.add_metric([self._build.version, self._build.profile], 1)
        yield info
        models = GaugeMetricFamily(
            "recognizer_model_info", "the profile's model files by sha256 (always 1)",
            labels=["model", "sha256"],
        )  # fmt: skip
        for name, sha256 in self._build.models:
            models.add_metric([name, sha256], 1)
        yield models


def server_registry(
    queues: Callable[[], Mapping[str, int]],
    gallery: Callable[[], GalleryFigures | None],
    build: Build | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Forward())
    registry.register(_ServerCollector(queues, gallery))
    if build is not None:
        registry.register(_BuildCollector(build))
    return registry


class _Handler(BaseHTTPRequestHandler):
    """/metrics, /healthz (the process answers) and /readyz (ready to take traffic); 404
    anywhere else."""

    registry: CollectorRegistry
    ready: Callable[[], bool]

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            ok = self.ready()
            self._answer(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n")

    def _answer(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and probes every few seconds: not for the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(
    host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool] = lambda: True
) -> tuple[Any, int]:
    """Start the HTTP endpoint (/metrics, /healthz, /readyz); returns (the HTTP server, its
    port). Port 0 picks one. OSError if the port cannot be bound."""
    handler = type("Handler", (_Handler,), {"registry": registry, "ready": staticmethod(ready)})
    httpd = _Server((host, port), handler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd, int(httpd.server_address[1])
