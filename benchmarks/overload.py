"""Overload behaviour: measure capacity, then offer a multiple of it and watch admission.

`run_overload` first measures the sequential capacity of one method (calls per second one
after another, and the unloaded median latency), then drives `factor` times that rate
open-loop for `seconds` (requests are sent on schedule whether or not earlier ones have
answered, as independent gates would). A healthy server admits what it can, answers the
rest at once with RESOURCE_EXHAUSTED, and keeps the latency of the admitted calls bounded.

    python -m benchmarks.overload                     # starts its own server subprocess
    python -m benchmarks.overload --target 127.0.0.1:50051 --api-key KEY --method IdentifyFace

Only loopback targets are accepted: this is a load generator.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.report import Report
from benchmarks.service import check_target
from devtools.datasets import DATASETS
from devtools.metrics import percentiles
from recognizer.service.interceptors import API_KEY_HEADER, QUEUE_WAIT_HEADER
from recognizer.v1 import recognition_pb2

METHODS = {
    "DetectFaces": recognition_pb2.DetectFacesRequest,
    "IdentifyFace": recognition_pb2.IdentifyFaceRequest,
    "ReadPlates": recognition_pb2.ReadPlatesRequest,
}
MAX_OUTSTANDING = 2_000  # a hard cap on calls in the air, whatever the offered rate


def measure_capacity(
    call: Any,
    request: bytes,
    metadata: Any,
    *,
    warmup: int = 3,
    calls: int = 30,
    budget_s: float = 6.0,
) -> tuple[float, float, int]:
    """(sequential calls per second, unloaded median seconds, calls made)."""
    for _ in range(warmup):
        call(request, metadata=metadata, timeout=60)
    latencies: list[float] = []
    t0 = time.perf_counter()
    while len(latencies) < calls and time.perf_counter() - t0 < budget_s:
        t = time.perf_counter()
        call(request, metadata=metadata, timeout=60)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    return len(latencies) / elapsed, statistics.median(latencies), len(latencies)


class _OpenLoop:
    """Calls sent on schedule, whatever earlier ones did: their codes and latencies, and a
    hard cap (MAX_OUTSTANDING) on calls in the air."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.admitted: list[float] = []
        self.rejected: list[float] = []
        self.outstanding = threading.Semaphore(MAX_OUTSTANDING)
        self.done = threading.Condition(self.lock)
        self.pending = 0
        self.sent = 0
        self.skipped = 0

    def finished(self, sent_at: float, fut: grpc.Future) -> None:
        took = time.perf_counter() - sent_at
        code = fut.code()
        with self.lock:
            self.codes[code.name] += 1
            if code is grpc.StatusCode.OK:
                self.admitted.append(took)
            elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.rejected.append(took)
            self.pending -= 1
            self.done.notify_all()
        self.outstanding.release()

    def offer(self, call: Any, request: bytes, metadata: Any, rate: float, seconds: float) -> float:
        """Send at `rate` for `seconds`: the seconds it took."""
        t0 = time.perf_counter()
        end = t0 + seconds
        while (due := t0 + self.sent / rate) < end:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.sent += 1
            if not self.outstanding.acquire(blocking=False):
                self.skipped += 1  # the client itself is saturated; count, do not queue
                continue
            with self.lock:
                self.pending += 1
            sent_at = time.perf_counter()
            fut = call.future(request, metadata=metadata, timeout=60)
            fut.add_done_callback(lambda f, s=sent_at: self.finished(s, f))
        return time.perf_counter() - t0

    def drain(self, timeout: float = 120) -> bool:
        with self.lock:
            return self.done.wait_for(lambda: self.pending == 0, timeout=timeout)


def run_overload(
    target: str,
    api_key: str,
    image: bytes,
    method: str = "DetectFaces",
    seconds: float = 15.0,
    factor: float = 2.0,
) -> dict[str, Any]:
    """Capacity, then `factor` x capacity for `seconds`; returns counts and latencies."""
    check_target(target)
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}")
    if not 0 < seconds <= 600 or not 0 < factor <= 20:
        raise ValueError("seconds must be in (0, 600] and factor in (0, 20]")
    request = METHODS[method](image=image).SerializeToString()
    metadata = ((API_KEY_HEADER, api_key),)
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", 32 << 20),
            ("grpc.max_receive_message_length", 32 << 20),
        ],
    )
    try:
        call = channel.unary_unary(
            f"/recognizer.v1.RecognitionService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        capacity, unloaded_median, probe_calls = measure_capacity(call, request, metadata)
        loop = _OpenLoop()
        offered_s = loop.offer(call, request, metadata, capacity * factor, seconds)
        drained = loop.drain()
    finally:
        channel.close()
    admitted, rejected = loop.admitted, loop.rejected
    return {
        "method": method,
        "capacity_rps": capacity,
        "unloaded_median_ms": unloaded_median * 1000,
        "probe_calls": probe_calls,
        "factor": factor,
        "offered_rps": capacity * factor,
        "seconds": offered_s,
        "sent": loop.sent - loop.skipped,
        "client_skipped": loop.skipped,
        "admitted": len(admitted),
        "rejected": len(rejected),
        "codes": dict(loop.codes),
        "admitted_rps": len(admitted) / offered_s,
        "p50_admitted_ms": percentiles(admitted, (50,))["p50"] * 1000,
        "p99_admitted_ms": percentiles(admitted, (99,))["p99"] * 1000,
        "max_admitted_ms": max(admitted, default=float("nan")) * 1000,
        "p99_rejected_ms": percentiles(rejected, (99,))["p99"] * 1000,
        "drained": drained,
    }


# --- gate callers with deadlines: goodput, stored decisions, retry hints, memory -----------

GATE_CALLERS = 48
GATE_PHASE_S = 10.0
# Reasons with which admission refuses a call before any of its work starts.
ADMISSION_REASONS = frozenset({"OVERLOADED", "DEADLINE_TOO_SHORT"})


@dataclass(frozen=True, slots=True)
class GateCall:
    event_id: str
    sent: float  # perf_counter seconds
    took: float
    code: str
    reason: str  # ErrorInfo reason of a refusal, "" otherwise
    retry_s: float | None  # RetryInfo delay of a RESOURCE_EXHAUSTED answer
    ahead: int | None  # calls queued ahead of a refused call (ErrorInfo metadata)
    queue_wait_s: float | None  # the server's measured queue wait of an admitted call


def _status_details(err: grpc.RpcError) -> tuple[str, float | None, int | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds, calls queued ahead) of an error."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    reason, delay, ahead = "", None, None
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for d in status.details if status is not None else ():
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
            if "queued_ahead" in info.metadata:
                ahead = int(info.metadata["queued_ahead"])
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            d.Unpack(retry)
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return reason, delay, ahead


def _queue_wait(trailing: Any) -> float | None:
    for key, value in trailing or ():
        if key == QUEUE_WAIT_HEADER:
            return float(value) / 1000
    return None


def _gate_phase(
    authorize: Any,
    metadata: Any,
    events: list[tuple[bytes, bytes]],
    gate_id: str,
    deadline_s: float,
    seconds: float,
    callers: int,
) -> tuple[list[GateCall], float]:
    """`callers` gates in a closed loop for `seconds`: each sends one event after another
    with a `deadline_s` deadline and honours RetryInfo before its next event."""
    from recognizer.v1 import gate_pb2

    calls: list[GateCall] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def caller(k: int) -> None:
        n = 0
        while time.perf_counter() < end:
            vehicle, face = events[(k + n * callers) % len(events)]
            event_id = f"{gate_id}-{k}-{n}"
            n += 1
            request = gate_pb2.AuthorizeRequest(
                gate_id=gate_id,
                event_id=event_id,
                vehicle_image=vehicle,
                face_image=face,
                amount_minor=500,
                currency="CNY",
                direction=gate_pb2.DIRECTION_ENTRY,
            )
            sent = time.perf_counter()
            reason, retry, ahead, wait = "", None, None, None
            try:
                _, call = authorize.with_call(request, metadata=metadata, timeout=deadline_s)
                code = "OK"
                wait = _queue_wait(call.trailing_metadata())
            except grpc.RpcError as err:
                code = err.code().name
                reason, retry, ahead = _status_details(err)
            took = time.perf_counter() - sent
            with lock:
                calls.append(GateCall(event_id, sent, took, code, reason, retry, ahead, wait))
            if retry is not None:
                time.sleep(max(0.0, min(retry, end - time.perf_counter())))

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + deadline_s + 60)
    return calls, end


def _stored_events(admin: Any, gate_id: str) -> set[str]:
    from recognizer.v1 import gate_pb2

    rows = admin.client.admin.ListDecisions(
        gate_pb2.ListDecisionsRequest(gate_id=gate_id, limit=1000),
        metadata=admin.client.metadata,
        timeout=30,
    ).decisions
    return {r.event_id for r in rows}


def retry_ratios(calls: list[GateCall], window_s: float = 0.5) -> list[float]:
    """Each RetryInfo delay over the median queue wait of the calls admitted around then
    (sent within `window_s` of the refusal); refusals with no admitted neighbour are skipped."""
    admitted = sorted((c.sent, c.queue_wait_s) for c in calls if c.queue_wait_s is not None)
    sent = [a[0] for a in admitted]
    out = []
    for c in calls:
        if c.retry_s is None:
            continue
        t = c.sent + c.took
        lo, hi = bisect.bisect_left(sent, t - window_s), bisect.bisect_right(sent, t + window_s)
        waits = [w for _, w in admitted[lo:hi] if w is not None]
        if waits and statistics.median(waits) > 0.005:
            out.append(c.retry_s / statistics.median(waits))
    return out


def retry_turn_ratios(calls: list[GateCall]) -> list[float]:
    """Each RetryInfo delay over the time its call's turn would have taken to come: from the
    refusal until as many admitted calls had started work as were queued ahead of it, plus
    one (the slot it would have taken). This is what the estimate claims to predict."""
    starts = sorted(c.sent + c.queue_wait_s for c in calls if c.queue_wait_s is not None)
    out = []
    for c in calls:
        if c.retry_s is None or c.ahead is None:
            continue
        t = c.sent + c.took
        j = bisect.bisect_right(starts, t) + c.ahead
        if j < len(starts) and starts[j] - t > 0.005:
            out.append(c.retry_s / (starts[j] - t))
    return out


def phase_summary(
    calls: list[GateCall], stored: set[str], end: float, seconds: float, deadline_s: float
) -> dict[str, Any]:
    """Goodput counts OK answers within the deadline that arrived before the phase ended."""
    ok = [c for c in calls if c.code == "OK" and c.took <= deadline_s and c.sent + c.took <= end]
    refused = [c for c in calls if c.reason in ADMISSION_REASONS]
    admitted = [c for c in calls if c.reason not in ADMISSION_REASONS]
    ratios = retry_ratios(calls)
    turns = retry_turn_ratios(calls)
    codes = Counter(c.code for c in calls)
    return {
        "deadline_s": deadline_s,
        "calls": len(calls),
        "codes": dict(codes),
        "reasons": dict(Counter(c.reason for c in calls if c.reason)),
        "goodput_per_s": len(ok) / seconds,
        "ok": len(ok),
        "stored": len(stored),
        # Stored decisions nobody received: deadline gone, or answered after the phase.
        "stored_without_ok": len(stored - {c.event_id for c in calls if c.code == "OK"}),
        "refused_at_admission": len(refused),
        "refused_per_s": len(refused) / seconds,
        "admitted": len(admitted),
        "p50_admitted_ms": percentiles([c.took for c in admitted], (50,))["p50"] * 1000,
        "p99_admitted_ms": percentiles([c.took for c in admitted], (99,))["p99"] * 1000,
        "median_queue_wait_ms": statistics.median(
            [c.queue_wait_s for c in ok if c.queue_wait_s is not None] or [float("nan")]
        )
        * 1000,
        "retry_hints": sum(c.retry_s is not None for c in calls),
        "median_retry_s": statistics.median(
            [c.retry_s for c in calls if c.retry_s is not None] or [float("nan")]
        ),
        "retry_ratio_n": len(ratios),
        "retry_over_observed_median": statistics.median(ratios) if ratios else float("nan"),
        "retry_turn_n": len(turns),
        "retry_over_turn_median": statistics.median(turns) if turns else float("nan"),
    }


class _Admin:
    """An admin client that also samples the server's RSS (GetMetrics) in the background."""

    def __init__(self, target: str, api_key: str, every_s: float = 0.25) -> None:
        from recognizer.client import Client

        self.client = Client.connect(target, api_key, retry=False)  # counts each refusal
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _metrics(self) -> Any:
        from recognizer.v1 import gate_pb2

        return self.client.admin.GetMetrics(
            gate_pb2.GetMetricsRequest(), metadata=self.client.metadata, timeout=10
        )

    def rss(self) -> int:
        return int(self._metrics().rss_bytes)

    def cpu_s(self) -> float:
        """The server process's CPU seconds so far."""
        return float(self._metrics().process_cpu_seconds)

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            # A refused sample under overload is a missing point, not a failure.
            with contextlib.suppress(grpc.RpcError):
                self.samples.append((time.perf_counter(), self.rss()))

    def __enter__(self) -> _Admin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def _gate_events(faces_dir: Path, plates_dir: Path, limit: int = 24) -> list[tuple[bytes, bytes]]:
    faces = sorted(p for p in faces_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    scenes = sorted(p for p in plates_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not faces or not scenes:
        raise FileNotFoundError(f"no sample images in {faces_dir} or {plates_dir}")
    return [
        (scenes[i % len(scenes)].read_bytes(), faces[i % len(faces)].read_bytes())
        for i in range(limit)
    ]


def run_gate_overload(
    target: str,
    api_key: str,
    faces_dir: Path,
    plates_dir: Path,
    *,
    seconds: float = GATE_PHASE_S,
    callers: int = GATE_CALLERS,
    deadlines: tuple[float, ...] = (30.0, 1.0),
    settle_s: float = 10.0,
) -> dict[str, Any]:
    """Authorize from `callers` gates, one phase per deadline, in one run of one server."""
    from benchmarks.service import _setup_gallery

    check_target(target)
    if not 0 < seconds <= 120 or not 0 < callers <= 256:
        raise ValueError("seconds must be in (0, 120] and callers in (0, 256]")
    events = _gate_events(faces_dir, plates_dir)
    with _Admin(target, api_key) as admin:
        if not admin.client.wait_serving(300):
            raise RuntimeError(f"{target} is not SERVING")
        _setup_gallery(admin.client, faces_dir, 6)
        authorize = admin.client.gate.Authorize
        md = admin.client.metadata
        for i in range(4):  # warm-up outside the measurement
            _gate_phase(authorize, md, events[i : i + 1], "warmup", 30.0, 0.01, 1)
        baseline = admin.rss()
        t0 = time.perf_counter()
        phases = {}
        for d in deadlines:
            gate_id = f"bench-{d:g}s"
            cpu0 = admin.cpu_s()
            calls, end = _gate_phase(authorize, md, events, gate_id, d, seconds, callers)
            time.sleep(1.0)  # let abandoned work finish (and maybe store) before counting
            cpu = admin.cpu_s() - cpu0
            stored = _stored_events(admin, gate_id)
            summary = phase_summary(calls, stored, end, seconds, d)
            summary["server_cpu_s_per_ok"] = cpu / max(1, summary["ok"])
            phases[f"{d:g}s"] = summary
        t1 = time.perf_counter()
        time.sleep(settle_s)
        after = admin.rss()
        peak = max((r for t, r in admin.samples if t0 <= t <= t1), default=after)
    return {
        "callers": callers,
        "seconds": seconds,
        "phases": phases,
        "goodput_ratio": phases["1s"]["goodput_per_s"] / phases["30s"]["goodput_per_s"]
        if "1s" in phases and "30s" in phases and phases["30s"]["goodput_per_s"]
        else float("nan"),
        "rss_baseline_mb": baseline / 2**20,
        "rss_peak_mb": peak / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_after_over_baseline": after / baseline if baseline else float("nan"),
        "settle_s": settle_s,
    }


def gate_report(r: dict[str, Any]) -> Report:
    """The gate overload results with their summary, for the shared writer."""
    rep = Report("Gate overload: 30-s and 1-s deadlines", results=r)
    rep.p("```\n" + format_gate_result(r) + "\n```")
    return rep


def format_gate_result(r: dict[str, Any]) -> str:
    lines = [f"{r['callers']} Authorize callers, {r['seconds']:.0f} s per phase"]
    for name, p in r["phases"].items():
        lines.append(
            f"  deadline {name}: goodput {p['goodput_per_s']:.2f}/s ({p['ok']} OK of "
            f"{p['calls']}); stored {p['stored']}, without an OK answer "
            f"{p['stored_without_ok']}; refused at admission {p['refused_at_admission']} "
            f"({p['refused_per_s']:.1f}/s); admitted p50 {p['p50_admitted_ms']:.0f} ms, "
            f"p99 {p['p99_admitted_ms']:.0f} ms; queue wait median "
            f"{p['median_queue_wait_ms']:.0f} ms; RetryInfo median {p['median_retry_s']:.3f} s"
            f" over observed wait median ratio {p['retry_over_observed_median']:.2f} "
            f"(n={p['retry_ratio_n']}), over the wait for its turn "
            f"{p['retry_over_turn_median']:.2f} (n={p['retry_turn_n']}); "
            f"server CPU per OK {p['server_cpu_s_per_ok']:.2f} s; "
            f"codes {p['codes']} reasons {p['reasons']}"
        )
    lines.append(
        f"  goodput 1s/30s {r['goodput_ratio']:.2f}; RSS baseline {r['rss_baseline_mb']:.0f} MB,"
        f" peak {r['rss_peak_mb']:.0f} MB, after {r['settle_s']:.0f} s idle "
        f"{r['rss_after_mb']:.0f} MB ({r['rss_after_over_baseline']:.2f}x)"
    )
    return "\n".join(lines)


def format_result(r: dict[str, Any]) -> str:
    return (
        f"{r['method']}: capacity {r['capacity_rps']:.1f}/s (unloaded median "
        f"{r['unloaded_median_ms']:.1f} ms); offered {r['offered_rps']:.1f}/s"
        f" x {r['seconds']:.1f}s "
        f"= {r['sent']} calls; admitted {r['admitted']} ({r['admitted_rps']:.1f}/s), "
        f"rejected {r['rejected']}; admitted p50 {r['p50_admitted_ms']:.0f} ms, "
        f"p99 {r['p99_admitted_ms']:.0f} ms; rejected p99 {r['p99_rejected_ms']:.1f} ms; "
        f"codes {r['codes']}"
    )


def _default_image() -> Path:
    root = DATASETS / "faces" / "lfw10"
    return sorted(sorted(root.iterdir())[0].iterdir())[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", help="127.0.0.1:PORT of a running server (default: start one)")
    p.add_argument("--api-key", default=os.environ.get("RECOGNIZER_API_KEY", ""))
    p.add_argument("--image", type=Path, help="a face photo (default: the first lfw10 photo)")
    p.add_argument("--method", choices=sorted(METHODS), default="DetectFaces")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--max-in-flight", type=int, default=4, help="for a server started here")
    p.add_argument("--max-queue", type=int, default=4, help="for a server started here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    image = (args.image or _default_image()).read_bytes()

    if args.target is not None:
        check_target(args.target)
        result = run_overload(
            args.target, args.api_key, image, args.method, args.seconds, args.factor
        )
    else:
        from benchmarks.service import subprocess_server

        env = {
            "RECOGNIZER_MAX_IN_FLIGHT": str(args.max_in_flight),
            "RECOGNIZER_MAX_QUEUE": str(args.max_queue),
        }
        with subprocess_server(env=env) as (target, key):
            result = run_overload(target, key, image, args.method, args.seconds, args.factor)
    print(json.dumps(result, indent=1) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
