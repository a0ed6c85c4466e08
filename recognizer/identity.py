"""Face identity operations: enrol, verify 1:1, identify 1:N. Pure Python + numpy.

One function call per servicer method; the servicer only decodes and converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recognizer.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from recognizer.face.calibration import FaceCalibration
from recognizer.face.types import (
    AnalyzedFace,
    Face,
    FaceEngine,
    Liveness,
    LivenessDecision,
    Quality,
    Selection,
)
from recognizer.fusion import one_to_n
from recognizer.gallery.gallery import Gallery
from recognizer.store.rows import AuditEntry


@dataclass(frozen=True, slots=True)
class EnrolledFace:
    template_id: int
    face: Face
    quality: Quality
    image_index: int
    liveness: Liveness | None = None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    score: float
    match: bool
    estimated_fmr: float
    threshold: float
    face: Face
    quality: Quality
    liveness: Liveness | None = None


@dataclass(frozen=True, slots=True)
class IdentityScore:
    score: float  # aggregated cosine against the identity's enrolled faces
    templates: int  # enrolled faces


@dataclass(frozen=True, slots=True)
class Candidate:
    identity_id: str
    display_name: str
    score: float
    estimated_fmr: float  # 1:1
    estimated_fpir: float  # 1:N over the gallery's identities


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    candidates: tuple[Candidate, ...]
    unknown: bool
    threshold: float
    best_score: float
    face: Face
    quality: Quality
    gallery_size: int = 0  # identities searched
    liveness: Liveness | None = None


class FaceIdentity:
    """Binds the face pipeline, the gallery and the score calibration together."""

    def __init__(
        self,
        faces: FaceEngine,
        gallery: Gallery,
        calibration: FaceCalibration,
        *,
        threshold_bounds: tuple[float, float] = (0.2, 0.95),
        enroll_require_liveness: bool = False,
    ) -> None:
        self.faces = faces
        self.gallery = gallery
        self.calibration = calibration
        self.bounds = threshold_bounds
        # On: a face the liveness stage calls a likely attack (a photo of a photo) is never
        # enrolled. See README "Liveness" for what it does to ID-style photos first.
        self.enroll_require_liveness = enroll_require_liveness

    def threshold(self, override: float | None = None) -> float:
        if override is None:
            return float(self.calibration.threshold)
        lo, hi = self.bounds
        if not lo <= override <= hi:
            raise InvalidArgument(
                f"threshold {override} is outside the allowed range [{lo}, {hi}]",
                field="threshold",
                reason="THRESHOLD_OUT_OF_BOUNDS",
            )
        return float(override)

    def probe(self, image: np.ndarray, field: str = "image") -> AnalyzedFace:
        """The largest face of an image, or INVALID_ARGUMENT when there is none."""
        found = self.faces.analyze(image, Selection.LARGEST)
        if not found:
            raise InvalidArgument(f"{field}: no face found", field=field, reason="NO_FACE")
        return found[0]

    def enroll(
        self,
        identity_id: str,
        images: Sequence[np.ndarray],
        *,
        force: bool = False,
        source: str = "",
        audit: AuditEntry | None = None,
    ) -> list[EnrolledFace]:
        """All images pass the quality gate and the duplicate check, or nothing is stored
        (the audit record commits with the templates)."""
        if not images:
            raise InvalidArgument(
                "at least one image is required", field="images", reason="NO_IMAGES"
            )
        self.gallery.store.get_identity(identity_id)  # NOT_FOUND before any model work
        probes = [self.probe(img, f"images[{i}]") for i, img in enumerate(images)]
        for i, p in enumerate(probes):
            if not p.quality.acceptable:
                raise FailedPrecondition(
                    f"images[{i}]: face quality too low ({', '.join(p.quality.reasons)})",
                    field=f"images[{i}]",
                    reason="QUALITY_TOO_LOW",
                )
        if self.enroll_require_liveness:
            for i, p in enumerate(probes):
                self._check_liveness(p, f"images[{i}]")
        if not force:
            threshold = self.threshold()
            for i, p in enumerate(probes):
                for m in self.gallery.identify(p.embedding, 1):
                    if m.identity_id != identity_id and m.score >= threshold:
                        raise AlreadyExists(
                            f"images[{i}]: this face already matches identity {m.identity_id} "
                            f"(score {m.score:.3f}); set force to enrol anyway",
                            identity_id=m.identity_id,
                            field=f"images[{i}]",
                        )
        vectors = np.stack([p.embedding for p in probes]).astype(np.float32)
        quality = float(min(p.quality.score for p in probes))
        rows = self.gallery.enroll(
            identity_id, vectors, source=source, quality=quality, audit=audit
        )
        return [
            EnrolledFace(int(r.label), p.face, p.quality, i, p.liveness)
            for i, (r, p) in enumerate(zip(rows, probes, strict=True))
        ]

    @staticmethod
    def _check_liveness(probe: AnalyzedFace, field: str) -> None:
        if probe.liveness is None:
            raise FailedPrecondition(
                f"{field}: enrolment requires liveness and no liveness stage is loaded",
                field=field,
                reason="LIVENESS_UNAVAILABLE",
            )
        if probe.liveness.decision is LivenessDecision.ATTACK:
            raise FailedPrecondition(
                f"{field}: the face looks like a presentation attack (a photo of a photo; "
                f"liveness score {probe.liveness.score:.3f})",
                field=field,
                reason="PRESENTATION_ATTACK_SUSPECTED",
            )
        if probe.liveness.decision is LivenessDecision.UNCERTAIN:
            # Enrolment is the one moment a template is made: a print the model is unsure of
            # (or a face it cannot judge) must not become one when the switch is on.
            why = probe.liveness.missing or f"liveness score {probe.liveness.score:.3f}"
            raise FailedPrecondition(
                f"{field}: enrolment requires a live face and liveness is uncertain ({why}); "
                "enrol from a live colour frame",
                field=field,
                reason="LIVENESS_UNCERTAIN",
            )

    def verify(
        self, identity_id: str, image: np.ndarray, threshold: float | None = None
    ) -> VerifyResult:
        """One store query on the way to a score (the identity's enrolled faces); an unknown
        identity or one without a face is refused before any model work."""
        t = self.threshold(threshold)
        templates = self.gallery.templates_for((identity_id,)).get(identity_id)
        if templates is None:
            self.gallery.store.get_identity(identity_id)  # NOT_FOUND for an unknown identity
            raise FailedPrecondition(
                f"identity {identity_id} has no enrolled face",
                field="identity_id",
                reason="NO_TEMPLATES",
            )
        probe = self.probe(image)
        score = float(self.gallery.score_against(templates, probe.embedding))
        return VerifyResult(
            score=score,
            match=score >= t,
            estimated_fmr=float(self.calibration.fmr_at(score)),
            threshold=t,
            face=probe.face,
            quality=probe.quality,
            liveness=probe.liveness,
        )

    def score_identity(self, identity_id: str, embedding: np.ndarray) -> IdentityScore | None:
        """Similarity of a probe to one identity, with how many faces it has enrolled (an
        impostor gets that many tries); None when it has no enrolled face. One store query."""
        scored = self.gallery.score(identity_id, embedding)
        return None if scored is None else IdentityScore(float(scored[0]), scored[1])

    def identify(
        self, image: np.ndarray, top_k: int = 5, threshold: float | None = None
    ) -> IdentifyResult:
        if not 0 <= top_k <= 100:
            raise InvalidArgument(
                "top_k must be within 0..100 (0: 5)", field="top_k", reason="TOP_K_OUT_OF_RANGE"
            )
        t = self.threshold(threshold)
        probe = self.probe(image)
        matches = self.gallery.identify(probe.embedding, top_k or 5)
        best = float(matches[0].score) if matches else -1.0
        above = [m for m in matches if m.score >= t]
        names = {
            m.identity_id: self.gallery.store.get_identity(m.identity_id).display_name
            for m in above
        }
        n = self.gallery.store.count_identities()
        candidates = []
        for m in above:
            fmr = float(self.calibration.fmr_at(m.score))
            candidates.append(
                Candidate(
                    m.identity_id, names[m.identity_id], float(m.score), fmr, one_to_n(fmr, n)
                )
            )
        return IdentifyResult(
            tuple(candidates), not candidates, t, best, probe.face, probe.quality, n, probe.liveness
        )
