"""The gate decision: plate and face branches, identity resolution, fusion, policy, record.

`GateEngine.authorize` is the one call behind the Authorize RPC. It is idempotent per
(gate_id, event_id): a stored decision is returned as it was, and concurrent retries of an
event that is still being decided wait for that one decision instead of doing the work again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from recognizer import accounting
from recognizer.errors import InvalidArgument
from recognizer.face.types import AnalyzedFace, Selection
from recognizer.fusion import FusionModel, FusionResult, PlateEvidence
from recognizer.identity import FaceIdentity
from recognizer.plate.types import PlateCandidate, PlateResult, PlateType
from recognizer.policy import GatePolicy, PolicySet


class Outcome(StrEnum):
    ALLOW = "allow"
    STEP_UP = "step_up"
    DENY = "deny"


class Direction(StrEnum):
    UNSPECIFIED = "unspecified"
    ENTRY = "entry"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class GateEvent:
    """One Authorize request, decoded (images are numpy arrays or None)."""

    gate_id: str
    event_id: str
    vehicle_image: np.ndarray | None = field(default=None, repr=False)
    plate_text: str = ""
    face_image: np.ndarray | None = field(default=None, repr=False)
    amount_minor: int = 0
    currency: str = ""
    direction: Direction = Direction.UNSPECIFIED
    observed_at: float = 0.0  # epoch seconds; 0 = now
    vehicle_sha256: str = ""
    face_sha256: str = ""


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


@dataclass(frozen=True, slots=True)
class Authorized:
    """What the servicer returns: the stored response bytes and whether this was a replay."""

    payload: bytes
    replayed: bool


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if data else ""


def _text_read(text: str) -> PlateResult:
    """A plate the gate's own camera read: no box, full confidence as reported."""
    return PlateResult(
        text=text,
        confidence=1.0,
        char_confidences=(),
        candidates=(PlateCandidate(text, 1.0),),
        box=np.zeros(4, np.float32),
        corners=np.zeros((4, 2), np.float32),
        plate_type=PlateType.UNKNOWN,
        pattern_valid=True,
        detector_score=0.0,
        reader="gate",
    )


class GateEngine:
    def __init__(
        self,
        *,
        plates: Any,
        identity: FaceIdentity,
        store: Any,
        fusion: FusionModel,
        policies: PolicySet,
        normalize_plate: Callable[[str], str],
        workers: int = 2,
    ) -> None:
        self.plates = plates
        self.identity = identity
        self.store = store
        self.fusion = fusion
        self.policies = policies
        self.normalize_plate = normalize_plate
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gate-branch")
        self._inflight: dict[tuple[str, str], Future[Authorized]] = {}
        self._lock = threading.Lock()

    # --- idempotent entry point -----------------------------------------------------------

    def authorize(self, event: GateEvent, encode: Callable[[Decision], bytes]) -> Authorized:
        if not event.gate_id:
            raise InvalidArgument("gate_id is required", field="gate_id", reason="MISSING")
        if not event.event_id:
            raise InvalidArgument("event_id is required", field="event_id", reason="MISSING")
        stored = self.store.get_decision(event.gate_id, event.event_id)
        if stored is not None:
            return Authorized(stored.payload, True)
        key = (event.gate_id, event.event_id)
        with self._lock:
            running = self._inflight.get(key)
            owner = running is None
            if owner:
                running = self._inflight[key] = Future()
        assert running is not None
        if not owner:
            return Authorized(running.result().payload, True)
        try:
            result = self._decide_and_record(event, encode)
            running.set_result(result)
            return result
        except BaseException as exc:
            running.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _decide_and_record(
        self, event: GateEvent, encode: Callable[[Decision], bytes]
    ) -> Authorized:
        decision = self.decide(event)
        payload = encode(decision)
        row = self.store.put_decision(
            gate_id=event.gate_id,
            event_id=event.event_id,
            decision_id=decision.decision_id,
            identity_id=decision.identity_id,
            outcome=decision.outcome.value,
            payload=payload,
            inputs=json.dumps(
                {
                    "vehicle_image_sha256": event.vehicle_sha256,
                    "face_image_sha256": event.face_sha256,
                    "plate_text": event.plate_text,
                    "amount_minor": event.amount_minor,
                    "currency": event.currency,
                    "direction": event.direction.value,
                    "observed_at": event.observed_at,
                }
            ),
            created_at=decision.decided_at,
        )
        if decision.plate is not None and decision.plate.text:
            self.store.record_sighting(
                decision.plate.text, event.gate_id, event.direction.value, self._when(event)
            )
        # Another process may have stored the event first: its decision stands.
        return Authorized(row.payload, row.decision_id != decision.decision_id)

    @staticmethod
    def _when(event: GateEvent) -> float:
        return event.observed_at or time.time()

    # --- the decision ---------------------------------------------------------------------

    def _plate_branch(self, event: GateEvent) -> list[PlateResult]:
        if event.vehicle_image is not None:
            return list(self.plates.read(event.vehicle_image))
        if event.plate_text:
            return [_text_read(self.normalize_plate(event.plate_text))]
        return []

    def _face_branch(self, event: GateEvent) -> AnalyzedFace | None:
        if event.face_image is None:
            return None
        found = self.identity.faces.analyze(event.face_image, Selection.LARGEST)
        return found[0] if found else None

    def _run_branches(self, event: GateEvent) -> tuple[list[PlateResult], AnalyzedFace | None]:
        # Both branches run at once; the face branch runs in this thread to save a hop.
        plate_future = accounting.submit(self._pool, lambda: self._plate_branch(event))
        face = self._face_branch(event)
        return plate_future.result(), face

    def _resolve_plate(
        self, reads: Sequence[PlateResult]
    ) -> tuple[PlateResult | None, PlateEvidence, list[str]]:
        """The read to use, its evidence category, and the identities bound to it."""
        if not reads:
            return None, PlateEvidence.ABSENT, []
        for read in reads:
            payers = self.store.identities_for_plate(read.text)
            if payers:
                return read, PlateEvidence.EXACT, payers
        for read in reads:
            for cand in read.candidates[1:]:
                payers = self.store.identities_for_plate(cand.text)
                if payers:
                    return read, PlateEvidence.CANDIDATE, payers
        best = max(reads, key=lambda r: r.confidence)
        return best, PlateEvidence.NO_MATCH, []

    def decide(self, event: GateEvent) -> Decision:
        policy = self.policies.for_gate(event.gate_id)
        reasons: list[Reason] = []
        if event.amount_minor < 0:
            raise InvalidArgument(
                "amount_minor must be >= 0", field="amount_minor", reason="NEGATIVE_AMOUNT"
            )
        if event.vehicle_image is None and not event.plate_text and event.face_image is None:
            raise InvalidArgument(
                "send a vehicle_image, a plate_text or a face_image",
                field="vehicle_image",
                reason="NO_EVIDENCE",
            )
        reads, probe = self._run_branches(event)
        read, evidence, payers = self._resolve_plate(reads)
        if event.vehicle_image is not None and not reads:
            reasons.append(Reason("PLATE_NOT_FOUND", "no plate could be read in the frame"))
        if event.face_image is not None and probe is None:
            reasons.append(Reason("FACE_NOT_FOUND", "no face in the face frame"))

        face_threshold = self.identity.threshold()
        scores: dict[str, float] = {}
        if probe is not None:
            for pid in payers:
                score = self.identity.score_identity(pid, probe.embedding)
                if score is not None:  # a plate-only payer has no face to compare
                    scores[pid] = score
            if not payers:
                # Plate unreadable or unbound: the face identifies 1:N among the payers.
                for m in self.identity.gallery.identify(probe.embedding, 10):
                    if m.score >= face_threshold and self.store.payments_for(m.identity_id):
                        payers = [m.identity_id]
                        scores[m.identity_id] = float(m.score)
                        reasons.append(
                            Reason(
                                "FACE_IDENTIFIED_AMONG_PAYERS",
                                "the plate gave no payer; the face identified one 1:N",
                            )
                        )
                        break

        identity_id, fused = "", self.fusion.fuse(evidence, None)
        if payers:
            # Several payers can share a plate (a family car): the best-supported one pays.
            fusions = {pid: self.fusion.fuse(evidence, scores.get(pid)) for pid in payers}
            identity_id = max(fusions, key=lambda pid: fusions[pid].fused_llr)
            fused = fusions[identity_id]
        else:
            reasons.append(Reason("UNKNOWN_VEHICLE", "no payer is bound to this plate or face"))

        blocking = False
        if (
            probe is not None
            and evidence in (PlateEvidence.EXACT, PlateEvidence.CANDIDATE)
            and scores
            and max(scores.values()) < face_threshold
        ):
            others = [
                m
                for m in self.identity.gallery.identify(probe.embedding, 5)
                if m.identity_id not in scores and m.score >= face_threshold
            ]
            if others:
                blocking = True
                reasons.append(
                    Reason(
                        "FACE_NOT_AMONG_PAYERS",
                        "the face matches an identity that is not a payer of this plate",
                    )
                )
            else:
                reasons.append(
                    Reason(
                        "FACE_BELOW_THRESHOLD",
                        "the face scores below the 1:1 threshold against the plate's payers",
                    )
                )

        soft = self._fraud_signals(event, read, policy, reasons)
        if (
            event.direction.value not in policy.directions
            and event.direction is not Direction.UNSPECIFIED
        ):
            reasons.append(
                Reason("DIRECTION_NOT_ALLOWED", f"gate policy {policy.policy_id} does not allow it")
            )
            blocking = True

        payment_ref = ""
        face_ok = probe is not None and scores.get(identity_id, -1.0) >= face_threshold
        plate_ok = evidence in (PlateEvidence.EXACT, PlateEvidence.CANDIDATE)
        face_required = policy.face_required(event.amount_minor)
        if identity_id:
            payment_ref, need_face, why = self._choose_payment(
                identity_id,
                event.amount_minor,
                plate_ok,
                face_ok,
                # A frame or plate text was presented, even if nothing could be read in it.
                both_seen=probe is not None
                and (event.vehicle_image is not None or bool(event.plate_text)),
            )
            face_required = face_required or need_face
            if why:
                reasons.append(why)
                soft = True  # no binding allows a senseless payment: the driver confirms
        if face_required and probe is None:
            reasons.append(Reason("FACE_REQUIRED", "this amount or binding needs the face"))
        target = policy.target_far if face_required else policy.plate_only_target_far
        if evidence is PlateEvidence.EXACT:
            reasons.append(Reason("PLATE_EXACT_MATCH", "the plate read equals a bound plate"))
        elif evidence is PlateEvidence.CANDIDATE:
            reasons.append(
                Reason("PLATE_CANDIDATE_MATCH", "a bound plate is among the read's candidates")
            )
        if face_ok:
            reasons.append(Reason("FACE_MATCH", "the face matches the payer"))

        if not identity_id or not payment_ref or blocking:
            outcome = Outcome.DENY
        elif fused.estimated_far <= target and not soft and not (face_required and probe is None):
            outcome = Outcome.ALLOW
        elif fused.estimated_far <= policy.step_up_far or (soft and fused.fused_llr > 0):
            outcome = Outcome.STEP_UP
        else:
            outcome = Outcome.DENY
        if outcome is not Outcome.ALLOW and fused.estimated_far > target:
            reasons.append(
                Reason(
                    "FAR_ABOVE_TARGET",
                    f"estimated FAR {fused.estimated_far:.2e} > target {target:.0e}",
                )
            )
        return Decision(
            outcome=outcome,
            identity_id=identity_id,
            payment_ref=payment_ref if outcome is not Outcome.DENY else "",
            plate=read,
            face=probe,
            face_score=scores.get(identity_id),
            fusion=fused,
            reasons=tuple(reasons),
            policy_id=policy.policy_id,
            decision_id=uuid.uuid4().hex,
            decided_at=time.time(),
        )

    def _choose_payment(
        self, identity_id: str, amount: int, plate_ok: bool, face_ok: bool, both_seen: bool
    ) -> tuple[str, bool, Reason | None]:
        """The first binding whose ceiling and factors fit, and whether it needs the face.

        PLATE: the plate must match; FACE: the face must match; PLATE_AND_FACE: both were
        presented and their *fused* evidence decides (a misread plate can be carried by a
        strong face and vice versa; the fused FAR target still has to hold). When nothing
        fits, a binding the driver may confirm (STEP_UP) and the reason."""
        payments = self.store.payments_for(identity_id)
        if not payments:
            return "", False, Reason("NO_PAYMENT_BINDING", "the identity has no payment binding")
        within = [p for p in payments if not p.ceiling_minor or amount <= p.ceiling_minor]
        if not within:
            return (
                payments[0].payment_ref,
                True,
                Reason("AMOUNT_ABOVE_CEILING", "every binding's ceiling is below the amount"),
            )
        fits = {"plate": plate_ok, "face": face_ok, "plate_and_face": both_seen}
        for p in within:
            if fits.get(p.factors, False):
                return p.payment_ref, p.factors != "plate", None
        p = within[0]
        return (
            p.payment_ref,
            p.factors != "plate",
            Reason("BINDING_FACTORS_MISSING", f"binding {p.binding_id} needs {p.factors}"),
        )

    def _fraud_signals(
        self, event: GateEvent, read: PlateResult | None, policy: GatePolicy, reasons: list[Reason]
    ) -> bool:
        """Clone and presence checks against the plate's last sighting. True if any fired."""
        if read is None or not read.text:
            return False
        last = self.store.last_sighting(read.text)
        if last is None:
            if event.direction is Direction.EXIT and policy.track_presence:
                reasons.append(Reason("EXIT_WITHOUT_ENTRY", "no entry recorded for this plate"))
                return True
            return False
        fired = False
        now = self._when(event)
        if last.gate_id != event.gate_id and abs(now - last.at) < policy.min_travel_seconds:
            reasons.append(
                Reason(
                    "PLATE_CLONE_SUSPECTED",
                    f"the plate was at gate {last.gate_id} {abs(now - last.at):.0f}s ago, "
                    f"closer than the {policy.min_travel_seconds:.0f}s travel time",
                )
            )
            fired = True
        if policy.track_presence and event.direction is not Direction.UNSPECIFIED:
            if event.direction is Direction.ENTRY and last.direction == Direction.ENTRY:
                reasons.append(Reason("ENTRY_WITHOUT_EXIT", "entered twice without an exit"))
                fired = True
            if event.direction is Direction.EXIT and last.direction == Direction.EXIT:
                reasons.append(Reason("EXIT_WITHOUT_ENTRY", "exit without a matching entry"))
                fired = True
        return fired

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
