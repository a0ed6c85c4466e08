"""The gate engine: idempotent Authorize around evidence gathering and the pure rules.

`GateEngine.authorize` is the one call behind the Authorize RPC. Per (gate_id, event_id):
- a stored decision whose input digest equals this call's is replayed as recorded, even
  after the payer was unbound or deleted (it is the record of what was decided);
- the same event with other inputs is ALREADY_EXISTS / EVENT_ID_REUSED, and nothing is stored;
- concurrent retries join the one computation in flight (after the same digest check).
The replay check hashes the frames' bytes only: it comes before the clock-skew check and
before any image is decoded. A call whose deadline ran out stores nothing, so its retry
computes afresh.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from recognizer import accounting, deadline
from recognizer.errors import AlreadyExists, DeadlineExceeded, InvalidArgument
from recognizer.fusion import FusionModel, PlateEvidence
from recognizer.gate import rules
from recognizer.gate.evidence import EvidenceGatherer, Gathered
from recognizer.gate.inputs import frame_field
from recognizer.gate.types import (
    Authorized,
    Decision,
    Direction,
    GateEvent,
    GateRequest,
    Outcome,
    Verdict,
)
from recognizer.policy import GatePolicy, PolicySet, is_currency_code
from recognizer.store.ports import Decisions
from recognizer.store.rows import UNCHECKED, DecisionRow, SightingMoved

Decode = Callable[[bytes, str], np.ndarray]
ParsePlate = Callable[[str, str], str]  # (text, field) -> normalised plate, or InvalidArgument
Encode = Callable[[Decision], bytes]


class GateEngine:
    def __init__(
        self,
        *,
        evidence: EvidenceGatherer,
        store: Decisions,
        fusion: FusionModel,
        policies: PolicySet,
        decode: Decode,
        encode: Encode,
        parse_plate: ParsePlate,
        max_clock_skew_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.evidence = evidence
        self.store = store
        self.fusion = fusion
        self.policies = policies
        self._decode = decode
        self._encode = encode  # the decision record's codec: the API's response bytes
        self._parse_plate = parse_plate
        self.max_clock_skew_s = max_clock_skew_s
        self._clock = clock
        self._inflight: dict[tuple[str, str], tuple[str, Future[Authorized]]] = {}
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gate-decode")
        self._lock = threading.Lock()
        check_policies(policies, fusion)

    # --- idempotent entry point -----------------------------------------------------------

    def authorize(self, request: GateRequest) -> Authorized:
        inputs = request.inputs
        if not inputs.gate_id:
            raise InvalidArgument("gate_id is required", field="gate_id", reason="MISSING")
        if not inputs.event_id:
            raise InvalidArgument("event_id is required", field="event_id", reason="MISSING")
        digest = inputs.digest()
        key = (inputs.gate_id, inputs.event_id)
        while True:
            stored = self.store.get_decision(inputs.gate_id, inputs.event_id)
            if stored is not None:
                return Authorized(_same_event(stored, digest).payload, True)
            with self._lock:
                running = self._inflight.get(key)
                owner = running is None
                if owner:
                    running = self._inflight[key] = (digest, Future())
            assert running is not None
            if owner:
                break
            if running[0] != digest:
                raise _reused(inputs.gate_id, inputs.event_id)
            try:
                return Authorized(running[1].result().payload, True)
            except DeadlineExceeded:
                continue  # the first caller gave up and stored nothing: decide for this one
        try:
            result = self._decide_and_record(request, digest)
            running[1].set_result(result)
            return result
        except BaseException as exc:
            running[1].set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _decide_and_record(self, request: GateRequest, digest: str) -> Authorized:
        now = self._clock()
        policy = self.policies.for_gate(request.inputs.gate_id)
        event = self._event(request, now, policy)
        # One pass: the fast path, decide, and complete only if the decision could improve.
        liveness = policy.liveness_required(event.amount_minor)
        gathered, verdict = self._verdict(self.evidence.gather(event, now, liveness), policy)
        while True:
            decision, payload = self._record(gathered, verdict, policy, now)
            read = gathered.read
            sighting = (read.text, event.gate_id, event.direction.value, now) if read else None
            try:
                # A caller who has gone (or whose time cannot hold the write) gets nothing
                # stored. The plate is locked while its last sighting is checked and this
                # event's recorded: N simultaneous events of one plate decide as N in turn.
                with deadline.stage("gate.store"):
                    row = self.store.put_decision(
                        gate_id=event.gate_id,
                        event_id=event.event_id,
                        decision_id=decision.decision_id,
                        identity_id=decision.identity_id,
                        outcome=decision.outcome.value,
                        payload=payload,
                        inputs=request.inputs.record(),
                        input_digest=digest,
                        created_at=now,
                        sighting=sighting,
                        seen=gathered.last_seen if sighting else UNCHECKED,
                    )
                break
            except SightingMoved as moved:
                # Another decision for the plate was recorded since its sighting was read:
                # decide again from the sighting that stands (the rules are pure and cheap).
                gathered, verdict = self._verdict(gathered.with_last(moved.last), policy)
        # Another process may have stored the event first: its decision stands, if it was
        # made from the same inputs.
        row = _same_event(row, digest)
        return Authorized(row.payload, row.decision_id != decision.decision_id)

    def _verdict(self, gathered: Gathered, policy: GatePolicy) -> tuple[Gathered, Verdict]:
        """Decide; complete a pending glimpse and decide again only if that could improve."""
        verdict = rules.decide(gathered.evidence, policy, self.fusion)
        if gathered.can_improve and verdict.outcome is not Outcome.ALLOW:
            gathered = self.evidence.complete(gathered)
            verdict = rules.decide(gathered.evidence, policy, self.fusion)
        return gathered, verdict

    def _record(
        self, gathered: Gathered, verdict: Verdict, policy: GatePolicy, now: float
    ) -> tuple[Decision, bytes]:
        """The decision record and its stored bytes (the API's response)."""
        evidence = gathered.evidence
        decision = Decision(
            outcome=verdict.outcome,
            identity_id=verdict.identity_id,
            payment_ref=verdict.payment_ref,
            plate=gathered.read,
            face=gathered.probe,
            face_score=verdict.face_score,
            fusion=verdict.fusion,
            reasons=verdict.reasons,
            policy_id=policy.policy_id,
            decision_id=uuid.uuid4().hex,
            decided_at=now,
            face_frame=evidence.face_frame,
            vehicle_frames_read=evidence.vehicle_frames_read,
        )
        return decision, self._encode(decision)

    def _event(self, request: GateRequest, now: float, policy: GatePolicy) -> GateEvent:
        """Validate and decode, cheapest checks first."""
        inputs = request.inputs
        direction = _direction(inputs.direction, policy)
        currency = _currency(inputs.currency, policy)
        if inputs.observed_at_ns:
            skew = inputs.observed_at_ns / 1e9 - now
            if abs(skew) > self.max_clock_skew_s:
                raise InvalidArgument(
                    f"observed_at is {skew:+.0f}s from the server's clock (at most "
                    f"{self.max_clock_skew_s:.0f}s allowed); check the gate's clock",
                    field="observed_at",
                    reason="CLOCK_SKEW",
                )
        if inputs.amount_minor < 0:
            raise InvalidArgument(
                "amount_minor must be >= 0", field="amount_minor", reason="NEGATIVE_AMOUNT"
            )
        if not (request.vehicle_images or inputs.plate_text or request.face_images):
            raise InvalidArgument(
                "send a vehicle_image, a plate_text or a face_image",
                field="vehicle_image",
                reason="NO_EVIDENCE",
            )
        plate_text = self._parse_plate(inputs.plate_text, "plate_text") if inputs.plate_text else ""
        # Every frame is decoded (a budgeted stage each, imaging.decode), so a corrupt frame is
        # refused whichever frames the evidence ends up reading.
        vehicle = self._decode_all(request.vehicle_images, "vehicle", request.vehicle_single)
        face = self._decode_all(request.face_images, "face", request.face_single)
        return GateEvent(
            gate_id=inputs.gate_id,
            event_id=inputs.event_id,
            vehicle_images=vehicle,
            plate_text=plate_text,
            face_images=face,
            amount_minor=inputs.amount_minor,
            currency=currency,
            direction=direction,
        )

    def _decode_all(
        self, frames: tuple[bytes, ...], kind: str, single: bool
    ) -> tuple[np.ndarray, ...]:
        """Every frame decoded, a burst's later frames in the decode pool beside the first
        (the decoder releases the GIL). A frame the pool has not started yet (it is busy
        with other calls) is decoded here instead. The first failing frame in order is the
        error."""
        jobs = [
            functools.partial(self._decode, data, frame_field(kind, i, single))
            for i, data in enumerate(frames)
        ]
        later = [accounting.submit(self._decode_pool, job) for job in jobs[1:]]
        try:
            out = [job() for job in jobs[:1]]
            for job, future in zip(jobs[1:], later, strict=True):
                out.append(job() if future.cancel() else future.result())
            return tuple(out)
        finally:
            for future in later:
                future.cancel()

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self.evidence.close()


def _direction(sent: str, policy: GatePolicy) -> Direction:
    """The event's direction: as sent, or the policy's default for an UNSPECIFIED one, which
    a policy that needs a direction and names no default refuses."""
    direction = Direction(sent)
    if direction is not Direction.UNSPECIFIED:
        return direction
    if policy.default_direction:
        return Direction(policy.default_direction)
    if policy.needs_direction:
        raise InvalidArgument(
            f"gate policy {policy.policy_id} needs a direction ({' or '.join(policy.directions)})",
            field="direction",
            reason="DIRECTION_REQUIRED",
        )
    return direction


def _currency(sent: str, policy: GatePolicy) -> str:
    """The policy's one currency: sent as its ISO 4217 code, or left empty (it is then the
    policy's, as clients before currencies were checked sent it)."""
    if not sent or sent == policy.currency:
        return policy.currency
    if not is_currency_code(sent):
        raise InvalidArgument(
            f"currency {sent!r} is not an ISO 4217 code of money (three capital letters)",
            field="currency",
            reason="NOT_ISO_4217",
        )
    raise InvalidArgument(
        f"gate policy {policy.policy_id} charges in {policy.currency}, not {sent}",
        field="currency",
        reason="CURRENCY_NOT_ACCEPTED",
    )


def _reused(gate_id: str, event_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"event {event_id!r} of gate {gate_id!r} was already decided from other inputs; "
        "send a new event_id for a new event",
        field="event_id",
        reason="EVENT_ID_REUSED",
    )


def _same_event(row: DecisionRow, digest: str) -> DecisionRow:
    """The stored row, when it was decided from these inputs; EVENT_ID_REUSED otherwise."""
    if row.input_digest != digest:
        raise _reused(row.gate_id, row.event_id)
    return row


def check_policies(policies: PolicySet, fusion: FusionModel) -> None:
    """Refuse a policy whose plate-only tier can never ALLOW with this calibration."""
    for policy in policies.all():
        if policy.plate_only_max_minor <= 0:
            continue
        exact = fusion.fuse(PlateEvidence.EXACT, None, clone_prior=policy.clone_prior)
        if exact.estimated_far > policy.plate_only_target_far:
            raise ValueError(
                f"policy {policy.policy_id}: an exact plate read has an estimated FAR of "
                f"{exact.estimated_far:.4f} with clone_prior "
                f"{fusion.plate.clone_prior if policy.clone_prior is None else policy.clone_prior}"
                f", above plate_only_target_far {policy.plate_only_target_far}: the plate-only "
                "tier would never allow; raise the target or lower the site's clone prior"
            )
