"""Service benchmark: a gRPC load generator that runs in its own process, apart from the
server, ramping concurrency over IdentifyFace, ReadPlates and Authorize (a payer's car, a
stranger's car, and a 70/30 mix of the two: see `GateEvents`).

With ``--base-src`` (`run_compare`) it serves an earlier release's source tree beside this
checkout instead, and measures ReadPlates and the three Authorize cases on both in
interleaved rounds.

Without ``--target`` it starts ``recognizer serve`` as a subprocess on a free loopback port
with a temporary data dir, and stops it afterwards. Only 127.0.0.1 targets are accepted: a
load generator must never be pointed at somebody else's server by accident.

Also here: :func:`inprocess_server`, the in-process server the face and plate benches use
for their gRPC checks (same ``create_server`` the product runs).
"""

from __future__ import annotations

import base64
import contextlib
import math
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import Report, num, plot_lines, progress, shown, to_jsonable
from devtools.datasets import DATASETS
from devtools.metrics import percentiles
from devtools.stats import median, ratio

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
    with inprocess_running(profile, data_dir, timeout, **overrides) as (running, key):
        yield running.port, key


@contextlib.contextmanager
def inprocess_running(
    profile: str = "default",
    data_dir: Path | None = None,
    timeout: float = 300.0,
    **overrides: Any,
) -> Iterator[tuple[Any, str]]:
    """:func:`inprocess_server`, yielding the running server itself (a bench that reaches
    into its engines, e.g. to score each face set with its own liveness fold model)."""
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
            yield running, key
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
                # Served as in production, with a template key (a release that seals personal
                # fields pays for it here; an older one seals templates only).
                "RECOGNIZER_TEMPLATE_KEY": base64.b64encode(os.urandom(32)).decode(),
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


def enrol_payers(
    client: Any, faces_dir: Path, scenes: Sequence[Path], count: int
) -> list[tuple[Path, Path]]:
    """Enrol `count` people (first photo), each bound to one scene's plate (a CCPD file name
    holds its plate) with a PLATE_AND_FACE payment binding; returns each one's (scene, probe
    photo: another photo of them)."""
    from devtools.datasets import parse_ccpd_name
    from recognizer.v1 import identity_pb2

    md = client.metadata
    people = sorted(d for d in faces_dir.iterdir() if d.is_dir())
    out: list[tuple[Path, Path]] = []
    for person, scene in zip(people, scenes, strict=False):
        photos = sorted(person.glob("*.jpg"))
        if len(out) == count or len(photos) < 2:
            continue
        ident = client.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name=person.name), metadata=md
        )
        iid = ident.identity_id
        client.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=iid, images=[photos[0].read_bytes()], force=True
            ),
            metadata=md,
        )
        plate = parse_ccpd_name(scene.name) or ""
        client.identity.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=iid, plate=plate), metadata=md
        )
        client.identity.BindPayment(
            identity_pb2.BindPaymentRequest(
                identity_id=iid,
                payment_ref=f"ref-{iid}",
                factors=identity_pb2.FACTOR_PLATE_AND_FACE,
            ),
            metadata=md,
        )
        out.append((scene, photos[1]))
    return out


@dataclass(frozen=True, slots=True)
class GateEvents:
    """Authorize inputs of the two kinds of car a gate sees: a payer's (the plate bound to an
    enrolled payer, another photo of that payer: it exits early once the plate names them)
    and a stranger's (a plate no one holds, the face of someone not enrolled: every stage
    runs, 1:N search included)."""

    payer: tuple[tuple[bytes, bytes], ...]  # (vehicle frame, face photo)
    stranger: tuple[tuple[bytes, bytes], ...]


def gate_events(client: Any, faces_dir: Path, plates_dir: Path, payers: int = 6) -> GateEvents:
    """Enrol `payers` people bound to the first scenes' plates; strangers drive the next
    scenes and show the photos of the people who were not enrolled."""
    scenes = _files(plates_dir, 64)
    enrolled = enrol_payers(client, faces_dir, scenes[:payers], payers)
    names = {photo.parent.name for _, photo in enrolled}
    others = [
        p
        for d in sorted(x for x in faces_dir.iterdir() if x.is_dir() and x.name not in names)
        for p in _files(d, 50)
    ]
    unbound = scenes[payers : 2 * payers + 6]
    payer = tuple((v.read_bytes(), f.read_bytes()) for v, f in enrolled)
    stranger = (
        tuple((v.read_bytes(), others[i % len(others)].read_bytes()) for i, v in enumerate(unbound))
        if others
        else ()
    )
    return GateEvents(payer, stranger)


MIX_PAYERS = 0.7  # the mixed case: 7 payers' cars in 10


def authorize_calls(client: Any, events: GateEvents) -> dict[str, Callable[[int], None]]:
    """Authorize of a payer's car, of a stranger's car, and a 70/30 mix of the two (call i is a
    payer's when i % 10 < 7), each with a fresh event id (a replay would skip the work)."""
    from recognizer.v1 import gate_pb2

    md = client.metadata

    def send(vehicle: bytes, face: bytes) -> None:
        client.gate.Authorize(
            gate_pb2.AuthorizeRequest(
                gate_id="bench-gate",
                event_id=f"bench-{uuid.uuid4().hex}",
                vehicle_image=vehicle,
                face_image=face,
                amount_minor=100,
                currency="CNY",
                direction=gate_pb2.DIRECTION_ENTRY,
            ),
            metadata=md,
            timeout=60,
        )

    def payer(i: int) -> None:
        send(*events.payer[i % len(events.payer)])

    def stranger(i: int) -> None:
        send(*events.stranger[i % len(events.stranger)])

    def mix(i: int) -> None:
        k = i % 10
        if k < round(10 * MIX_PAYERS):
            payer(i // 10 * 7 + k)
        else:
            stranger(i // 10 * 3 + k - 7)

    calls: dict[str, Callable[[int], None]] = {}
    if events.payer:
        calls[AUTH_PAYER] = payer
    if events.stranger:
        calls[AUTH_STRANGER] = stranger
    if events.payer and events.stranger:
        calls[AUTH_MIX] = mix
    return calls


AUTH_PAYER, AUTH_STRANGER, AUTH_MIX = (
    "Authorize (payer's car)",
    "Authorize (stranger's car)",
    "Authorize (70/30 mix)",
)


def rpc_name(method: str) -> str:
    """The RPC behind a bench method name ("Authorize (payer's car)" -> "Authorize")."""
    return method.split(" ", 1)[0]


def _ramp_methods(
    client: Any, faces_dir: Path, plates_dir: Path, identities: int
) -> tuple[list[tuple[str, Callable[[int], None]]], list[str]]:
    """The methods of the ramp, each warmed up once, and notes on what was set up (the
    gallery: payers bound to plates, for Authorize; every other photo of every identity is
    an IdentifyFace probe) or skipped."""
    import grpc

    from recognizer.v1 import recognition_pb2

    events = gate_events(client, faces_dir, plates_dir, identities)
    people = sorted(d for d in faces_dir.iterdir() if d.is_dir())
    probes = [p.read_bytes() for d in people for p in _files(d, 50)[1:]]
    scenes = [p.read_bytes() for p in _files(plates_dir, 64)]
    notes = [
        f"gallery: {len(events.payer)} payers enrolled, each bound to a scene's plate "
        f"(PLATE_AND_FACE); {len(probes)} face probe images; strangers' cars: "
        f"{len(events.stranger)} unbound scenes with photos of people not enrolled"
    ]
    md, rec = client.metadata, client.recognition

    def identify(i: int) -> None:
        req = recognition_pb2.IdentifyFaceRequest(image=probes[i % len(probes)], top_k=5)
        rec.IdentifyFace(req, metadata=md, timeout=60)

    def read_plates(i: int) -> None:
        req = recognition_pb2.ReadPlatesRequest(image=scenes[i % len(scenes)])
        rec.ReadPlates(req, metadata=md, timeout=60)

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
            for name, call in authorize_calls(client, events).items():
                call(0)
                methods.append((name, call))
        except grpc.RpcError as exc:
            notes.append(f"Authorize skipped: {exc.code().name} ({exc.details()})")
    return methods, notes


def _level(
    client: Any, name: str, call: Callable[[int], None], c: int, n: int, max_seconds: float
) -> LevelResult:
    """One method at one concurrency, with the server's side from GetMetrics deltas."""
    import grpc

    try:
        before = _metrics(client)
    except grpc.RpcError:
        before = None
    lat, statuses, wall = run_level(call, c, n, max_seconds)
    server = _delta(client, rpc_name(name), before) if before is not None else None
    p = percentiles(lat, (50, 95, 99))
    nan = float("nan")
    return LevelResult(
        name, c, sum(statuses.values()), wall, statuses.get("OK", 0) / wall if wall else 0.0,
        p["p50"], p["p95"], p["p99"], dict(statuses), server,
        ratio(server.cpu_seconds, server.inference_seconds) if server else nan,
        ratio(server.process_cpu_seconds, server.inference_seconds) if server else nan,
    )  # fmt: skip


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
    from recognizer.client import Client

    check_target(target)
    client = Client.connect(target, api_key)
    if not client.wait_serving(120):
        raise RuntimeError(f"{target} is not SERVING")
    methods, notes = _ramp_methods(client, faces_dir, plates_dir, identities)
    results: list[LevelResult] = []
    for name, call in methods:
        call(0)  # warm-up, outside the measurement
        for c in progress(levels, f"ramp {name}"):
            results.append(_level(client, name, call, c, max(requests, c), max_seconds))
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
        levels, notes = run_load(
            target, api_key, faces_dir, plates_dir, requests=requests, max_seconds=max_seconds
        )
        if metrics_url:
            scraped["after"] = scrape(metrics_url)
    results = {"target": target, "notes": notes, "levels": levels, "prometheus": scraped}
    results["inputs"] = {
        "where": where,
        "requests": requests,
        "max_seconds": max_seconds,
        "faces": shown(faces_dir),
        "plates": shown(plates_dir),
    }
    rep = render(results, out)
    rep.write(out)
    return rep


def render(results: Mapping[str, Any], out: Path) -> Report:
    """The ramp's report from its results tree (plots drawn into `out`)."""
    tree = to_jsonable(results)
    inputs = tree["inputs"]
    rep = Report("Service benchmark (gRPC load, separate process)")
    rep.p(
        f"Server: {inputs['where']}. Load generator: this process, one thread per concurrent "
        f"caller, {inputs['requests']} requests per level (at least one per caller), at most "
        f"{inputs['max_seconds']:.0f} s per level. Faces from `{inputs['faces']}`, frames "
        f"from `{inputs['plates']}`. Measured while other jobs ran on the machine: the ratios "
        "matter more than the absolute numbers."
    )
    for n in tree["notes"]:
        rep.p(f"- {n}")
    rep.h("Ramp")
    rep.table(
        ["method", "conc.", "requests", "QPS", "p50 ms", "p95 ms", "p99 ms", "errors",
         "handler CPU ms/req", "inference ms/req", "CPU / inference", "process CPU / inference"],
        [_ramp_row(r) for r in tree["levels"]],
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
        for r in tree["levels"]:
            value = r[metric]
            series.setdefault(r["method"], []).append(float("nan") if value is None else value)
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
    if tree["prometheus"]:
        _metrics_section(rep, tree["prometheus"])
    rep.results = dict(results)
    return rep


def _ramp_row(r: Mapping[str, Any]) -> list[Any]:
    s = r["server"]
    errs = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()) if k != "OK") or "–"
    per_call = s is not None and s["calls"]
    return [
        r["method"], r["concurrency"], r["requests"], r["qps"], r["p50_ms"], r["p95_ms"],
        r["p99_ms"], errs,
        1000 * s["cpu_seconds"] / s["calls"] if per_call else float("nan"),
        1000 * s["inference_seconds"] / s["calls"] if per_call else float("nan"),
        r["cpu_over_inference"], r["process_cpu_over_inference"],
    ]  # fmt: skip


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


# --- against an earlier release ---------------------------------------------------------------

# (case, concurrent callers) of the comparison, and what is read from each.
COMPARE_CASES: tuple[tuple[str, int], ...] = (
    ("ReadPlates", 1),
    (AUTH_PAYER, 4),
    (AUTH_STRANGER, 4),
    (AUTH_MIX, 4),
    (AUTH_STRANGER, 1),
)


@dataclass(frozen=True, slots=True)
class CompareLevel:
    server: str  # "branch" (this checkout) or "base" (--base-src)
    case: str
    concurrency: int
    round: int
    qps: float
    p50_ms: float
    handler_cpu_ms: float  # handler thread CPU per call (GetMetrics), nan without it
    statuses: dict[str, int]


def run_compare(
    out: Path,
    *,
    base_src: Path,
    faces_dir: Path,
    plates_dir: Path,
    requests: int,
    rounds: int = 5,
    max_seconds: float = 60.0,
    profile: str = "default",
    base_env: Mapping[str, str] | None = None,
) -> Report:
    """This checkout and the release in `base_src`, each served by `recognizer serve` in its own
    process, measured case by case in interleaved rounds (the servers' order alternating),
    so whatever else loads the machine loads both alike: read medians over rounds and the
    ratios between the servers. `base_env`: settings (RECOGNIZER_* variables) of the base
    server only; with `base_src` this checkout, the same code with a setting changed."""
    load_before = os.getloadavg()
    base_env = dict(base_env or {})
    with contextlib.ExitStack() as stack:
        clients, calls = _compare_servers(stack, base_src, profile, faces_dir, plates_dir, base_env)
        levels = _compare_rounds(clients, calls, rounds, requests, max_seconds)
    load_after = os.getloadavg()
    results = {
        "base_src": str(base_src),
        "rounds": rounds,
        "requests": requests,
        "load_before": load_before,
        "load_after": load_after,
        "summary": compare_summary(levels),
        "levels": levels,
        "inputs": {
            "profile": profile,
            "base": shown(base_src),
            "base_env": base_env,
            "max_seconds": max_seconds,
            "faces": shown(faces_dir),
            "plates": shown(plates_dir),
            "cores": os.cpu_count(),
        },
    }
    rep = render_compare(results)
    rep.write(out)
    return rep


def _compare_servers(
    stack: contextlib.ExitStack,
    base_src: Path,
    profile: str,
    faces_dir: Path,
    plates_dir: Path,
    base_env: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, dict[str, Callable[[int], None]]]]:
    """Both servers started, each with its client and its calls (warmed up once)."""
    from recognizer.client import Client
    from recognizer.v1 import recognition_pb2

    servers = {
        "branch": stack.enter_context(subprocess_server(profile)),
        "base": stack.enter_context(
            subprocess_server(profile, env={**base_env, "PYTHONPATH": str(base_src)}, cwd=base_src)
        ),
    }
    calls: dict[str, dict[str, Callable[[int], None]]] = {}
    clients: dict[str, Any] = {}
    scenes = [p.read_bytes() for p in _files(plates_dir, 64)]
    for name, (target, key) in servers.items():
        client = stack.enter_context(contextlib.closing(Client.connect(target, key)))
        clients[name] = client

        def read_plates(i: int, client: Any = client) -> None:
            client.recognition.ReadPlates(
                recognition_pb2.ReadPlatesRequest(image=scenes[i % len(scenes)]),
                metadata=client.metadata,
                timeout=60,
            )

        events = gate_events(client, faces_dir, plates_dir)
        calls[name] = {"ReadPlates": read_plates, **authorize_calls(client, events)}
        for call in calls[name].values():  # warm-up, outside the measurement
            call(0)
    return clients, calls


def _compare_rounds(
    clients: dict[str, Any],
    calls: dict[str, dict[str, Callable[[int], None]]],
    rounds: int,
    requests: int,
    max_seconds: float,
) -> list[CompareLevel]:
    levels: list[CompareLevel] = []
    for r in progress(range(rounds), "interleaved rounds"):
        order = ("base", "branch") if r % 2 == 0 else ("branch", "base")
        for case, c in COMPARE_CASES:
            for name in order:
                call = calls[name].get(case)
                if call is None:
                    continue
                client = clients[name]
                try:
                    before = _metrics(client)
                except Exception:  # no GetMetrics: no server side
                    before = None
                lat, statuses, wall = run_level(call, c, max(requests, c), max_seconds)
                delta = _delta(client, rpc_name(case), before) if before else None
                cpu = 1000 * delta.cpu_seconds / delta.calls if delta and delta.calls else math.nan
                qps = statuses.get("OK", 0) / wall if wall else 0.0
                p50 = percentiles(lat, (50,))["p50"]
                levels.append(CompareLevel(name, case, c, r, qps, p50, cpu, dict(statuses)))
    return levels


def compare_summary(levels: Sequence[CompareLevel]) -> dict[str, dict[str, float]]:
    """Per case, each server's medians over rounds and the branch / base ratios."""
    summary = {}
    for case, c in COMPARE_CASES:
        med: dict[str, dict[str, float]] = {}
        for name in ("base", "branch"):
            ls = [lv for lv in levels if (lv.server, lv.case, lv.concurrency) == (name, case, c)]
            if not ls:
                continue
            med[name] = {
                "qps": _median([lv.qps for lv in ls]),
                "p50_ms": _median([lv.p50_ms for lv in ls]),
                "handler_cpu_ms": _median([lv.handler_cpu_ms for lv in ls]),
                "errors": sum(n for lv in ls for k, n in lv.statuses.items() if k != "OK"),
            }
        if len(med) < 2:
            continue
        b, n = med["base"], med["branch"]
        summary[f"{case} @ {c}"] = {
            **{f"base_{k}": v for k, v in b.items()},
            **{f"branch_{k}": v for k, v in n.items()},
            "qps_ratio": ratio(n["qps"], b["qps"]),
            "p50_ratio": ratio(n["p50_ms"], b["p50_ms"]),
        }
    return summary


def render_compare(results: Mapping[str, Any]) -> Report:
    """The comparison's report from its results tree."""
    tree = to_jsonable(results)
    inputs, summary = tree["inputs"], tree["summary"]
    rep = Report("Service against an earlier release (interleaved rounds)")
    rep.p(
        f"Servers: `recognizer serve --profile {inputs['profile']}` subprocesses on loopback, "
        f"this checkout and `{inputs['base']}` (same interpreter and models"
        + "".join(f"; base: `{k}={v}`" for k, v in inputs.get("base_env", {}).items())
        + "). "
        f"{tree['rounds']} rounds; in each, every case runs on both servers back to back, "
        f"their order alternating between rounds; {tree['requests']} calls per case and "
        f"server (at most {inputs['max_seconds']:.0f} s). Faces from `{inputs['faces']}`, "
        f"frames from `{inputs['plates']}`. Load average (1, 5, 15 min) before "
        f"{tuple(round(x, 2) for x in tree['load_before'])}, after "
        f"{tuple(round(x, 2) for x in tree['load_after'])} on {inputs['cores']} cores: other "
        "jobs ran on the machine, so read the ratios of one run."
    )
    rep.h("Medians over rounds")
    rep.table(
        ["case", "callers", "base QPS", "branch QPS", "QPS ratio", "base p50 ms",
         "branch p50 ms", "p50 ratio", "base handler CPU ms", "branch handler CPU ms",
         "errors base / branch"],
        [[*key.rsplit(" @ ", 1), s["base_qps"], s["branch_qps"], s["qps_ratio"],
          s["base_p50_ms"], s["branch_p50_ms"], s["p50_ratio"], s["base_handler_cpu_ms"],
          s["branch_handler_cpu_ms"], f"{s['base_errors']:.0f} / {s['branch_errors']:.0f}"]
         for key, s in summary.items()],
    )  # fmt: skip
    goals = _compare_goals(summary)
    if goals:
        rep.h("Goals")
        rep.table(["goal", "measured (branch / base)", "met"], goals)
    rep.h("Every round")
    rep.table(
        ["round", "server", "case", "callers", "QPS", "p50 ms", "handler CPU ms", "statuses"],
        [[lv["round"], lv["server"], lv["case"], lv["concurrency"], lv["qps"], lv["p50_ms"],
          lv["handler_cpu_ms"], ", ".join(f"{k} {v}" for k, v in sorted(lv["statuses"].items()))]
         for lv in tree["levels"]],
    )  # fmt: skip
    rep.results = dict(results)
    return rep


def _compare_goals(summary: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    goals = []
    if rp := summary.get("ReadPlates @ 1"):
        goals.append(["ReadPlates p50, 1 caller ≤ 1.0x", f"{num(rp['p50_ratio'], '.2f')}x",
                      rp["p50_ratio"] is not None and rp["p50_ratio"] <= 1.0])  # fmt: skip
    if st := summary.get(f"{AUTH_STRANGER} @ 4"):
        goals.append(["Authorize stranger's car QPS, 4 callers ≥ 1.3x",
                      f"{num(st['qps_ratio'], '.2f')}x",
                      st["qps_ratio"] is not None and st["qps_ratio"] >= 1.3])  # fmt: skip
    if mx := summary.get(f"{AUTH_MIX} @ 4"):
        goals.append(["70/30 mix ≥ 20 decisions/s, 4 callers",
                      f"{num(mx['branch_qps'], '.1f')}/s",
                      mx["branch_qps"] is not None and mx["branch_qps"] >= 20])  # fmt: skip
    return goals


def _median(values: Sequence[float]) -> float:
    return median([v for v in values if v == v])  # nan (no server side) left out
