"""Pure mapping between pipeline results (numpy dataclasses) and protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2

from recognizer.errors import InvalidArgument
from recognizer.face.types import Face, Liveness, LivenessDecision, Quality, Selection
from recognizer.gate import Decision, Direction, EventInputs, GateRequest, Outcome, sha256_hex
from recognizer.gate.inputs import check_burst, frames_of
from recognizer.models import ModelInfo
from recognizer.plate.types import PlateResult, PlateType
from recognizer.v1 import common_pb2 as pb
from recognizer.v1 import gate_pb2, identity_pb2

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


_LIVENESS = {
    LivenessDecision.LIVE: pb.LIVENESS_LIVE,
    LivenessDecision.UNCERTAIN: pb.LIVENESS_UNCERTAIN,
    LivenessDecision.ATTACK: pb.LIVENESS_ATTACK,
}


def face(f: Face, q: Quality | None = None, lv: Liveness | None = None) -> pb.FaceDetection:
    msg = pb.FaceDetection(box=box(f.box), landmarks=points(f.landmarks), score=f.score)
    if q is not None:
        msg.quality.CopyFrom(quality(q))
    if lv is not None:
        msg.liveness_score = lv.score
        msg.liveness = _LIVENESS[lv.decision]
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
        province_guessed=p.province_guessed,
    )


def model_versions(items: Iterable[ModelInfo]) -> list[pb.ModelVersion]:
    return [
        pb.ModelVersion(role=m.role, name=m.name, version=m.version, sha256=m.sha256[:12])
        for m in items
    ]


# --- identities, bindings, decisions -----------------------------------------------------

FACTORS: dict[int, str] = {
    identity_pb2.FACTOR_UNSPECIFIED: "plate_and_face",  # the safe choice when unset
    identity_pb2.FACTOR_PLATE: "plate",
    identity_pb2.FACTOR_FACE: "face",
    identity_pb2.FACTOR_PLATE_AND_FACE: "plate_and_face",
}
_FACTOR_ENUM = {
    "plate": identity_pb2.FACTOR_PLATE,
    "face": identity_pb2.FACTOR_FACE,
    "plate_and_face": identity_pb2.FACTOR_PLATE_AND_FACE,
}
DIRECTIONS = {
    gate_pb2.DIRECTION_UNSPECIFIED: Direction.UNSPECIFIED,
    gate_pb2.DIRECTION_ENTRY: Direction.ENTRY,
    gate_pb2.DIRECTION_EXIT: Direction.EXIT,
}
_DIRECTION_ENUM = {v: k for k, v in DIRECTIONS.items()}
_OUTCOMES = {
    Outcome.ALLOW: gate_pb2.OUTCOME_ALLOW,
    Outcome.STEP_UP: gate_pb2.OUTCOME_STEP_UP,
    Outcome.DENY: gate_pb2.OUTCOME_DENY,
}


def factor_name(value: int) -> str:
    if value not in FACTORS:
        raise InvalidArgument("unknown factors value", field="factors", reason="BAD_ENUM")
    return FACTORS[value]


_INT64_MAX = 2**63 - 1
# google.protobuf.Timestamp's own range: 0001-01-01 to 9999-12-31.
_TS_MIN, _TS_MAX = -62135596800, 253402300799


def label(template_id: str) -> int:
    try:
        value = int(template_id)
    except ValueError:
        value = -1
    if not 0 < value <= _INT64_MAX:
        raise InvalidArgument("template_id must be the id EnrollFace returned", field="template_id")
    return value


def timestamp_ns(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """Nanoseconds since the epoch, or INVALID_ARGUMENT outside Timestamp's valid range."""
    if not (_TS_MIN <= ts.seconds <= _TS_MAX and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (years 1 to 9999)",
            field=field,
            reason="OUT_OF_RANGE",
        )
    return ts.seconds * 1_000_000_000 + ts.nanos


def gate_request(request: gate_pb2.AuthorizeRequest, max_bytes: int) -> GateRequest:
    """The request's inputs, with the frames hashed and left undecoded (replay comes first).
    `max_bytes`: all frames together (authorize_max_bytes)."""
    if request.direction not in DIRECTIONS:
        raise InvalidArgument("unknown direction", field="direction", reason="BAD_ENUM")
    vehicle = frames_of(request.vehicle_image, request.vehicle_images)
    face = frames_of(request.face_image, request.face_images)
    check_burst(vehicle, face, max_bytes)
    inputs = EventInputs(
        gate_id=request.gate_id,
        event_id=request.event_id,
        vehicle_sha256=tuple(sha256_hex(b) for b in vehicle),
        face_sha256=tuple(sha256_hex(b) for b in face),
        plate_text=request.plate_text,
        amount_minor=request.amount_minor,
        currency=request.currency,
        direction=DIRECTIONS[request.direction].value,
        observed_at_ns=timestamp_ns(request.observed_at, "observed_at")
        if request.HasField("observed_at")
        else 0,
    )
    return GateRequest(inputs, vehicle, face, bool(request.vehicle_image), bool(request.face_image))


def timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def payment(row: Any) -> identity_pb2.PaymentBinding:
    return identity_pb2.PaymentBinding(
        binding_id=row.binding_id,
        identity_id=row.identity_id,
        payment_ref=row.payment_ref,
        factors=_FACTOR_ENUM.get(row.factors, identity_pb2.FACTOR_UNSPECIFIED),
        ceiling_minor=row.ceiling_minor,
        created_at=timestamp(row.created_at),
    )


def identity(
    row: Any, labels: Iterable[int], plates: Iterable[str], payments: Iterable[Any]
) -> identity_pb2.Identity:
    ids = [str(x) for x in labels]
    return identity_pb2.Identity(
        identity_id=row.id,
        display_name=row.display_name,
        external_ref=row.external_ref,
        metadata=dict(row.metadata),
        created_at=timestamp(row.created_at),
        face_count=len(ids),
        template_ids=ids,
        plates=list(plates),
        payments=[payment(p) for p in payments],
    )


def decision_codec(models: Iterable[Any]) -> Callable[[Decision], bytes]:
    """The gate's decision record codec (injected into the engine once): the Authorize
    response's bytes, which a replay returns as recorded."""
    versions = tuple(models)

    def encode(d: Decision) -> bytes:
        return decision(d, versions).SerializeToString()

    return encode


def decision(d: Decision, models: Iterable[Any]) -> gate_pb2.AuthorizeResponse:
    msg = gate_pb2.AuthorizeResponse(
        outcome=_OUTCOMES[d.outcome],
        identity_id=d.identity_id,
        payment_ref=d.payment_ref,
        face_score=d.face_score if d.face_score is not None else 0.0,
        plate_llr=d.fusion.plate_llr,
        face_llr=d.fusion.face_llr,
        fused_llr=d.fusion.fused_llr,
        estimated_far=d.fusion.estimated_far,
        reasons=[pb.Reason(code=r.code, message=r.message) for r in d.reasons],
        policy_id=d.policy_id,
        models=model_versions(models),
        decided_at=timestamp(d.decided_at),
        decision_id=d.decision_id,
        face_frame=d.face_frame,
        vehicle_frames_read=d.vehicle_frames_read,
    )
    if d.plate is not None:
        msg.plate.CopyFrom(plate(d.plate))
    if d.face is not None:
        msg.face.CopyFrom(face(d.face.face, d.face.quality, d.face.liveness))
    return msg


def decision_record(row: Any) -> gate_pb2.DecisionRecord:
    inputs = json.loads(row.inputs) if isinstance(row.inputs, str) else dict(row.inputs)
    return gate_pb2.DecisionRecord(
        decision_id=row.decision_id,
        gate_id=row.gate_id,
        event_id=row.event_id,
        response=gate_pb2.AuthorizeResponse.FromString(row.payload),
        vehicle_image_sha256=inputs.get("vehicle_image_sha256", ""),
        face_image_sha256=inputs.get("face_image_sha256", ""),
        vehicle_images_sha256=inputs.get("vehicle_images_sha256", []),
        face_images_sha256=inputs.get("face_images_sha256", []),
        amount_minor=int(inputs.get("amount_minor", 0)),
        direction=_DIRECTION_ENUM.get(
            Direction(inputs.get("direction", "unspecified")), gate_pb2.DIRECTION_UNSPECIFIED
        ),
    )


# --- the audit (AdminService.ListAudit) ----------------------------------------------------


def audit_record(row: Any) -> gate_pb2.AuditRecord:
    detail = struct_pb2.Struct()
    detail.update(row.detail)
    return gate_pb2.AuditRecord(
        id=row.id,
        at=timestamp(row.at),
        key_name=row.actor_role,  # the column keeps its name; it holds the key's name
        action=row.action,
        target=row.target,
        detail=detail,
    )


def page_after(token: str) -> int:
    """A ListAudit page token: the last id of the previous page, or INVALID_ARGUMENT."""
    if not token:
        return 0
    if not token.isdigit() or not 0 < int(token) <= _INT64_MAX:
        raise InvalidArgument("page_token must be a previous next_page_token", field="page_token")
    return int(token)
