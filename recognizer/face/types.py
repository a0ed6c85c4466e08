"""Result types of the face pipeline (pure numpy; no gRPC types)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from recognizer.models import ModelInfo


class Selection(StrEnum):
    LARGEST = "largest"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face in image pixel coordinates."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2) float32: right eye, left eye, nose, right mouth, left mouth
    score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True, slots=True)
class Quality:
    score: float  # 0..1 overall
    size_px: float
    sharpness: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    detector_score: float
    acceptable: bool
    reasons: tuple[str, ...] = ()


class LivenessDecision(StrEnum):
    LIVE = "live"
    UNCERTAIN = "uncertain"
    ATTACK = "attack"  # likely a presentation attack (a print)


@dataclass(frozen=True, slots=True)
class Liveness:
    """The liveness stage's view of one face (recognizer/face/liveness.py)."""

    score: float  # 0..1, higher = live (the model's per-frame probability)
    decision: LivenessDecision
    # Why the decision is UNCERTAIN whatever the score: the evidence the model needs is
    # missing (recognizer/face/liveness.py `evidence_missing`); "" when the score decided.
    missing: str = ""


@dataclass(frozen=True, slots=True)
class AnalyzedFace:
    """A face with its quality, its L2-normalised embedding and its liveness (None when the
    pipeline has no liveness stage)."""

    face: Face
    quality: Quality
    embedding: np.ndarray = field(repr=False)  # (D,) float32, unit norm
    liveness: Liveness | None = None


@dataclass(frozen=True, slots=True)
class FrameFace:
    """The face found in one frame of a burst."""

    frame: int  # index of the frame among the burst's face frames
    face: AnalyzedFace


@dataclass(frozen=True, slots=True)
class Glimpse:
    """A frame's face seen at half the cost: detected, aligned, quality-checked and embedded
    from its front view only, with no mirror view (and liveness only when asked for). Its
    embedding is for comparing frames, and for a stranger's face far below the bar (the gate's
    GLIMPSE_MARGIN), never for a template: `FacePipeline.complete` makes it a full
    :class:`FrameFace` (one more embedder run, and the liveness check if not done)."""

    frame: int  # index of the frame among the burst's face frames
    face: Face
    quality: Quality
    embedding: np.ndarray = field(repr=False)  # (D,) float32, unit norm, front view only
    crop: np.ndarray = field(repr=False)  # the aligned crop, to add the mirror view
    front: np.ndarray = field(repr=False)  # the embedder's raw front-view output
    image: np.ndarray = field(repr=False)  # the frame (BGR), for liveness on completion
    liveness: Liveness | None = None  # assessed while glimpsing (the first frame), or None


class FaceEngine(Protocol):
    """The face pipeline as its callers (the identity service, the gate, the servicers) see
    it; `recognizer.face.pipeline.FacePipeline` is the one built from real models."""

    @property
    def model_versions(self) -> tuple[ModelInfo, ...]: ...

    @property
    def dim(self) -> int: ...

    @property
    def embedding_model_name(self) -> str: ...

    def detect(
        self, image_bgr: np.ndarray, selection: Selection
    ) -> list[tuple[Face, Quality, Liveness | None]]: ...

    def analyze(self, image_bgr: np.ndarray, selection: Selection) -> list[AnalyzedFace]: ...

    def analyze_frames(self, images: Sequence[np.ndarray]) -> tuple[FrameFace, ...]: ...

    def glimpse_frames(
        self, images: Sequence[np.ndarray], first: int = 0, liveness: bool = False
    ) -> tuple[Glimpse, ...]: ...

    def complete(self, glimpse: Glimpse) -> FrameFace: ...
