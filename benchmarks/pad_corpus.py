"""The liveness training and validation corpus: who, which camera, which attack, which crop.

Shared by `scripts/train_pad.py` and `benchmarks/pad.py`. Every sample is one detected face
(the largest of its frame), cropped with context exactly as the service crops it
(recognizer/face/liveness.py), and labelled with:
- `source`: the camera / collection ("nuaa", or a face set's folder name: "lfw10", ...). A
  validation fold leaves one source out (a camera the model never saw);
- `group`: the person ("nuaa/0003", "lfw10/Ariel_Sharon"): a person's bona fide photos and
  every attack made from them share one group, so folds never split a person;
- `kind`: "live", "print" or "replay" (real or synthetic);
- `synthetic`: made by devtools/pad_synth.py from a bona fide photo of that group.

Bona fide: NUAA live frames and every image of the *colour* face sets (grayscale sets carry no
colour evidence: the stage answers UNCERTAIN for them and they are never trained on), each
photo also `variants` times through :func:`pad_synth.bona_fide_variant` (other cameras).
Attacks: NUAA's real prints and,
per colour photo, `prints` synthetic prints and `replays` synthetic replays. Faces whose
evidence is missing (crop mostly outside the image even at the smallest context, face too
small: `recognizer.face.liveness.evidence_missing`) are left out, as the service never scores
them either. A tight photo whose 1.6x crop would leave the frame is cropped with the fitted
context, as the service crops it, and marked `fitted`: such faces are scored in every
validation fold but never trained on (issue 27: with them in training the NUAA folds'
thresholds moved, worst left-out APCER 4.4% -> 7.9% and BPCER 2.1% -> 5.8%).

Everything is seeded: photo i's k-th synthetic frame of a kind uses
`np.random.default_rng((seed, i, stream(kind, k)))`, so a sample does not depend on which
others were generated, and no two frames of a photo share a stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import pad_model as pm
from devtools import pad_synth as ps
from devtools.datasets import decode_file, discover_face_sets
from recognizer.face.liveness import context_crop, evidence_missing, fitted_context

KINDS = ("live", "print", "replay")
SEED = 27
VARIANTS = 2  # bona fide variants (other synthetic cameras) per colour photo


@dataclass(frozen=True, slots=True)
class Corpus:
    source: np.ndarray  # (N,) str
    group: np.ndarray  # (N,) str
    kind: np.ndarray  # (N,) str: live | print | replay
    synthetic: np.ndarray  # (N,) bool
    crops: np.ndarray  # (N, 3, SIZE, SIZE) uint8 BGR
    dropped: int  # frames without a face, or with the evidence missing
    fitted: np.ndarray | None = None  # (N,) bool: context shrunk to the frame; never trained on

    @property
    def trainable(self) -> np.ndarray:
        """The samples a model may train on: every one cropped with the full context."""
        return np.ones(len(self.kind), bool) if self.fitted is None else ~self.fitted

    @property
    def live(self) -> np.ndarray:
        return self.kind == "live"

    def __len__(self) -> int:
        return len(self.kind)

    def subset(self, mask: np.ndarray) -> Corpus:
        return Corpus(
            self.source[mask],
            self.group[mask],
            self.kind[mask],
            self.synthetic[mask],
            self.crops[mask],
            self.dropped,
            None if self.fitted is None else self.fitted[mask],
        )


def _crop(frame: np.ndarray, detect: Callable, context: float) -> tuple[np.ndarray, bool] | None:
    """The largest face's crop as the service makes it, and whether its context was shrunk."""
    faces = detect(frame)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    fitted = fitted_context(frame.shape, face.box, context, min(context, pm.MIN_CONTEXT))
    if evidence_missing(frame, face.box, fitted) is not None:
        return None
    crop = context_crop(frame, face.box, (pm.SIZE, pm.SIZE), fitted).transpose(2, 0, 1)
    return crop, fitted < context


def folder_frames(root: Path, source: str) -> list[tuple[str, str, Path]]:
    """(group, kind, path) of a `live/<subject>/`, `print/<subject>/`, ... folder (any other
    attack folder name counts as that kind of attack)."""
    return [
        (f"{source}/{s.subject}", "live" if s.live else s.path.parent.parent.name, s.path)
        for s in pm.load_pad_folder(root)
    ]


class _Collector:
    """The samples of a corpus being built, each cropped as the service crops it."""

    __slots__ = ("context", "crops", "detect", "dropped", "rows")

    def __init__(self, detect: Callable, context: float) -> None:
        self.detect, self.context = detect, context
        self.rows: list[tuple[str, str, str, bool, bool]] = []  # + synthetic, fitted
        self.crops: list[np.ndarray] = []
        self.dropped = 0

    def add(self, source: str, group: str, kind: str, synthetic: bool, frame: np.ndarray) -> None:
        c = _crop(frame, self.detect, self.context)
        if c is None:
            self.dropped += 1
            return
        self.rows.append((source, group, kind, synthetic, c[1]))
        self.crops.append(c[0])

    def corpus(self) -> Corpus:
        arr = np.stack(self.crops) if self.crops else np.zeros((0, 3, pm.SIZE, pm.SIZE), np.uint8)
        src, grp, knd, syn, fit = list(zip(*self.rows, strict=True)) or [(), (), (), (), ()]
        return Corpus(
            np.array(src),
            np.array(grp),
            np.array(knd),
            np.array(syn, bool),
            arr.astype(np.uint8),
            self.dropped,
            np.array(fit, bool),
        )


def build(
    detect: Callable,
    *,
    pad_root: Path | None,
    faces_root: Path | None,
    prints: int = 2,
    replays: int = 2,
    variants: int = VARIANTS,
    seed: int = SEED,
    context: float = pm.CONTEXT,
    progress: Callable = lambda it, **_: it,
) -> Corpus:
    """The corpus from a PAD folder (`live/`, `print/`, ...: real frames) and a root of face
    sets (colour sets: bona fide photos and the synthetic attacks made from them)."""
    out = _Collector(detect, context)
    if pad_root is not None:
        _add_real_frames(out, pad_root, progress)
    sets = [fs for fs in discover_face_sets(faces_root) if not fs.grayscale] if faces_root else []
    for fs in sets:
        for im in progress(fs.images, desc=f"{fs.name} + attacks"):
            photo = decode_file(im.path)
            if photo is None:
                out.dropped += 1
                continue
            key = int.from_bytes(hashlib.sha256(f"{fs.name}/{im.path.name}".encode()).digest()[:4])
            counts = (variants, prints, replays)
            _add_photo(out, fs.name, f"{fs.name}/{im.identity}", photo, _Seeds(seed, key), counts)
    return out.corpus()


def _add_real_frames(out: _Collector, pad_root: Path, progress: Callable) -> None:
    name = pad_root.name
    for group, kind, path in progress(folder_frames(pad_root, name), desc=name):
        img = decode_file(path)
        if img is None:
            out.dropped += 1
            continue
        out.add(name, group, kind, False, img)


@dataclass(frozen=True, slots=True)
class _Seeds:
    seed: int
    key: int  # the photo's: from its set and file name

    def rng(self, kind: str, k: int) -> np.random.Generator:
        return _rng(self.seed, self.key, stream(kind, k))


# The k-th synthetic frame of a kind draws from stream `first + step * k` while that stays
# below `end` (the streams every corpus so far used: the shipped model's sha256 depends on
# them), beyond it from the kind's own block. Before the blocks, a third bona fide variant
# drew from the first replay's stream.
_STREAMS = {"variant": (0, 50, 100), "print": (1, 1, 50), "replay": (100, 1, 1_000_000)}
_BLOCK = 1_000_000


def stream(kind: str, k: int) -> int:
    """The random stream of a photo's k-th synthetic frame of `kind` (variant, print,
    replay): distinct for every (kind, k)."""
    first, step, end = _STREAMS[kind]
    legacy = first + step * k
    if legacy < end:
        return legacy
    return (1 + list(_STREAMS).index(kind)) * _BLOCK + k


def _add_photo(
    out: _Collector,
    source: str,
    group: str,
    photo: np.ndarray,
    seeds: _Seeds,
    counts: tuple[int, int, int],
) -> None:
    """A bona fide photo, its camera variants, prints and replays (`counts`, in that order)."""
    variants, prints, replays = counts
    out.add(source, group, "live", False, photo)
    for k in range(variants):
        out.add(source, group, "live", True, ps.bona_fide_variant(photo, seeds.rng("variant", k)))
    for k in range(prints):
        out.add(source, group, "print", True, ps.make_print(photo, seeds.rng("print", k)))
    for k in range(replays):
        out.add(source, group, "replay", True, ps.make_replay(photo, seeds.rng("replay", k)))


def _rng(seed: int, key: int, k: int) -> np.random.Generator:
    return np.random.default_rng((seed, key, k))


def save(corpus: Corpus, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        source=corpus.source,
        group=corpus.group,
        kind=corpus.kind,
        synthetic=corpus.synthetic,
        crops=corpus.crops,
        dropped=np.array(corpus.dropped),
        fitted=~corpus.trainable,
    )


def load(path: Path) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        fitted = z["fitted"] if "fitted" in z.files else None
        return Corpus(
            z["source"],
            z["group"],
            z["kind"],
            z["synthetic"],
            z["crops"],
            int(z["dropped"]),
            fitted,
        )


def cache_key(parts: Sequence[object]) -> str:
    """A name for a cached corpus: the generator's version and the build arguments."""
    h = hashlib.sha256()
    h.update(repr((ps.VERSION, ps.FRAME, *parts)).encode())
    return h.hexdigest()[:16]


def cached(
    cache_dir: Path,
    detect: Callable,
    *,
    pad_root: Path | None,
    faces_root: Path | None,
    prints: int = 2,
    replays: int = 2,
    variants: int = VARIANTS,
    seed: int = SEED,
    context: float = pm.CONTEXT,
    progress: Callable = lambda it, **_: it,
) -> Corpus:
    """:func:`build`, kept in `cache_dir` under a key of the generator's code and the
    arguments (the detector is YuNet as shipped; delete the folder after changing it)."""
    args = (str(pad_root), str(faces_root), prints, replays, variants, seed, context)
    counts = (variants, prints, replays)
    # Counts that reach a kind's own block of streams drew other frames before the blocks.
    blocks = any(
        n and stream(kind, n - 1) >= _BLOCK for kind, n in zip(_STREAMS, counts, strict=True)
    )
    key = cache_key((*args, pm.SIZE, pm.MIN_CONTEXT, "fitted flag", *(["blocks"] * blocks)))
    path = cache_dir / f"pad-corpus-{key}.npz"
    if path.is_file():
        return load(path)
    corpus = build(
        detect,
        pad_root=pad_root,
        faces_root=faces_root,
        prints=prints,
        replays=replays,
        variants=variants,
        seed=seed,
        context=context,
        progress=progress,
    )
    save(corpus, path)
    return corpus
