"""Liveness fold models for benches that score faces of the sample sets (issue 27).

The shipped liveness model saw every colour face set in training, so a bench that scores
those faces with it is flattering. For each colour face set this trains the model the way
the shipped one is trained (benchmarks/pad_model.py `train`: inner folds, its own L2,
calibration and thresholds) on the same corpus without that set, and writes it as an ONNX
file a server loads like any user model. `bench fusion --require-liveness` scores every face
of a set with the model that left that set out.

Models are cached in `cache_dir/folds/` under a key of the corpus, the feature graph and the
training recipe's source (a change to any of them trains them again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import pad_corpus as pc
from benchmarks import pad_eval as pe
from benchmarks import pad_model as pm


def _recipe() -> bytes:
    """The training recipe as written: an edit to it trains the fold models again."""
    return Path(pm.__file__).read_bytes()


def leave_set_out_models(
    cache_dir: Path,
    detect: Callable,
    *,
    pad_root: Path | None,
    faces_root: Path,
    progress: Callable = lambda it, **_: it,
) -> dict[str, Path]:
    """{face set name: the model trained without that set}, for every colour face set."""
    corpus = pc.cached(
        cache_dir, detect, pad_root=pad_root, faces_root=faces_root, progress=progress
    )
    blank = pm.build_graph(None)
    key = hashlib.sha256(
        repr(
            (
                str(pad_root),
                str(faces_root),
                len(corpus),
                int(corpus.trainable.sum()),
                pc.ps.VERSION,
            )
        ).encode()
        + blank
        + _recipe()
    ).hexdigest()[:16]
    x: np.ndarray | None = None
    out = {}
    for name in pe.face_sets(corpus):
        path = cache_dir / "folds" / f"pad-{key}-without-{name}.onnx"
        if not path.is_file():
            if x is None:
                x = pm.features(pm.session(blank), corpus.crops.astype(np.float32))
            train = corpus.source != name
            trained = pe.fit(corpus, x, train)
            th = trained.thresholds
            meta = {
                "attack_threshold": f"{th.attack:.6f}",
                "live_threshold": f"{th.live:.6f}",
                "l2": trained.l2,
                "bona_fide_shares": trained.shares,
                "left_out": name,
                "sources": ",".join(sorted(set(corpus.source[train].tolist()))),
                "claims": "bench fold model: never saw the face set it is named after",
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pm.build_graph(trained.classifier, meta))
        out[name] = path
    return out
