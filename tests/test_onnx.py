"""The session wrapper: a lone run may use two cores; runs side by side use one each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recognizer import accounting
from recognizer.onnx import OnnxModel, SessionOptions, cores_taken


def _tiny_conv(path: Path) -> Path:
    """A 3x3 convolution, 3 -> 8 channels: enough work for onnxruntime to split."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class _Counted:
    """A session that counts its runs."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any) -> Any:
        self.runs += 1
        return self.session.run(*args)


def test_a_lone_run_takes_the_idle_session_and_a_shared_one_does_not(tmp_path: Path) -> None:
    model = OnnxModel(_tiny_conv(tmp_path / "tiny.onnx"), options=SessionOptions(idle_threads=2))
    single, idle = _Counted(model._session), _Counted(model._idle)
    model._session, model._idle = single, idle
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (alone,) = model.run(x)
    assert (idle.runs, single.runs) == (1, 0)
    with cores_taken():  # another run in progress: one thread each
        (shared,) = model.run(x)
    assert (idle.runs, single.runs) == (1, 1)
    # The two sessions compute the same function: a decision never depends on the load.
    assert np.array_equal(alone, shared)
    # A run is counted out when it ends, even when it fails.
    with pytest.raises(Exception, match="invalid dimensions"):  # onnxruntime's own type
        model.run(x[:, :2])
    model.run(x)
    assert idle.runs == 3


def test_a_model_without_idle_threads_has_one_session(tmp_path: Path) -> None:
    model = OnnxModel(_tiny_conv(tmp_path / "tiny.onnx"))
    assert model._idle is None
    model.run(np.zeros((1, 3, 64, 64), np.float32))


def test_an_idle_run_credits_its_pool_threads_cpu_to_the_request(tmp_path: Path) -> None:
    model = OnnxModel(_tiny_conv(tmp_path / "tiny.onnx"), options=SessionOptions(idle_threads=2))
    x = np.ones((1, 3, 64, 64), np.float32)
    usage, token = accounting.begin()
    try:
        for _ in range(20):
            model.run(x)
    finally:
        accounting.end(token)
    # Inference CPU includes the pool thread's part, which is also helper CPU of the request.
    assert usage.inference > 0 and 0 <= usage.cpu <= usage.inference
