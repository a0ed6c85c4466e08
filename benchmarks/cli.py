"""`python -m benchmarks` (from a checkout; never part of the product): faces, plates, fusion,
index, service and overload benchmarks.

Model code and the peers load inside each command, never at import of this module, so the
CLI starts fast and `python -m benchmarks --help` works without any model present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmarks.report import REPO_ROOT
from devtools.datasets import DATASETS


def _default_dir(sub: str) -> Path | None:
    path = DATASETS / sub
    return path if path.is_dir() else None


def _resolve(dataset: Path | None, sub: str) -> Path:
    path = dataset or _default_dir(sub)
    if path is None:
        raise click.UsageError(
            f"no dataset given and {DATASETS / sub} is absent; pass a folder as DIR"
        )
    return path


def _out(out: Path | None, name: str) -> Path:
    path = out or REPO_ROOT / "benchmarks" / "out" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


quick_option = click.option("--quick", is_flag=True, help="Smaller counts, for a fast look.")


def out_option(name: str):  # type: ignore[no-untyped-def]
    return click.option(
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=f"Output folder (default benchmarks/out/{name}).",
    )


def _done(report_path: Path) -> None:
    click.echo(f"report: {report_path}", err=sys.stderr.isatty())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Accuracy and throughput benchmarks; each writes report.md, results.json and plots."""


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@out_option("faces")
@quick_option
@click.option("--no-peer", is_flag=True, help="Skip the face_recognition (dlib) peer.")
@click.option("--no-identify", is_flag=True, help="Skip identification through gRPC.")
@click.option(
    "--latency-only",
    is_flag=True,
    help="Only the 640x480 detect+embed latency (before/after side by side) and the batch-2 check.",
)
def faces(
    dataset: Path | None,
    out: Path | None,
    quick: bool,
    no_peer: bool,
    no_identify: bool,
    latency_only: bool,
) -> None:
    """Face verification, degraded variants, latency and gRPC identification.

    DATASET is a folder of identity folders, or a folder of such datasets
    (default ../shared/datasets/faces)."""
    from benchmarks import faces as bench_faces

    dest = _out(out, "faces")
    bench_faces.run(
        _resolve(dataset, "faces"),
        dest,
        quick=quick,
        peer=not no_peer,
        identify=not no_identify,
        latency_only=latency_only,
    )
    _done(dest / "report.md")


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@out_option("plates")
@quick_option
@click.option("--no-grpc", is_flag=True, help="Skip the ReadPlates check through gRPC.")
@click.option(
    "--base-src",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="A source tree of an earlier release (stubs generated, models/ filled), served "
    "beside this checkout: ReadPlates exact rate and frame latency of both, interleaved.",
)
@click.option(
    "--stages",
    is_flag=True,
    help="Also read the crops and synthetic crops with each cut of issue 28 put back.",
)
def plates(
    dataset: Path | None,
    out: Path | None,
    quick: bool,
    no_grpc: bool,
    base_src: Path | None,
    stages: bool,
) -> None:
    """Plate accuracy by type, confusions, stage latency, RapidOCR side by side.

    DATASET holds CCPD frames, crops named by plate, or a labels.jsonl folder, or several
    such folders (default ../shared/datasets/plates: scenes, crops, street)."""
    from benchmarks import plates as bench_plates

    dest = _out(out, "plates")
    bench_plates.run(
        _resolve(dataset, "plates"),
        dest,
        quick=quick,
        grpc_check=not no_grpc,
        base_src=base_src,
        stages=stages,
    )
    _done(dest / "report.md")


def _base_settings(base_env: tuple[str, ...]) -> dict[str, str]:
    """--base-env NAME=VALUE entries as a mapping; anything but a RECOGNIZER_ setting is
    refused."""
    settings: dict[str, str] = {}
    for item in base_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RECOGNIZER_"):
            raise click.BadParameter(
                f"{item!r}: entries look like RECOGNIZER_NAME=VALUE", param_hint="--base-env"
            )
        settings[name] = value
    return settings


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--target", default=None, help="127.0.0.1:PORT of a running server (else one is started)."
)
@click.option("--api-key", default="", envvar="RECOGNIZER_API_KEY", help="Admin key for --target.")
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Requests per method and concurrency level (default 64, quick 16).",
)
@click.option(
    "--profile",
    type=click.Choice(["default", "insightface"]),
    default="default",
    help="Profile of the server started when no --target is given.",
)
@click.option(
    "--base-src",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="A source tree of an earlier release (a git worktree or archive of it, with its "
    "stubs generated and models/ filled), served beside this checkout: instead of the ramp, "
    "ReadPlates and Authorize (payer's car, stranger's car, 70/30 mix) in interleaved rounds.",
)
@click.option("--rounds", type=click.IntRange(1, 50), default=5, help="Rounds with --base-src.")
@click.option(
    "--base-env",
    multiple=True,
    metavar="NAME=VALUE",
    help="A RECOGNIZER_* setting of the --base-src server only (repeatable); with --base-src . "
    "the same code with one setting changed, e.g. RECOGNIZER_IDLE_MODEL_THREADS=1.",
)
@out_option("service")
@quick_option
def service(
    dataset: Path | None,
    target: str | None,
    api_key: str,
    n_requests: int | None,
    profile: str,
    base_src: Path | None,
    rounds: int,
    base_env: tuple[str, ...],
    out: Path | None,
    quick: bool,
) -> None:
    """gRPC load ramp (1..32 callers) over IdentifyFace, ReadPlates and Authorize (a payer's
    car, a stranger's car, a 70/30 mix); with --base-src, this checkout against an earlier
    release in interleaved rounds.

    DATASET is the datasets root holding faces/ and plates/ (default ../shared/datasets)."""
    from benchmarks import service as bench_service

    root = dataset or DATASETS
    faces_dir = root / "faces" / "lfw10" if (root / "faces" / "lfw10").is_dir() else root / "faces"
    settings = _base_settings(base_env)
    if base_src is not None:
        dest = _out(out, "service-vs-base")
        bench_service.run_compare(
            dest,
            base_src=base_src,
            faces_dir=faces_dir,
            plates_dir=root / "plates" / "scenes",
            requests=n_requests or (16 if quick else 40),
            rounds=rounds,
            profile=profile,
            base_env=settings,
        )
        _done(dest / "report.md")
        return

    if target is not None:
        try:
            bench_service.check_target(target)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--target") from exc
    dest = _out(out, "service")
    bench_service.run(
        target,
        api_key,
        dest,
        requests=n_requests or (16 if quick else 64),
        quick=quick,
        faces_dir=faces_dir,
        plates_dir=root / "plates" / "scenes",
        profile=profile,
    )
    _done(dest / "report.md")


@bench.command("burst-latency")
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--base-src",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="A source tree of the release before bursts (git archive of it, with its stubs "
    "generated and models/ linked), served beside this checkout for the one-frame baseline.",
)
@click.option("--requests", "n_requests", type=int, default=40, help="Calls per case.")
@click.option("--frames", type=click.IntRange(2, 4), default=3, help="Frames per burst.")
@out_option("burst-latency")
def burst_latency(
    dataset: Path | None,
    base_src: Path | None,
    n_requests: int,
    frames: int,
    out: Path | None,
) -> None:
    """Authorize p50 of one frame and of bursts (bound plate: early exit; unbound: every
    frame read), interleaved, optionally beside the release before bursts.

    DATASET is the datasets root holding faces/ and plates/ (default ../shared/datasets)."""
    from benchmarks import burst_latency as bench_bursts

    root = dataset or DATASETS
    dest = _out(out, "burst-latency")
    bench_bursts.run(
        dest,
        faces_dir=root / "faces" / "lfw10",
        plates_dir=root / "plates" / "scenes",
        base_src=base_src,
        requests=n_requests,
        frames=frames,
    )
    _done(dest / "report.md")


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option("--profile", type=click.Choice(["default", "insightface"]), default="default")
@out_option("fusion")
@quick_option
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="results.json of an earlier run (e.g. the previous release): list the events whose "
    "outcome moved, with their reasons.",
)
@click.option(
    "--from-results",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Report again an earlier run's rows.json (the whole results, beside its "
    "results.json) instead of running the events.",
)
@click.option(
    "--enrol-photos",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Photos per payer given to EnrollFace (all but one at most: each keeps a probe).",
)
@click.option(
    "--probe-from",
    type=click.IntRange(1, 10),
    default=None,
    help="Genuine probes are each payer's photos from this index on (default: --enrol-photos);"
    " the same value for several --enrol-photos runs compares them on the same probes.",
)
@click.option(
    "--require-liveness",
    is_flag=True,
    help="The bench gate's policy requires a live face (presentation-attack stage).",
)
@click.option(
    "--burst",
    type=click.IntRange(1, 4),
    default=1,
    help="Also send every event as bursts of this many frames (perturbed copies, and "
    "distinct photos where a person has enough), reported beside one frame.",
)
@click.option(
    "--large",
    is_flag=True,
    help="Every face set, grayscale (infrared) ones too, and more impostor events per payer: "
    "at least 800 genuine and 2,000 impostor events on the sample data.",
)
@click.option(
    "--face-floor-fmr",
    default="shipped",
    show_default=True,
    help="The bench policy's face floor for PLATE_AND_FACE (an FMR, 'none', or 'shipped'); "
    "with 'none' the worst-case section gives every floor's figures from one run.",
)
@click.option(
    "--no-worst-case", is_flag=True, help="Skip the worst-case (targeted) impostor events."
)
@click.option(
    "--shipped-liveness",
    is_flag=True,
    help="With --require-liveness: score every face with the shipped liveness model (it saw "
    "the colour face sets in training: flattering) instead of, per face set, the fold model "
    "that left that set out (trained first, cached in .cache/pad/folds).",
)
def fusion(
    dataset: Path | None,
    profile: str,
    out: Path | None,
    quick: bool,
    baseline: Path | None,
    from_results: Path | None,
    enrol_photos: int,
    probe_from: int | None,
    require_liveness: bool,
    burst: int,
    large: bool,
    face_floor_fmr: str,
    no_worst_case: bool,
    shipped_liveness: bool,
) -> None:
    """Gate events from real faces and plate frames through Authorize: plate-only, face-only
    and fused FAR/FRR with 95% intervals and a DET plot.

    DATASET is the datasets root holding faces/ and plates/ (default ../shared/datasets)."""
    from benchmarks import fusion as bench_fusion

    root = dataset or DATASETS
    dest = _out(out, "fusion")
    if from_results is not None:
        bench_fusion.report_from_rows(from_results, dest, baseline=baseline)
    else:
        folds = None
        if require_liveness and not shipped_liveness:
            folds = _liveness_folds(root)
        bench_fusion.run(
            root / "faces",
            root / "plates",
            dest,
            quick=quick,
            profile=profile,
            baseline=baseline,
            enrol_photos=enrol_photos,
            probe_from=probe_from,
            require_liveness=require_liveness,
            burst=burst,
            large=large,
            face_floor_fmr=_floor_option(face_floor_fmr),
            worst_case=not no_worst_case,
            liveness_models=folds,
        )
    _done(dest / "report.md")


def _liveness_folds(root: Path) -> dict[str, Path]:
    """Per colour face set, the liveness model trained without it (benchmarks/pad_folds.py)."""
    from benchmarks import pad_folds
    from benchmarks.pad import CACHE
    from benchmarks.report import progress
    from recognizer import models as model_store
    from recognizer.face.detector import YuNetDetector

    det_model, _ = model_store.load("yunet")
    return pad_folds.leave_set_out_models(
        CACHE,
        YuNetDetector(det_model).detect,
        pad_root=root / "pad" / "nuaa",
        faces_root=root / "faces",
        progress=progress,
    )


def _floor_option(value: str) -> float | None:
    from recognizer.policy import FACE_FLOOR_FMR

    if value == "shipped":
        return FACE_FLOOR_FMR
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: an FMR, 'none' or 'shipped'") from None


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--faces",
    "faces_root",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Face sample sets: colour ones give bona fide photos and synthetic attacks, each "
    "left out in turn (default ../shared/datasets/faces).",
)
@click.option(
    "--folds",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Groups of DATASET's subjects left out in turn (0: one subject per fold).",
)
@out_option("pad")
@quick_option
def pad(
    dataset: Path | None, faces_root: Path | None, folds: int, out: Path | None, quick: bool
) -> None:
    """Liveness (presentation-attack detection): folds disjoint by person and by set (leave a
    face set out, leave subjects out, prints-only and replays-only models), APCER/BPCER at each
    fold's own thresholds, latency per face, and the shipped stage on the face sample sets.

    DATASET holds live/<subject>/ and print/<subject>/ (default ../shared/datasets/pad/nuaa);
    the corpus with its synthetic attacks is cached in .cache/pad/."""
    from benchmarks import pad as bench_pad

    dest = _out(out, "pad")
    bench_pad.run(
        _resolve(dataset, "pad/nuaa"),
        dest,
        faces_root=faces_root or _default_dir("faces"),
        folds=folds,
        quick=quick,
    )
    _done(dest / "report.md")


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--profile",
    "profiles",
    type=click.Choice(["default", "insightface"]),
    multiple=True,
    help="Profiles to check (default: every profile whose models are present).",
)
@out_option("calibration")
def calibration(dataset: Path | None, profiles: tuple[str, ...], out: Path | None) -> None:
    """Leave one face population out: observed against estimated FMR at 1e-3 and 1e-4 per
    left-out group, fused FRR/FAR per group, and 1-3 enrolment photos per payer.

    DATASET is the faces root holding asianfaces_cn, lfw_subset, att_orl, lfw10 and misc
    (default ../shared/datasets/faces). Embeddings are cached in benchmarks/out/calibration."""
    from benchmarks import calibration as bench_calibration
    from benchmarks.faces import available_profiles

    dest = _out(out, "calibration")
    chosen = list(profiles) or available_profiles()
    bench_calibration.run(_resolve(dataset, "faces"), dest, chosen)
    _done(dest / "report.md")


@bench.command()
@click.option(
    "--base-src",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="An earlier release's source tree (a git worktree) to measure against, in this run.",
)
@click.option("--people", type=int, default=2000, show_default=True, help="Identities (plates).")
@click.option("--rounds", type=click.IntRange(2, 200), default=20, show_default=True)
@click.option("--calls", type=int, default=500, show_default=True, help="Calls per round.")
@out_option("store")
def store(base_src: Path, people: int, rounds: int, calls: int, out: Path | None) -> None:
    """Plate lookups (identities_for_plate, last_sighting) on sealed SQLite stores, this
    checkout against --base-src, interleaved in one run: medians and ratios."""
    from benchmarks import store_bench

    dest = _out(out, "store")
    result = store_bench.run(base_src, people, rounds, calls)
    report = store_bench.report(base_src, people, rounds, calls, result)
    click.echo(report.markdown())
    _done(report.write(dest))


@bench.command()
@click.option(
    "--sizes", default="100000,1000000", show_default=True, help="Comma-separated gallery sizes."
)
@click.option("--dim", type=int, default=128, show_default=True)
@click.option("--queries", type=int, default=1000, show_default=True)
@out_option("index")
@quick_option
@click.option(
    "--startup",
    is_flag=True,
    help="Instead: gallery open time with a plaintext vs a sealed index file (default "
    "output benchmarks/out/index-startup).",
)
@click.option("--repeats", type=int, default=5, show_default=True, help="Opens per variant.")
def index(
    sizes: str, dim: int, queries: int, out: Path | None, quick: bool, startup: bool, repeats: int
) -> None:
    """Synthetic seeded templates: build time, memory, recall@1 against flat, latency."""
    from benchmarks import index_bench
    from recognizer.gallery.index import IVF_PQFS

    counts = (100_000,) if quick else tuple(int(s) for s in sizes.split(","))
    if startup:
        from benchmarks import startup_bench

        work = REPO_ROOT / "benchmarks" / "out" / "startup-work"
        result = startup_bench.run_startup_bench(counts, dim, repeats, work)
        click.echo(startup_bench.markdown(result))
        _done(startup_bench.report(result).write(_out(out, "index-startup")))
        return
    result = index_bench.run_index_bench(
        sizes=counts,
        dim=dim,
        queries=200 if quick else queries,
        nprobes=(128, 256) if quick else index_bench.NPROBES,
        kinds=(IVF_PQFS,) if quick else index_bench.APPROXIMATE,
    )
    _done(index_bench.report(result).write(_out(out, "index")))


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--target", default=None, help="127.0.0.1:PORT of a running server (else one is started)."
)
@click.option("--api-key", default="", envvar="RECOGNIZER_API_KEY", help="Admin key for --target.")
@click.option("--seconds", type=click.FloatRange(1, 120), default=10.0, show_default=True)
@click.option("--callers", type=click.IntRange(1, 256), default=48, show_default=True)
@click.option("--settle", type=click.FloatRange(0, 120), default=10.0, show_default=True)
@out_option("overload")
def overload(
    dataset: Path | None,
    target: str | None,
    api_key: str,
    seconds: float,
    callers: int,
    settle: float,
    out: Path | None,
) -> None:
    """Authorize callers with 30-s, then 1-s deadlines, in one run: goodput, decisions
    stored for callers who had gone, RetryInfo against the waits observed, p99, RSS.

    DATASET is the datasets root holding faces/ and plates/ (default ../shared/datasets)."""
    from benchmarks import overload as bench_overload

    root = dataset or DATASETS
    faces_dir = root / "faces" / "lfw10"
    plates_dir = root / "plates" / "scenes"

    def run(t: str, key: str) -> dict:
        return bench_overload.run_gate_overload(
            t, key, faces_dir, plates_dir, seconds=seconds, callers=callers, settle_s=settle
        )

    if target is not None:
        result = run(target, api_key)
    else:
        from benchmarks.service import subprocess_server

        with subprocess_server() as (t, key):
            result = run(t, key)
    click.echo(bench_overload.format_gate_result(result))
    _done(bench_overload.gate_report(result).write(_out(out, "overload")))


@bench.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output folder (default RUN_DIR itself).",
)
def report_again(run_dir: Path, out: Path | None) -> None:
    """Write RUN_DIR's report again from its rows.json, measuring nothing (faces, fusion,
    calibration, service, cluster and burst-latency runs)."""
    from benchmarks.rewrite import rewrite

    try:
        _done(rewrite(run_dir, out or run_dir))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@bench.command()
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=REPO_ROOT / "benchmarks" / "results",
    show_default=True,
)
@click.option("--command", "commands", multiple=True, help="The commands that made them.")
@click.option(
    "--dest",
    type=click.Path(path_type=Path, dir_okay=False),
    default=REPO_ROOT / "benchmarks" / "RESULTS.md",
    show_default=True,
    help="The page to write (bench-quick: under benchmarks/out/, beside its results).",
)
def results(results_dir: Path, commands: tuple[str, ...], dest: Path) -> None:
    """Collect every report under RESULTS into one page (benchmarks/RESULTS.md)."""
    from benchmarks.report import collect_results

    path = collect_results(results_dir, dest, commands)
    _done(path)


@bench.command()
@click.argument(
    "results_dir",
    required=False,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=REPO_ROOT / "benchmarks" / "results",
)
def compact(results_dir: Path) -> None:
    """Rewrite every results.json under RESULTS_DIR as a summary (as benches now write
    them: event rows keep their id, outcome and reasons; other rows only their count)."""
    import json

    from benchmarks.report import write_compact

    for path in sorted(results_dir.rglob("results.json")):
        before = path.stat().st_size
        write_compact(json.loads(path.read_text(encoding="utf-8")), path)
        click.echo(f"{path}: {before // 1000} kB -> {path.stat().st_size // 1000} kB", err=True)


@bench.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--sizes",
    default=None,
    help="Catch-up gallery sizes, comma-separated (default 100000,1000000; quick 10000,100000).",
)
@click.option(
    "--part",
    "parts",
    type=click.Choice(["service", "store", "lag", "catchup"]),
    multiple=True,
    help="Run only these parts (default: all four).",
)
@click.option("--profile", type=click.Choice(["default", "insightface"]), default="default")
@out_option("cluster")
@quick_option
def cluster(
    dataset: Path | None,
    sizes: str | None,
    parts: tuple[str, ...],
    profile: str,
    out: Path | None,
    quick: bool,
) -> None:
    """Two nodes on one PostgreSQL against one SQLite node (QPS, p50, p99), SQLite store
    operations against the previous release, replica lag under enrolments, and a new node's
    catch-up at 100k and 1M templates. Starts its own PostgreSQL on 127.0.0.1.

    DATASET is the datasets root holding faces/ and plates/ (default ../shared/datasets)."""
    from benchmarks import cluster as bench_cluster

    root = dataset or DATASETS
    faces_dir = root / "faces" / "lfw10" if (root / "faces" / "lfw10").is_dir() else root / "faces"
    default = "10000,100000" if quick else "100000,1000000"
    try:
        counts = tuple(int(s) for s in (sizes or default).split(",") if s.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from exc
    dest = _out(out, "cluster")
    make = bench_cluster.Settings.quick if quick else bench_cluster.Settings
    settings = make(counts, parts=parts or bench_cluster.PARTS, profile=profile)
    bench_cluster.run(faces_dir, root / "plates" / "scenes", dest, settings)
    _done(dest / "report.md")
