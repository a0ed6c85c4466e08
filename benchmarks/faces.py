"""Face benchmark: verification over all pairs per profile (and the face_recognition peer),
degraded variants, per-stage latency, and 1:N identification through the real gRPC API
with restart and delete checks.

A dataset is a folder of identity folders (LFW layout). A root may hold several such
datasets; each is reported alone, the colour ones also together ("colour"), and grayscale
sets are never mixed into colour results.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import Report, num, pct, plot_det, progress, shown, to_jsonable, typed
from devtools.datasets import FaceImage, FaceSet, decode_file, discover_face_sets
from devtools.metrics import (
    bootstrap_ci,
    eer,
    fnir_at_fpir,
    fnmr_at_fmr,
    percentiles,
    rank1,
    roc_auc,
    supports_fmr,
)

FMRS = (1e-2, 1e-3, 1e-4)
FPIRS = (0.1, 0.05, 0.01)
ACCEPTANCE_SETS = ("lfw10", "misc")
PEER = "face_recognition"
NOT_SUPPORTED = "not supported by {n} impostor pairs"


def groups_of(sets: Sequence[FaceSet]) -> dict[str, list[FaceSet]]:
    """Each set alone, plus "colour" (every colour set together) when there are several."""
    out = {s.name: [s] for s in sets}
    colour = [s for s in sets if not s.grayscale]
    if len(colour) > 1:
        out["colour"] = colour
    return out


def acceptance_group(sets: Sequence[FaceSet]) -> list[FaceSet]:
    chosen = [s for s in sets if s.name in ACCEPTANCE_SETS]
    return chosen or [s for s in sets if not s.grayscale][:1]


# --- embedding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedRun:
    """One system over a list of images: embeddings by path, failures, stage latencies."""

    system: str
    embeddings: dict[Path, np.ndarray]
    no_face: tuple[Path, ...]
    low_quality: tuple[Path, ...]  # a face was found but failed the enrolment quality gate
    quality_reasons: dict[str, int]
    latency_ms: dict[str, tuple[float, ...]]
    iod: dict[Path, float] = field(default_factory=dict)  # inter-ocular distance (pixels)


Transform = Callable[[np.ndarray, Path], np.ndarray | None]


def _stage_timer(pipeline: Any) -> Callable[[np.ndarray], dict[str, float]]:
    """Time detect and align+embed separately when the pipeline exposes its stages."""
    from recognizer.face.types import Selection

    detector = getattr(pipeline, "detector", None)
    embedder = getattr(pipeline, "embedder", None)
    try:
        from recognizer.face.align import align
    except ImportError:
        align = None

    def timed(img: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        faces = (
            detector.detect(img)
            if detector is not None
            else pipeline.detect(img, Selection.LARGEST)
        )
        out["detect"] = time.perf_counter() - t0
        if faces and embedder is not None and align is not None:
            face = faces[0][0] if isinstance(faces[0], tuple) else faces[0]
            t0 = time.perf_counter()
            crop = align(img, face.landmarks)
            embedder.embed([crop])
            out["align+embed"] = time.perf_counter() - t0
        return out

    return timed


def vga_latency(
    pipelines: Mapping[str, Any], images: Sequence[FaceImage], repeats: int = 40
) -> dict[str, dict[str, float]]:
    """Median/p99 ms of analyze() (detect + quality + align + embed) on one 640x480 frame,
    made from the largest sample photo so the face is real and not tiny. The pipelines take
    turns within each repeat, so a load change on a shared machine hits them alike; wall time
    (p50/p99) and this thread's CPU time (cpu_p50) are both reported."""
    import cv2

    from recognizer.face.types import Selection

    decoded = [
        (img.shape[0] * img.shape[1], img)
        for im in images[:50]
        if (img := decode_file(im.path)) is not None
    ]
    frame = cv2.resize(max(decoded, key=lambda t: t[0])[1], (640, 480))
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    for pipeline in pipelines.values():
        pipeline.analyze(frame, Selection.LARGEST)  # warm-up
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            pipeline.analyze(frame, Selection.LARGEST)
            cpu[name].append((time.thread_time() - c0) * 1000)
            wall[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {**percentiles(wall[name], (50, 99)), "cpu_p50": percentiles(cpu[name], (50,))["p50"]}
        for name in pipelines
    }


BEFORE = "default, sface as fetched (before)"


def batch2_cost(repeats: int = 30) -> dict[str, float]:
    """CPU ms of the flip embedding as two runs of batch 1 against one run of batch 2, for
    SFace as fetched and for the derived sface_cpu graph (batch dim rewritten in memory with
    the onnx package: this is a measurement, not what the server runs)."""
    import onnx
    import onnxruntime as ort

    from recognizer import models

    def session(data: bytes) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    out: dict[str, float] = {}
    for name in ("sface", "sface_cpu"):
        path = models.require(models.find_entry(name))
        m = onnx.load(str(path))
        for v in (*m.graph.input[:1], *m.graph.output[:1]):
            v.type.tensor_type.shape.dim[0].dim_value = 2
        one, two = session(path.read_bytes()), session(m.SerializeToString())
        feed = one.get_inputs()[0].name
        t1, t2 = [], []
        for _ in range(repeats):
            c0 = time.thread_time()
            one.run(None, {feed: x[:1]})
            one.run(None, {feed: x[1:]})
            c1 = time.thread_time()
            two.run(None, {feed: x})
            t1.append((c1 - c0) * 1000)
            t2.append((time.thread_time() - c1) * 1000)
        out[f"{name}: 2 runs of batch 1"] = percentiles(t1, (50,))["p50"]
        out[f"{name}: 1 run of batch 2"] = percentiles(t2, (50,))["p50"]
    return out


def before_pipeline(pipeline: Any) -> Any:
    """The default profile as it ran before the derived sface_cpu graph: the same detector
    with the SFace file as fetched from its wheel, for the side-by-side latency."""
    from recognizer import models
    from recognizer.face.embedder import SFaceEmbedder
    from recognizer.face.pipeline import FacePipeline

    model, _ = models.load("sface")
    return FacePipeline(pipeline.detector, SFaceEmbedder(model), pipeline.quality_config)


def _load(im: FaceImage, transform: Transform | None) -> np.ndarray | None:
    img = decode_file(im.path)
    return transform(img, im.path) if img is not None and transform is not None else img


def embed_ours(
    pipeline: Any, name: str, images: Sequence[FaceImage], transform: Transform | None = None
) -> EmbedRun:
    from recognizer.face.types import Selection

    stage = _stage_timer(pipeline)
    emb: dict[Path, np.ndarray] = {}
    no_face: list[Path] = []
    low: list[Path] = []
    reasons: Counter[str] = Counter()
    lat: dict[str, list[float]] = defaultdict(list)
    iod: dict[Path, float] = {}
    for im in progress(images, f"embed {name}"):
        img = _load(im, transform)
        if img is None:
            no_face.append(im.path)
            continue
        t0 = time.perf_counter()
        found = pipeline.analyze(img, Selection.LARGEST)
        lat["analyze"].append((time.perf_counter() - t0) * 1000)
        for k, v in stage(img).items():
            lat[k].append(v * 1000)
        if not found:
            no_face.append(im.path)
            continue
        af = found[0]
        lm = np.asarray(af.face.landmarks, np.float64)
        iod[im.path] = float(np.linalg.norm(lm[0] - lm[1]))
        emb[im.path] = np.asarray(af.embedding, np.float32)
        if not af.quality.acceptable:
            low.append(im.path)
            reasons.update(af.quality.reasons)
    return EmbedRun(
        name, emb, tuple(no_face), tuple(low), dict(reasons),
        {k: tuple(v) for k, v in lat.items()}, iod,
    )  # fmt: skip


def _load_face_recognition() -> Any:
    """Import the peer lazily. face_recognition_models 0.3.0 still imports pkg_resources,
    which new setuptools no longer ships; give it the one function it uses."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from importlib import resources

        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, name: str(resources.files(pkg).joinpath(name))  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import face_recognition

    return face_recognition


def embed_peer(images: Sequence[FaceImage], transform: Transform | None = None) -> EmbedRun | str:
    """face_recognition (dlib HOG detector + ResNet 128-d); similarity = 1 - distance."""
    try:
        fr = _load_face_recognition()
    except Exception as exc:  # any import failure means: no peer on this machine
        return (
            f"{PEER} skipped: not importable ({exc}); install with "
            "`pip install --no-deps dlib-bin face-recognition==1.3.0 "
            "face-recognition-models==0.3.0`"
        )
    import cv2

    emb: dict[Path, np.ndarray] = {}
    no_face: list[Path] = []
    lat: dict[str, list[float]] = defaultdict(list)
    for im in progress(images, f"embed {PEER}"):
        img = _load(im, transform)
        if img is None:
            no_face.append(im.path)
            continue
        # HOG cost grows with pixels; large web photos are brought to <= 1024 px first.
        h, w = img.shape[:2]
        if max(h, w) > 1024:
            s = 1024 / max(h, w)
            img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        t0 = time.perf_counter()
        boxes = fr.face_locations(rgb, number_of_times_to_upsample=1, model="hog")
        lat["detect"].append((time.perf_counter() - t0) * 1000)
        if not boxes:
            no_face.append(im.path)
            continue
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        t0 = time.perf_counter()
        vec = fr.face_encodings(rgb, [box])[0]
        lat["align+embed"].append((time.perf_counter() - t0) * 1000)
        emb[im.path] = np.asarray(vec, np.float32)
    return EmbedRun(PEER, emb, tuple(no_face), (), {}, {k: tuple(v) for k, v in lat.items()})


def pair_scores(
    images: Sequence[FaceImage], emb: dict[Path, np.ndarray], distance: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All genuine and impostor pair scores among the embedded images (each pair once)."""
    items = [(i.identity, emb[i.path]) for i in images if i.path in emb]
    if len(items) < 2:
        return np.empty(0), np.empty(0)
    ids = np.array([k for k, _ in items])
    x = np.stack([v for _, v in items]).astype(np.float64)
    if distance:
        sq = (x * x).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
        sim = 1.0 - d
    else:
        sim = x @ x.T
    iu = np.triu_indices(len(items), 1)
    same = ids[iu[0]] == ids[iu[1]]
    s = sim[iu]
    return s[same], s[~same]


# --- verification metrics ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    system: str
    group: str
    images: int
    embedded: int
    fte: float  # failure to enrol: no face, or quality below the enrolment gate
    no_face: int
    low_quality: int
    genuine: int
    impostor: int
    fnmr: dict[str, float | None]  # FMR -> FNMR; None when the impostor count cannot say
    tar_at_far_1e3: float | None
    auc: float
    eer: float
    fnmr_1e3_ci: tuple[float, float] | None
    eer_ci: tuple[float, float]
    auc_ci: tuple[float, float]


def verification(
    system: str, group: str, images: Sequence[FaceImage], run: EmbedRun, reps: int
) -> tuple[Verification, np.ndarray, np.ndarray]:
    gen, imp = pair_scores(images, run.embeddings, distance=run.system == PEER)
    paths = {i.path for i in images}
    no_face = sum(p in paths for p in run.no_face)
    low = sum(p in paths for p in run.low_quality)
    nan = float("nan")
    if len(gen) == 0 or len(imp) == 0:
        v = Verification(system, group, len(images), len(images) - no_face,
                         (no_face + low) / max(1, len(images)), no_face, low, len(gen), len(imp),
                         dict.fromkeys(map(str, FMRS)), None, nan, nan, None, (nan, nan),
                         (nan, nan))  # fmt: skip
        return v, gen, imp
    fnmr = {str(f): fnmr_at_fmr(gen, imp, f) if supports_fmr(len(imp), f) else None for f in FMRS}
    ok3 = supports_fmr(len(imp), 1e-3)
    v = Verification(
        system=system,
        group=group,
        images=len(images),
        embedded=len(images) - no_face,
        fte=(no_face + low) / max(1, len(images)),
        no_face=no_face,
        low_quality=low,
        genuine=len(gen),
        impostor=len(imp),
        fnmr=fnmr,
        tar_at_far_1e3=1.0 - fnmr[str(1e-3)] if ok3 else None,  # type: ignore[operator]
        auc=roc_auc(gen, imp),
        eer=eer(gen, imp),
        fnmr_1e3_ci=bootstrap_ci(gen, imp, "fnmr", fmr=1e-3, reps=reps) if ok3 else None,
        eer_ci=bootstrap_ci(gen, imp, "eer", reps=reps),
        auc_ci=bootstrap_ci(gen, imp, "auc", reps=reps),
    )
    return v, gen, imp


def _ci(ci: tuple[float, float] | None, as_pct: bool = True) -> str:
    if ci is None:
        return "–"
    return (
        f"{pct(ci[0], 2)}–{pct(ci[1], 2)}" if as_pct else f"{num(ci[0], '.4f')}–{num(ci[1], '.4f')}"
    )


def _rate(v: float | None, n_imp: int) -> str:
    return NOT_SUPPORTED.format(n=n_imp) if v is None else pct(v, 2)


# --- degraded variants ------------------------------------------------------------------------


def shrink_to_iod(target: float, iod: dict[Path, float]) -> Transform:
    """Downscale the whole image so the eyes are `target` px apart (as a distant camera
    would see the face); images already at or below it stay as they are."""
    import cv2

    def tf(img: np.ndarray, path: Path) -> np.ndarray | None:
        d = iod.get(path)
        if d is None or d <= target:
            return img
        s = target / d
        h, w = img.shape[:2]
        return cv2.resize(
            img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA
        )

    return tf


def jpeg(quality: int) -> Transform:
    import cv2

    def tf(img: np.ndarray, path: Path) -> np.ndarray | None:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None

    return tf


# --- identification through gRPC --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    path: str
    truth: str  # identity name; "" for a held-out person
    default_top: str  # identity name at the default threshold, "" when unknown
    ranked: tuple[str, ...]  # top-k names with the threshold floored
    scores: tuple[float, ...]
    best_score: float
    error: str = ""  # gRPC status name when the call failed (e.g. no face)


@dataclass(frozen=True, slots=True)
class Identification:
    profile: str
    group: str
    enrolled: int
    enrol_retries: int  # identities whose first image was refused and the next one used
    heldout_identities: tuple[str, ...]
    mated_probes: int
    nonmated_probes: int
    probe_errors: int
    default_threshold: float
    rank1: float
    wrong_at_default: int
    unknown_heldout: float
    fnir_at_default: float
    fnir_at_fpir: dict[str, float | None]
    restart_same: bool | None
    restart_mismatches: int
    delete_identity: str
    delete_probes: int
    delete_unknown: int
    delete_absent_from_topk: bool | None


def _probe(client: Any, path: Path, truth: str, names: dict[str, str]) -> ProbeAnswer:
    import grpc

    from recognizer.v1 import recognition_pb2

    data = path.read_bytes()
    try:
        d = client.recognition.IdentifyFace(
            recognition_pb2.IdentifyFaceRequest(image=data, top_k=5),
            metadata=client.metadata,
            timeout=60,
        )
        # The threshold floored to -1 (allowed by the bench config) returns every top-k
        # candidate, for rank-1 and the open-set curves.
        a = client.recognition.IdentifyFace(
            recognition_pb2.IdentifyFaceRequest(image=data, top_k=5, threshold=-1.0),
            metadata=client.metadata,
            timeout=60,
        )
    except grpc.RpcError as exc:
        return ProbeAnswer(str(path), truth, "", (), (), float("-inf"), exc.code().name)
    top = "" if d.unknown or not d.candidates else names.get(d.candidates[0].identity_id, "?")
    return ProbeAnswer(
        str(path),
        truth,
        top,
        tuple(names.get(c.identity_id, "?") for c in a.candidates),
        tuple(float(c.score) for c in a.candidates),
        float(d.best_score),
    )


def _enroll(client: Any, person: str, images: Sequence[FaceImage]) -> tuple[str, int]:
    """CreateIdentity + EnrollFace(force) with the first image that is accepted:
    (identity id, index of the enrolled image, or -1 when none was)."""
    import grpc

    from recognizer.v1 import identity_pb2

    ident = client.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=person), metadata=client.metadata
    )
    for k, im in enumerate(images):
        try:
            client.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=ident.identity_id,
                    images=[im.path.read_bytes()],
                    force=True,
                    source="bench-faces",
                ),
                metadata=client.metadata,
                timeout=60,
            )
            return ident.identity_id, k
        except grpc.RpcError:
            continue
    return ident.identity_id, -1


@dataclass(frozen=True, slots=True)
class _Gallery:
    """One identification server's gallery and first answers."""

    ids: dict[str, str]  # name -> identity id
    paths: set[Path]  # the images enrolled
    retries: int
    answers: list[ProbeAnswer]
    default_threshold: float


@dataclass(frozen=True, slots=True)
class _Checks:
    """Restart and delete checks on the same data dir."""

    restart_same: bool | None = None
    mismatches: int = 0
    deleted: str = ""
    probes: int = 0
    unknown: int = 0
    absent: bool | None = None


def identification(
    profile: str,
    group: str,
    images: Sequence[FaceImage],
    *,
    heldout: int = 2,
    checks: bool = True,
    seed: int = 0,
) -> tuple[Identification, list[ProbeAnswer]]:
    by_id: dict[str, list[FaceImage]] = defaultdict(list)
    for im in images:
        by_id[im.identity].append(im)
    multi = sorted(k for k, v in by_id.items() if len(v) >= 2)
    held = tuple(sorted(random.Random(seed).sample(multi, min(heldout, max(0, len(multi) - 2)))))
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        gallery = _enrol_and_probe(profile, Path(tmp), by_id, held, images)
        done = _restart_and_delete(profile, Path(tmp), gallery) if checks else _Checks()
    return _identification_result(profile, group, held, gallery, done), gallery.answers


def _enrol_and_probe(
    profile: str,
    data_dir: Path,
    by_id: Mapping[str, Sequence[FaceImage]],
    held: Sequence[str],
    images: Sequence[FaceImage],
) -> _Gallery:
    """Each identity but the held-out ones enrolled, then every other image identified."""
    from benchmarks.service import inprocess_server
    from recognizer.client import Client

    ids: dict[str, str] = {}
    paths: set[Path] = set()
    retries = 0
    with inprocess_server(profile, data_dir) as (port, key):
        client = Client.connect(f"127.0.0.1:{port}", key)
        for person in progress(sorted(by_id), f"enrol {profile}"):
            if person in held:
                continue
            iid, k = _enroll(client, person, by_id[person])
            ids[person] = iid
            retries += k > 0
            if k >= 0:
                paths.add(by_id[person][k].path)
        names = {v: k for k, v in ids.items()}
        probes = [im for im in images if im.path not in paths]
        answers = [
            _probe(client, im.path, "" if im.identity in held else im.identity, names)
            for im in progress(probes, f"identify {profile}")
        ]
        default_t = _default_threshold(client, probes)
        client.close()
    return _Gallery(ids, paths, retries, answers, default_t)


def _restart_and_delete(profile: str, data_dir: Path, gallery: _Gallery) -> _Checks:
    """A new server on the same data dir must answer every probe alike; then the enrolled
    person with the most probes is deleted and must come back unknown."""
    from benchmarks.service import inprocess_server
    from recognizer.client import Client
    from recognizer.v1 import identity_pb2

    answers, names = gallery.answers, {v: k for k, v in gallery.ids.items()}
    with inprocess_server(profile, data_dir) as (port, key):
        client = Client.connect(f"127.0.0.1:{port}", key)
        again = [
            _probe(client, Path(a.path), a.truth, names)
            for a in progress(answers, f"restart {profile}")
        ]
        mismatches = sum(
            (a.default_top, a.ranked[:1], a.error) != (b.default_top, b.ranked[:1], b.error)
            or abs(a.best_score - b.best_score) > 1e-4
            for a, b in zip(answers, again, strict=True)
            if not a.error or not b.error
        )
        counts = Counter(a.truth for a in answers if a.truth)
        if not counts:
            client.close()
            return _Checks(mismatches == 0, mismatches)
        name = counts.most_common(1)[0][0]
        client.identity.DeleteIdentity(
            identity_pb2.DeleteIdentityRequest(identity_id=gallery.ids[name]),
            metadata=client.metadata,
        )
        after = [_probe(client, Path(a.path), a.truth, names) for a in answers if a.truth == name]
        client.close()
    return _Checks(
        mismatches == 0,
        mismatches,
        name,
        len(after),
        sum(not a.default_top for a in after),
        all(name not in a.ranked for a in after),
    )


def _identification_result(
    profile: str, group: str, held: tuple[str, ...], gallery: _Gallery, checks: _Checks
) -> Identification:
    answers = gallery.answers
    mated = [a for a in answers if a.truth]
    nonmated = [a for a in answers if not a.truth]
    hits = [bool(a.ranked) and a.ranked[0] == a.truth for a in mated]
    mated_scores = np.array(
        [a.scores[a.ranked.index(a.truth)] if a.truth in a.ranked else -np.inf for a in mated]
    )
    non_scores = np.array([a.best_score for a in nonmated])
    fnir = {
        str(f): fnir_at_fpir(mated_scores, np.array(hits), non_scores, f)
        if len(nonmated) and supports_fmr(len(nonmated), f)
        else None
        for f in FPIRS
    }
    nan = float("nan")
    return Identification(
        profile=profile,
        group=group,
        enrolled=len(gallery.paths),
        enrol_retries=gallery.retries,
        heldout_identities=held,
        mated_probes=len(mated),
        nonmated_probes=len(nonmated),
        probe_errors=sum(bool(a.error) for a in answers),
        default_threshold=gallery.default_threshold,
        rank1=rank1([a.truth for a in mated], [a.ranked[0] if a.ranked else "" for a in mated])
        if mated
        else nan,
        wrong_at_default=sum(bool(a.default_top) and a.default_top != a.truth for a in answers),
        unknown_heldout=float(np.mean([not a.default_top for a in nonmated])) if nonmated else nan,
        fnir_at_default=float(np.mean([a.default_top != a.truth for a in mated])) if mated else nan,
        fnir_at_fpir=fnir,
        restart_same=checks.restart_same,
        restart_mismatches=checks.mismatches,
        delete_identity=checks.deleted,
        delete_probes=checks.probes,
        delete_unknown=checks.unknown,
        delete_absent_from_topk=checks.absent,
    )


def _default_threshold(client: Any, probes: Sequence[FaceImage]) -> float:
    """The server's default identification threshold, as it reports it in a response."""
    import grpc

    from recognizer.v1 import recognition_pb2

    for im in probes[:5]:
        try:
            r = client.recognition.IdentifyFace(
                recognition_pb2.IdentifyFaceRequest(image=im.path.read_bytes(), top_k=1),
                metadata=client.metadata,
                timeout=60,
            )
            return float(r.threshold)
        except grpc.RpcError:
            continue
    return float("nan")


# --- the bench --------------------------------------------------------------------------------


def available_profiles() -> list[str]:
    """Profiles whose model files are all present and verified."""
    from recognizer import models

    return [
        p
        for p in models.PROFILES
        if all(models.state(e) is models.ModelState.OK for e in models.entries_for([p]))
    ]


def run(
    root: Path,
    out: Path,
    *,
    quick: bool = False,
    peer: bool = True,
    identify: bool = True,
    latency_only: bool = False,
) -> Report:
    import cv2

    cv2.setNumThreads(1)  # single-threaded: onnx sessions already are; keep cv2 the same
    sets = discover_face_sets(root, max_identities=8 if quick else None)
    if not sets:
        raise SystemExit(f"no face dataset (identity folders with images) under {root}")
    profiles = available_profiles()
    if not profiles:
        raise SystemExit("no face profile has its models; run `recognizer models fetch`")
    if latency_only:
        results = measure_latency_only(sets, profiles, quick)
    else:
        results = measure(sets, profiles, out, quick=quick, peer=peer, identify=identify)
    results["inputs"] = {
        "root": shown(root),
        "sets": [
            {"name": s.name, "identities": len(s.identities), "images": len(s.images),
             "grayscale": s.grayscale}
            for s in sets
        ],
        "quick": quick,
        "latency_only": latency_only,
        **results.pop("inputs", {}),
    }  # fmt: skip
    rep = render(results)
    rep.write(out)
    return rep


def measure_latency_only(
    sets: Sequence[FaceSet], profiles: list[str], quick: bool
) -> dict[str, Any]:
    from recognizer.face.pipeline import build_face_pipeline

    results: dict[str, Any] = {"profiles": profiles, "verification": [], "latency": {}}
    pipelines = {prof: build_face_pipeline(prof) for prof in profiles}
    images = [im for s in sets for im in s.images]
    results.update(_vga_results(pipelines, images, quick))
    return results


def measure(
    sets: Sequence[FaceSet],
    profiles: list[str],
    out: Path,
    *,
    quick: bool,
    peer: bool,
    identify: bool,
) -> dict[str, Any]:
    """Every result of the bench; the DET plots are drawn into `out` as the scores come."""
    from recognizer.face.pipeline import build_face_pipeline

    reps = 50 if quick else 200
    groups = groups_of(sets)
    accept = acceptance_group(sets)
    if len(accept) > 1:  # the issue-4 acceptance pool is reported as a group of its own
        groups["+".join(s.name for s in accept)] = accept
    all_images = [im for s in sets for im in s.images]
    pipelines = {prof: build_face_pipeline(prof) for prof in profiles}
    runs = {prof: embed_ours(pipelines[prof], prof, all_images) for prof in profiles}
    peer_note = f"{PEER} not run (--no-peer)."
    if peer:
        got = embed_peer(all_images)
        peer_note = got if isinstance(got, str) else ""
        if not isinstance(got, str):
            runs[PEER] = got
    results: dict[str, Any] = {"profiles": profiles, "verification": [], "latency": {}}
    for gname, gsets in groups.items():
        imgs = [im for s in gsets for im in s.images]
        det = out / f"det_{gname}.png"
        results["verification"] += _verify(runs, gname, imgs, reps, det, f"DET — {gname}")
    results["fte_reasons"] = {p: runs[p].quality_reasons for p in profiles}
    results["latency"] = {
        name: {k: percentiles(v, (50, 95, 99)) for k, v in r.latency_ms.items()}
        for name, r in runs.items()
    }
    results.update(_vga_results(pipelines, all_images, quick))
    results["degraded"], degraded = _degraded(sets, groups, runs, pipelines, reps, out, quick)
    if identify:
        results["identification"] = _identify(sets, profiles, quick)
    results["inputs"] = {
        "groups": list(groups),
        "peer_note": peer_note,
        "stage_n": {n: {k: len(v) for k, v in r.latency_ms.items()} for n, r in runs.items()},
        **degraded,
    }
    return results


def _verify(
    runs: Mapping[str, EmbedRun],
    group: str,
    images: Sequence[FaceImage],
    reps: int,
    det: Path,
    title: str,
) -> list[Verification]:
    """Every system's verification of one group, with their DET curves plotted to `det`."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for sysname, r in runs.items():
        v, gen, imp = verification(sysname, group, images, r, reps)
        curves[sysname] = (gen, imp)
        out.append(v)
    plot_det(det, curves, title)
    return out


def _degraded(
    sets: Sequence[FaceSet],
    groups: Mapping[str, Sequence[FaceSet]],
    runs: Mapping[str, EmbedRun],
    pipelines: Mapping[str, Any],
    reps: int,
    out: Path,
    quick: bool,
) -> tuple[list[Verification], dict[str, Any]]:
    """Degraded variants on the colour group (or the first set)."""
    colour = groups.get("colour") or [s for s in sets if not s.grayscale] or sets[:1]
    cimgs = [im for s in colour for im in s.images]
    cname = "colour" if "colour" in groups else colour[0].name
    base_iod = runs[next(iter(pipelines))].iod  # one geometry for every system: same pixels
    variants: dict[str, Transform] = {
        "iod32": shrink_to_iod(32, base_iod),
        "iod24": shrink_to_iod(24, base_iod),
        "jpeg_q40": jpeg(40),
    }
    with_peer = PEER in runs and not quick
    found: list[Verification] = []
    for vname, tf in variants.items():
        degraded = {p: embed_ours(pipe, f"{p} {vname}", cimgs, tf) for p, pipe in pipelines.items()}
        if with_peer and not isinstance(pr := embed_peer(cimgs, tf), str):
            degraded[PEER] = pr
        det = out / f"det_{cname}_{vname}.png"
        found += _verify(degraded, f"{cname}:{vname}", cimgs, reps, det, f"DET — {cname}, {vname}")
    return found, {
        "degraded_group": cname,
        "variants": list(variants),
        "peer_on_variants": with_peer,
    }


def _identify(sets: Sequence[FaceSet], profiles: list[str], quick: bool) -> list[dict[str, Any]]:
    """1:N through gRPC per profile: the acceptance pool with restart and delete checks,
    then (not quick) every other set alone."""
    accept = acceptance_group(sets)
    plan: list[tuple[str, list[FaceImage], bool]] = [
        ("+".join(s.name for s in accept), [im for s in accept for im in s.images], True)
    ]
    if not quick:
        plan += [(s.name, list(s.images), False) for s in sets if s not in accept]
    found = []
    for prof in profiles:
        for gname, imgs, with_checks in plan:
            r, answers = identification(prof, gname, imgs, checks=with_checks)
            found.append({"result": r, "answers": answers})
    return found


def _vga_results(
    pipelines: Mapping[str, Any], all_images: Sequence[FaceImage], quick: bool
) -> dict[str, Any]:
    """640x480 detect + embed per pipeline (and the default before the CPU graph), and the
    flip embedding as a batch of 2."""
    timed = dict(pipelines)
    if "default" in pipelines:
        timed[BEFORE] = before_pipeline(pipelines["default"])
    found: dict[str, Any] = {"latency_640x480": vga_latency(timed, all_images, 10 if quick else 40)}
    if BEFORE in found["latency_640x480"]:
        found["flip_batch2_cpu_ms"] = batch2_cost(10 if quick else 30)
    return found


# --- the report: from the results alone -------------------------------------------------------


def render(results: Mapping[str, Any]) -> Report:
    """The report of a results tree (a run's, or an earlier run's rows.json)."""
    tree = to_jsonable(results)
    inputs = tree["inputs"]
    rep = Report("Face benchmark")
    rep.p(
        f"Data: `{inputs['root']}`: "
        + ", ".join(
            f"{s['name']} ({s['identities']} identities, {s['images']} images"
            f"{', grayscale' if s['grayscale'] else ''})"
            for s in inputs["sets"]
        )
        + ". Profiles: " + ", ".join(tree["profiles"])
        + (". QUICK mode: first 8 identities per set." if inputs["quick"] else ".")
        + " Embeddings come from the same FacePipeline the server runs, in process. "
        "Timings are single-threaded and were taken with other jobs running on the machine."
    )  # fmt: skip
    if inputs["latency_only"]:
        rep.h("640x480 detect + embed latency (--latency-only)")
        _vga_section(rep, tree)
    else:
        _verification_section(rep, tree)
        _latency_section(rep, tree)
        _degraded_section(rep, tree)
        if "identification" in tree:
            _identification_section(rep, tree)
    rep.results = dict(results)
    return rep


def _verification_section(rep: Report, tree: Mapping[str, Any]) -> None:
    inputs, found = tree["inputs"], typed(Verification, tree["verification"])
    rep.h("Verification (all pairs)")
    rep.p(
        "FNMR at a fixed FMR uses the threshold that lets at most that fraction of impostor "
        "pairs through; a rate the impostor count cannot estimate (fewer than 1/FMR pairs) "
        "is marked so. CIs are 95% bootstrap (resampling pairs). Images without a face are "
        f"left out of the pairs and counted in FTE. {PEER} scores are 1 − Euclidean distance."
    )
    rep.table(_VER_HEAD, [_ver_row(v) for v in found])
    for gname in inputs["groups"]:
        rep.image(Path(f"det_{gname}.png"), f"DET {gname}")
    if inputs["peer_note"]:
        rep.p(f"**{inputs['peer_note']}**")
    rep.h("Failure to enrol")
    rep.table(
        ["group", "system", "images", "no face", "quality below gate", "FTE"],
        [[v.group, v.system, v.images, v.no_face, v.low_quality, pct(v.fte)] for v in found],
    )
    rep.p(
        "Quality-gate reasons: "
        + "; ".join(f"{p}: {r or 'none'}" for p, r in tree["fte_reasons"].items())
    )


def _latency_section(rep: Report, tree: Mapping[str, Any]) -> None:
    n = tree["inputs"]["stage_n"]
    rep.h("Per-stage latency (ms per image, single-threaded)")
    rep.table(
        ["system", "stage", "n", "p50", "p99"],
        [
            [name, stage, n[name][stage], q["p50"], q["p99"]]
            for name, stages in tree["latency"].items()
            for stage, q in stages.items()
        ],
    )
    _vga_section(rep, tree)
    rep.p(
        "`analyze` is the whole in-process call (detect, quality, align, embed); `detect` and "
        f"`align+embed` are timed separately on the same image. {PEER}: dlib HOG detection "
        "(1 upsample) and its 5-point alignment + ResNet encoding."
    )


def _vga_section(rep: Report, tree: Mapping[str, Any]) -> None:
    vga = tree["latency_640x480"]
    rep.p(
        "640x480 frame (a real photo resized to VGA), DetectFaces + embed of the largest face, "
        "median / p99 wall ms (median CPU ms), the pipelines taking turns in one run: "
        + "; ".join(
            f"{p}: {num(q['p50'], '.1f')} / {num(q['p99'], '.1f')} ({num(q['cpu_p50'], '.1f')})"
            for p, q in vga.items()
        )
    )
    if BEFORE not in vga:
        return
    old, new = vga[BEFORE], vga["default"]
    rep.p(
        f"Default profile, derived sface_cpu graph against SFace as fetched: median wall "
        f"{old['p50']:.1f} -> {new['p50']:.1f} ms ({1 - new['p50'] / old['p50']:.0%} less), "
        f"median CPU {old['cpu_p50']:.1f} -> {new['cpu_p50']:.1f} ms "
        f"({1 - new['cpu_p50'] / old['cpu_p50']:.0%} less). Same embeddings to float "
        "rounding (tests/test_models.py)."
    )
    rep.p(
        "The flip embedding as one batch of 2 instead of two runs of 1 (median CPU ms, one "
        "thread): "
        + "; ".join(f"{k} {v:.1f}" for k, v in tree["flip_batch2_cpu_ms"].items())
        + ". A batch of 2 costs what two runs cost, so the server keeps batch 1 (no gain to "
        "pay for a graph rewrite)."
    )


def _degraded_section(rep: Report, tree: Mapping[str, Any]) -> None:
    inputs, cname = tree["inputs"], tree["inputs"]["degraded_group"]
    rep.h(f"Degraded variants ({cname})")
    rep.p(
        "iodN: the whole image downscaled so the eyes are N px apart (from the "
        f"{tree['profiles'][0]} landmarks on the original; smaller faces are left as they are); "
        "jpeg_q40: re-encoded at JPEG quality 40."
        + ("" if inputs["peer_on_variants"] else f" {PEER} not run on variants here.")
    )
    rep.table(_VER_HEAD, [_ver_row(v) for v in typed(Verification, tree["degraded"])])
    for vname in inputs["variants"]:
        rep.image(Path(f"det_{cname}_{vname}.png"), f"DET {vname}")


_VER_HEAD = [
    "group", "system", "images", "FTE", "genuine", "impostor", "FNMR@1e-2", "FNMR@1e-3",
    "FNMR@1e-3 95% CI", "FNMR@1e-4", "TAR@FAR=1e-3", "AUC", "AUC 95% CI", "EER", "EER 95% CI",
]  # fmt: skip


def _ver_row(v: Verification) -> list[Any]:
    return [
        v.group, v.system, v.images, pct(v.fte), v.genuine, v.impostor,
        _rate(v.fnmr[str(1e-2)], v.impostor), _rate(v.fnmr[str(1e-3)], v.impostor),
        _ci(v.fnmr_1e3_ci), _rate(v.fnmr[str(1e-4)], v.impostor),
        _rate(v.tar_at_far_1e3, v.impostor), num(v.auc, ".4f"), _ci(v.auc_ci, False),
        pct(v.eer, 2), _ci(v.eer_ci),
    ]  # fmt: skip


def _identification_section(rep: Report, tree: Mapping[str, Any]) -> None:
    found = typed(Identification, [x["result"] for x in tree["identification"]])
    rep.h("Identification through the gRPC API (1:N)")
    rep.p(
        "Per profile, a fresh server (create_server, port 0, temp data dir): CreateIdentity + "
        "EnrollFace(force) with each identity's first image (the next one if refused), two "
        "identities held out entirely, every other image sent to IdentifyFace (top_k 5). "
        "Rank-1 uses the candidates with the threshold floored; 'wrong' counts identifications "
        "of the wrong person at the server's default threshold; FNIR@FPIR is open-set (NIST "
        "FRVT 1:N) with a gallery of one image per person."
    )
    rep.table(
        ["group", "profile", "enrolled", "mated", "non-mated", "no face", "default t",
         "rank-1", "wrong @ default", "held-out unknown", "FNIR @ default",
         *(f"FNIR@FPIR={f:g}" for f in FPIRS)],
        [[r.group, r.profile, r.enrolled, r.mated_probes, r.nonmated_probes, r.probe_errors,
          num(r.default_threshold, ".3f"), pct(r.rank1), r.wrong_at_default,
          pct(r.unknown_heldout), pct(r.fnir_at_default),
          *(pct(x) if x is not None else f"not supported by {r.nonmated_probes} non-mated"
            for x in r.fnir_at_fpir.values())] for r in found],
    )  # fmt: skip
    checked = [r for r in found if r.restart_same is not None]  # the acceptance pool
    rep.h("Issue-4 acceptance (lfw10 + misc)")
    rep.table(
        ["group", "profile", "goal", "measured", "met"],
        [row for r in checked for row in _goal_rows(r, tree["verification"])],
    )
    rep.h("Restart and delete checks")
    rep.p(
        "Restart: the server is stopped and a new one started on the same data dir; every "
        "probe is sent again and must get the same answer (top identity, unknown flag, score "
        "within 1e-4). Delete: DeleteIdentity of the enrolled person with the most probes; "
        "their images must then come back unknown and not appear among the top-k at all."
    )
    rep.table(
        ["group", "profile", "restart same", "mismatches", "deleted", "unknown after delete",
         "absent from top-k"],
        [[r.group, r.profile, r.restart_same, r.restart_mismatches, r.delete_identity,
          f"{r.delete_unknown}/{r.delete_probes}", r.delete_absent_from_topk] for r in checked],
    )  # fmt: skip


def _goal_rows(r: Identification, verification: Sequence[Any]) -> list[list[Any]]:
    """Issue-4 acceptance: the 1:N figures, and TAR from the in-process verification of the
    same sets."""
    tar = _acceptance_tar(r.group, r.profile, typed(Verification, verification))
    goals = [
        ("rank-1 ≥ 0.98", pct(r.rank1), r.rank1 is not None and r.rank1 >= 0.98),
        ("no wrong identification at the default threshold",
         str(r.wrong_at_default), r.wrong_at_default == 0),
        ("held-out unknown ≥ 95%", pct(r.unknown_heldout),
         r.unknown_heldout is not None and r.unknown_heldout >= 0.95),
        ("TAR@FAR=1e-3 ≥ 0.99", *tar),
    ]  # fmt: skip
    return [[r.group, r.profile, g, m, ok] for g, m, ok in goals]


def _acceptance_tar(group: str, profile: str, found: Sequence[Verification]) -> tuple[str, bool]:
    """TAR@FAR=1e-3 over the acceptance sets pooled, from the in-process embeddings."""
    for v in found:
        if v.system == profile and v.group == group:
            t = v.tar_at_far_1e3
            return (pct(t, 2), t >= 0.99) if t is not None else (
                NOT_SUPPORTED.format(n=v.impostor), False)  # fmt: skip
    return "–", False
