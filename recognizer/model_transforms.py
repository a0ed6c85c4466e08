"""Named, deterministic transforms that derive one model file from another at `models fetch`.

A manifest entry with `source = "derived"` names its `base` entry and a `transform` from
:data:`TRANSFORMS`; fetch runs the transform on the verified base file and checks the result
against the entry's own sha256, so what runs is pinned exactly like a downloaded file.

The transforms edit the ONNX protobuf with the `onnx` package (a runtime dependency for this
reason only; it is imported here, at fetch time, never at serve time). Each one must leave the
network's function unchanged: the outputs equal the base model's to float rounding (checked by
tests/test_models.py), so templates made with either file compare.
"""

from __future__ import annotations

from collections.abc import Callable


def _load(data: bytes):  # type: ignore[no-untyped-def]
    import onnx

    return onnx.load_model_from_string(data)


def _initializers_not_inputs(model) -> None:  # type: ignore[no-untyped-def]
    """Old exporters (ONNX IR < 4 style) list every weight as a graph input too. onnxruntime
    must then treat the weights as feedable, so it neither folds BatchNorm into Conv nor
    pre-packs the weights. Dropping them from the inputs makes them constants."""
    weights = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def _prelu_as_relu_min(model) -> None:  # type: ignore[no-untyped-def]
    """PRelu(x, a) -> Relu(x) + a * Min(x, 0), exactly the same values (x > 0: x + a*0;
    x <= 0: 0 + a*x). onnxruntime's CPU PRelu with a per-channel slope runs a generic
    broadcast kernel outside its blocked (NCHWc) layout, with layout reorders around every
    one; Relu, Min, Mul and Add stay in the fast path. On SFace this halves the run time."""
    import numpy as np
    from onnx import helper, numpy_helper

    zero = "prelu_rewrite_zero"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1,), np.float32), zero))
    nodes = []
    for k, node in enumerate(model.graph.node):
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        (y,) = node.output
        base = f"prelu_rewrite_{k}"
        nodes += [
            helper.make_node("Relu", [x], [f"{base}_pos"], name=f"{base}_relu"),
            helper.make_node("Min", [x, zero], [f"{base}_negx"], name=f"{base}_min"),
            helper.make_node("Mul", [f"{base}_negx", slope], [f"{base}_neg"], name=f"{base}_mul"),
            helper.make_node("Add", [f"{base}_pos", f"{base}_neg"], [y], name=f"{base}_add"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def sface_cpu(data: bytes) -> bytes:
    """SFace 2021dec for onnxruntime's CPU provider: weights as constants, PRelu rewritten.
    The batch dimension stays pinned at 1: a batch of 2 (a crop and its mirror) measured the
    same CPU time as two runs of 1 (see benchmarks/results/faces/report.md), so the flip
    embedding keeps two runs."""
    model = _load(data)
    _initializers_not_inputs(model)
    _prelu_as_relu_min(model)
    model.producer_name = "recognizer.model_transforms.sface_cpu"
    out: bytes = model.SerializeToString()
    return out


TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {"sface_cpu": sface_cpu}
