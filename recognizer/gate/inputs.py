"""What one Authorize event was asked with, and the digest an idempotent replay compares.

The digest covers every input that can change a decision: the hashes of the frames (so the
bytes are hashed, never decoded, before a replay is answered), the plate text, the amount,
currency, direction and observation time. The same (gate, event) with another digest is a
reused event id, never a replay.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from recognizer.errors import InvalidArgument

DIGEST_VERSION = "gate-inputs.v1"
MAX_FRAMES = 4  # per kind (vehicle, face) in one Authorize event, the single field included


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if data else ""


@dataclass(frozen=True, slots=True)
class EventInputs:
    gate_id: str
    event_id: str
    vehicle_sha256: tuple[str, ...] = ()  # one per frame sent, in order
    face_sha256: tuple[str, ...] = ()
    plate_text: str = ""  # as sent, before normalisation
    amount_minor: int = 0
    currency: str = ""
    direction: str = "unspecified"
    observed_at_ns: int = 0  # 0: not sent

    def digest(self) -> str:
        body = json.dumps(
            [DIGEST_VERSION, asdict(self)],
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, Any]:
        """The decision record's `inputs` column (also read by ListDecisions)."""
        return {
            "vehicle_image_sha256": self.vehicle_sha256[0] if self.vehicle_sha256 else "",
            "face_image_sha256": self.face_sha256[0] if self.face_sha256 else "",
            "vehicle_images_sha256": list(self.vehicle_sha256),
            "face_images_sha256": list(self.face_sha256),
            "plate_text": self.plate_text,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "direction": self.direction,
            "observed_at_ns": self.observed_at_ns,
        }


def frames_of(single: bytes, more: Sequence[bytes]) -> tuple[bytes, ...]:
    """One kind's frames in order: the single field (when set) first, then the repeated one.
    A request with the single field only has the one frame it had before bursts, so its
    digest is the one release 0.1.0 recorded."""
    return ((single,) if single else ()) + tuple(more)


def frame_field(kind: str, index: int, single: bool) -> str:
    """The request field that carried a kind's frame `index` (for field violations)."""
    if single and index == 0:
        return f"{kind}_image"
    return f"{kind}_images[{index - int(single)}]"


def check_burst(
    vehicle: Sequence[bytes], face: Sequence[bytes], max_bytes: int, max_frames: int = MAX_FRAMES
) -> None:
    """INVALID_ARGUMENT naming the limit when a kind has too many frames, or all frames
    together too many bytes; checked before anything is hashed, decoded or stored."""
    for kind, frames in (("vehicle", vehicle), ("face", face)):
        if len(frames) > max_frames:
            raise InvalidArgument(
                f"{len(frames)} {kind} frames: at most {max_frames} per event "
                f"({kind}_image counts as the first)",
                field=f"{kind}_images",
                reason="TOO_MANY_FRAMES",
            )
    total = sum(len(f) for f in vehicle) + sum(len(f) for f in face)
    if total > max_bytes:
        raise InvalidArgument(
            f"the event's frames hold {total} bytes: at most {max_bytes} "
            "(authorize_max_bytes) together",
            field="vehicle_images" if vehicle else "face_images",
            reason="BURST_TOO_LARGE",
        )


def legacy_digest(gate_id: str, event_id: str, inputs: dict[str, Any]) -> str:
    """The digest of a decision recorded by release 0.1.0 (single frames, whole seconds)."""
    vehicle = inputs.get("vehicle_image_sha256", "")
    face = inputs.get("face_image_sha256", "")
    return EventInputs(
        gate_id=gate_id,
        event_id=event_id,
        vehicle_sha256=(vehicle,) if vehicle else (),
        face_sha256=(face,) if face else (),
        plate_text=str(inputs.get("plate_text", "")),
        amount_minor=int(inputs.get("amount_minor", 0)),
        currency=str(inputs.get("currency", "")),
        direction=str(inputs.get("direction", "unspecified")),
        observed_at_ns=round(float(inputs.get("observed_at", 0) or 0) * 1e9),
    ).digest()
