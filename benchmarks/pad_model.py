"""The project's presentation-attack (liveness) model: graph, features, training, thresholds.

Shared by `scripts/train_pad.py` (trains the shipped reference model) and `benchmarks/pad.py`
(cross-validation, benchmarks/pad_eval.py). Needs `onnx` (the `pad-train` extra, also in
`dev`); no torch.

The model is ONE ONNX graph, input float32 [N, 3, 128, 128] BGR 0..255 (the context crop of
`recognizer/face/liveness.py`, CONTEXT x the face box), outputs `liveness` [N, 1] (calibrated
probability live) and `features` [N, F]. Its first part computes fixed image features with
ONNX ops:
- colour layout: mean and standard deviation of Y, Cr, Cb and two opponent channels on a
  4x4 grid (a print's white border, the hand and what is behind it);
- colour histograms: soft 8-bin histograms of Y, Cr and Cb over the crop;
- texture: energies of fixed Laplacian, Sobel and difference-of-Gaussian filters of Y on the
  4x4 grid (the blur and flat texture of a reprinted face), as logs;
- colour texture: uniform LBP(8, 1) histograms of Y, Cr and Cb, and of Y at half resolution
  (halftone, paper grain, a screen's pixel grid and moire), square-rooted;
- the medium (:func:`_medium_features`, added for transfer across attack types and cameras:
  they describe what any recapture does, not one generator): colour moments of Y, Cr, Cb,
  HSV saturation and value over the crop and its centre, the share of specular pixels, the
  power spectrum of Y in radial bands with its high-band peak (a DFT as matrix products),
  and Laplacian-variance blur at two scales;
its last part is two logistic regressions (standardisation and Platt calibration baked in)
trained in numpy, one on the synthetic face sets and one on real frames, whose smaller
probability is the output (:func:`train`; a site's own frames alone: one). Training
features come from running the feature part of the very same graph with onnxruntime, so the
pre-processing is written once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recognizer.onnx import OnnxModel

SIZE = 128
CONTEXT = 1.6  # crop side / face box side: small enough that web photos keep it in the image
# A tight photo whose 1.6x crop leaves the frame is cropped with the largest context down to
# this that stays within it (recognizer/face/liveness.py `fitted_context`; 6 of the fusion
# bench's genuine web faces were UNCERTAIN only because their 1.6x crop left the photo).
# The model trains on 1.6x crops only; the validation folds score the fitted ones.
MIN_CONTEXT = 1.2
GRID = 4
HIST_BINS = 8
LBP_BINS = 59  # uniform LBP(8, 1): 58 uniform patterns + one bin for the rest
OPSET = 17
SEED = 20101005  # fixed: training is deterministic anyway (Newton steps from zero)
LABELS = {"live": 1, "print": 0}


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PadSample:
    subject: str
    live: bool
    path: Path


def load_pad_folder(root: Path) -> list[PadSample]:
    """`live/<subject>/*` and `print/<subject>/*` (other attack folders count as attacks)."""
    out = []
    for kind in sorted(p for p in root.iterdir() if p.is_dir()):
        for subject in sorted(p for p in kind.iterdir() if p.is_dir()):
            for f in sorted(subject.iterdir()):
                if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
                    out.append(PadSample(subject.name, kind.name == "live", f))
    return out


# --- graph -------------------------------------------------------------------------------


DOG_SIGMAS = (0.7, 1.4, 2.8)
# 1x1 conv from the three Gaussian blurs to the two DoGs (0.7 - 1.4, 1.4 - 2.8)
_DOG_PAIRS = np.array([[1, -1, 0], [0, 1, -1]], np.float32).reshape(2, 3, 1, 1)


def _gauss1(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _texture_kernels() -> np.ndarray:
    """Fixed 3x3 filters on Y: Laplacian, Sobel x and y (the two DoGs are separable:
    DOG_SIGMAS)."""
    bank = np.zeros((3, 1, 3, 3), np.float32)
    bank[0, 0] = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    bank[1, 0] = sobel
    bank[2, 0] = sobel.T
    return bank


def _colour_matrix() -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv from BGR 0..1 to Y, Cr, Cb, R-G, (R+G)/2-B."""
    b, g, r = 0, 1, 2
    w = np.zeros((5, 3), np.float32)
    w[0, [r, g, b]] = [0.299, 0.587, 0.114]
    y = w[0].copy()
    w[1] = 0.713 * (np.eye(3, dtype=np.float32)[r] - y)
    w[2] = 0.564 * (np.eye(3, dtype=np.float32)[b] - y)
    w[3, [r, g]] = [1.0, -1.0]
    w[4, [r, g, b]] = [0.5, 0.5, -1.0]
    bias = np.array([0.0, 0.5, 0.5, 0.0, 0.0], np.float32)
    return w.reshape(5, 3, 1, 1), bias


@dataclass(frozen=True, slots=True)
class Classifier:
    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    weights: np.ndarray  # (F,)
    bias: float


@dataclass(frozen=True, slots=True)
class TwoHeads:
    """Two calibrated logistic heads on the same features; the probability live is the
    smaller of theirs (an attack if either head says attack): :func:`train`."""

    synthetic: Classifier  # head S: the face sets' bona fide vs their synthetic attacks
    real: Classifier  # head N: real frames' bona fide vs their real attacks (NUAA's prints)


class _Graph:
    """The nodes and initialisers of the ONNX graph being built, in the order they are added
    (the order is part of the serialized bytes, so of the model's sha256)."""

    __slots__ = ("inits", "nodes")

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, np.float32))

    def log_plus(self, t: str, eps: str, added: str, output: str) -> str:
        """log(t + eps), eps an existing constant."""
        return self.node("Log", [self.node("Add", [t, eps], added)], output)

    def flatten(self, t: str, output: str) -> str:
        return self.node("Flatten", [t], output, axis=1)

    def cell_pool(self, op: str, t: str, output: str) -> str:
        cell = SIZE // GRID
        return self.node(op, [t], output, kernel_shape=[cell, cell], strides=[cell, cell])


def build_graph(
    classifier: Classifier | TwoHeads | None, metadata: dict[str, str] | None = None
) -> bytes:
    """The serialized ONNX model. Without a classifier: zero weights (the features output
    is the same either way; used to compute training features)."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    x = g.node("Mul", ["input", g.scalar("inv255", 1 / 255)], "x01")
    w, b = _colour_matrix()
    chans = g.node("Conv", [x, g.const("colour_w", w), g.const("colour_b", b)], "chans")
    feats = _colour_layout(g, chans)
    feats += _histograms(g, chans)
    feats.append(_texture(g))
    feats += _lbp(g)
    feats += _medium_features(g)
    features = g.node("Concat", feats, "features", axis=1)
    n_feat = _n_features()
    if isinstance(classifier, TwoHeads):
        _two_heads(g, features, classifier)
    else:
        _head(g, features, classifier if classifier is not None else _blank(n_feat))
    graph = helper.make_graph(
        g.nodes,
        "pad_ref",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("liveness", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_feat]),
        ],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="recognizer"
    )
    model.ir_version = 8
    props = {"context": str(CONTEXT), "min_context": str(MIN_CONTEXT), **(metadata or {})}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _blank(n_feat: int) -> Classifier:
    return Classifier(
        np.zeros(n_feat, np.float32),
        np.ones(n_feat, np.float32),
        np.zeros(n_feat, np.float32),
        0.0,
    )


def _logit_node(g: _Graph, features: str, c: Classifier, tag: str = "") -> str:
    """Standardise and take a logistic regression's logit; node and initialiser names end
    in `tag` (one head: none, so the graph and its sha256 are as before two heads)."""
    z = g.node("Sub", [features, g.const(f"mu{tag}", c.mean.astype(np.float32))], f"z0{tag}")
    z = g.node("Div", [z, g.const(f"sd{tag}", c.std.astype(np.float32))], f"z{tag}")
    w = g.const(f"w{tag}", c.weights.astype(np.float32).reshape(-1, 1))
    logit = g.node("MatMul", [z, w], f"logit0{tag}")
    bias = g.const(f"b{tag}", np.array([c.bias], np.float32))
    return g.node("Add", [logit, bias], f"logit{tag}")


def _head(g: _Graph, features: str, c: Classifier) -> None:
    """The logistic regression's logit, sigmoid: output `liveness`."""
    g.node("Sigmoid", [_logit_node(g, features, c)], "liveness")


def _two_heads(g: _Graph, features: str, c: TwoHeads) -> None:
    """Each head's logit; `liveness` is the sigmoid of the smaller logit (the smaller
    probability: sigmoid is increasing)."""
    logits = [
        _logit_node(g, features, h, f"_{tag}") for tag, h in (("s", c.synthetic), ("n", c.real))
    ]
    both = g.node("Concat", logits, "logits", axis=1)
    low = g.node("ReduceMin", [both], "logit", axes=[1], keepdims=1)
    g.node("Sigmoid", [low], "liveness")


def _colour_layout(g: _Graph, chans: str) -> list[str]:
    """Mean and log std of the five colour channels per grid cell."""
    mean = g.cell_pool("AveragePool", chans, "cell_mean")
    sq = g.node("Mul", [chans, chans], "chans_sq")
    mean_sq = g.cell_pool("AveragePool", sq, "cell_mean_sq")
    var = g.node("Sub", [mean_sq, g.node("Mul", [mean, mean], "mean_sq")], "cell_var")
    eps = g.scalar("eps", 1e-6)
    std = g.node("Sqrt", [g.node("Max", [var, eps], "var_pos")], "cell_std")
    f_mean = g.flatten(mean, "f_mean")
    log_std = g.log_plus(std, g.scalar("eps_std", 1e-3), "std_e", "log_std")
    return [f_mean, g.flatten(log_std, "f_std")]


def _histograms(g: _Graph, chans: str) -> list[str]:
    """Soft HIST_BINS-bin histograms of Y, Cr and Cb (also slices out `y_ch`, `cr_ch`,
    `cb_ch` for the later features)."""
    centres = (np.arange(HIST_BINS, dtype=np.float32) + 0.5) / HIST_BINS
    g.const("hist_c", centres.reshape(1, HIST_BINS, 1, 1))
    g.scalar("hist_k", -1.0 / (2 * (0.5 / HIST_BINS) ** 2))
    out = []
    for i, name in enumerate(("y", "cr", "cb")):
        bounds = [
            g.const(f"s{i}", np.array([i], np.int64)),
            g.const(f"e{i}", np.array([i + 1], np.int64)),
            g.const(f"a{i}", np.array([1], np.int64)),
        ]
        ch = g.node("Slice", [chans, *bounds], f"{name}_ch")
        d = g.node("Sub", [ch, "hist_c"], f"{name}_d")
        z = g.node("Mul", [g.node("Mul", [d, d], f"{name}_d2"), "hist_k"], f"{name}_z")
        h = g.node("GlobalAveragePool", [g.node("Exp", [z], f"{name}_soft")], f"{name}_hist")
        out.append(g.flatten(h, f"f_hist_{name}"))
    return out


def _texture(g: _Graph) -> str:
    """Log energies of the 3x3 filters and the two DoGs of Y (0..255) per grid cell."""
    y255 = g.node("Mul", ["y_ch", g.scalar("k255", 255.0)], "y255")
    # the 3x3 filters apart from the 13x13 DoGs: the same responses, a quarter of the work
    small = g.node("Conv", [y255, g.const("tex_w3", _texture_kernels())], "tex3", pads=[1] * 4)
    # the DoGs from three separable Gaussians (13 taps a row, then a column: the same sums)
    g1 = np.stack([_gauss1(s, 6) for s in DOG_SIGMAS]).astype(np.float32)
    rows = g.node(
        "Conv", [y255, g.const("dog_r", g1[:, None, None, :])], "dog_rows", pads=[0, 6, 0, 6]
    )
    col = g.const("dog_c", g1[:, None, :, None])
    blurs = g.node("Conv", [rows, col], "dog_g", pads=[6, 0, 6, 0], group=3)
    dog = g.node("Conv", [blurs, g.const("dog_w", _DOG_PAIRS)], "tex13")
    resp = g.node("Concat", [small, dog], "tex", axis=1)
    energy = g.cell_pool("AveragePool", g.node("Abs", [resp], "tex_abs"), "tex_e")
    log_e = g.log_plus(energy, g.scalar("eps_tex", 1e-2), "tex_ee", "tex_log")
    return g.flatten(log_e, "f_tex")


def _lbp(g: _Graph) -> list[str]:
    """Uniform LBP(8, 1) histograms of Y, Cr, Cb, and of Y at half resolution, square-rooted."""
    from onnx import TensorProto

    g.const("lbp_k", _lbp_kernels())
    g.const("lbp_bits", (2.0 ** np.arange(8, dtype=np.float32)).reshape(1, 8, 1, 1))
    g.const("lbp_lut", _uniform_lbp_lut())
    g.const("lbp_bins", np.arange(LBP_BINS, dtype=np.int64).reshape(1, LBP_BINS, 1, 1))
    g.scalar("zero", 0.0)
    y_half = g.node("AveragePool", ["y255"], "y_half", kernel_shape=[2, 2], strides=[2, 2])
    cr255 = g.node("Mul", ["cr_ch", "k255"], "cr255")
    cb255 = g.node("Mul", ["cb_ch", "k255"], "cb255")
    out = []
    for name, ch in (("y", "y255"), ("cr", cr255), ("cb", cb255), ("y2", y_half)):
        diff = g.node("Conv", [ch, "lbp_k"], f"lbp_{name}_d")
        ge = g.node("GreaterOrEqual", [diff, "zero"], f"lbp_{name}_ge")
        bits = g.node("Cast", [ge], f"lbp_{name}_b", to=TensorProto.FLOAT)
        weighted = g.node("Mul", [bits, "lbp_bits"], f"lbp_{name}_w")
        axis = g.const(f"lbp_{name}_ax", np.array([1], np.int64))
        code = g.node("ReduceSum", [weighted, axis], f"lbp_{name}_code", keepdims=1)
        idx = g.node("Cast", [code], f"lbp_{name}_i", to=TensorProto.INT64)
        label = g.node("Gather", ["lbp_lut", idx], f"lbp_{name}_u", axis=0)
        eq = g.node("Equal", [label, "lbp_bins"], f"lbp_{name}_eq")
        onehot = g.node("Cast", [eq], f"lbp_{name}_oh", to=TensorProto.FLOAT)
        hist = g.node("GlobalAveragePool", [onehot], f"lbp_{name}_h")
        out.append(g.flatten(g.node("Sqrt", [hist], f"lbp_{name}_s"), f"f_lbp_{name}"))
    return out


def _n_features() -> int:
    cells = GRID * GRID
    medium = 5 * 6 + 1 + 2 * (RINGS + 1) + 6
    return 5 * cells * 2 + 3 * HIST_BINS + 5 * cells + 4 * LBP_BINS + medium


RINGS = 16  # radial bands of the power spectrum


def _dft(n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(n)
    a = 2 * np.pi * np.outer(k, k) / n
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def _rings(n: int) -> tuple[np.ndarray, np.ndarray]:
    """[n*n, RINGS] one-hot radial bands 1..RINGS of an n x n spectrum (band 0, round DC,
    left out; the last band holds the corners), and the high half's mask as weights of a
    mean."""
    f = np.fft.fftfreq(n)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / 0.5
    idx = np.minimum((r * RINGS).astype(int), RINGS).ravel()
    onehot = (idx[:, None] == np.arange(1, RINGS + 1)[None, :]).astype(np.float32)
    hi = (idx >= RINGS // 2).astype(np.float32)
    return onehot, hi


def _medium_features(g: _Graph) -> list[str]:
    """What the medium does to the whole crop, whoever made it (a print, a screen, a camera):
    - colour moments (mean, log std, skewness) of Y, Cr, Cb, saturation and value (HSV's V),
      over the crop and over its centre (the face), and the share of specular pixels
      (bright and unsaturated: a print's sheen, a screen's glare);
    - the power spectrum of Y (Hann window) in RINGS radial bands, as log shares of the
      total, and the high half's peak over its mean (moire, a pixel grid, a halftone screen
      are peaks; a live face's texture is not), over the crop and over its centre;
    - blur: log variance of the Laplacian at full and half resolution and their difference,
      crop and centre (a recaptured face loses its finest detail first)."""
    v = g.node("ReduceMax", ["x01"], "hsv_v", axes=[1], keepdims=1)
    lo = g.node("ReduceMin", ["x01"], "hsv_lo", axes=[1], keepdims=1)
    rng = g.node("Sub", [v, lo], "hsv_range")
    sat = g.node("Div", [rng, g.node("Add", [v, g.scalar("eps_v", 1e-3)], "hsv_v_e")], "hsv_s")
    five = g.node("Concat", ["y_ch", "cr_ch", "cb_ch", sat, v], "mom_in", axis=1)
    out: list[str] = []
    for part, t in (("all", five), ("mid", _centre(g, five, "mom_mid"))):
        out += _moments(g, part, t)
    out.append(_specular(g, v, sat))
    for part, y, n in (("all", "y_ch", SIZE), ("mid", _centre(g, "y_ch", "fft_mid_y"), SIZE // 2)):
        out += _spectrum(g, part, y, n)
    g.const(
        "blur_lap", np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32).reshape(1, 1, 3, 3)
    )
    for part, y in (("all", "y255"), ("mid", _centre(g, "y255", "blur_mid_y"))):
        out += _blur(g, part, y)
    return out


def _centre(g: _Graph, t: str, name: str) -> str:
    """The central half of the crop (the face)."""
    q, c = SIZE // 4, SIZE // 2
    starts = g.const(f"{name}_s", np.array([q, q], np.int64))
    ends = g.const(f"{name}_e", np.array([q + c, q + c], np.int64))
    axes = g.const(f"{name}_a", np.array([2, 3], np.int64))
    return g.node("Slice", [t, starts, ends, axes], name)


def _moments(g: _Graph, part: str, t: str) -> list[str]:
    """Mean, log std and skewness of each channel of t."""
    p = f"mom_{part}"
    m = g.node("GlobalAveragePool", [t], f"{p}_m")
    d = g.node("Sub", [t, m], f"{p}_d")
    d2 = g.node("Mul", [d, d], f"{p}_d2")
    var = g.node("GlobalAveragePool", [d2], f"{p}_v")
    var_e = g.node("Add", [var, g.scalar(f"{p}_eps", 1e-8)], f"{p}_ve")
    sd = g.node("Sqrt", [var_e], f"{p}_sd")
    m3 = g.node("GlobalAveragePool", [g.node("Mul", [d2, d], f"{p}_d3")], f"{p}_m3")
    sd3 = g.node("Mul", [g.node("Mul", [sd, sd], f"{p}_sd2"), sd], f"{p}_sd3")
    skew = g.node("Div", [m3, sd3], f"{p}_sk")
    logsd = g.log_plus(sd, "eps_std", f"{p}_sde", f"{p}_lsd")
    return [g.flatten(t2, f"f_{p}_{k}") for k, t2 in (("m", m), ("lsd", logsd), ("sk", skew))]


def _specular(g: _Graph, v: str, sat: str) -> str:
    """The square root of the share of bright, unsaturated pixels."""
    from onnx import TensorProto

    hi = g.node("Greater", [v, g.scalar("spec_v", 0.9)], "spec_hi")
    ls = g.node("Less", [sat, g.scalar("spec_s", 0.15)], "spec_ls")
    spec = g.node("Cast", [g.node("And", [hi, ls], "spec_and")], "spec_f", to=TensorProto.FLOAT)
    share = g.node("GlobalAveragePool", [spec], "spec_m")
    return g.flatten(g.node("Sqrt", [share], "spec_sq"), "f_spec")


def _spectrum(g: _Graph, part: str, y: str, n: int) -> list[str]:
    """Log radial band shares of the power spectrum of y (n x n, Hann window) and the log of
    its high half's peak over its mean: F = W X W^T with W = C - iS (C, S symmetric)."""
    p = f"fft_{part}"
    cos, sin = _dft(n)
    hann = np.hanning(n).astype(np.float32)
    onehot, hi = _rings(n)
    x = g.node("Sub", [y, g.node("GlobalAveragePool", [y], f"{p}_mu")], f"{p}_p")
    x = g.node("Mul", [x, g.const(f"{p}_win", np.outer(hann, hann)[None, None])], f"{p}_pw")
    cn, sn = g.const(f"{p}_c", cos), g.const(f"{p}_sn", sin)
    cx = g.node("MatMul", [cn, x], f"{p}_cx")
    sx = g.node("MatMul", [sn, x], f"{p}_sx")
    cxc = g.node("MatMul", [cx, cn], f"{p}_cxc")
    re = g.node("Sub", [cxc, g.node("MatMul", [sx, sn], f"{p}_sxs")], f"{p}_re")
    cxs = g.node("MatMul", [cx, sn], f"{p}_cxs")
    im = g.node("Add", [cxs, g.node("MatMul", [sx, cn], f"{p}_sxc")], f"{p}_im")
    re2 = g.node("Mul", [re, re], f"{p}_re2")
    pw = g.node("Add", [re2, g.node("Mul", [im, im], f"{p}_im2")], f"{p}_pow")
    flat = g.flatten(pw, f"{p}_flat")
    axis = g.const(f"{p}_ax", np.array([1], np.int64))
    tot0 = g.node("ReduceSum", [flat, axis], f"{p}_tot0", keepdims=1)
    tot = g.node("Add", [tot0, g.scalar(f"{p}_eps", 1e-9)], f"{p}_tot")
    prof0 = g.node("MatMul", [flat, g.const(f"{p}_rings", onehot)], f"{p}_prof0")
    prof = g.node("Div", [prof0, tot], f"{p}_prof")
    bands = g.log_plus(prof, f"{p}_eps", f"{p}_pe", f"f_{p}")
    hv = g.node("Mul", [flat, g.const(f"{p}_hi", hi[None])], f"{p}_hv")
    hmax = g.node("ReduceMax", [hv], f"{p}_hmax", axes=[1], keepdims=1)
    hmean = g.node("MatMul", [flat, g.const(f"{p}_him", (hi / hi.sum())[:, None])], f"{p}_hmean")
    hme = g.node("Add", [hmean, g.scalar(f"{p}_e12", 1e-12)], f"{p}_hme")
    ratio = g.node("Div", [hmax, hme], f"{p}_ratio")
    return [bands, g.log_plus(ratio, f"{p}_eps", f"{p}_re9", f"f_{p}_peak")]


def _blur(g: _Graph, part: str, y: str) -> list[str]:
    """Log variance of the Laplacian of y at full and half resolution, and their difference."""
    p = f"blur_{part}"
    half = g.node("AveragePool", [y], f"{p}_half", kernel_shape=[2, 2], strides=[2, 2])
    logs = []
    for scale, t in (("1", y), ("2", half)):
        s = f"{p}_{scale}"
        r = g.node("Conv", [t, "blur_lap"], f"{s}_r")
        m = g.node("GlobalAveragePool", [r], f"{s}_m")
        m2 = g.node("GlobalAveragePool", [g.node("Mul", [r, r], f"{s}_r2")], f"{s}_m2")
        var = g.node("Sub", [m2, g.node("Mul", [m, m], f"{s}_mm")], f"{s}_v")
        logs.append(g.log_plus(g.node("Relu", [var], f"{s}_vp"), "eps_tex", f"{s}_ve", f"{s}_l"))
    diff = g.node("Sub", logs, f"{p}_d")
    return [g.flatten(t, f"f_{p}_{k}") for k, t in enumerate((*logs, diff))]


def _lbp_kernels() -> np.ndarray:
    """8 3x3 kernels: each of the 8 neighbours minus the centre (no padding)."""
    k = np.zeros((8, 1, 3, 3), np.float32)
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    for i, (r, c) in enumerate(ring):
        k[i, 0, r, c] = 1.0
        k[i, 0, 1, 1] = -1.0
    return k


def _uniform_lbp_lut() -> np.ndarray:
    """256 LBP codes to 59 labels: the 58 uniform patterns (at most 2 transitions round the
    ring) in code order, every other code to label 58."""
    lut = np.full(256, LBP_BINS - 1, np.int64)
    label = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            lut[code] = label
            label += 1
    assert label == LBP_BINS - 1
    return lut


def session(data: bytes) -> OnnxModel:
    """An onnxruntime session of serialized model bytes, through recognizer.onnx."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pad.onnx"
        path.write_bytes(data)
        return OnnxModel(path, name="pad")


# --- crops to features ----------------------------------------------------------------------


def features(model: OnnxModel, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    idx = model.output_names.index("features")
    parts = [model.run(crops[i : i + batch])[idx] for i in range(0, len(crops), batch)]
    return np.concatenate(parts).astype(np.float64)


# --- training ----------------------------------------------------------------------------


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float = 1.0,
    iters: int = 50,
    weights: np.ndarray | None = None,
) -> Classifier:
    """L2-regularised logistic regression by Newton steps (deterministic); class-balanced
    unless `weights` (per sample, mean about 1) are given."""
    mean = x.mean(0)
    std = x.std(0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape
    zb = np.hstack([z, np.ones((n, 1))])
    if weights is None:
        sw = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum())) * n
    else:
        sw = np.asarray(weights, np.float64)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    w = np.zeros(d + 1)
    for _ in range(iters):
        p = _sigmoid(zb @ w)
        grad = zb.T @ (sw * (p - y)) + reg * w
        hess = (zb * (sw * p * (1 - p))[:, None]).T @ zb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return Classifier(mean, std, w[:-1], float(w[-1]))


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(logit, -30, 30)))


def predict(c: Classifier | TwoHeads, x: np.ndarray) -> np.ndarray:
    heads = (c.synthetic, c.real) if isinstance(c, TwoHeads) else (c,)
    return _combine([_logit(h, x) for h in heads])


# --- thresholds ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    attack: float  # below: ATTACK (at most `max_bpcer_attack` of any source's bona fide)
    live: float  # at or above: LIVE (the worst source's equal-error point)


def _rates(scores: np.ndarray, live: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bona, atk = np.sort(scores[live]), np.sort(scores[~live])
    apcer = 1 - np.searchsorted(atk, t, side="left") / max(1, len(atk)) if len(atk) else 0 * t
    bpcer = np.searchsorted(bona, t, side="left") / max(1, len(bona)) if len(bona) else 0 * t
    return np.asarray(apcer, float), np.asarray(bpcer, float)


def pick_thresholds(
    scores: np.ndarray,
    live: np.ndarray,
    source: np.ndarray | None = None,
    max_bpcer_attack: float = 0.02,
) -> Thresholds:
    """From out-of-fold scores of the training data only. `live`: the threshold where the
    worst error over the sources (each source's APCER and BPCER, where it has that class) is
    smallest: no one camera's bona fide or attacks are traded for another's. `attack`: low
    enough that at most 2% of any source's bona fide fall below it (DENY for a live user stays
    rare: the target is at least 97% not ATTACK on a camera never seen), never above
    `live`."""
    if source is None:
        source = np.zeros(len(scores), int)
    cands = np.unique(np.concatenate([scores, [1.0]]))
    worst = np.zeros(len(cands))
    t_attack = 1.0
    for src in np.unique(source):
        m = source == src
        apcer, bpcer = _rates(scores[m], live[m], cands)
        if (live[m]).any():
            worst = np.maximum(worst, bpcer)
            bona = np.sort(scores[m & live])
            t_attack = min(t_attack, float(bona[int(np.floor(max_bpcer_attack * len(bona)))]))
        if (~live[m]).any():
            worst = np.maximum(worst, apcer)
    k = int(np.argmin(worst))
    t_live = float(cands[k])
    return Thresholds(min(t_attack, t_live), t_live)


# --- the whole recipe ----------------------------------------------------------------------

L2_GRID = (3.0, 30.0, 300.0)


def inner_folds(source: np.ndarray, group: np.ndarray, synthetic_sources: set[str]) -> np.ndarray:
    """The validation folds inside a training set, shaped like the outer ones: each face set
    (a camera, whose attacks are synthetic) is one fold; a source of real frames (NUAA, a
    site's folder) is split by subject into up to 3 folds. With fewer than 3 folds in all,
    subjects are spread over up to 5 folds instead."""
    fold = np.empty(len(source), object)
    for src in np.unique(source):
        m = source == src
        if src in synthetic_sources:
            fold[m] = f"set:{src}"
            continue
        subs = sorted(set(group[m].tolist()))
        k = min(3, len(subs))
        for i, g in enumerate(subs):
            fold[m & (group == g)] = f"{src}:{i % k}"
    if len(set(fold.tolist())) < 3:
        return _spread_subjects(group)
    return fold.astype(str)


def _spread_subjects(group: np.ndarray) -> np.ndarray:
    """Folds that deal the subjects over up to 5 folds, whatever their source."""
    subs = sorted(set(group.tolist()))
    k = min(5, len(subs))
    fold = np.empty(len(group), object)
    for i, g in enumerate(subs):
        fold[group == g] = f"g:{i % k}"
    return fold.astype(str)


# Two heads (issue 27): one logistic regression over NUAA-like real frames and synthetic face
# sets together learned the camera as evidence. NUAA (one webcam) held most of the attack
# class but a third of the bona fide, so "looks like that webcam" itself said attack, and
# every re-balancing that removed it starved NUAA's real prints. Head S learns the face
# sets' bona fide against their synthetic attacks (each set weighs the same: the camera is
# balanced inside it), head N the real sources' bona fide against their real attacks (one
# camera: no camera confound inside it either); the probability live is the smaller of the
# two. Each head also sees the other side's bona fide in its live class at a small share
# (of 1 for each of its own sources), chosen by the inner folds from BONA_FIDE_SHARES, so
# that neither takes a camera it never saw for an attack (without them head N called web
# photos attacks: left-out sets LIVE 72% worst).
BONA_FIDE_SHARES = (0.0, 0.1, 0.25)


def head_weights(
    live: np.ndarray,
    source: np.ndarray,
    mask: np.ndarray,
    live_shares: dict[str, float] | None = None,
) -> np.ndarray:
    """Training weights of one head's samples (`mask`; others 0): each class weighs half,
    within a class each source the same, except that a source in `live_shares` has that
    share of the bona fide class (each other source 1). Mean 1 over the mask."""
    w = np.zeros(len(live))
    for cls in (True, False):
        srcs = sorted(set(source[mask & (live == cls)].tolist()))
        share = {s: (live_shares or {}).get(s, 1.0) if cls else 1.0 for s in srcs}
        total = sum(share.values())
        for src in srcs:
            m = mask & (live == cls) & (source == src)
            if share[src] > 0:
                w[m] = 0.5 * share[src] / (total * m.sum())
    return w * mask.sum() / max(float(w.sum()), 1e-12)


@dataclass(frozen=True, slots=True)
class Trained:
    classifier: Classifier | TwoHeads
    thresholds: Thresholds
    l2: str  # each head's L2 strength ("S 300.0, N 3.0"; one head: "30.0")
    oof_scores: np.ndarray  # out-of-fold (inner folds) scores of the training samples
    folds: tuple[str, ...]  # the inner folds
    shares: str = ""  # each head's share of the other side's bona fide ("S 0.1, N 0.25")


def balanced_log_loss(scores: np.ndarray, live: np.ndarray, w: np.ndarray | None = None) -> float:
    """Weighted log-loss with both classes weighted equally: a smooth model-selection
    criterion (the error at one threshold jumps with a single subject)."""
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    w = np.ones(len(p)) if w is None else w
    lb = np.sum(w[live] * np.log(p[live])) / np.sum(w[live])
    la = np.sum(w[~live] * np.log(1 - p[~live])) / np.sum(w[~live])
    return float(-0.5 * lb - 0.5 * la)


def _calibrate(logit: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Platt scaling on out-of-fold logits, p = sigmoid(a * logit + c): (a, c) minimising
    the weighted log-loss over a fixed grid (a in 0.1..3, c in -4..4; bounded, so nearly
    separable folds cannot drive it to infinity; deterministic)."""
    best = (np.inf, 1.0, 0.0)
    for a in np.exp(np.linspace(np.log(0.1), np.log(3.0), 35)):
        z = a * logit
        for c in np.linspace(-4.0, 4.0, 81):
            t = np.clip(z + c, -30, 30)
            # log(1 + e^-t) for y = 1, log(1 + e^t) for y = 0
            loss = float(np.sum(w * np.logaddexp(0.0, np.where(y > 0.5, -t, t))))
            if loss < best[0] - 1e-12:
                best = (loss, float(a), float(c))
    return best[1], best[2]


def _logit(c: Classifier, x: np.ndarray) -> np.ndarray:
    return ((x - c.mean) / c.std) @ c.weights + c.bias


@dataclass(frozen=True, slots=True)
class _Head:
    classifier: Classifier  # calibrated
    oof_logit: np.ndarray  # calibrated out-of-fold logits of every training sample
    l2: float
    share: float  # of the other side's bona fide


def _fit_head(
    x: np.ndarray,
    live: np.ndarray,
    w: np.ndarray,
    mask: np.ndarray,
    folds: np.ndarray,
    share: float,
) -> _Head:
    """One head on the `mask` samples: L2 from L2_GRID by the weighted balanced log-loss of
    its out-of-fold scores over `folds` (each fold's model trained on the mask less that
    fold, scoring every sample of it), Platt calibration on them, then fitted on the mask."""
    y = live.astype(np.float64)
    best: tuple[float, float, np.ndarray] | None = None
    for l2 in L2_GRID:  # ascending: a tie keeps the weaker regularisation
        oof = np.zeros(len(y))
        for f in np.unique(folds):
            test = folds == f
            fit = mask & ~test
            oof[test] = _logit(fit_logistic(x[fit], y[fit], l2, weights=w[fit]), x[test])
        loss = balanced_log_loss(_sigmoid(oof[mask]), live[mask], w[mask])
        if best is None or loss < best[0]:
            best = (loss, l2, oof)
    assert best is not None
    _, l2, oof_logit = best
    a, c = _calibrate(oof_logit[mask], y[mask], w[mask])
    raw = fit_logistic(x[mask], y[mask], l2, weights=w[mask])
    cal = Classifier(raw.mean, raw.std, raw.weights * a, raw.bias * a + c)
    return _Head(cal, a * oof_logit + c, l2, share)


def _heads(
    x: np.ndarray,
    live: np.ndarray,
    source: np.ndarray,
    groups: np.ndarray,
    own: np.ndarray,
    other_bona: np.ndarray,
    folds: np.ndarray,
) -> list[_Head]:
    """One head per share of BONA_FIDE_SHARES: the `own` samples and, at that share, the
    bona fide of the `other_bona` sources. None without both classes among `own`."""
    if not ((own & live).any() and (own & ~live).any()):
        return []
    others = sorted(set(source[other_bona & live].tolist()))
    folds = _head_folds(folds, groups, own, live)
    out = []
    for share in BONA_FIDE_SHARES if others else (0.0,):
        mask = own | (other_bona & live) if share > 0 else own
        w = head_weights(live, source, mask, {s: share for s in others} if share > 0 else None)
        out.append(_fit_head(x, live, w, mask, folds, share))
    return out


def _head_folds(
    folds: np.ndarray, groups: np.ndarray, own: np.ndarray, live: np.ndarray
) -> np.ndarray:
    """The inner folds, unless a fold would leave the head none of one class of its own
    samples to train on (its samples all in one face set, say): then its people spread over
    up to 5 folds (as :func:`inner_folds` does with too few folds)."""
    if all(
        (own & ~(folds == f) & live).any() and (own & ~(folds == f) & ~live).any()
        for f in np.unique(folds)
    ):
        return folds
    return _spread_subjects(groups)


def _combine(logits: Sequence[np.ndarray]) -> np.ndarray:
    """The probability live of heads with these logits: the smallest (an attack if either
    head says attack)."""
    return _sigmoid(np.min(np.stack(logits), 0))


def _worst_source_error(scores: np.ndarray, live: np.ndarray, source: np.ndarray) -> float:
    """The worst source's APCER or BPCER at the live threshold :func:`pick_thresholds`
    picks on these scores."""
    t = np.array([pick_thresholds(scores, live, source).live])
    worst = 0.0
    for src in np.unique(source):
        m = source == src
        apcer, bpcer = _rates(scores[m], live[m], t)  # 0 for a class the source lacks
        worst = max(worst, float(apcer[0]), float(bpcer[0]))
    return worst


def train(
    x: np.ndarray,
    live: np.ndarray,
    groups: np.ndarray,
    source: np.ndarray | None = None,
    synthetic_sources: set[str] | frozenset[str] = frozenset(),
) -> Trained:
    """Head S on the synthetic sources (face sets), head N on the others (real frames), each
    where its samples hold both classes: each head's L2 and calibration from its out-of-fold
    scores over :func:`inner_folds` of these samples; each head's share of the other side's
    bona fide (BONA_FIDE_SHARES) by the smallest worst-source error of the combined
    out-of-fold scores at their live threshold (a tie keeps the smaller shares); both
    thresholds from those scores. With one head (a site's own frames only, or no real
    attacks) it is that head alone."""
    source = np.full(len(live), "all") if source is None else source
    folds = inner_folds(source, groups, set(synthetic_sources))
    synthetic = np.isin(source, sorted(synthetic_sources))
    cands_s = _heads(x, live, source, groups, synthetic, ~synthetic, folds)
    cands_n = _heads(x, live, source, groups, ~synthetic, synthetic, folds)
    if not cands_s and not cands_n:
        raise ValueError("need bona fide and attack samples of one kind of source")
    pairs = [(s, n) for s in cands_s or [None] for n in cands_n or [None]]

    def oof_of(pair: tuple[_Head | None, _Head | None]) -> np.ndarray:
        return _combine([h.oof_logit for h in pair if h is not None])

    # min keeps the first of equal errors: the smaller shares.
    hs, hn = min(pairs, key=lambda p: _worst_source_error(oof_of(p), live, source))
    oof = oof_of((hs, hn))
    th = pick_thresholds(oof, live, source)
    clf: Classifier | TwoHeads
    if hs is not None and hn is not None:
        clf = TwoHeads(hs.classifier, hn.classifier)
        l2, shares = f"S {hs.l2}, N {hn.l2}", f"S {hs.share}, N {hn.share}"
    else:
        (one,) = (h for h in (hs, hn) if h is not None)
        clf, l2, shares = one.classifier, str(one.l2), str(one.share)
    return Trained(clf, th, l2, oof, tuple(sorted(set(folds.tolist()))), shares)
