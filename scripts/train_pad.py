"""Train the liveness (presentation-attack) model: models/trained/pad_ref.onnx by default.

One command, deterministic (fixed seed for the synthetic attacks; Newton steps from zero and a
grid-searched calibration for the classifier; one thread):

    .venv/bin/pip install -e '.[pad-train]'      # onnx only; `dev` has it too
    .venv/bin/python scripts/train_pad.py

The shipped *reference* model is trained on (research/evaluation-licensed sample data, so
the model is for evaluation; see models/trained/pad_ref.md):
- NUAA real frames (`--pad-data`, default ../shared/datasets/pad/nuaa: live and print
  frames, subject 0001 held out by `--hold-out` so the tests score a subject it never saw);
- every *colour* face sample set under `--faces` (default ../shared/datasets/faces): each
  photo bona fide, twice more through other synthetic cameras, and `--prints` synthetic
  prints and `--replays` synthetic screen replays of it (devtools/pad_synth.py, `--seed`).

A site retrains on its own frames with `--data DIR`, laid out `live/<subject>/*.jpg`,
`print/<subject>/*.jpg`, `replay/<subject>/*.jpg` (any folder other than `live` is an
attack): only DIR is used (add `--faces PATH` to add synthetic attacks of a face set). The
result loads by its sha256 like any user model (config `liveness_model` and
`liveness_model_sha256`).

Each frame's largest YuNet face is cropped with context exactly as the service crops it
(recognizer/face/liveness.py; faces without the evidence, e.g. crop mostly outside the
frame, are left out as the service never scores them, and so are tight photos the service
crops with a context shrunk to the frame: they are validated, not trained on), the fixed
features come from the
feature part of the very graph that is shipped (benchmarks/pad_model.py), and logistic
regressions are fitted in numpy: with synthetic face sets beside real frames, one head on
each, the output the smaller of their probabilities (a site's own frames alone: one). L2
strengths, calibrations, each head's share of the other side's bona fide and both thresholds
come from out-of-fold scores over folds disjoint by subject and by set
(benchmarks/pad_model.py `inner_folds`, `train`). The script prints the sha256 for
models/manifest.toml.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, and the same sums on every run

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from benchmarks import pad_corpus as pc  # noqa: E402
from benchmarks import pad_model as pm  # noqa: E402
from devtools.datasets import DATASETS  # noqa: E402
from recognizer import models as model_store  # noqa: E402
from recognizer.face.detector import YuNetDetector  # noqa: E402
from recognizer.onnx import sha256_file  # noqa: E402

SAMPLES = DATASETS
DEFAULT_PAD = SAMPLES / "pad" / "nuaa"
DEFAULT_FACES = SAMPLES / "faces"
DEFAULT_OUT = ROOT / "models" / "trained" / "pad_ref.onnx"
DEFAULT_CACHE = ROOT / ".cache" / "pad"
HOLD_OUT = "0001"  # NUAA subject never trained on by default: the tests' subject


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a site's own frames (only these)")
    ap.add_argument("--pad-data", type=Path, default=DEFAULT_PAD, help="real PAD frames")
    ap.add_argument("--faces", type=Path, default=None, help="face sets for synthetic attacks")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--hold-out", default=None, help="comma-separated subjects to leave out")
    ap.add_argument("--seed", type=int, default=pc.SEED)
    ap.add_argument("--prints", type=int, default=2, help="synthetic prints per photo")
    ap.add_argument("--replays", type=int, default=2, help="synthetic replays per photo")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="corpus cache folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    np.random.seed(pm.SEED)

    if args.data is not None:
        pad_root, faces_root = args.data, args.faces
        hold = args.hold_out or ""
        reference = False
    else:
        pad_root, faces_root = args.pad_data, args.faces or DEFAULT_FACES
        hold = HOLD_OUT if args.hold_out is None else args.hold_out
        reference = True
    for p in (pad_root, faces_root):
        if p is not None and not p.is_dir():
            print(f"no folder {p}")
            return 2
    det_model, _ = model_store.load("yunet")
    corpus = pc.cached(
        args.cache,
        YuNetDetector(det_model).detect,
        pad_root=pad_root,
        faces_root=faces_root,
        prints=args.prints,
        replays=args.replays,
        seed=args.seed,
    )
    held = {h for h in hold.split(",") if h}
    subject = np.array([g.split("/", 1)[1] for g in corpus.group])
    # Faces cropped with a context shrunk to the frame are scored by the service but never
    # trained on (benchmarks/pad_corpus.py).
    keep = ~np.isin(subject, sorted(held)) & corpus.trainable
    corpus = corpus.subset(keep)
    live = corpus.live
    if live.all() or not live.any():
        print("need both bona fide (live/) and attack frames with a detected face")
        return 2
    groups = sorted(set(corpus.group.tolist()))
    if len(groups) < 3:
        print(f"need at least 3 subjects for subject-disjoint validation, got {groups}")
        return 2
    x = pm.features(pm.session(pm.build_graph(None)), corpus.crops.astype(np.float32))
    syn = frozenset(np.unique(corpus.source[corpus.synthetic]).tolist())
    trained = pm.train(x, live, corpus.group, corpus.source, syn)
    th = trained.thresholds
    oof = trained.oof_scores
    apcer = float(np.mean(oof[~live] >= th.live))
    bpcer = float(np.mean(oof[live] < th.live))
    counts = {k: int((corpus.kind == k).sum()) for k in sorted(set(corpus.kind.tolist()))}
    sources = sorted(set(corpus.source.tolist()))
    meta = _metadata(trained, corpus, counts, sources, held, args, reference, pad_root)
    data = pm.build_graph(trained.classifier, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"samples: {len(corpus)} ({counts}); sources {sources}; {len(groups)} subjects")
    print(f"held out: {sorted(held)}; {corpus.dropped} frames dropped (no face or no evidence)")
    print(f"inner folds: {', '.join(trained.folds)}; l2 {trained.l2}; shares {trained.shares}")
    print(f"out of fold at live_threshold {th.live:.4f}: APCER {apcer:.2%}  BPCER {bpcer:.2%}")
    print(f"attack_threshold {th.attack:.4f}")
    print(f"wrote {args.out} ({len(data)} bytes) in {time.perf_counter() - t0:.0f} s")
    print(f'sha256 = "{sha256_file(args.out)}"')
    return 0


def _metadata(
    trained: pm.Trained,
    corpus: pc.Corpus,
    counts: dict[str, int],
    sources: list[str],
    held: set[str],
    args: argparse.Namespace,
    reference: bool,
    pad_root: Path,
) -> dict[str, str]:
    """What the model says about itself: thresholds, evidence limits and what it was
    trained on."""
    th, oof, live = trained.thresholds, trained.oof_scores, corpus.live
    apcer = float(np.mean(oof[~live] >= th.live))
    bpcer = float(np.mean(oof[live] < th.live))
    groups = sorted(set(corpus.group.tolist()))
    syn = corpus.synthetic.any()
    return {
        "attack_threshold": f"{th.attack:.6f}",
        "live_threshold": f"{th.live:.6f}",
        "max_outside": "0.3",
        "min_face_px": "40",
        "l2": trained.l2,
        "bona_fide_shares": trained.shares,
        "sources": ",".join(sources),
        "subjects": str(len(groups)),
        "held_out": ",".join(sorted(held)),
        "samples": ", ".join(f"{n} {k}" for k, n in counts.items()),
        "synthetic": f"devtools/pad_synth.py v{pc.ps.VERSION}, seed {args.seed}, "
        f"{args.prints} prints + {args.replays} replays + {pc.VARIANTS} bona fide camera "
        "variants per photo"
        if syn
        else "none",
        "inner_folds": ",".join(trained.folds),
        "oof_apcer": f"{apcer:.4f}",
        "oof_bpcer": f"{bpcer:.4f}",
        "claims": "print and screen-replay attacks like the training data; reference model "
        "for evaluation"
        if reference
        else "the site's own attacks",
        "data": "NUAA Photograph Imposter Database (research use) + sample face sets "
        "(evaluation only) with synthetic attacks"
        if reference
        else f"site data: {pad_root.name}",
        "training": "python scripts/train_pad.py" + ("" if reference else " --data DIR"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
