"""detect -> align -> quality -> liveness -> embed, wired by constructor injection.

`build_face_pipeline` is the only place that knows which model files make up a profile;
tests build :class:`FacePipeline` directly from fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from recognizer import deadline
from recognizer import models as model_store
from recognizer.face.align import align
from recognizer.face.detector import ScrfdDetector, YuNetDetector
from recognizer.face.embedder import ArcFaceEmbedder, SFaceEmbedder, l2_normalize
from recognizer.face.liveness import LivenessStage, build_liveness
from recognizer.face.quality import DEFAULT_QUALITY, QualityConfig, assess
from recognizer.face.types import (
    AnalyzedFace,
    Face,
    FrameFace,
    Glimpse,
    Liveness,
    Quality,
    Selection,
)
from recognizer.models import DEFAULT_MODELS_DIR
from recognizer.vision import to_bgr3

# profile -> (detector model, embedder model) names in models/manifest.toml
PROFILE_MODELS: dict[str, tuple[str, str]] = {
    "default": ("yunet", "sface_cpu"),
    "insightface": ("scrfd", "arcface_mbf"),
}


class Detector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> list[Face]: ...


class Embedder(Protocol):
    dim: int

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...
    def front(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...
    def finish(self, crops: Sequence[np.ndarray], front: np.ndarray) -> np.ndarray: ...


class FacePipeline:
    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        quality_config: QualityConfig = DEFAULT_QUALITY,
        model_versions: tuple[model_store.ModelInfo, ...] = (),
        embedding_model_name: str = "",
        liveness: LivenessStage | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.quality_config = quality_config
        self.liveness = liveness  # None: faces carry no liveness
        self.model_versions = model_versions  # reported in responses
        self.embedding_model_name = embedding_model_name or type(embedder).__name__.lower()

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def _select(self, faces: list[Face], selection: Selection) -> list[Face]:
        # Detectors return largest first; sorting again keeps fakes honest too.
        ordered = sorted(faces, key=lambda f: f.area, reverse=True)
        return ordered[:1] if selection is Selection.LARGEST else ordered

    def _liveness(self, img: np.ndarray, faces: Sequence[Face]) -> list[Liveness | None]:
        # Liveness looks at the face with its surroundings, on the frame: one call for all.
        if not self.liveness or not faces:
            return [None] * len(faces)
        with deadline.stage("face.liveness"):
            return list(self.liveness.assess(img, faces))

    def _detect_aligned(
        self, image_bgr: np.ndarray, selection: Selection, liveness: bool = True
    ) -> list[tuple[Face, Quality, np.ndarray, Liveness | None]]:
        img = to_bgr3(image_bgr)
        with deadline.stage("face.detect"):
            faces = self._select(self.detector.detect(img), selection)
        live = self._liveness(img, faces) if liveness else [None] * len(faces)
        out = []
        for face, verdict in zip(faces, live, strict=True):
            crop = align(img, face.landmarks)
            out.append((face, assess(img, face, crop, self.quality_config), crop, verdict))
        return out

    def detect(
        self, image_bgr: np.ndarray, selection: Selection
    ) -> list[tuple[Face, Quality, Liveness | None]]:
        return [(f, q, lv) for f, q, _, lv in self._detect_aligned(image_bgr, selection)]

    def _analyze(
        self, images: Sequence[np.ndarray], selection: Selection
    ) -> list[tuple[int, AnalyzedFace]]:
        found = [
            (i, *item)
            for i, image in enumerate(images)
            for item in self._detect_aligned(image, selection)
        ]
        if not found:
            return []
        with deadline.stage("face.embed"):
            vectors = self.embedder.embed([crop for _, _, _, crop, _ in found])  # one call for all
        return [
            (i, AnalyzedFace(face, quality, np.asarray(vec, dtype=np.float32), liveness))
            for (i, face, quality, _, liveness), vec in zip(found, vectors, strict=True)
        ]

    def analyze(self, image_bgr: np.ndarray, selection: Selection) -> list[AnalyzedFace]:
        return [face for _, face in self._analyze([image_bgr], selection)]

    def analyze_frames(self, images: Sequence[np.ndarray]) -> tuple[FrameFace, ...]:
        """The largest face of every frame of a burst that has one, each with its quality,
        liveness and embedding (one embedding call for all frames). One frame costs what
        `analyze` costs."""
        return tuple(FrameFace(i, f) for i, f in self._analyze(images, Selection.LARGEST))

    def glimpse_frames(
        self, images: Sequence[np.ndarray], first: int = 0, liveness: bool = False
    ) -> tuple[Glimpse, ...]:
        """The largest face of every frame that has one, embedded from its front view only
        (and its `liveness` assessed if asked): about half of `analyze_frames`' cost per frame.
        Frames are numbered from `first`. For choosing and comparing a burst's frames;
        `complete` the one used."""
        frames = [to_bgr3(image) for image in images]  # once: kept for completing
        found = [
            (first + i, img, face, quality, crop, live)
            for i, img in enumerate(frames)
            for face, quality, crop, live in self._detect_aligned(
                img, Selection.LARGEST, liveness=liveness
            )
        ]
        if not found:
            return ()
        with deadline.stage("face.embed"):
            fronts = self.embedder.front([f[4] for f in found])  # one call for all
        quick = l2_normalize(fronts)
        return tuple(
            Glimpse(i, face, quality, vec, crop, raw, img, live)
            for (i, img, face, quality, crop, live), vec, raw in zip(
                found, quick, fronts, strict=True
            )
        )

    def complete(self, glimpse: Glimpse) -> FrameFace:
        """A glimpsed face analysed in full: its mirror view added to the embedding (exactly
        what `analyze_frames` would have made) and its liveness assessed (once)."""
        with deadline.stage("face.embed"):
            vec = self.embedder.finish([glimpse.crop], glimpse.front[None])[0]
        live = glimpse.liveness
        if live is None:
            (live,) = self._liveness(glimpse.image, [glimpse.face])
        face = AnalyzedFace(glimpse.face, glimpse.quality, np.asarray(vec, np.float32), live)
        return FrameFace(glimpse.frame, face)


def build_face_pipeline(
    profile: str = "default",
    models_dir: Path = DEFAULT_MODELS_DIR,
    quality_config: QualityConfig = DEFAULT_QUALITY,
    liveness: LivenessStage | bool | None = True,
) -> FacePipeline:
    """The real pipeline of a profile: "default" (YuNet + SFace) or "insightface".

    `liveness`: True for the shipped liveness model, a stage (e.g. a user's model, see
    `build_liveness`), or False/None for none."""
    if profile not in PROFILE_MODELS:
        raise ValueError(f"unknown face profile {profile!r}; choose from {sorted(PROFILE_MODELS)}")
    det_name, emb_name = PROFILE_MODELS[profile]
    det_model, det_info = model_store.load(det_name, models_dir)
    emb_model, emb_info = model_store.load(emb_name, models_dir)
    detector: Detector
    embedder: SFaceEmbedder | ArcFaceEmbedder
    # A derived model computes its base's function: templates keep the base's tag.
    entry = model_store.find_entry(emb_name, models_dir)
    tag_name = entry.base if entry.source == "derived" else emb_info.name
    if det_name == "yunet":
        detector = YuNetDetector(det_model)
        embedder = SFaceEmbedder(emb_model)
    else:
        detector = ScrfdDetector(det_model)
        embedder = ArcFaceEmbedder(emb_model)
    stage = build_liveness(models_dir) if liveness is True else liveness or None
    versions = (det_info, emb_info) + ((stage.info,) if stage and stage.info else ())
    return FacePipeline(
        detector,
        embedder,
        quality_config,
        model_versions=versions,
        # Gallery templates are tagged with this, so vectors of two models (or of two ways of
        # running one model) never mix.
        embedding_model_name=f"{tag_name}-{emb_info.version}{embedder.recipe}",
        liveness=stage,
    )
