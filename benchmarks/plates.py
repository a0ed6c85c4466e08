"""Plate benchmark: exact and character accuracy by plate type, confusions, stage latency,
RapidOCR side by side on the same images, and ReadPlates through the real gRPC API.

Ground truth comes from the data itself, detected per folder:
- CCPD frames: the file name encodes the plate (indices into the CCPD lookup tables);
- crops: the file stem is the plate text (a ``_N`` duplicate suffix is stripped);
- street photos: ``labels.jsonl`` lists every plate in each file, with its colour.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import Report, pct, plot_bars, progress, shown
from devtools.datasets import PlateSet, decode_file, discover_plate_sets, truth_type
from devtools.metrics import percentiles, wilson_ci
from devtools.stats import GAP, char_accuracy, confusions, edit_distance, median, ratio

# Separators a general OCR puts inside a plate: the middle dot, spaces, dashes.
_SEPARATORS = re.compile(r"[\s.·•・\-_:：,，'\"]")
_PROVINCE_CHARS = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
_PLATE_LIKE = re.compile(
    rf"^[{_PROVINCE_CHARS}][A-Z][A-Z0-9]{{4,6}}[警学挂港澳领]?$|^使\d{{6}}$|^\d{{6}}使$"
)


def normalize_ocr(lines: Sequence[str]) -> str:
    """The plate in a general OCR's text lines: separators stripped, upper-cased, the line
    that looks like a plate (or two adjacent lines that do: a two-row plate read as two
    boxes); else the longest line. Empty when there is no text at all."""
    clean = [_SEPARATORS.sub("", s).upper() for s in lines]
    clean = [s for s in clean if s]
    if not clean:
        return ""
    for s in clean:
        if _PLATE_LIKE.match(s):
            return s
    for a, b in itertools.pairwise(clean):
        if _PLATE_LIKE.match(a + b):
            return a + b
    # A plate-shaped substring inside a longer line (e.g. a border read as a letter).
    for s in clean:
        for n in (8, 7):
            for k in range(len(s) - n + 1):
                if _PLATE_LIKE.match(s[k : k + n]):
                    return s[k : k + n]
    return max(clean, key=len)


# --- evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlateOutcome:
    """One ground-truth plate and what a system read for it."""

    file: str
    truth: str
    predicted: str
    truth_type: str
    predicted_type: str

    @property
    def exact(self) -> bool:
        return self.truth == self.predicted


@dataclass(frozen=True, slots=True)
class SystemRun:
    """One system over one set: outcomes, extra (unmatched) reads and per-stage latencies."""

    system: str
    outcomes: tuple[PlateOutcome, ...]
    extra_reads: int
    latency_ms: dict[str, tuple[float, ...]]  # stage -> per-image latency
    failures: int  # images that could not be decoded
    texts: tuple[str, ...] = ()  # every text returned, matched or not


def truncated(o: PlateOutcome) -> bool:
    """A read that lost characters: shorter than the plate (not an empty read)."""
    return 0 < len(o.predicted) < len(o.truth)


@dataclass(frozen=True, slots=True)
class TextChecks:
    """What the returned texts are, in cn mode on Chinese sets: plates of the cn grammar,
    texts of the generic pattern alone (counted, allowed), and anything else (never allowed);
    reads that lost characters, of 8-character and of two-row plates."""

    texts: int
    cn_valid: int
    generic_only: int
    neither: int
    truncated_8: int
    truncated_two_row: int


def text_checks(run: SystemRun) -> TextChecks:
    from recognizer.plate.grammar import is_valid

    cn = sum(is_valid(t, "cn") for t in run.texts)
    generic = sum(not is_valid(t, "cn") and is_valid(t, "generic") for t in run.texts)
    return TextChecks(
        len(run.texts),
        cn,
        generic,
        len(run.texts) - cn - generic,
        sum(truncated(o) for o in run.outcomes if len(o.truth) == 8),
        sum(truncated(o) for o in run.outcomes if o.predicted_type == "yellow_two_row"),
    )


def match_reads(truths: Sequence[str], reads: Sequence[str]) -> list[str]:
    """Pair true plates with reads ('' when none is left), the closest pair of the frame first.

    Pairing each plate in label order with its closest read let an earlier plate that was not
    read take a later plate's exact read (津KNG518.jpg: the unread 津AHP676 took 津AD9823, and
    the 津AD9823 plate counted as missed); the closest pairs over the whole frame go first."""
    pairs = sorted(
        (edit_distance(t, r), i, j) for i, t in enumerate(truths) for j, r in enumerate(reads)
    )
    out = [""] * len(truths)
    used_t: set[int] = set()
    used_r: set[int] = set()
    for _, i, j in pairs:
        if i not in used_t and j not in used_r:
            out[i] = reads[j]
            used_t.add(i)
            used_r.add(j)
    return out


ReadFn = Callable[[np.ndarray], tuple[list[tuple[str, str]], dict[str, float]]]


def run_system(system: str, pset: PlateSet, read: ReadFn) -> SystemRun:
    """`read(image) -> ([(text, type)], {stage: seconds})` over every sample of a set."""
    outcomes: list[PlateOutcome] = []
    lat: dict[str, list[float]] = defaultdict(list)
    extra = failures = 0
    all_texts: list[str] = []
    for s in progress(pset.samples, f"{system} {pset.name}"):
        img = decode_file(s.path)
        if img is None:
            failures += 1
            reads: list[tuple[str, str]] = []
        else:
            reads, stages = read(img)
            for k, v in stages.items():
                lat[k].append(v * 1000.0)
        texts = [t for t, _ in reads]
        all_texts += texts
        types = dict(reads)
        matched = match_reads(s.plates, texts)
        extra += max(0, len(texts) - len(s.plates))
        outcomes += [
            PlateOutcome(s.path.name, t, m, truth_type(t, s.colour), types.get(m, ""))
            for t, m in zip(s.plates, matched, strict=True)
        ]
    return SystemRun(
        system,
        tuple(outcomes),
        extra,
        {k: tuple(v) for k, v in lat.items()},
        failures,
        tuple(all_texts),
    )


def ours_reader(recognizer: Any, crops: bool, gate: bool = False) -> ReadFn:
    """Time the detector on its own, then the whole read; the difference is
    rectify + read + classify (the detector runs twice, which the timing accounts for).
    `gate`: read as the gate does for a stranger's car (an `enough` that never accepts, so
    the far-plate pass runs unless the first size found a sure read)."""
    enough = (lambda reads: False) if gate else None

    def read(img: np.ndarray) -> tuple[list[tuple[str, str]], dict[str, float]]:
        if crops:
            t0 = time.perf_counter()
            r = recognizer.read_crop(img)
            dt = time.perf_counter() - t0
            return ([(r.text, str(r.plate_type))] if r.text else []), {"read": dt}
        stages: dict[str, float] = {}
        det = getattr(recognizer, "detector", None)
        if det is not None:
            t0 = time.perf_counter()
            det.detect(img)
            stages["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = recognizer.read(img, enough=enough) if gate else recognizer.read(img)
        stages["read"] = time.perf_counter() - t0
        if "detect" in stages:
            stages["rectify+classify"] = max(0.0, stages["read"] - stages["detect"])
        return [(r.text, str(r.plate_type)) for r in results], stages

    return read


def rapidocr_engine() -> Any | str:
    """RapidOCR with every session single-threaded; a message when it is not installed."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        return f"RapidOCR skipped: rapidocr-onnxruntime==1.4.4 is not installed ({exc})"
    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)


def rapidocr_reader(engine: Any, crops: bool) -> ReadFn:
    """Frames: RapidOCR's full pipeline (det + cls + rec). Crops: recognition only, the
    same job our read_crop does (its text detector upsizes a 94x24 crop to 736 px and
    then finds nothing, which would compare nothing useful)."""

    def read(img: np.ndarray) -> tuple[list[tuple[str, str]], dict[str, float]]:
        t0 = time.perf_counter()
        if crops:
            result, _ = engine(img, use_det=False, use_cls=False, use_rec=True)
            lines = [r[0] for r in result or []]
        else:
            result, _ = engine(img)
            lines = [r[1] for r in result or []]
        dt = time.perf_counter() - t0
        text = normalize_ocr(lines)
        return ([(text, "")] if text else []), {"read": dt}

    return read


@dataclass(frozen=True, slots=True)
class Accuracy:
    n: int
    exact: float
    exact_ci: tuple[float, float]
    char: float


def accuracy(outcomes: Sequence[PlateOutcome]) -> Accuracy:
    n = len(outcomes)
    if not n:
        return Accuracy(0, float("nan"), (0.0, 1.0), float("nan"))
    k = sum(o.exact for o in outcomes)
    lo, hi = wilson_ci(n - k, n)
    char = float(np.mean([char_accuracy(o.truth, o.predicted) for o in outcomes]))
    return Accuracy(n, k / n, (1.0 - hi, 1.0 - lo), char)


def by_type(outcomes: Sequence[PlateOutcome]) -> dict[str, Accuracy]:
    groups: dict[str, list[PlateOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.truth_type].append(o)
    return {k: accuracy(v) for k, v in sorted(groups.items())}


def top_confusions(outcomes: Sequence[PlateOutcome], n: int = 15) -> list[tuple[str, str, int]]:
    counts: Counter[tuple[str, str]] = confusions(
        (o.truth, o.predicted) for o in outcomes if o.predicted
    )
    return [(a, b, c) for (a, b), c in counts.most_common(n)]


GATE_PATH = "ours, gate path"


def astuple_checks(c: TextChecks) -> list[int]:
    return [c.texts, c.cn_valid, c.generic_only, c.neither, c.truncated_8, c.truncated_two_row]


# --- gRPC ----------------------------------------------------------------------------------


def grpc_exact(pset: PlateSet, port: int, api_key: str) -> tuple[list[str], int]:
    """ReadPlates over the set through a real server: the matched texts and error count."""
    import grpc

    from recognizer.client import Client
    from recognizer.v1 import recognition_pb2

    client = Client.connect(f"127.0.0.1:{port}", api_key)
    texts: list[str] = []
    errors = 0
    try:
        for s in progress(pset.samples, f"gRPC {pset.name}"):
            try:
                resp = client.recognition.ReadPlates(
                    recognition_pb2.ReadPlatesRequest(image=s.path.read_bytes()),
                    metadata=client.metadata,
                    timeout=60,
                )
                reads = [p.text for p in resp.plates]
            except grpc.RpcError:
                errors += 1
                reads = []
            texts += match_reads(s.plates, reads)
    finally:
        client.close()
    return texts, errors


# --- the bench ------------------------------------------------------------------------------


def _lat_row(name: str, lat: dict[str, tuple[float, ...]]) -> list[list[Any]]:
    rows = []
    for stage, vals in lat.items():
        p = percentiles(vals, (50, 99))
        rows.append([name, stage, len(vals), p["p50"], p["p99"]])
    return rows


def _base_servers(stack: contextlib.ExitStack, base_src: Path) -> dict[str, Any]:
    """Clients of two `recognizer serve` subprocesses: this checkout and `base_src`."""
    from benchmarks.service import subprocess_server
    from recognizer.client import Client

    servers = {
        "branch": stack.enter_context(subprocess_server()),
        "base": stack.enter_context(
            subprocess_server(env={"PYTHONPATH": str(base_src)}, cwd=base_src)
        ),
    }
    return {
        name: stack.enter_context(contextlib.closing(Client.connect(target, key)))
        for name, (target, key) in servers.items()
    }


def _read_plates(client: Any, data: bytes) -> list[str]:
    from recognizer.v1 import recognition_pb2

    resp = client.recognition.ReadPlates(
        recognition_pb2.ReadPlatesRequest(image=data), metadata=client.metadata, timeout=60
    )
    return [p.text for p in resp.plates]


def _alternating(clients: dict[str, Any], pset: PlateSet) -> dict[str, dict[str, Any]]:
    """Every frame of a set sent to both servers, the order alternating: per server the
    plates, exact reads, median frame latency and RPC errors."""
    import grpc

    lat: dict[str, list[float]] = {n: [] for n in clients}
    hits: dict[str, list[bool]] = {n: [] for n in clients}
    errors: Counter[str] = Counter()
    for i, smp in enumerate(progress(pset.samples, f"vs base {pset.name}")):
        data = smp.path.read_bytes()
        for name in ("base", "branch") if i % 2 == 0 else ("branch", "base"):
            t0 = time.perf_counter()
            try:
                reads = _read_plates(clients[name], data)
            except grpc.RpcError:
                reads = []
                errors[name] += 1
            lat[name].append(1000 * (time.perf_counter() - t0))
            matched = match_reads(smp.plates, reads)
            hits[name] += [t == m for t, m in zip(smp.plates, matched, strict=True)]
    return {
        name: {
            "plates": len(hits[name]),
            "exact": sum(hits[name]),
            "p50_ms": median(lat[name]),
            "rpc_errors": errors[name],
        }
        for name in ("base", "branch")
    }


def measure_base(frames: Sequence[PlateSet], base_src: Path) -> dict[str, Any]:
    """ReadPlates of every frame through two real servers, this checkout and the release in
    `base_src`, frame by frame with the servers' order alternating: exact rate and frame
    latency of both, from the same run (the `base_comparison` results)."""
    import os

    import grpc

    load_before = os.getloadavg()
    res: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        clients = _base_servers(stack, base_src)
        for name in clients:  # warm-up, outside the measurement
            with contextlib.suppress(grpc.RpcError):
                _read_plates(clients[name], frames[0].samples[0].path.read_bytes())
        for pset in frames:
            res[pset.name] = _alternating(clients, pset)
    return {
        "base_src": str(base_src),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "sets": res,
    }


def report_base(rep: Report, base: dict[str, Any]) -> None:
    rows = []
    for set_name, servers in base["sets"].items():
        for name in ("base", "branch"):
            r = servers[name]
            k, n = r["exact"], r["plates"]
            rows.append(
                [set_name, name, n, f"{k}/{n}", pct(k / n if n else float("nan")),
                 r["p50_ms"], ratio(r["p50_ms"], servers["base"]["p50_ms"]), r["rpc_errors"]]
            )  # fmt: skip
    before, after = (tuple(round(x, 2) for x in base[k]) for k in ("load_before", "load_after"))
    rep.h("ReadPlates against an earlier release")
    rep.p(
        f"Two `recognizer serve` subprocesses: this checkout and `{shown(base['base_src'])}`, "
        "every frame sent to both one after the other (order alternating), through the gRPC "
        f"API (decoding included). Load average before {before}, after {after}: read the "
        "ratios."
    )
    rep.table(
        ["set", "server", "plates", "exact", "exact %", "p50 ms", "p50 / base", "RPC errors"],
        rows,
    )


def base_comparison(
    rep: Report, results: dict[str, Any], sets: Sequence[PlateSet], base_src: Path
) -> None:
    """`measure_base` over the frame sets, into `results` and the report."""
    frames = [s for s in sets if not s.is_crops]
    if not frames:
        return
    results["base_comparison"] = measure_base(frames, base_src)
    report_base(rep, results["base_comparison"])


# --- the bench: measure every set, then results, then the report -----------------------------


def measure_set(pset: PlateSet, recognizer: Any, peer: Any | str) -> tuple[SystemRun, ...]:
    """Ours, RapidOCR (when installed) and, on frames, the gate's read of a stranger's car
    (see ours_reader), in that order."""
    runs = [run_system("ours", pset, ours_reader(recognizer, pset.is_crops))]
    if not isinstance(peer, str):
        runs.append(run_system("RapidOCR", pset, rapidocr_reader(peer, pset.is_crops)))
    if not pset.is_crops:
        runs.append(run_system(GATE_PATH, pset, ours_reader(recognizer, False, gate=True)))
    return tuple(runs)


def _peer(runs: Sequence[SystemRun]) -> SystemRun | None:
    return runs[1] if len(runs) > 1 and runs[1].system == "RapidOCR" else None


def _median_read(r: SystemRun) -> float:
    return median(list(r.latency_ms.get("read", ())))


def set_result(pset: PlateSet, runs: Sequence[SystemRun]) -> dict[str, Any]:
    """One set's entry of results.json."""
    res: dict[str, Any] = {"kind": pset.kind, "systems": {}}
    for r in runs:
        res["systems"][r.system] = {
            "accuracy": accuracy(r.outcomes),
            "by_type": by_type(r.outcomes),
            "latency_ms": {k: percentiles(v, (50, 95, 99)) for k, v in r.latency_ms.items()},
            "extra_reads": r.extra_reads,
            "decode_failures": r.failures,
            "outcomes": [o for o in r.outcomes if not o.exact],
            "text_checks": text_checks(r),
        }
    peer = _peer(runs)
    if peer is not None:
        res["latency_ratio_ours_over_rapidocr"] = ratio(_median_read(runs[0]), _median_read(peer))
    return res


def set_goals(pset: PlateSet, runs: Sequence[SystemRun]) -> list[list[Any]]:
    a_ours = accuracy(runs[0].outcomes)
    goals: list[list[Any]] = []
    peer = _peer(runs)
    if peer is not None:
        a_peer = accuracy(peer.outcomes)
        lat_ratio = ratio(_median_read(runs[0]), _median_read(peer))
        goals.append(
            [pset.name, "median latency ours / RapidOCR ≤ 0.5", f"{lat_ratio:.2f}",
             lat_ratio <= 0.5]
        )  # fmt: skip
        goals.append(
            [pset.name, "exact accuracy above RapidOCR", f"{pct(a_ours.exact)} vs "
             f"{pct(a_peer.exact)}", a_ours.exact > a_peer.exact]
        )  # fmt: skip
    target = {"ccpd": 0.97, "crops": 0.98}.get(pset.kind)
    if target is not None:
        goals.append(
            [pset.name, f"exact ≥ {pct(target, 0)}", pct(a_ours.exact), a_ours.exact >= target]
        )
    return goals


@dataclass(slots=True)
class Tables:
    """The report's rows, gathered set by set."""

    accuracy: list[list[Any]] = field(default_factory=list)
    types: list[list[Any]] = field(default_factory=list)
    latency: list[list[Any]] = field(default_factory=list)
    checks: list[list[Any]] = field(default_factory=list)
    goals: list[list[Any]] = field(default_factory=list)
    confusions: list[tuple[str, list[tuple[str, str, int]]]] = field(default_factory=list)
    bars: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "RapidOCR": []})
    grpc: list[list[Any]] = field(default_factory=list)

    def add(self, pset: PlateSet, runs: Sequence[SystemRun]) -> None:
        for r in runs:
            a = accuracy(r.outcomes)
            self.accuracy.append(
                [pset.name, r.system, a.n, pct(a.exact),
                 f"{pct(a.exact_ci[0])}–{pct(a.exact_ci[1])}", pct(a.char), r.extra_reads,
                 r.failures, _median_read(r)]
            )  # fmt: skip
            for t, ta in by_type(r.outcomes).items():
                self.types.append([pset.name, r.system, t, ta.n, pct(ta.exact), pct(ta.char)])
            self.latency += _lat_row(f"{pset.name} / {r.system}", r.latency_ms)
            if r.system != "RapidOCR":  # ours, then the gate path on frames
                self.checks.append([pset.name, r.system, *astuple_checks(text_checks(r))])
        self.confusions.append((f"{pset.name} / ours", top_confusions(runs[0].outcomes)))
        self.bars["ours"].append(accuracy(runs[0].outcomes).exact)
        peer = _peer(runs)
        if peer is not None:
            self.bars["RapidOCR"].append(accuracy(peer.outcomes).exact)
        self.goals += set_goals(pset, runs)


def measure_grpc(scenes: Sequence[PlateSet], results: dict[str, Any], tables: Tables) -> None:
    """ReadPlates over the CCPD sets through an in-process server, against the in-process
    exact rate already measured."""
    from benchmarks.service import inprocess_server

    with inprocess_server() as (port, key):
        for pset in scenes:
            texts, errors = grpc_exact(pset, port, key)
            truths = [t for s in pset.samples for t in s.plates]
            inproc = results["sets"][pset.name]["systems"]["ours"]["accuracy"]
            g_exact = float(np.mean([a == b for a, b in zip(truths, texts, strict=True)]))
            same = g_exact == inproc.exact
            tables.grpc.append([pset.name, pct(g_exact), pct(inproc.exact), errors, same])
            results["sets"][pset.name]["grpc"] = {
                "exact": g_exact,
                "errors": errors,
                "equals_inprocess": same,
            }


def report_accuracy(rep: Report, out: Path, tables: Tables, labels: list[str]) -> None:
    rep.h("Accuracy")
    rep.p(
        "Exact = the whole plate right; char = 1 − edit distance / length, averaged over "
        "plates. Frames: each true plate is paired with the closest read; reads left over "
        "are 'extra'. 95% Wilson interval on exact accuracy."
    )
    rep.table(
        ["set", "system", "plates", "exact", "exact 95% CI", "char", "extra reads",
         "undecodable", "median ms"],
        tables.accuracy,
    )  # fmt: skip
    bars = {k: v for k, v in tables.bars.items() if v}
    plot = plot_bars(
        out / "plates_exact.png", labels, bars, "exact plate accuracy", "Exact plate accuracy"
    )
    rep.image(plot, "exact accuracy")
    if tables.goals:
        rep.h("Plate-issue goals")
        rep.table(["set", "goal", "measured", "met"], tables.goals)
    rep.h("Returned texts (cn mode)")
    rep.p(
        "Every text our pipeline returned: a plate of the cn grammar, a text of the generic "
        "pattern alone (allowed, counted here), or neither (never allowed: 0 is the goal). "
        "Truncated: a read shorter than the plate it was paired with, of 8-character plates "
        "and of plates read as two-row. `gate path`: the read the gate makes of a stranger's "
        "car (the far-plate pass skipped after a sure read at the first size)."
    )
    rep.table(
        ["set", "system", "texts", "cn grammar", "generic only", "neither",
         "truncated 8-char", "truncated two-row"],
        tables.checks,
    )  # fmt: skip


def report_details(rep: Report, tables: Tables) -> None:
    rep.h("By plate type (ground truth)")
    rep.table(["set", "system", "type", "plates", "exact", "char"], tables.types)
    rep.h("Latency (ms per image)")
    rep.p(
        "`detect` times the detector alone; `read` the whole call; `rectify+classify` is "
        "read − detect per image (rectification, reading and grammar). Crops have no detector."
    )
    rep.table(["set / system", "stage", "n", "p50", "p99"], tables.latency)
    rep.h("Top character confusions (ours)")
    for name, conf in tables.confusions:
        rep.p(f"**{name}** ({GAP} = missing or extra character)")
        rep.table(["truth", "read", "count"], conf or [["–", "–", 0]])
    if tables.grpc:
        rep.h("Through the gRPC API (ReadPlates)")
        rep.table(["set", "exact via gRPC", "exact in-process", "RPC errors", "equal"], tables.grpc)


def load_sets(root: Path, quick: bool) -> list[PlateSet]:
    sets = discover_plate_sets(root)
    if not sets:
        raise SystemExit(f"no plate dataset found under {root}")
    if quick:
        sets = [
            PlateSet(s.name, s.kind, s.samples[: 16 if s.kind != "crops" else 100]) for s in sets
        ]
    return sets


def _intro(root: Path, sets: Sequence[PlateSet], quick: bool) -> str:
    return (
        f"Data: `{shown(root)}`; sets: "
        + ", ".join(f"{s.name} ({s.kind}, {len(s.samples)} images)" for s in sets)
        + (" — QUICK mode (subsets)." if quick else ".")
        + " Latency is single-threaded (onnxruntime intra/inter-op 1, cv2 1 thread), "
        "measured while other jobs ran on the machine: compare medians and ratios from the "
        "same run, not absolute numbers across runs."
    )


def run(
    root: Path,
    out: Path,
    *,
    quick: bool = False,
    grpc_check: bool = True,
    base_src: Path | None = None,
    stages: bool = False,
) -> Report:
    import cv2

    from recognizer.plate.pipeline import build_plate_recognizer

    cv2.setNumThreads(1)  # single-threaded for both systems: a fair per-core comparison
    sets = load_sets(root, quick)
    rep = Report("Plate benchmark")
    rep.p(_intro(root, sets, quick))
    recognizer = build_plate_recognizer()
    peer = rapidocr_engine()
    if isinstance(peer, str):
        rep.p(f"**{peer}**")
    results: dict[str, Any] = {"sets": {}}
    tables = Tables()
    for pset in sets:
        runs = measure_set(pset, recognizer, peer)
        results["sets"][pset.name] = set_result(pset, runs)
        tables.add(pset, runs)
    scenes = [s for s in sets if s.kind == "ccpd"]
    if grpc_check and scenes:
        measure_grpc(scenes, results, tables)
    report_accuracy(rep, out, tables, [s.name for s in sets])
    report_details(rep, tables)
    if base_src is not None:
        base_comparison(rep, results, sets, base_src)
    if stages:
        crop_sets = [s for s in sets if s.is_crops]
        stage_section(rep, results, crop_sets[0] if crop_sets else None, 140 if quick else 560)
        frame_stage_section(rep, results, [s for s in sets if not s.is_crops])
    synthetic_section(rep, results, recognizer, n=140 if quick else 560)
    if scenes:
        detector_sweep(rep, results, scenes[0], (384,) if quick else (320, 416, 512, 576, 640))
    rep.results = results
    rep.write(out)
    return rep


def stage_section(
    rep: Report, results: dict[str, Any], crops: PlateSet | None, n_synth: int, seed: int = 1
) -> None:
    """What each cut of issue 28 costs in accuracy: the production pipeline against itself
    with one stage put back (the alternative reader on every clean line, the province
    classifier on every province, PP-OCRv4 lines padded to 320 px), on the real crops and
    seeded synthetic crops. The far-plate pass is measured on frames above (`gate path`)."""
    from devtools.synth_plates import FontNotFoundError, generate_dataset
    from recognizer.plate.pipeline import build_plate_recognizer

    data: list[tuple[str, np.ndarray, str]] = []
    if crops is not None:
        for smp in crops.samples:
            img = decode_file(smp.path)
            if img is not None:
                data.append(("crops", img, smp.plates[0]))
    try:
        data += [("synthetic", p.image, p.text) for p in generate_dataset(n_synth, seed)]
    except FontNotFoundError as exc:
        rep.p(f"**Synthetic plates left out of the stage table: {exc}**")
    if not data:
        return

    def put_back(name: str) -> Any:
        rec = build_plate_recognizer()
        if name == "alternative reader on clean lines":
            rec.cross_check = True
        elif name == "province classifier on every province":
            rec.province_sure = float("inf")
        elif name == "PP-OCRv4 lines padded to 320 px":
            rec.reader.pad_to = 320
        return rec

    variants = [
        "production",
        "alternative reader on clean lines",
        "province classifier on every province",
        "PP-OCRv4 lines padded to 320 px",
    ]
    rows, res = [], {}
    for name in variants:
        rec = put_back(name)
        hits: dict[str, list[bool]] = defaultdict(list)
        t0 = time.process_time()
        for source, img, truth in progress(data, f"stages: {name}"):
            hits[source].append(rec.read_crop(img).text == truth)
        cpu = 1000 * (time.process_time() - t0) / len(data)
        res[name] = {k: {"n": len(v), "exact": int(sum(v))} for k, v in hits.items()}
        res[name]["cpu_ms_per_crop"] = cpu
        rows.append([name, *(f"{sum(v)}/{len(v)}" for v in hits.values()), cpu])
    results["stages"] = res
    rep.h("The cuts of issue 28, each put back")
    rep.p(
        "`read_crop` exact reads with one stage put back as it ran before issue 28; CPU is this "
        "process's per crop (other jobs ran on the machine: compare within the table)."
    )
    rep.table(["pipeline", *hits.keys(), "CPU ms / crop"], rows)


def frame_stage_section(rep: Report, results: dict[str, Any], sets: Sequence[PlateSet]) -> None:
    """The frame stages of issue 28's second round, each taken out in turn: the burned-in
    text erase (recognizer/plate/overlay.py), the far pass keeping a first-size sure read
    (a plate the far pass finds again is otherwise read again) and the reader's wider view
    of an unsure province (pipeline.READER_VIEW_MARGIN); and the readers' vote on a doubtful
    character (pipeline.VOTE_BELOW). ReadPlates' path (`read`),
    every labelled plate of the frame sets: exact = the plate among the frame's reads."""
    from recognizer.plate.pipeline import build_plate_recognizer

    data = [(s.name, img, smp.plates) for s in sets for smp in s.samples
            if (img := decode_file(smp.path)) is not None]  # fmt: skip
    if not data:
        return
    variants = {
        "production": {},
        "no stamp erase": {"erase_stamps": False},
        "far pass re-reads sure plates": {"settle_sure": False},
        "province from the line alone (no wider view)": {"reader_view_margin": 0.0},
        "no vote of the readers on doubtful characters": {"vote_below": 0.0},
    }
    rows, res = [], {}
    for name, change in variants.items():
        rec = build_plate_recognizer()
        for attr, value in change.items():
            setattr(rec, attr, value)
        hits: dict[str, list[bool]] = defaultdict(list)
        cpu: list[float] = []
        for source, img, plates in progress(data, f"frame stages: {name}"):
            t0 = time.process_time()
            texts = {r.text for r in rec.read(img)}
            cpu.append(1000 * (time.process_time() - t0))
            hits[source] += [p in texts for p in plates]
        res[name] = {k: {"n": len(v), "exact": int(sum(v))} for k, v in hits.items()}
        res[name]["cpu_ms_per_frame_p50"] = median(cpu)
        rows.append([name, *(f"{sum(v)}/{len(v)}" for v in hits.values()), median(cpu)])
    results["frame_stages"] = res
    rep.h("Frame stages, each taken out")
    rep.p(
        "`read` (ReadPlates' path) with one stage of the frame path taken out; exact = the "
        "labelled plate among the frame's reads (no pairing, so it can differ by a plate from "
        "the accuracy table). CPU: this process's median per frame (other jobs ran on the "
        "machine: compare within the table)."
    )
    rep.table(["pipeline", *hits.keys(), "CPU ms / frame (p50)"], rows)


SYNTH_GOALS = {"overall": 0.90, "yellow_two_row": 0.80, "green_new_energy": 0.80}


def synthetic_section(
    rep: Report, results: dict[str, Any], recognizer: Any, n: int, seed: int = 1
) -> None:
    """Seeded synthetic crops of every type in fixed proportions, read by our pipeline."""
    from devtools.synth_plates import FontNotFoundError, generate_dataset

    try:
        plates = list(generate_dataset(n, seed))
    except FontNotFoundError as exc:
        rep.p(f"**Synthetic plates skipped: {exc}**")
        return
    hits: dict[str, list[bool]] = defaultdict(list)
    for plate in progress(plates, "synthetic"):
        ok = recognizer.read_crop(plate.image).text == plate.text
        hits[plate.plate_type.value].append(ok)
        hits["overall"].append(ok)
    rows, res = [], {}
    for t, v in sorted(hits.items(), key=lambda kv: (kv[0] != "overall", kv[0])):
        exact = float(np.mean(v))
        goal = SYNTH_GOALS.get(t)
        res[t] = {"n": len(v), "exact": exact, "goal": goal}
        rows.append(
            [
                t,
                len(v),
                pct(exact),
                "–" if goal is None else f"≥ {pct(goal, 0)}",
                "–" if goal is None else exact >= goal,
            ]
        )
    results["synthetic"] = {"seed": seed, "types": res}
    rep.h("Synthetic plates (seeded, fixed type proportions)")
    rep.p(
        f"{n} crops from `devtools.synth_plates` (seed {seed}): rendered with a CJK font, "
        "then perspective, blur, noise, lighting and JPEG; exact ground truth."
    )
    rep.table(["type", "plates", "exact", "goal", "met"], rows)


def detector_sweep(
    rep: Report, results: dict[str, Any], pset: PlateSet, sizes: Sequence[int]
) -> None:
    """The detector's input size against exact accuracy and whole-frame latency."""
    from recognizer.plate.pipeline import build_plate_recognizer

    rows, res = [], {}
    for size in sizes:
        run = run_system(
            f"det{size}",
            pset,
            ours_reader(
                build_plate_recognizer(detector_size=size, detector_large_size=None), crops=False
            ),
        )
        a = accuracy(run.outcomes)
        det = median(list(run.latency_ms.get("detect", ())))
        total = median(list(run.latency_ms.get("read", ())))
        res[size] = {"exact": a.exact, "detect_ms": det, "frame_ms": total}
        rows.append([size, pct(a.exact), det, total])
    results["detector_sizes"] = res
    rep.h(f"Detector input size ({pset.name})")
    rep.p(
        "Long side of the detector input, one pass only; the service uses 576 (the street "
        "frames read better there than at 512) plus a second pass at 960 on frames at least "
        "1.5 times larger (far plates)."
    )
    rep.table(["long side", "exact", "detect p50 ms", "frame p50 ms"], rows)
