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
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from benchmarks.metrics import percentiles
from benchmarks.service import check_target
from recognizer.service.interceptors import API_KEY_HEADER
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
    service = "RecognitionService"
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
            f"/recognizer.v1.{service}/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        capacity, unloaded_median, probe_calls = measure_capacity(call, request, metadata)
        rate = capacity * factor

        lock = threading.Lock()
        codes: Counter[str] = Counter()
        admitted: list[float] = []
        rejected: list[float] = []
        outstanding = threading.Semaphore(MAX_OUTSTANDING)
        done = threading.Condition(lock)
        pending = [0]

        def finished(sent_at: float, fut: grpc.Future) -> None:
            took = time.perf_counter() - sent_at
            code = fut.code()
            with lock:
                codes[code.name] += 1
                if code is grpc.StatusCode.OK:
                    admitted.append(took)
                elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    rejected.append(took)
                pending[0] -= 1
                done.notify_all()
            outstanding.release()

        sent = 0
        skipped = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            due = t0 + sent / rate
            if due >= end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if not outstanding.acquire(blocking=False):
                skipped += 1  # the client itself is saturated; count, do not queue
                sent += 1
                continue
            with lock:
                pending[0] += 1
            sent_at = time.perf_counter()
            fut = call.future(request, metadata=metadata, timeout=60)
            fut.add_done_callback(lambda f, s=sent_at: finished(s, f))
            sent += 1
        offered_s = time.perf_counter() - t0
        with lock:
            done.wait_for(lambda: pending[0] == 0, timeout=120)
            drained = pending[0] == 0
        return {
            "method": method,
            "capacity_rps": capacity,
            "unloaded_median_ms": unloaded_median * 1000,
            "probe_calls": probe_calls,
            "factor": factor,
            "offered_rps": rate,
            "seconds": offered_s,
            "sent": sent - skipped,
            "client_skipped": skipped,
            "admitted": len(admitted),
            "rejected": len(rejected),
            "codes": dict(codes),
            "admitted_rps": len(admitted) / offered_s,
            "p50_admitted_ms": percentiles(admitted, (50,))["p50"] * 1000,
            "p99_admitted_ms": percentiles(admitted, (99,))["p99"] * 1000,
            "max_admitted_ms": max(admitted, default=float("nan")) * 1000,
            "p99_rejected_ms": percentiles(rejected, (99,))["p99"] * 1000,
            "drained": drained,
        }
    finally:
        channel.close()


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
    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "faces" / "lfw10"
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
