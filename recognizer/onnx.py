"""The one place that creates onnxruntime sessions.

Every model goes through :func:`load`, which checks the file's sha256 against the manifest
before a session is built, so a swapped or truncated weight file never runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recognizer import accounting, telemetry


@functools.cache
def _onnxruntime() -> ModuleType:
    """onnxruntime, imported on the first session: clients and the CLI never pay for it."""
    import onnxruntime as ort

    # Some exported graphs (SFace) warn once per initializer while loading; keep errors only.
    ort.set_default_logger_severity(3)
    module: ModuleType = ort
    return module


class ModelError(RuntimeError):
    """A model file is missing, corrupt or does not match its manifest entry."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class SessionOptions:
    # Single-threaded by default: the server gets its parallelism from concurrent requests,
    # and 2-core machines thrash when every session also spawns a thread pool.
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # More than intra_op_threads: a run that starts while no other model runs (a quiet
    # server) uses this many threads, from a second session of the same graph.
    idle_threads: int = 1


def idle_parallel() -> SessionOptions:
    """A model that uses two cores while it runs alone. For the detectors and embedders:
    their convolutions split well (1.5-1.8x faster on two cores), where the line readers
    and the liveness model gain under 1.2x for a second copy of their weights."""
    return SessionOptions(idle_threads=min(2, len(os.sched_getaffinity(0))))


class _InFlight:
    """How many model runs are in progress in this process, across every model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def enter(self) -> bool:
        """Count a run in; True when no other run was in progress."""
        with self._lock:
            self._count += 1
            return self._count == 1

    def leave(self) -> None:
        with self._lock:
            self._count -= 1


_IN_FLIGHT = _InFlight()


@contextmanager
def cores_taken() -> Iterator[None]:
    """For a caller that runs models on two threads itself: no run takes the idle session
    meanwhile (two sessions of two threads each would share two cores)."""
    _IN_FLIGHT.enter()
    try:
        yield
    finally:
        _IN_FLIGHT.leave()


class OnnxModel:
    """A loaded model: a thin, thread-safe wrapper around one InferenceSession."""

    def __init__(
        self,
        path: Path,
        *,
        sha256: str | None = None,
        options: SessionOptions = SessionOptions(),
        name: str | None = None,
        version: str = "",
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file missing: {path}; run `recognizer models fetch`")
        if sha256 is not None:
            actual = sha256_file(path)
            if actual != sha256:
                raise ModelError(
                    f"sha256 mismatch for {path}: expected {sha256}, got {actual}; "
                    "delete it and run `recognizer models fetch`"
                )
        self._session = _session(path, options.intra_op_threads, options.inter_op_threads)
        # The idle session: the same graph, with a thread pool that sleeps rather than spins
        # between runs (spinning would take a core from other requests).
        self._idle = (
            _session(path, options.idle_threads, options.inter_op_threads, spin=False)
            if options.idle_threads > options.intra_op_threads
            else None
        )
        self.path = path
        self.name = name or path.stem
        self.version = version
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.input_shapes = [list(i.shape) for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self._lock = threading.Lock()  # counts calls; InferenceSession.run is thread-safe
        self.calls = 0
        self.seconds = 0.0

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run the model on positional inputs; returns outputs in declared order."""
        feed = {n: np.ascontiguousarray(x) for n, x in zip(self.input_names, inputs, strict=True)}
        alone = _IN_FLIGHT.enter()
        try:
            session = self._idle if alone and self._idle is not None else self._session
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            out: list[np.ndarray] = session.run(self.output_names, feed)
            dt = time.perf_counter() - t0
            own = time.thread_time() - c0
            # A single-threaded run runs on this thread, so its thread CPU is the cost. An idle
            # run also uses its pool's thread: nothing else was running, so the process's CPU
            # over the run, less this thread's, is that thread's work (an estimate: another
            # request may have started meanwhile).
            pool = max(0.0, time.process_time() - p0 - own) if session is self._idle else 0.0
        finally:
            _IN_FLIGHT.leave()
        accounting.add_inference(own + pool, helper_cpu=pool)
        telemetry.observe_inference(self.name, dt)
        with self._lock:
            self.calls += 1
            self.seconds += dt
        return out


def _session(path: Path, intra: int, inter: int, *, spin: bool = True) -> Any:
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = inter
    so.log_severity_level = 3  # some exported graphs warn for every initializer
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own non-exported types
        raise ModelError(f"cannot load model {path}: {exc}") from exc
