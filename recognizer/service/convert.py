"""Pure mapping between pipeline results (numpy dataclasses) and protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from recognizer.face.types import Face, Quality, Selection
from recognizer.plate.types import PlateResult, PlateType
from recognizer.v1 import common_pb2 as pb

_PLATE_TYPES = {
    PlateType.UNKNOWN: pb.PLATE_TYPE_UNSPECIFIED,
    PlateType.BLUE: pb.PLATE_TYPE_BLUE,
    PlateType.YELLOW: pb.PLATE_TYPE_YELLOW,
    PlateType.YELLOW_TWO_ROW: pb.PLATE_TYPE_YELLOW_TWO_ROW,
    PlateType.GREEN_NEW_ENERGY: pb.PLATE_TYPE_GREEN_NEW_ENERGY,
    PlateType.WHITE_POLICE: pb.PLATE_TYPE_WHITE_POLICE,
    PlateType.WHITE_OTHER: pb.PLATE_TYPE_WHITE_OTHER,
    PlateType.BLACK: pb.PLATE_TYPE_BLACK,
    PlateType.LEARNER: pb.PLATE_TYPE_LEARNER,
    PlateType.GENERIC: pb.PLATE_TYPE_GENERIC,
}


def selection(value: int) -> Selection:
    return Selection.ALL if value == pb.FACE_SELECTION_ALL else Selection.LARGEST


def box(b: np.ndarray) -> pb.Box:
    x1, y1, x2, y2 = (float(v) for v in b)
    return pb.Box(x1=x1, y1=y1, x2=x2, y2=y2)


def points(pts: np.ndarray) -> list[pb.Point]:
    return [pb.Point(x=float(x), y=float(y)) for x, y in np.asarray(pts).reshape(-1, 2)]


def quality(q: Quality) -> pb.FaceQuality:
    return pb.FaceQuality(
        score=q.score,
        size_px=q.size_px,
        sharpness=q.sharpness,
        yaw_deg=q.yaw_deg,
        pitch_deg=q.pitch_deg,
        roll_deg=q.roll_deg,
        detector_score=q.detector_score,
        acceptable=q.acceptable,
        reasons=list(q.reasons),
    )


def face(f: Face, q: Quality | None = None) -> pb.FaceDetection:
    msg = pb.FaceDetection(box=box(f.box), landmarks=points(f.landmarks), score=f.score)
    if q is not None:
        msg.quality.CopyFrom(quality(q))
    return msg


def plate(p: PlateResult) -> pb.PlateRead:
    return pb.PlateRead(
        text=p.text,
        confidence=p.confidence,
        char_confidences=list(p.char_confidences),
        candidates=[
            pb.PlateCandidate(text=c.text, probability=c.probability) for c in p.candidates
        ],
        box=box(p.box),
        corners=points(p.corners),
        type=_PLATE_TYPES.get(p.plate_type, pb.PLATE_TYPE_UNSPECIFIED),
        pattern_valid=p.pattern_valid,
        detector_score=p.detector_score,
        reader=p.reader,
    )


def model_versions(items: Iterable[Any]) -> list[pb.ModelVersion]:
    """Accepts ModelInfo-like objects (role, name, version, sha256)."""
    return [
        pb.ModelVersion(
            role=getattr(m, "role", ""),
            name=getattr(m, "name", ""),
            version=getattr(m, "version", ""),
            sha256=getattr(m, "sha256", "")[:12],
        )
        for m in items
    ]
