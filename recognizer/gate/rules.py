"""The gate decision as a pure function of the evidence, the gate policy and the fusion model.

No store, no model, no clock: `decide(evidence, policy, fusion)` maps what was gathered to
ALLOW / STEP_UP / DENY with machine-readable reasons. A factor counts only when it matches:
a plate is evidence *for* a payer only when a read (or its candidates) names a plate bound to
that payer, and a face found by a 1:N search is judged by the 1:N false-accept rate.
"""

from __future__ import annotations

import dataclasses

from recognizer.face.types import Liveness, LivenessDecision
from recognizer.fusion import FusionModel, PlateEvidence
from recognizer.gate.types import (
    Binding,
    Direction,
    Evidence,
    Factors,
    Outcome,
    Payer,
    Reason,
    Verdict,
)
from recognizer.policy import GatePolicy

# Every reason code a decision can carry, with what it means (the API documents these).
REASONS: dict[str, str] = {
    "PLATE_NOT_FOUND": "no plate could be read in the vehicle frame",
    "FACE_NOT_FOUND": "no face in the face frame",
    "UNKNOWN_VEHICLE": "no payer is bound to the plate, and the face identifies no payer",
    "PLATE_EXACT_MATCH": "the plate read equals a plate bound to the payer",
    "PLATE_CANDIDATE_MATCH": "a plate bound to the payer is among the read's candidates",
    "PLATE_NO_MATCH": "a plate was read, and it is not one bound to the payer",
    "PLATE_PROVINCE_GUESSED": "the plate's province character was not read (hidden, dirty or "
    "out of frame) but guessed: the plate names a payer as a candidate at most, and cannot "
    "pay alone on the plate-only tier",
    "FACE_MATCH": "the face matches the payer at the 1:1 threshold",
    "FACE_IDENTIFIED_AMONG_PAYERS": "the plate gave no payer; the face identified one 1:N",
    "FACE_1N_ESTIMATE": "the estimate is the 1:N false-accept rate over the identities searched",
    "FACE_BELOW_THRESHOLD": "the face scores below the 1:1 threshold against the plate's payers",
    "FACE_NOT_AMONG_PAYERS": "the face matches an identity that is not a payer of this plate",
    "FACE_REQUIRED": "this amount or binding needs the face",
    "NO_PAYMENT_BINDING": "the identity has no payment binding",
    "AMOUNT_ABOVE_CEILING": "every binding's ceiling is below the amount",
    "BINDING_FACTORS_MISSING": "no binding's factors are all matched",
    "PLATE_ONLY_TIER": "the amount is within the plate-only ceiling: the site's plate-only "
    "target applies",
    "DIRECTION_NOT_ALLOWED": "the gate policy does not allow this direction",
    "PLATE_CLONE_SUSPECTED": "the plate was at another gate closer than the travel time",
    "ENTRY_WITHOUT_EXIT": "the plate entered twice without an exit",
    "EXIT_WITHOUT_ENTRY": "exit without a matching entry",
    "DIRECTION_UNSPECIFIED_WHILE_PRESENT": "the event names no direction and the plate has an "
    "open entry at a gate that tracks presence: the driver confirms",
    "FAR_ABOVE_TARGET": "the estimated false-accept probability is above the policy target",
    "PRESENTATION_ATTACK_SUSPECTED": "the policy requires liveness and the face (or another "
    "face frame of the burst) looks like a presentation attack (e.g. a printed photo)",
    "LIVENESS_UNCERTAIN": "the policy requires liveness and the face's liveness is uncertain "
    "(or was not assessed)",
    "LIVENESS_PASSED": "the policy requires liveness and the face passed",
    "FACE_FRAMES_DISAGREE": "the burst's face frames do not all show the face used (another "
    "person, or a photo mixed in): the driver confirms",
    "PLATE_READ_NOT_SURE": "the plate-only tier pays only on an exact read whose every "
    "character was seen and whose confidence passes the calibrated bar; this read does not",
    "PLATE_TEXT_MISMATCH": "the gate's plate_text contradicts the plate the camera read: the "
    "camera outranks the text, and the driver confirms",
    "PLATE_TEXT_UNTRUSTED": "the payer was named by the gate's plate_text only, which this "
    "policy does not trust as a read (trust_plate_text): no plate evidence either way",
    "FACE_BELOW_FLOOR": "a plate-and-face binding needs the face to pass on its own as well, "
    "at the policy's face floor (face_floor_fmr): a cloned plate must not carry a look-alike",
}

_MATCHED = (PlateEvidence.EXACT, PlateEvidence.CANDIDATE)
_PLATE_REASON = {
    PlateEvidence.EXACT: "PLATE_EXACT_MATCH",
    PlateEvidence.CANDIDATE: "PLATE_CANDIDATE_MATCH",
    PlateEvidence.NO_MATCH: "PLATE_NO_MATCH",
}


class _Reasons(list[Reason]):
    def add(self, code: str, message: str = "") -> None:
        self.append(Reason(code, message or REASONS[code]))


def decide(ev: Evidence, policy: GatePolicy, fusion: FusionModel) -> Verdict:
    reasons = _Reasons()
    ev = _weigh_plate_text(ev, policy, reasons)
    if ev.vehicle_sent and not ev.plate_read:
        reasons.add("PLATE_NOT_FOUND")
    if ev.face_sent and not ev.face_found:
        reasons.add("FACE_NOT_FOUND")
    if ev.plate_province_guessed:
        reasons.add("PLATE_PROVINCE_GUESSED")
    fused = {
        p.identity_id: fusion.fuse(
            p.plate,
            p.face_score,
            searched=p.searched,
            clone_prior=policy.clone_prior,
            templates=p.templates * p.frames,  # every (template, frame) pair is a try
        )
        for p in ev.payers
    }
    if not ev.payers:
        reasons.add("UNKNOWN_VEHICLE")
        plate = PlateEvidence.NO_MATCH if ev.plate_read else PlateEvidence.ABSENT
        none = fusion.fuse(plate, None, clone_prior=policy.clone_prior)
        return Verdict(Outcome.DENY, "", "", none, tuple(reasons), None)

    # Several payers can share a plate (a family car): the best-supported one pays.
    payer = max(ev.payers, key=lambda p: (fused[p.identity_id].fused_llr, p.identity_id))
    result = fused[payer.identity_id]
    if payer.searched:
        reasons.add("FACE_IDENTIFIED_AMONG_PAYERS")
        reasons.add(
            "FACE_1N_ESTIMATE",
            f"the estimated FAR is the 1:N rate over {payer.searched} identities searched",
        )
    if payer.plate in _PLATE_REASON:
        reasons.add(_PLATE_REASON[payer.plate])
    face_ok = payer.face_score is not None and payer.face_score >= ev.face_threshold
    if face_ok:
        reasons.add("FACE_MATCH")

    blocking = _face_conflict(ev, reasons)
    soft = _fraud_signals(ev, policy, reasons)
    attack, uncertain = _liveness(ev, policy, reasons)
    if ev.face_found and not ev.face_frames_agree:
        reasons.add("FACE_FRAMES_DISAGREE")
        soft = True
    blocking = blocking or attack
    soft = soft or uncertain
    if ev.direction is not Direction.UNSPECIFIED and ev.direction.value not in policy.directions:
        reasons.add("DIRECTION_NOT_ALLOWED", f"gate policy {policy.policy_id} does not allow it")
        blocking = True

    binding, fits = _choose_binding(payer, ev, face_ok, reasons)
    if binding is None:
        return Verdict(Outcome.DENY, payer.identity_id, "", result, tuple(reasons), None)
    # A guessed province (put in, right about 1 time in 13, or read too faintly to have been
    # seen: painted over, under a sticker; plate/pipeline.py) is far from the exact or
    # candidate reads the plate-only target was calibrated on: it never pays alone.
    plate_only = (
        fits
        and binding.factors is Factors.PLATE
        and policy.plate_only_allows(ev.amount_minor)
        and not ev.plate_province_guessed
    )
    # A candidate never pays alone: the plate-only tier needs a sure exact read.
    if plate_only and not _sure_plate(payer, fusion):
        reasons.add("PLATE_READ_NOT_SURE")
        plate_only = False
    if plate_only:
        reasons.add("PLATE_ONLY_TIER")
    elif not ev.face_found:
        reasons.add("FACE_REQUIRED")
        soft = True
    target = policy.plate_only_target_far if plate_only else policy.target_far
    soft = soft or not fits or _below_floor(payer, binding, policy, fusion, reasons)

    far = result.estimated_far
    if blocking:
        outcome = Outcome.DENY
    elif far <= target and not soft:
        outcome = Outcome.ALLOW
    elif far <= policy.step_up_far or (soft and result.fused_llr > 0):
        outcome = Outcome.STEP_UP
    else:
        outcome = Outcome.DENY
    if outcome is not Outcome.ALLOW and far > target:
        reasons.add("FAR_ABOVE_TARGET", f"estimated FAR {far:.2e} > target {target:.0e}")
    if ev.plate_text_mismatch:
        # The camera contradicts the gate's text: nobody is charged without the driver.
        reasons.add("PLATE_TEXT_MISMATCH")
        outcome = Outcome.DENY if blocking else Outcome.STEP_UP
        return Verdict(outcome, "", "", result, tuple(reasons), payer.face_score)
    return Verdict(
        outcome,
        payer.identity_id,
        binding.payment_ref if outcome is not Outcome.DENY else "",
        result,
        tuple(reasons),
        payer.face_score,
    )


def _weigh_plate_text(ev: Evidence, policy: GatePolicy, reasons: _Reasons) -> Evidence:
    """A payer named only by the gate's plate_text: an exact read where the policy trusts
    that gate's reader, otherwise no plate evidence at all (it only said whom to score)."""
    if policy.trust_plate_text or not any(p.plate_by_text for p in ev.payers):
        return ev
    reasons.add("PLATE_TEXT_UNTRUSTED")
    payers = tuple(
        dataclasses.replace(p, plate=PlateEvidence.ABSENT, plate_confidence=0.0)
        if p.plate_by_text
        else p
        for p in ev.payers
    )
    return dataclasses.replace(ev, payers=payers)


def _sure_plate(payer: Payer, fusion: FusionModel) -> bool:
    """An exact read of the payer's plate, confident enough to pay alone (the guessed
    province is the caller's check)."""
    return (
        payer.plate is PlateEvidence.EXACT
        and payer.plate_confidence >= fusion.plate.sure_confidence
    )


def _below_floor(
    payer: Payer, binding: Binding, policy: GatePolicy, fusion: FusionModel, reasons: _Reasons
) -> bool:
    """PLATE_AND_FACE: the face must also pass on its own at the policy's floor."""
    if binding.factors is not Factors.PLATE_AND_FACE or policy.face_floor_fmr is None:
        return False
    floor = fusion.face_score_at(policy.face_floor_fmr)
    if payer.face_score is not None and payer.face_score >= floor:
        return False
    score = "no face" if payer.face_score is None else f"face score {payer.face_score:.3f}"
    reasons.add(
        "FACE_BELOW_FLOOR",
        f"{score} < floor {floor:.3f} (FMR {policy.face_floor_fmr:.0e})",
    )
    return True


def _face_conflict(ev: Evidence, reasons: _Reasons) -> bool:
    """The face fails every payer of the read plate: blocking when it is someone else's."""
    by_plate = [p for p in ev.payers if not p.searched]
    scored = [p.face_score for p in by_plate if p.face_score is not None]
    if not (ev.face_found and scored) or max(scored) >= ev.face_threshold:
        return False
    if ev.face_elsewhere:
        reasons.add("FACE_NOT_AMONG_PAYERS")
        return True
    reasons.add("FACE_BELOW_THRESHOLD")
    return False


def _choose_binding(
    payer: Payer, ev: Evidence, face_ok: bool, reasons: _Reasons
) -> tuple[Binding | None, bool]:
    """The first binding within its ceiling whose factors all matched, and True; otherwise a
    binding the driver may confirm (STEP_UP) and False; None when there is no binding.

    PLATE needs the plate to match; FACE the face; PLATE_AND_FACE a matching plate and a face
    whose fused evidence then has to meet the target."""
    if not payer.bindings:
        reasons.add("NO_PAYMENT_BINDING")
        return None, False
    within = [
        b for b in payer.bindings if not b.ceiling_minor or ev.amount_minor <= b.ceiling_minor
    ]
    if not within:
        reasons.add("AMOUNT_ABOVE_CEILING")
        return payer.bindings[0], False
    plate_ok = payer.plate in _MATCHED
    matched = {
        Factors.PLATE: plate_ok,
        Factors.FACE: face_ok,
        Factors.PLATE_AND_FACE: plate_ok and ev.face_found,
    }
    for b in within:
        if matched[b.factors]:
            return b, True
    b = within[0]
    reasons.add("BINDING_FACTORS_MISSING", f"binding {b.binding_id} needs {b.factors.value}")
    return b, False


def _liveness(ev: Evidence, policy: GatePolicy, reasons: _Reasons) -> tuple[bool, bool]:
    """(likely attack, uncertain) when the policy requires liveness for this amount."""
    if not (ev.face_found and policy.liveness_required(ev.amount_minor)):
        return False, False
    lv = _least_live(ev)
    if lv is None:
        reasons.add("LIVENESS_UNCERTAIN", "the policy requires liveness; none was assessed")
        return False, True
    if policy.camera != "colour":  # the model reads colour: no evidence here, never ATTACK
        reasons.add(
            "LIVENESS_UNCERTAIN", f"the gate's camera is {policy.camera}: liveness needs colour"
        )
        return False, True
    if lv.missing:  # the stage had not the evidence it needs (UNCERTAIN whatever the score)
        reasons.add("LIVENESS_UNCERTAIN", f"liveness uncertain: {lv.missing}")
        return False, True
    if lv.decision is LivenessDecision.ATTACK:
        reasons.add(
            "PRESENTATION_ATTACK_SUSPECTED",
            f"liveness score {lv.score:.3f}: the face looks like a presentation attack",
        )
        return True, False
    if lv.decision is LivenessDecision.UNCERTAIN:
        reasons.add("LIVENESS_UNCERTAIN", f"liveness score {lv.score:.3f} is uncertain")
        return False, True
    reasons.add("LIVENESS_PASSED", f"liveness score {lv.score:.3f}")
    return False, False


_LIVENESS_RANK = {
    LivenessDecision.ATTACK: 0,
    LivenessDecision.UNCERTAIN: 1,
    LivenessDecision.LIVE: 2,
}


def _least_live(ev: Evidence) -> Liveness | None:
    """The burst is as live as its least live face frame: the face used and every other
    frame checked (`Evidence.burst_liveness`); None (not assessed) ranks with uncertain.
    Ties go to the lower score, so the answer does not depend on the frames' order."""
    frames = (ev.face_liveness, *ev.burst_liveness)
    assessed = [lv for lv in frames if lv is not None]
    worst = min(assessed, key=lambda lv: (_LIVENESS_RANK[lv.decision], lv.score), default=None)
    if worst is not None and (worst.decision is LivenessDecision.ATTACK or None not in frames):
        return worst
    return None


def _fraud_signals(ev: Evidence, policy: GatePolicy, reasons: _Reasons) -> bool:
    """Clone and presence checks against the plate's last sighting. True if any fired."""
    if not ev.plate_read:
        return False
    last = ev.last_sighting
    if last is None:
        if ev.direction is Direction.EXIT and policy.track_presence:
            reasons.add("EXIT_WITHOUT_ENTRY", "no entry recorded for this plate")
            return True
        return False
    fired = False
    gap = abs(ev.now - last.at)
    if last.gate_id != ev.gate_id and gap < policy.min_travel_seconds:
        reasons.add(
            "PLATE_CLONE_SUSPECTED",
            f"the plate was at gate {last.gate_id} {gap:.0f}s ago, closer than the "
            f"{policy.min_travel_seconds:.0f}s travel time",
        )
        fired = True
    # Presence follows the last sighting that named a direction: an event without one in
    # between neither ends an entry nor starts one.
    was = last.direction if last.presence is None else last.presence
    if policy.track_presence and ev.direction is Direction.UNSPECIFIED:
        if was == Direction.ENTRY:
            reasons.add("DIRECTION_UNSPECIFIED_WHILE_PRESENT")
            fired = True
    elif policy.track_presence:
        if ev.direction is Direction.ENTRY and was == Direction.ENTRY:
            reasons.add("ENTRY_WITHOUT_EXIT")
            fired = True
        if ev.direction is Direction.EXIT and was == Direction.EXIT:
            reasons.add("EXIT_WITHOUT_ENTRY")
            fired = True
    return fired
