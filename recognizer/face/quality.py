"""Face quality: size, sharpness, rough head pose and detector confidence.

The pose is a geometric estimate from the 5 landmarks (no extra model): good enough to
reject profile and strongly tilted faces at enrolment, not a head-pose measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from recognizer.face.types import Face, Quality

# Nose-tip depth in front of the eye/mouth plane, as a fraction of the eye distance and of
# the eye-to-mouth distance (average adult anthropometry); converts landmark offsets to angles.
_NOSE_DEPTH_PER_EYE_DIST = 0.6
_NOSE_DEPTH_PER_EYE_MOUTH = 0.45
# Where the nose tip sits between the eye line (0) and the mouth line (1) on a frontal face:
# the ArcFace template's own ratio, (71.74 - 51.60) / (92.28 - 51.60).
_FRONTAL_NOSE_RATIO = 0.495


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Enrolment gate. Defaults sit below every real enrolment photo of lfw10 and misc
    (measured by scripts/calibrate_faces.py, see the report in the face calibration JSON)."""

    min_size_px: float = 40.0  # real photos: >= 50 px (asianfaces_cn), >= 86 px (lfw10)
    min_sharpness: float = 20.0  # lfw10 min ~29; Gaussian blur sigma 2 on LFW gives ~11
    max_yaw_deg: float = 50.0  # lfw10 holds a ~45 deg profile-ish photo that must pass
    max_pitch_deg: float = 40.0  # SCRFD's nose point reads ~10 deg more pitch than YuNet's
    min_detector_score: float = 0.5  # at or below both detectors' own thresholds


DEFAULT_QUALITY = QualityConfig()


@dataclass(frozen=True, slots=True)
class Pose:
    yaw_deg: float  # positive: nose towards image right
    pitch_deg: float  # positive: nose towards the eyes (head tilted up)
    roll_deg: float  # positive: eye line rotated clockwise in the image


def face_size_px(face: Face) -> float:
    """Shorter side of the box, or 2.5 eye distances when that is larger (tight boxes)."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    eye_dist = float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))
    return max(min(x2 - x1, y2 - y1), 2.5 * eye_dist)


def sharpness(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned grey crop: low means blurred or flat."""
    grey = aligned if aligned.ndim == 2 else cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def estimate_pose(landmarks: np.ndarray) -> Pose:
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_l, eye_r, nose, mouth_l, mouth_r = lm  # image-left first
    d = eye_r - eye_l
    roll = math.atan2(d[1], d[0])
    # Undo the roll so yaw and pitch are measured along the face's own axes.
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    eye_mid, mouth_mid = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    p_nose, p_eye, p_mouth = (rot @ (p - eye_mid) for p in (nose, eye_mid, mouth_mid))
    eye_dist = max(float(np.linalg.norm(d)), 1e-6)
    axis_x = (p_eye[0] + p_mouth[0]) / 2
    yaw = math.atan((p_nose[0] - axis_x) / (_NOSE_DEPTH_PER_EYE_DIST * eye_dist))
    eye_mouth = max(p_mouth[1] - p_eye[1], 1e-6)
    ratio = (p_nose[1] - p_eye[1]) / eye_mouth
    pitch = math.atan((_FRONTAL_NOSE_RATIO - ratio) / _NOSE_DEPTH_PER_EYE_MOUTH)
    return Pose(math.degrees(yaw), math.degrees(pitch), math.degrees(roll))


def assess(
    image_bgr: np.ndarray, face: Face, aligned: np.ndarray, config: QualityConfig
) -> Quality:
    """Quality of one detected face; `acceptable` is the enrolment gate."""
    del image_bgr  # measures come from the box, landmarks and aligned crop
    size = face_size_px(face)
    sharp = sharpness(aligned)
    pose = estimate_pose(face.landmarks)
    reasons: list[str] = []
    if size < config.min_size_px:
        reasons.append("FACE_TOO_SMALL")
    if sharp < config.min_sharpness:
        reasons.append("BLURRY")
    if abs(pose.yaw_deg) > config.max_yaw_deg or abs(pose.pitch_deg) > config.max_pitch_deg:
        reasons.append("POSE_TOO_LARGE")
    if face.score < config.min_detector_score:
        reasons.append("LOW_DETECTOR_SCORE")
    # Each factor is 1 at twice its gate (or frontal) and 0.5 at the gate; the overall
    # score is their geometric mean, so one bad factor pulls it down without zeroing it.
    factors = [
        min(1.0, size / (2 * config.min_size_px)),
        min(1.0, sharp / (2 * config.min_sharpness)),
        max(0.0, 1 - 0.5 * abs(pose.yaw_deg) / config.max_yaw_deg),
        max(0.0, 1 - 0.5 * abs(pose.pitch_deg) / config.max_pitch_deg),
        min(1.0, face.score / max(config.min_detector_score, 1e-6) / 2),
    ]
    score = float(np.prod(np.maximum(factors, 1e-6)) ** (1 / len(factors)))
    return Quality(
        score=round(score, 4),
        size_px=size,
        sharpness=sharp,
        yaw_deg=pose.yaw_deg,
        pitch_deg=pose.pitch_deg,
        roll_deg=pose.roll_deg,
        detector_score=float(face.score),
        acceptable=not reasons,
        reasons=tuple(reasons),
    )
