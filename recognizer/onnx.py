"""The one place that creates onnxruntime sessions.

Every model goes through :func:`load`, which checks the file's sha256 against the manifest
before a session is built, so a swapped or truncated weight file never runs.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

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
        ort = _onnxruntime()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3  # some exported graphs warn for every initializer
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own non-exported types
            raise ModelError(f"cannot load model {path}: {exc}") from exc
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
        t0, c0 = time.perf_counter(), time.thread_time()
        out: list[np.ndarray] = self._session.run(self.output_names, feed)
        dt = time.perf_counter() - t0
        # With one intra-op thread the model runs on this thread: its CPU time is the cost.
        accounting.add_inference(time.thread_time() - c0)
        telemetry.observe_inference(self.name, dt)
        with self._lock:
            self.calls += 1
            self.seconds += dt
        return out
