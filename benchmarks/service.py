"""Service benchmark: a gRPC load generator that runs in its own process, apart from the
server, ramping concurrency over IdentifyFace, ReadPlates and Authorize.

Without ``--target`` it starts ``recognizer serve`` as a subprocess on a free loopback port
with a temporary data dir, and stops it afterwards. Only 127.0.0.1 targets are accepted: a
load generator must never be pointed at somebody else's server by accident.

Also here: :func:`inprocess_server`, the in-process server the face and plate benches use
for their gRPC checks (same ``create_server`` the product runs).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.metrics import percentiles
from benchmarks.report import DATASETS, Report, plot_lines, progress, shown
from benchmarks.stats import ratio

CONCURRENCY = (1, 2, 4, 8, 16, 32)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


# --- servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def inprocess_server(
    profile: str = "default",
    data_dir: Path | None = None,
    timeout: float = 300.0,
    **overrides: Any,
) -> Iterator[tuple[int, str]]:
    """A real server in this process on a free loopback port; yields (port, admin key).

    The threshold floor is lowered to -1 so a bench may ask for every top-k candidate."""
    from recognizer.config import load_config
    from recognizer.service.server import create_server

    key = secrets.token_hex(12)
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        cfg = load_config(
            env={"RECOGNIZER_API_KEYS": f"admin:{key}"},
            port=0,
            data_dir=data_dir,
            profile=profile,
            # No /metrics endpoint: an in-process bench server must not take a real one's port.
            **{"face_threshold_min": -1.0, "metrics_port": 0, **overrides},
        )
        running = create_server(cfg)
        try:
            if not running.runtime.wait(timeout):
                raise RuntimeError(f"server models failed to load for profile {profile}")
            yield running.port, key
        finally:
            running.stop()


def check_target(target: str) -> tuple[str, int]:
    """HOST:PORT with HOST exactly 127.0.0.1, else ValueError."""
    host, sep, port = target.rpartition(":")
    if not sep or host != "127.0.0.1" or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"refusing target {target!r}: only 127.0.0.1:PORT is allowed")
    return host, int(port)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def subprocess_server(
    profile: str = "default",
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[tuple[str, str]]:
    """`recognizer serve` in a child process; yields (target, admin key), then SIGTERMs it.
    `cwd` (with PYTHONPATH in `env`): serve another source tree's code."""
    from recognizer.client import Client

    key = secrets.token_hex(12)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "recognizer.cli", "serve", "--port", str(port),
             "--data-dir", str(Path(tmp) / "data"), "--profile", profile],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={
                **os.environ,
                "RECOGNIZER_METRICS_PORT": "0",
                **(env or {}),
                "RECOGNIZER_API_KEYS": f"admin:{key}",
            },
        )  # fmt: skip
        target = f"127.0.0.1:{port}"
        try:
            client = Client.connect(target, key)
            ok = client.wait_serving(timeout)
            client.close()
            if not ok or proc.poll() is not None:
                tail = (Path(tmp) / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server did not become SERVING:\n{tail}")
            yield target, key
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()


# --- load ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerDelta:
    calls: int
    cpu_seconds: float  # handler thread CPU
    inference_seconds: float  # onnxruntime time inside the handlers
    process_cpu_seconds: float  # the whole server process (gRPC, decoding, threads)


@dataclass(frozen=True, slots=True)
class LevelResult:
    method: str
    concurrency: int
    requests: int
    seconds: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    server: ServerDelta | None
    cpu_over_inference: float  # handler CPU / inference time (goal <= 1.5)
    process_cpu_over_inference: float


def run_level(
    call: Callable[[int], None], concurrency: int, n: int, max_seconds: float
) -> tuple[list[float], Counter[str], float]:
    """`n` calls over `concurrency` threads (stopping early at `max_seconds`): latencies of
    the successful ones in ms, a count per status, and the wall time."""
    import grpc

    lock = threading.Lock()
    next_i = [0]
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                if i >= n or time.monotonic() > deadline:
                    return
                next_i[0] += 1
            t0 = time.perf_counter()
            try:
                call(i)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                statuses[status] += 1
                if status == "OK":
                    lat.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, statuses, time.perf_counter() - t0


def _metrics(client: Any) -> tuple[dict[str, tuple[int, float, float]], float]:
    from recognizer.v1 import gate_pb2

    r = client.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=client.metadata, timeout=10)
    per = {
        m.method.rsplit("/", 1)[-1]: (m.calls, m.cpu_seconds, m.inference_seconds)
        for m in r.methods
    }
    return per, r.process_cpu_seconds


def _delta(client: Any, method: str, before: Any) -> ServerDelta | None:
    try:
        after = _metrics(client)
    except Exception:  # GetMetrics needs an admin key; without it report no server side
        return None
    (b_per, b_proc), (a_per, a_proc) = before, after
    b = b_per.get(method, (0, 0.0, 0.0))
    a = a_per.get(method, (0, 0.0, 0.0))
    return ServerDelta(a[0] - b[0], a[1] - b[1], a[2] - b[2], a_proc - b_proc)


def _files(folder: Path, limit: int) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return found[:limit]


def _setup_gallery(client: Any, faces_dir: Path, identities: int) -> tuple[list[bytes], int]:
    """Enrol the first image of a few identities; the rest of their images are probes."""
    from recognizer.v1 import identity_pb2

    probes: list[bytes] = []
    enrolled = 0
    people = sorted(d for d in faces_dir.iterdir() if d.is_dir())
    for person in people:
        imgs = _files(person, 50)
        if len(imgs) < 2:
            continue
        if enrolled < identities:
            ident = client.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name=person.name),
                metadata=client.metadata,
                timeout=60,
            )
            client.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=ident.identity_id,
                    images=[imgs[0].read_bytes()],
                    force=True,
                    source="bench-service",
                ),
                metadata=client.metadata,
                timeout=60,
            )
            enrolled += 1
        probes += [p.read_bytes() for p in imgs[1:]]
    return probes, enrolled


def run_load(
    target: str,
    api_key: str,
    faces_dir: Path,
    plates_dir: Path,
    *,
    requests: int,
    max_seconds: float,
    levels: Sequence[int] = CONCURRENCY,
    identities: int = 6,
) -> tuple[list[LevelResult], list[str]]:
    import grpc

    from recognizer.client import Client
    from recognizer.v1 import gate_pb2, recognition_pb2

    check_target(target)
    notes: list[str] = []
    client = Client.connect(target, api_key)
    if not client.wait_serving(120):
        raise RuntimeError(f"{target} is not SERVING")
    probes, enrolled = _setup_gallery(client, faces_dir, identities)
    notes.append(f"gallery: {enrolled} identities enrolled; {len(probes)} face probe images")
    scenes = [p.read_bytes() for p in _files(plates_dir, 64)]
    md = client.metadata
    rec, gate = client.recognition, client.gate

    def identify(i: int) -> None:
        rec.IdentifyFace(
            recognition_pb2.IdentifyFaceRequest(image=probes[i % len(probes)], top_k=5),
            metadata=md,
            timeout=60,
        )

    def read_plates(i: int) -> None:
        rec.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=scenes[i % len(scenes)]),
            metadata=md,
            timeout=60,
        )

    def authorize(i: int) -> None:
        gate.Authorize(
            gate_pb2.AuthorizeRequest(
                gate_id="bench-gate",
                event_id=f"bench-{uuid.uuid4().hex}",  # unique: a replay would skip the work
                vehicle_image=scenes[i % len(scenes)],
                face_image=probes[i % len(probes)],
                amount_minor=100,
                currency="CNY",
                direction=gate_pb2.DIRECTION_ENTRY,
            ),
            metadata=md,
            timeout=60,
        )

    methods: list[tuple[str, Callable[[int], None]]] = []
    if probes:
        methods.append(("IdentifyFace", identify))
    else:
        notes.append("IdentifyFace skipped: no face images with two or more per identity")
    if scenes:
        methods.append(("ReadPlates", read_plates))
    else:
        notes.append(f"ReadPlates skipped: no images in {plates_dir}")
    if probes and scenes:
        try:
            authorize(0)
            methods.append(("Authorize", authorize))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                notes.append(f"Authorize skipped: FAILED_PRECONDITION ({exc.details()})")
            else:
                notes.append(f"Authorize skipped: {exc.code().name} ({exc.details()})")

    nan = float("nan")
    results: list[LevelResult] = []
    for name, call in methods:
        call(0)  # warm-up, outside the measurement
        for c in progress(levels, f"ramp {name}"):
            n = max(requests, c)
            try:
                before = _metrics(client)
            except grpc.RpcError:
                before = None
            lat, statuses, wall = run_level(call, c, n, max_seconds)
            server = _delta(client, name, before) if before is not None else None
            p = percentiles(lat, (50, 95, 99))
            done = sum(statuses.values())
            results.append(
                LevelResult(
                    name, c, done, wall, statuses.get("OK", 0) / wall if wall else 0.0,
                    p["p50"], p["p95"], p["p99"], dict(statuses), server,
                    ratio(server.cpu_seconds, server.inference_seconds) if server else nan,
                    ratio(server.process_cpu_seconds, server.inference_seconds)
                    if server else nan,
                )
            )  # fmt: skip
    client.close()
    return results, notes


def run(
    target: str | None,
    api_key: str,
    out: Path,
    *,
    requests: int,
    quick: bool,
    faces_dir: Path | None = None,
    plates_dir: Path | None = None,
    profile: str = "default",
) -> Report:
    faces_dir = faces_dir or DATASETS / "faces" / "lfw10"
    plates_dir = plates_dir or DATASETS / "plates" / "scenes"
    max_seconds = 30.0 if quick else 120.0
    rep = Report("Service benchmark (gRPC load, separate process)")
    scraped: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        metrics_url = ""
        if target is None:
            mport = free_port()
            env = {"RECOGNIZER_METRICS_PORT": str(mport)}
            target, api_key = stack.enter_context(subprocess_server(profile, env=env))
            where = f"`recognizer serve --profile {profile}` started as a subprocess on {target}"
            metrics_url = f"http://127.0.0.1:{mport}/metrics"
        else:
            check_target(target)
            where = f"external server at {target}"
        if metrics_url:
            scraped["before"] = scrape(metrics_url)
        results, notes = run_load(
            target, api_key, faces_dir, plates_dir, requests=requests, max_seconds=max_seconds
        )
        if metrics_url:
            scraped["after"] = scrape(metrics_url)
    rep.p(
        f"Server: {where}. Load generator: this process, one thread per concurrent caller, "
        f"{requests} requests per level (at least one per caller), at most {max_seconds:.0f} s "
        f"per level. Faces from `{shown(faces_dir)}`, frames from `{shown(plates_dir)}`. "
        "Measured while other jobs ran on the machine: the ratios matter more than the "
        "absolute numbers."
    )
    for n in notes:
        rep.p(f"- {n}")
    rep.h("Ramp")
    rows = []
    for r in results:
        s = r.server
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()) if k != "OK") or "–"
        rows.append([
            r.method, r.concurrency, r.requests, r.qps, r.p50_ms, r.p95_ms, r.p99_ms, errs,
            1000 * s.cpu_seconds / s.calls if s and s.calls else float("nan"),
            1000 * s.inference_seconds / s.calls if s and s.calls else float("nan"),
            r.cpu_over_inference, r.process_cpu_over_inference,
        ])  # fmt: skip
    rep.table(
        ["method", "conc.", "requests", "QPS", "p50 ms", "p95 ms", "p99 ms", "errors",
         "handler CPU ms/req", "inference ms/req", "CPU / inference", "process CPU / inference"],
        rows,
    )  # fmt: skip
    rep.p(
        "Handler CPU is the thread CPU of the handlers; inference is the onnxruntime time "
        "inside them (both from GetMetrics deltas per level). Goal: CPU / inference ≤ 1.5. "
        "Process CPU also counts gRPC, decoding and every other server thread. With "
        "intra-op 1 sessions inference time is CPU time, so a ratio near 1 means little "
        "non-model work; under contention inference wall time also includes waiting for a core."
    )
    for metric, label in (("qps", "QPS"), ("p99_ms", "p99 latency (ms)")):
        series: dict[str, list[float]] = {}
        for r in results:
            series.setdefault(r.method, []).append(float(getattr(r, metric)))
        path = plot_lines(
            out / f"service_{metric}.png",
            list(CONCURRENCY),
            series,
            "concurrent callers",
            label,
            f"{label} against concurrency",
            logx=True,
        )
        rep.image(path, label)
    if scraped:
        _metrics_section(rep, scraped)
    rep.results = {"target": target, "notes": notes, "levels": results, "prometheus": scraped}
    rep.write(out)
    return rep


# --- the Prometheus endpoint ----------------------------------------------------------------

# The series the service bench shows moving (name -> the label that tells them apart).
WATCHED = {
    "recognizer_requests_total": "method",
    "recognizer_inference_seconds_count": "model",
    "recognizer_gate_decisions_total": "outcome",
    "recognizer_admission_rejections_total": "method",
    "recognizer_gallery_templates": "",
}


def scrape(url: str) -> dict[str, float]:
    """The watched series of a /metrics page, parsed with the Prometheus client's own parser,
    summed per (series, label value)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:  # 127.0.0.1 only
        text = resp.read().decode("utf-8")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = WATCHED.get(sample.name)
            if label is None:
                continue
            key = f"{sample.name}{{{sample.labels.get(label, '')}}}" if label else sample.name
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def _metrics_section(rep: Report, scraped: dict[str, dict[str, float]]) -> None:
    before, after = scraped.get("before", {}), scraped.get("after", {})
    rows = [
        [key, before.get(key, 0.0), value, value - before.get(key, 0.0)]
        for key, value in sorted(after.items())
    ]
    rep.h("Prometheus endpoint")
    rep.p(
        "The server's /metrics page (`metrics_port`), scraped before and after the load "
        "with the Prometheus client's text parser: the series move with the calls made."
    )
    rep.table(["series", "before", "after", "change"], rows)
