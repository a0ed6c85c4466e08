"""Face embedders: SFace (default, 128-d) and ArcFace MobileFaceNet (opt-in, 512-d).

Both take 112x112 crops from :func:`recognizer.face.align.align` and return L2-normalised
float32 rows, so the cosine similarity of two faces is their inner product. By default each
crop is embedded together with its mirror image (flip test-time augmentation): the sum of the
two raw embeddings is the face's vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recognizer.face.align import ALIGNED_SIZE
from recognizer.onnx import OnnxModel


@dataclass(frozen=True, slots=True)
class Preprocess:
    """How a model wants its pixels: (x - mean) * scale, in RGB or BGR channel order."""

    rgb: bool
    mean: float
    scale: float


def to_blob(crops: Sequence[np.ndarray], spec: Preprocess) -> np.ndarray:
    """(N, 3, 112, 112) float32 network input from BGR uint8 crops; the one shared helper."""
    batch = np.stack([np.asarray(c) for c in crops])
    if batch.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
        raise ValueError(f"crops must be {ALIGNED_SIZE}x{ALIGNED_SIZE}x3, got {batch.shape[1:]}")
    if spec.rgb:
        batch = batch[..., ::-1]
    x = (batch.astype(np.float32) - spec.mean) * spec.scale
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class _Embedder:
    # Subclasses set these; `batched` is False where the graph pins the batch dim to 1.
    preprocess: Preprocess
    batched: bool

    def __init__(self, model: OnnxModel, flip: bool = True) -> None:
        self.model = model
        # A mirrored face is the same person; summing both views averages out part of the
        # pose and lighting asymmetry (higher TAR at low FMR for SFace and ArcFace, measured
        # by scripts/calibrate_faces.py).
        self.flip = flip
        self.dim = self._probe_dim()

    @property
    def recipe(self) -> str:
        """Suffix for the gallery's model tag: vectors made another way never mix."""
        return "+flip" if self.flip else ""

    def _probe_dim(self) -> int:
        out = self.model.run(
            to_blob([np.zeros((ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)], self.preprocess)
        )
        return int(out[0].reshape(1, -1).shape[1])

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        blob = to_blob(crops, self.preprocess)
        if self.flip:  # mirrored copies after the originals, in the same run; W is the last axis
            blob = np.ascontiguousarray(np.concatenate([blob, blob[..., ::-1]]))
        raw = self._run(blob).reshape(len(blob), -1).astype(np.float32)
        if self.flip:
            raw = raw[: len(crops)] + raw[len(crops) :]
        return l2_normalize(raw)

    def front(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The raw, unnormalised output for the crops as they are: half of `embed`'s work
        when it flips. Normalised, it is a quick embedding of the face; `finish` completes
        it into exactly what `embed` returns."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        blob = to_blob(crops, self.preprocess)
        return self._run(blob).reshape(len(crops), -1).astype(np.float32)

    def finish(self, crops: Sequence[np.ndarray], front: np.ndarray) -> np.ndarray:
        """`embed(crops)` from `front(crops)`: only the mirrored view still runs."""
        if not self.flip or len(crops) == 0:
            return l2_normalize(np.asarray(front, np.float32).reshape(len(crops), self.dim))
        blob = to_blob(crops, self.preprocess)
        mirror = self._run(np.ascontiguousarray(blob[..., ::-1])).reshape(len(crops), -1)
        return l2_normalize(np.asarray(front, np.float32) + mirror.astype(np.float32))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.batched:
            return self.model.run(blob)[0]
        return np.concatenate([self.model.run(blob[i : i + 1])[0] for i in range(len(blob))])


class SFaceEmbedder(_Embedder):
    """SFace 2021dec: RGB 0..255 (RGB separates genuine from impostor pairs better than BGR
    on lfw10+misc; see scripts/calibrate_faces.py), batch fixed at 1, 128-d."""

    preprocess = Preprocess(rgb=True, mean=0.0, scale=1.0)
    batched = False


class ArcFaceEmbedder(_Embedder):
    """ArcFace MobileFaceNet w600k: RGB (x-127.5)/127.5, dynamic batch, 512-d."""

    preprocess = Preprocess(rgb=True, mean=127.5, scale=1.0 / 127.5)
    batched = True
