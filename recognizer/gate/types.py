"""The gate's data: one event's evidence as plain values, and the decision made from it.

Evidence is what the I/O side gathered (reads, scores, bindings, the last sighting); the rules
turn it into a Verdict without touching a model or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from recognizer.face.types import AnalyzedFace, Liveness
from recognizer.fusion import FusionResult, PlateEvidence
from recognizer.gate.inputs import EventInputs
from recognizer.plate.types import PlateResult


class Outcome(StrEnum):
    ALLOW = "allow"
    STEP_UP = "step_up"
    DENY = "deny"


class Direction(StrEnum):
    UNSPECIFIED = "unspecified"
    ENTRY = "entry"
    EXIT = "exit"


class Factors(StrEnum):
    """What a payment binding needs before it may be charged without a tap."""

    PLATE = "plate"
    FACE = "face"
    PLATE_AND_FACE = "plate_and_face"


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class GateRequest:
    """One Authorize call as received: the inputs (hashed, for replay) and the raw frames."""

    inputs: EventInputs
    vehicle_images: tuple[bytes, ...] = field(default=(), repr=False)  # in order
    face_images: tuple[bytes, ...] = field(default=(), repr=False)
    vehicle_single: bool = True  # the first vehicle frame came in vehicle_image
    face_single: bool = True


@dataclass(frozen=True, slots=True)
class GateEvent:
    """One event, decoded: images as numpy arrays, plate text validated and normalised."""

    gate_id: str
    event_id: str
    vehicle_images: tuple[np.ndarray, ...] = field(default=(), repr=False)  # a burst, in order
    plate_text: str = ""
    face_images: tuple[np.ndarray, ...] = field(default=(), repr=False)
    amount_minor: int = 0
    currency: str = ""
    direction: Direction = Direction.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class Binding:
    binding_id: str
    payment_ref: str
    factors: Factors
    ceiling_minor: int  # 0: no ceiling


@dataclass(frozen=True, slots=True)
class Payer:
    """One identity the event could be charged to, with the evidence for it."""

    identity_id: str
    plate: PlateEvidence  # this payer's bound plates against what was read
    face_score: float | None  # None: no face, or the identity has no enrolled face
    searched: int  # 0: scored 1:1 as a payer of the read plate; N: identified 1:N among N
    bindings: tuple[Binding, ...]
    templates: int = 1  # enrolled faces per identity: an impostor's face gets that many tries
    frames: int = 1  # face frames of the burst scored (best one used): that many tries more
    # The confidence of the camera read that named this payer's plate exactly (0 otherwise):
    # the plate-only tier pays only on a sure read.
    plate_confidence: float = 0.0
    plate_by_text: bool = False  # named only by the gate's plate_text, not by the camera


@dataclass(frozen=True, slots=True)
class Sighting:
    gate_id: str
    direction: str
    at: float  # server time
    presence: str | None = None  # the last direction named ("" none); None: `direction`


@dataclass(frozen=True, slots=True)
class Evidence:
    gate_id: str
    amount_minor: int
    direction: Direction
    now: float  # server time of the decision
    vehicle_sent: bool
    plate_read: bool  # a plate was read in the frame or sent as text
    face_sent: bool
    face_found: bool
    face_threshold: float
    payers: tuple[Payer, ...]
    face_elsewhere: bool  # the face matches an identity outside the plate's payers
    last_sighting: Sighting | None  # of the plate read, before this event
    face_liveness: Liveness | None = None  # of the face found; None: no face or no stage
    # of the burst's other face frames, each checked when the policy requires liveness
    burst_liveness: tuple[Liveness | None, ...] = ()
    face_frames_agree: bool = True  # a burst's face frames all show the face used
    face_frame: int = 0  # the face frame used
    vehicle_frames_read: int = 0  # vehicle frames read before the plate was settled
    plate_province_guessed: bool = False  # the plate read's province was guessed, not read
    plate_text_mismatch: bool = False  # the gate's plate_text contradicts the camera's read


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    identity_id: str
    payment_ref: str
    fusion: FusionResult
    reasons: tuple[Reason, ...]
    face_score: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    identity_id: str
    payment_ref: str
    plate: PlateResult | None
    face: AnalyzedFace | None
    face_score: float | None
    fusion: FusionResult
    reasons: tuple[Reason, ...]
    policy_id: str
    decision_id: str
    decided_at: float
    face_frame: int = 0
    vehicle_frames_read: int = 0


@dataclass(frozen=True, slots=True)
class Authorized:
    """What the engine returns to the servicer: the stored response bytes (as the injected
    codec wrote them) and whether this was a replay."""

    payload: bytes
    replayed: bool
