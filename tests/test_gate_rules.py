"""The gate rules as a pure function: a table of evidence -> outcome and reasons, with a
synthetic fusion model and no models, store or datasets. Every outcome and every reason code
is reached (checked at the end), including each integrity hole the gate once had."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from recognizer.face.types import Liveness, LivenessDecision
from recognizer.gate.rules import REASONS, decide
from recognizer.gate.types import (
    Direction,
    Evidence,
    Factors,
    Outcome,
    Payer,
    Sighting,
)
from recognizer.policy import GatePolicy
from tests.helpers import (
    ABSENT,
    CAND,
    EXACT,
    FUSION,
    NO,
    NOW,
    SURE,
    THRESHOLD,
    binding,
    evidence,
    payer,
)

ALLOW, STEP_UP, DENY = Outcome.ALLOW, Outcome.STEP_UP, Outcome.DENY


POLICY = GatePolicy(
    policy_id="p",
    plate_only_max_minor=1000,
    target_far=1e-5,
    plate_only_target_far=0.05,
    step_up_far=1e-2,
    directions=("entry", "exit"),
    min_travel_seconds=120,
)


ATTACK_FACE = Liveness(0.02, LivenessDecision.ATTACK)
UNCERTAIN_FACE = Liveness(0.45, LivenessDecision.UNCERTAIN)
LIVE_FACE = Liveness(0.93, LivenessDecision.LIVE)
# Scored low, but the stage had no evidence (crop mostly outside the frame): UNCERTAIN.
MISSING_FACE = Liveness(0.01, LivenessDecision.UNCERTAIN, "60% of the context crop is outside")
LIVENESS_ON = {"require_liveness": True}
PLATE_ONLY = binding(Factors.PLATE)
FACE_ONLY = binding(Factors.FACE)
NO_FACE = {"face_sent": False, "face_found": False}

# (name, evidence, policy changes, outcome, reasons that must be present, reasons that must not)
CASES: list[tuple[str, Evidence, dict, Outcome, set[str], set[str]]] = [
    (
        "plate and face match",
        evidence(payer()),
        {},
        ALLOW,
        {"PLATE_EXACT_MATCH", "FACE_MATCH"},
        {"FAR_ABOVE_TARGET"},
    ),
    (
        "bound plate among the candidates, face matches",
        evidence(payer(CAND, 0.75)),
        {},
        ALLOW,
        {"PLATE_CANDIDATE_MATCH", "FACE_MATCH"},
        set(),
    ),
    (
        # Hole 2: the face alone (any plate text, or another car's plate) never satisfies a
        # PLATE_AND_FACE binding: the plate counts only when it matches.
        "face identified 1:N, plate read is another car's",
        evidence(payer(NO, 0.9, searched=50)),
        {},
        STEP_UP,
        {
            "PLATE_NO_MATCH",
            "FACE_IDENTIFIED_AMONG_PAYERS",
            "FACE_1N_ESTIMATE",
            "BINDING_FACTORS_MISSING",
        },
        set(),
    ),
    (
        "face alone, no plate at all, PLATE_AND_FACE binding",
        evidence(payer(ABSENT, 0.9, searched=50), vehicle_sent=False, plate_read=False),
        {},
        STEP_UP,
        {"BINDING_FACTORS_MISSING", "FACE_1N_ESTIMATE"},
        {"PLATE_NO_MATCH"},
    ),
    (
        # Hole 3: 1:N is judged with the 1:N rate; at this gallery size a strong face on a
        # FACE binding still cannot reach 1e-5 (no comparison below 1/(n+1), times N).
        "face binding, identified 1:N among 5000",
        evidence(payer(ABSENT, 0.95, FACE_ONLY, searched=5000), plate_read=False),
        {},
        DENY,
        {"FACE_IDENTIFIED_AMONG_PAYERS", "FACE_1N_ESTIMATE", "FACE_MATCH", "FAR_ABOVE_TARGET"},
        set(),
    ),
    (
        "face binding, identified 1:N among 10, a site target of 1e-3",
        evidence(payer(ABSENT, 0.95, FACE_ONLY, searched=10), plate_read=False),
        {"target_far": 1e-3},
        ALLOW,
        {"FACE_1N_ESTIMATE", "FACE_MATCH"},
        {"FAR_ABOVE_TARGET"},
    ),
    (
        # Hole 6: the plate-only tier is reachable.
        "plate-only tier: exact read, PLATE binding, small amount",
        evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=500, **NO_FACE),
        {},
        ALLOW,
        {"PLATE_ONLY_TIER", "PLATE_EXACT_MATCH"},
        {"FACE_REQUIRED"},
    ),
    (
        "plate-only binding above the plate-only ceiling, no face",
        evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=5000, **NO_FACE),
        {},
        STEP_UP,
        {"FACE_REQUIRED", "FAR_ABOVE_TARGET"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        # A candidate never pays alone (a look-alike plate one character away).
        "plate-only tier: the bound plate among the candidates",
        evidence(payer(CAND, None, PLATE_ONLY), amount_minor=500, **NO_FACE),
        {},
        STEP_UP,
        {"PLATE_READ_NOT_SURE", "PLATE_CANDIDATE_MATCH", "FACE_REQUIRED"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "plate-only tier: an exact read below the sure bar",
        evidence(
            dataclasses.replace(payer(EXACT, None, PLATE_ONLY), plate_confidence=0.5),
            amount_minor=500,
            **NO_FACE,
        ),
        {},
        STEP_UP,
        {"PLATE_READ_NOT_SURE", "PLATE_EXACT_MATCH", "FACE_REQUIRED"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "the gate's plate_text contradicts the camera: nobody is charged",
        evidence(payer(EXACT, 0.95), plate_text_mismatch=True),
        {},
        STEP_UP,
        {"PLATE_TEXT_MISMATCH"},
        set(),
    ),
    (
        "a payer named by an untrusted plate_text only: no plate evidence",
        evidence(dataclasses.replace(payer(EXACT, 0.95), plate_by_text=True)),
        {},
        STEP_UP,
        {"PLATE_TEXT_UNTRUSTED", "BINDING_FACTORS_MISSING", "FACE_MATCH"},
        {"PLATE_EXACT_MATCH"},
    ),
    (
        "a payer named by the plate_text of a trusted gate: an exact read",
        evidence(dataclasses.replace(payer(EXACT, 0.95), plate_by_text=True)),
        {"trust_plate_text": True},
        ALLOW,
        {"PLATE_EXACT_MATCH", "FACE_MATCH"},
        {"PLATE_TEXT_UNTRUSTED"},
    ),
    (
        # A targeted attacker: the payer's cloned plate and the face most like the payer's.
        "plate and face: the fused target is met but the face is below the floor",
        evidence(payer(EXACT, 0.36)),
        {"face_floor_fmr": 1e-5},
        STEP_UP,
        {"FACE_BELOW_FLOOR", "PLATE_EXACT_MATCH", "FACE_MATCH"},
        set(),
    ),
    (
        "plate and face: the same without a floor",
        evidence(payer(EXACT, 0.36)),
        {"face_floor_fmr": None},
        ALLOW,
        {"PLATE_EXACT_MATCH", "FACE_MATCH"},
        {"FACE_BELOW_FLOOR"},
    ),
    (
        # The same read with its province guessed (the glyph hidden or out of frame): another
        # province's car with the same tail must not pay alone.
        "plate-only tier: the province was guessed",
        evidence(
            payer(CAND, None, PLATE_ONLY), amount_minor=500, plate_province_guessed=True, **NO_FACE
        ),
        {},
        STEP_UP,
        {"PLATE_PROVINCE_GUESSED", "PLATE_CANDIDATE_MATCH", "FACE_REQUIRED"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "the province was guessed and the face matches: the face decides",
        evidence(payer(CAND, 0.75), plate_province_guessed=True),
        {},
        ALLOW,
        {"PLATE_PROVINCE_GUESSED", "PLATE_CANDIDATE_MATCH", "FACE_MATCH"},
        set(),
    ),
    (
        "plate-only binding, but the plate is not the payer's",
        evidence(payer(NO, 0.9, PLATE_ONLY, searched=50), amount_minor=500),
        {},
        STEP_UP,
        {"BINDING_FACTORS_MISSING", "PLATE_NO_MATCH"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "nobody: no payer for the plate or the face",
        evidence(),
        {},
        DENY,
        {"UNKNOWN_VEHICLE"},
        set(),
    ),
    (
        "nothing readable in either frame",
        evidence(plate_read=False, face_found=False),
        {},
        DENY,
        {"PLATE_NOT_FOUND", "FACE_NOT_FOUND", "UNKNOWN_VEHICLE"},
        set(),
    ),
    (
        "the face belongs to someone who is not a payer of this plate",
        evidence(payer(EXACT, 0.05), face_elsewhere=True),
        {},
        DENY,
        {"FACE_NOT_AMONG_PAYERS", "PLATE_EXACT_MATCH"},
        {"FACE_MATCH"},
    ),
    (
        "the face is below the threshold and nobody else's: the driver may confirm",
        evidence(payer(EXACT, 0.25)),
        {},
        STEP_UP,
        {"FACE_BELOW_THRESHOLD", "FAR_ABOVE_TARGET"},
        {"FACE_MATCH"},
    ),
    (
        "face just above the threshold: the fused estimate misses the target",
        evidence(payer(EXACT, 0.31)),
        {},
        STEP_UP,
        {"FACE_MATCH", "FAR_ABOVE_TARGET"},
        set(),
    ),
    (
        "no payment binding",
        evidence(Payer("payer", EXACT, 0.75, 0, ())),
        {},
        DENY,
        {"NO_PAYMENT_BINDING"},
        set(),
    ),
    (
        "every ceiling below the amount",
        evidence(payer(EXACT, 0.75, binding(ceiling=100))),
        {},
        STEP_UP,
        {"AMOUNT_ABOVE_CEILING"},
        set(),
    ),
    (
        "direction the gate does not allow",
        evidence(payer(), direction=Direction.EXIT),
        {"directions": ("entry",)},
        DENY,
        {"DIRECTION_NOT_ALLOWED"},
        set(),
    ),
    (
        "the plate was at another gate 30 s ago",
        evidence(payer(), last_sighting=Sighting("G-9", "unspecified", NOW - 30)),
        {},
        STEP_UP,
        {"PLATE_CLONE_SUSPECTED"},
        set(),
    ),
    (
        "entry twice without an exit",
        evidence(
            payer(),
            direction=Direction.ENTRY,
            last_sighting=Sighting("G-1", "entry", NOW - 3600),
        ),
        {},
        STEP_UP,
        {"ENTRY_WITHOUT_EXIT"},
        set(),
    ),
    (
        "exit with no entry on record",
        evidence(payer(), direction=Direction.EXIT),
        {},
        STEP_UP,
        {"EXIT_WITHOUT_ENTRY"},
        set(),
    ),
    (
        "a family car: the payer whose face matches pays",
        evidence(payer(EXACT, 0.1, pid="parent"), payer(EXACT, 0.8, pid="child")),
        {},
        ALLOW,
        {"FACE_MATCH"},
        {"FACE_BELOW_THRESHOLD"},
    ),
    # Liveness (issue 18): a printed photo of the payer with the payer's (cloned) plate.
    (
        "liveness required: a likely print attack is denied",
        evidence(payer(), face_liveness=ATTACK_FACE),
        LIVENESS_ON,
        DENY,
        {"PRESENTATION_ATTACK_SUSPECTED", "PLATE_EXACT_MATCH", "FACE_MATCH"},
        {"LIVENESS_PASSED"},
    ),
    (
        "liveness off: the same print attack pays (the counterfactual)",
        evidence(payer(), face_liveness=ATTACK_FACE),
        {},
        ALLOW,
        {"FACE_MATCH"},
        {"PRESENTATION_ATTACK_SUSPECTED", "LIVENESS_UNCERTAIN", "LIVENESS_PASSED"},
    ),
    (
        "liveness required: an uncertain face steps up",
        evidence(payer(), face_liveness=UNCERTAIN_FACE),
        LIVENESS_ON,
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        {"PRESENTATION_ATTACK_SUSPECTED"},
    ),
    (
        "liveness required: a face no stage assessed steps up",
        evidence(payer(), face_liveness=None),
        LIVENESS_ON,
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        set(),
    ),
    (
        "liveness required on a grey camera: even a face the model calls an attack steps up",
        evidence(payer(), face_liveness=ATTACK_FACE),
        {**LIVENESS_ON, "camera": "grey"},
        STEP_UP,
        {"LIVENESS_UNCERTAIN", "FACE_MATCH"},
        {"PRESENTATION_ATTACK_SUSPECTED", "LIVENESS_PASSED"},
    ),
    (
        "liveness required on an IR camera: a live-scored face steps up too",
        evidence(payer(), face_liveness=LIVE_FACE),
        {**LIVENESS_ON, "camera": "ir"},
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        {"LIVENESS_PASSED"},
    ),
    (
        "liveness required: a face whose evidence is missing steps up, never denied",
        evidence(payer(), face_liveness=MISSING_FACE),
        LIVENESS_ON,
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        {"PRESENTATION_ATTACK_SUSPECTED", "LIVENESS_PASSED"},
    ),
    (
        "liveness required: a live face pays",
        evidence(payer(), face_liveness=LIVE_FACE),
        LIVENESS_ON,
        ALLOW,
        {"LIVENESS_PASSED", "FACE_MATCH"},
        {"LIVENESS_UNCERTAIN"},
    ),
    (
        "liveness required only from an amount: below it the check does not apply",
        evidence(payer(), face_liveness=ATTACK_FACE, amount_minor=4999),
        {**LIVENESS_ON, "liveness_min_amount_minor": 5000},
        ALLOW,
        set(),
        {"PRESENTATION_ATTACK_SUSPECTED", "LIVENESS_PASSED"},
    ),
    (
        "liveness required: an attack is denied even on the plate-only tier",
        evidence(payer(EXACT, None, PLATE_ONLY), face_liveness=ATTACK_FACE, amount_minor=500),
        LIVENESS_ON,
        DENY,
        {"PRESENTATION_ATTACK_SUSPECTED"},
        set(),
    ),
    (
        "a burst whose face frames are not one person is never allowed, however strong",
        evidence(payer(EXACT, 0.95), face_frames_agree=False),
        {},
        STEP_UP,
        {"FACE_FRAMES_DISAGREE", "FACE_MATCH", "PLATE_EXACT_MATCH"},
        set(),
    ),
    (
        "a burst whose face frames are one person decides as one frame",
        evidence(payer(EXACT, 0.95), face_frames_agree=True),
        {},
        ALLOW,
        {"FACE_MATCH"},
        {"FACE_FRAMES_DISAGREE"},
    ),
]


# Issue 26: the boundaries and policy fields a mutant could move unseen.
ENTRY_SEEN = Sighting("G-1", "entry", NOW - 3600)
EXIT_SEEN = Sighting("G-1", "exit", NOW - 3600)
SMALL = {"amount_minor": 500}
CASES += [
    (
        "a PLATE binding pays on the plate alone at a small amount",
        evidence(payer(EXACT, None, PLATE_ONLY), **SMALL, **NO_FACE),
        {},
        ALLOW,
        {"PLATE_ONLY_TIER", "PLATE_EXACT_MATCH"},
        {"FACE_REQUIRED"},
    ),
    (
        "a PLATE_AND_FACE binding never pays on the plate alone, however small the amount",
        evidence(payer(EXACT, None, binding(Factors.PLATE_AND_FACE)), **SMALL, **NO_FACE),
        {},
        STEP_UP,
        {"FACE_REQUIRED", "BINDING_FACTORS_MISSING"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "a PLATE_AND_FACE binding with the face at a small amount: the full target applies",
        evidence(payer(EXACT, 0.75, binding(Factors.PLATE_AND_FACE)), **SMALL),
        {},
        ALLOW,
        {"FACE_MATCH", "PLATE_EXACT_MATCH"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "a FACE binding never pays on the plate alone at a small amount",
        evidence(payer(EXACT, None, FACE_ONLY), **SMALL, **NO_FACE),
        {},
        STEP_UP,
        {"FACE_REQUIRED", "BINDING_FACTORS_MISSING"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "amount 0 where the policy has no plate-only tier: the face is required",
        evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=0, **NO_FACE),
        {"plate_only_max_minor": 0},
        STEP_UP,
        {"FACE_REQUIRED"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "the amount at the plate-only ceiling is within the tier",
        evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=1000, **NO_FACE),
        {},
        ALLOW,
        {"PLATE_ONLY_TIER"},
        set(),
    ),
    (
        "one minor unit above the plate-only ceiling needs the face",
        evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=1001, **NO_FACE),
        {},
        STEP_UP,
        {"FACE_REQUIRED"},
        {"PLATE_ONLY_TIER"},
    ),
    (
        "the amount at a binding's ceiling is within it",
        evidence(payer(EXACT, 0.75, binding(Factors.PLATE_AND_FACE, 5000))),
        {},
        ALLOW,
        set(),
        {"AMOUNT_ABOVE_CEILING"},
    ),
    (
        "one minor unit above a binding's ceiling is not",
        evidence(payer(EXACT, 0.75, binding(Factors.PLATE_AND_FACE, 4999))),
        {},
        STEP_UP,
        {"AMOUNT_ABOVE_CEILING"},
        set(),
    ),
    (
        "the first binding whose factors match pays, not merely the first within its ceiling",
        evidence(payer(NO, 0.9, binding(Factors.PLATE_AND_FACE), FACE_ONLY)),
        {"target_far": 1e-2},
        ALLOW,
        {"FACE_MATCH"},
        {"BINDING_FACTORS_MISSING"},
    ),
    (
        "a face scoring exactly the threshold matches (a FACE binding pays)",
        evidence(payer(EXACT, THRESHOLD, FACE_ONLY)),
        {"target_far": 0.5, "step_up_far": 0.5},
        ALLOW,
        {"FACE_MATCH"},
        {"FACE_BELOW_THRESHOLD"},
    ),
    (
        "a face just below the threshold does not",
        evidence(payer(EXACT, THRESHOLD - 1e-6, FACE_ONLY)),
        {"target_far": 0.5, "step_up_far": 0.5},
        STEP_UP,
        {"FACE_BELOW_THRESHOLD", "BINDING_FACTORS_MISSING"},
        {"FACE_MATCH"},
    ),
    (
        "exit after an entry is the ordinary way out",
        evidence(payer(), direction=Direction.EXIT, last_sighting=ENTRY_SEEN),
        {},
        ALLOW,
        set(),
        {"EXIT_WITHOUT_ENTRY", "ENTRY_WITHOUT_EXIT"},
    ),
    (
        "entry after an exit is the ordinary way in",
        evidence(payer(), direction=Direction.ENTRY, last_sighting=EXIT_SEEN),
        {},
        ALLOW,
        set(),
        {"EXIT_WITHOUT_ENTRY", "ENTRY_WITHOUT_EXIT"},
    ),
    (
        "exit twice",
        evidence(payer(), direction=Direction.EXIT, last_sighting=EXIT_SEEN),
        {},
        STEP_UP,
        {"EXIT_WITHOUT_ENTRY"},
        set(),
    ),
    (
        "no direction while the plate has an open entry steps up",
        evidence(payer(), last_sighting=ENTRY_SEEN),
        {},
        STEP_UP,
        {"DIRECTION_UNSPECIFIED_WHILE_PRESENT"},
        {"ENTRY_WITHOUT_EXIT"},
    ),
    (
        "no direction after an entry and an event without one: the car is still inside",
        evidence(payer(), last_sighting=Sighting("G-1", "unspecified", NOW - 60, "entry")),
        {},
        STEP_UP,
        {"DIRECTION_UNSPECIFIED_WHILE_PRESENT"},
        set(),
    ),
    (
        "entry after an entry and an event without one is entry twice",
        evidence(
            payer(),
            direction=Direction.ENTRY,
            last_sighting=Sighting("G-1", "unspecified", NOW - 60, "entry"),
        ),
        {},
        STEP_UP,
        {"ENTRY_WITHOUT_EXIT"},
        set(),
    ),
    (
        "exit after an exit and an event without one is exit twice",
        evidence(
            payer(),
            direction=Direction.EXIT,
            last_sighting=Sighting("G-1", "unspecified", NOW - 60, "exit"),
        ),
        {},
        STEP_UP,
        {"EXIT_WITHOUT_ENTRY"},
        set(),
    ),
    (
        "only events without a direction on record: nothing is known of presence",
        evidence(
            payer(),
            direction=Direction.ENTRY,
            last_sighting=Sighting("G-1", "unspecified", NOW - 60, ""),
        ),
        {},
        ALLOW,
        set(),
        {"ENTRY_WITHOUT_EXIT"},
    ),
    (
        "no direction after an exit is as before",
        evidence(payer(), last_sighting=EXIT_SEEN),
        {},
        ALLOW,
        set(),
        {"DIRECTION_UNSPECIFIED_WHILE_PRESENT"},
    ),
    (
        "no direction while present where presence is not tracked",
        evidence(payer(), last_sighting=ENTRY_SEEN),
        {"track_presence": False},
        ALLOW,
        set(),
        {"DIRECTION_UNSPECIFIED_WHILE_PRESENT"},
    ),
    (
        "entry twice where presence is not tracked",
        evidence(payer(), direction=Direction.ENTRY, last_sighting=ENTRY_SEEN),
        {"track_presence": False},
        ALLOW,
        set(),
        {"ENTRY_WITHOUT_EXIT"},
    ),
    (
        "exit with no entry where presence is not tracked",
        evidence(payer(), direction=Direction.EXIT),
        {"track_presence": False},
        ALLOW,
        set(),
        {"EXIT_WITHOUT_ENTRY"},
    ),
    (
        "the same plate at another gate after exactly the travel time is no clone",
        evidence(payer(), last_sighting=Sighting("G-2", "exit", NOW - 120)),
        {},
        ALLOW,
        set(),
        {"PLATE_CLONE_SUSPECTED"},
    ),
    (
        "a site's longer travel time makes the same gap a clone suspect",
        evidence(payer(), last_sighting=Sighting("G-2", "exit", NOW - 120)),
        {"min_travel_seconds": 121},
        STEP_UP,
        {"PLATE_CLONE_SUSPECTED"},
        set(),
    ),
    (
        "the same gate soon after is no clone",
        evidence(payer(), last_sighting=Sighting("G-1", "exit", NOW - 5)),
        {},
        ALLOW,
        set(),
        {"PLATE_CLONE_SUSPECTED"},
    ),
    (
        "a direction the policy does not allow is denied",
        evidence(payer(), direction=Direction.EXIT),
        {"directions": ("entry",)},
        DENY,
        {"DIRECTION_NOT_ALLOWED"},
        set(),
    ),
    (
        "a soft signal with fused evidence against the payer is a DENY, not a STEP_UP",
        evidence(payer(NO, 0.1, FACE_ONLY), last_sighting=Sighting("G-2", "exit", NOW - 5)),
        {},
        DENY,
        {"PLATE_CLONE_SUSPECTED"},
        set(),
    ),
    (
        "liveness required: a print among the burst's other frames is denied",
        evidence(payer(), face_liveness=LIVE_FACE, burst_liveness=(LIVE_FACE, ATTACK_FACE)),
        LIVENESS_ON,
        DENY,
        {"PRESENTATION_ATTACK_SUSPECTED"},
        {"LIVENESS_PASSED"},
    ),
    (
        "liveness required: an uncertain frame in the burst steps up",
        evidence(payer(), face_liveness=LIVE_FACE, burst_liveness=(UNCERTAIN_FACE,)),
        LIVENESS_ON,
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        {"LIVENESS_PASSED"},
    ),
    (
        "liveness required: a frame no stage assessed steps up, an attack beside it denies",
        evidence(payer(), face_liveness=None, burst_liveness=(LIVE_FACE,)),
        LIVENESS_ON,
        STEP_UP,
        {"LIVENESS_UNCERTAIN"},
        {"LIVENESS_PASSED"},
    ),
    (
        "liveness required: an attack beside an unassessed frame is denied",
        evidence(payer(), face_liveness=None, burst_liveness=(ATTACK_FACE,)),
        LIVENESS_ON,
        DENY,
        {"PRESENTATION_ATTACK_SUSPECTED"},
        set(),
    ),
    (
        "liveness required: a burst of live frames pays",
        evidence(payer(), face_liveness=LIVE_FACE, burst_liveness=(LIVE_FACE, LIVE_FACE)),
        LIVENESS_ON,
        ALLOW,
        {"LIVENESS_PASSED"},
        set(),
    ),
    (
        "liveness off: a print in the burst changes nothing",
        evidence(payer(), face_liveness=LIVE_FACE, burst_liveness=(ATTACK_FACE,)),
        {},
        ALLOW,
        set(),
        {"PRESENTATION_ATTACK_SUSPECTED"},
    ),
    (
        "liveness required from exactly this amount",
        evidence(payer(), face_liveness=ATTACK_FACE, amount_minor=5000),
        {**LIVENESS_ON, "liveness_min_amount_minor": 5000},
        DENY,
        {"PRESENTATION_ATTACK_SUSPECTED"},
        set(),
    ),
]


@pytest.mark.parametrize(
    ("ev", "changes", "outcome", "present", "absent"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rules_table(
    ev: Evidence, changes: dict, outcome: Outcome, present: set[str], absent: set[str]
) -> None:
    policy = dataclasses.replace(POLICY, **changes)
    verdict = decide(ev, policy, FUSION)
    codes = {r.code for r in verdict.reasons}
    assert verdict.outcome is outcome, (codes, verdict.fusion)
    assert present <= codes, codes
    assert not absent & codes, codes
    assert codes <= set(REASONS)
    # Only an ALLOW or a STEP_UP names the binding to charge; a DENY never does, nor does an
    # event whose plate_text contradicts its camera.
    assert bool(verdict.payment_ref) == (outcome is not DENY and "PLATE_TEXT_MISMATCH" not in codes)
    assert bool(verdict.identity_id) != ("PLATE_TEXT_MISMATCH" in codes) or outcome is DENY
    target = policy.plate_only_target_far if "PLATE_ONLY_TIER" in codes else policy.target_far
    if outcome is ALLOW:
        assert verdict.fusion.estimated_far <= target
    # What is reported follows from the evidence and the outcome, in every case.
    assert ("PLATE_NOT_FOUND" in codes) == (ev.vehicle_sent and not ev.plate_read)
    assert ("FACE_NOT_FOUND" in codes) == (ev.face_sent and not ev.face_found)
    if ev.payers and "NO_PAYMENT_BINDING" not in codes:
        above = outcome is not ALLOW and verdict.fusion.estimated_far > target
        assert ("FAR_ABOVE_TARGET" in codes) == above, codes
    for r in verdict.reasons:
        if r.code not in DYNAMIC_MESSAGES:
            assert r.message == REASONS[r.code], r


def test_every_outcome_and_reason_is_reached() -> None:
    outcomes, codes = set(), set()
    for _, ev, changes, _, _, _ in CASES:
        verdict = decide(ev, dataclasses.replace(POLICY, **changes), FUSION)
        outcomes.add(verdict.outcome)
        codes |= {r.code for r in verdict.reasons}
    assert outcomes == set(Outcome)
    assert codes == set(REASONS), set(REASONS) - codes


def test_the_1n_estimate_grows_with_n_and_the_decision_follows() -> None:
    policy = dataclasses.replace(POLICY, target_far=1e-3)
    fars, outcomes = [], []
    for n in (1, 10, 100, 1000, 100_000):
        ev = evidence(payer(ABSENT, 0.95, FACE_ONLY, searched=n), plate_read=False)
        verdict = decide(ev, policy, FUSION)
        fars.append(verdict.fusion.estimated_far)
        outcomes.append(verdict.outcome)
        assert verdict.fusion.searched == n
    assert all(a < b for a, b in itertools.pairwise(fars))
    # 1 - (1 - p)^N: close to N * p while small, and never above 1.
    p = fars[0]
    assert fars[1] == pytest.approx(-math.expm1(10 * math.log1p(-p)))
    assert fars[1] == pytest.approx(10 * p, rel=0.01) and fars[-1] <= 1.0
    assert outcomes[:2] == [ALLOW, ALLOW] and outcomes[2] == STEP_UP and outcomes[-1] == DENY
    # The same face compared 1:1 (a payer of the read plate) is far stronger evidence.
    one_to_one = decide(evidence(payer(EXACT, 0.95, FACE_ONLY)), policy, FUSION)
    assert one_to_one.fusion.estimated_far < fars[0]


def test_the_face_floor_is_inclusive_and_the_sure_bar_too() -> None:
    policy = dataclasses.replace(POLICY, face_floor_fmr=1e-5)
    floor = FUSION.face_score_at(1e-5)
    at = decide(evidence(payer(EXACT, floor)), policy, FUSION)
    below = decide(evidence(payer(EXACT, floor - 1e-4)), policy, FUSION)
    assert at.outcome is ALLOW and below.outcome is STEP_UP
    ev = evidence(
        dataclasses.replace(payer(EXACT, None, PLATE_ONLY), plate_confidence=SURE),
        amount_minor=500,
        **NO_FACE,
    )
    assert decide(ev, POLICY, FUSION).outcome is ALLOW
    just_below = dataclasses.replace(ev.payers[0], plate_confidence=SURE - 1e-6)
    assert decide(dataclasses.replace(ev, payers=(just_below,)), POLICY, FUSION).outcome is STEP_UP


def test_a_clone_prior_is_a_site_parameter() -> None:
    ev = evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=500, **NO_FACE)
    assert decide(ev, POLICY, FUSION).outcome is ALLOW
    # A site that believes a fifth of impostor vehicles carry a cloned plate cannot pay on
    # the plate alone at a 5% risk.
    strict = dataclasses.replace(POLICY, clone_prior=0.2)
    verdict = decide(ev, strict, FUSION)
    assert verdict.outcome is not ALLOW and verdict.fusion.estimated_far > 0.05


def test_a_burst_counts_each_face_frame_as_a_try() -> None:
    """The best of n frames is used, so the estimate is that of n x k comparisons, the same
    as n enrolled templates would give: more frames never lower the estimated FAR."""
    policy = dataclasses.replace(POLICY, target_far=1e-3)
    fars = []
    for frames in (1, 2, 3, 4):
        p = dataclasses.replace(payer(NO, 0.55), frames=frames)
        fars.append(decide(evidence(p), policy, FUSION).fusion.estimated_far)
    assert all(a < b for a, b in itertools.pairwise(fars))
    as_templates = dataclasses.replace(payer(NO, 0.55), templates=3)
    assert fars[2] == pytest.approx(
        decide(evidence(as_templates), policy, FUSION).fusion.estimated_far
    )


# Reasons whose message names the figures of the event (test_reason_messages pins them).
DYNAMIC_MESSAGES = {
    "FACE_1N_ESTIMATE",
    "DIRECTION_NOT_ALLOWED",
    "FAR_ABOVE_TARGET",
    "BINDING_FACTORS_MISSING",
    "LIVENESS_UNCERTAIN",
    "LIVENESS_PASSED",
    "PRESENTATION_ATTACK_SUSPECTED",
    "PLATE_CLONE_SUSPECTED",
    "EXIT_WITHOUT_ENTRY",
    "FACE_BELOW_FLOOR",
}


def _messages(ev: Evidence, **changes: object) -> dict[str, str]:
    verdict = decide(ev, dataclasses.replace(POLICY, **changes), FUSION)
    return {r.code: r.message for r in verdict.reasons}


def test_reason_messages_name_the_events_figures() -> None:
    searched = _messages(evidence(payer(NO, 0.9, searched=50)))
    assert searched["FACE_1N_ESTIMATE"] == (
        "the estimated FAR is the 1:N rate over 50 identities searched"
    )
    assert searched["BINDING_FACTORS_MISSING"] == "binding b-plate_and_face needs plate_and_face"
    far = decide(evidence(payer(NO, 0.9, searched=50)), POLICY, FUSION).fusion.estimated_far
    assert searched["FAR_ABOVE_TARGET"] == f"estimated FAR {far:.2e} > target 1e-05"
    way = _messages(evidence(payer(), direction=Direction.EXIT), directions=("entry",))
    assert way["DIRECTION_NOT_ALLOWED"] == "gate policy p does not allow it"
    live = {"require_liveness": True}
    assert _messages(evidence(payer(), face_liveness=None), **live)["LIVENESS_UNCERTAIN"] == (
        "the policy requires liveness; none was assessed"
    )
    unsure = _messages(evidence(payer(), face_liveness=UNCERTAIN_FACE), **live)
    assert unsure["LIVENESS_UNCERTAIN"] == "liveness score 0.450 is uncertain"
    passed = _messages(evidence(payer(), face_liveness=LIVE_FACE), **live)
    assert passed["LIVENESS_PASSED"] == "liveness score 0.930"
    attack = _messages(evidence(payer(), face_liveness=ATTACK_FACE), **live)
    assert attack["PRESENTATION_ATTACK_SUSPECTED"] == (
        "liveness score 0.020: the face looks like a presentation attack"
    )
    clone = _messages(evidence(payer(), last_sighting=Sighting("G-2", "exit", NOW - 5)))
    assert clone["PLATE_CLONE_SUSPECTED"] == (
        "the plate was at gate G-2 5s ago, closer than the 120s travel time"
    )
    orphan = _messages(evidence(payer(), direction=Direction.EXIT))
    assert orphan["EXIT_WITHOUT_ENTRY"] == "no entry recorded for this plate"
    twice = _messages(evidence(payer(), direction=Direction.EXIT, last_sighting=EXIT_SEEN))
    assert twice["EXIT_WITHOUT_ENTRY"] == REASONS["EXIT_WITHOUT_ENTRY"]
    floor = FUSION.face_score_at(1e-5)
    low = _messages(evidence(payer(EXACT, 0.36)), face_floor_fmr=1e-5)
    assert low["FACE_BELOW_FLOOR"] == f"face score 0.360 < floor {floor:.3f} (FMR 1e-05)"


def test_a_face_that_is_someone_elses_denies_even_the_plate_only_tier() -> None:
    ev = evidence(payer(EXACT, 0.29, PLATE_ONLY), amount_minor=500, face_elsewhere=True)
    site = dataclasses.replace(POLICY, plate_only_target_far=0.2)
    verdict = decide(ev, site, FUSION)
    assert verdict.outcome is DENY and not verdict.payment_ref
    assert {"FACE_NOT_AMONG_PAYERS", "PLATE_ONLY_TIER"} <= {r.code for r in verdict.reasons}
    alone = decide(dataclasses.replace(ev, face_elsewhere=False), site, FUSION)
    assert alone.outcome is ALLOW  # the counterfactual: the face below the bar, no one's


def test_a_payer_without_a_binding_is_named_and_not_charged() -> None:
    p = Payer("payer", EXACT, 0.75, 0, ())
    verdict = decide(evidence(p), POLICY, FUSION)
    assert verdict.outcome is DENY and verdict.identity_id == "payer"
    assert verdict.payment_ref == "" and verdict.face_score is None
    assert verdict.fusion == FUSION.fuse(EXACT, 0.75, searched=0, clone_prior=None, templates=1)


def test_a_soft_signal_steps_up_only_while_the_fused_llr_is_above_zero() -> None:
    clone = Sighting("G-2", "exit", NOW - 5)
    # Fused LLR 0.5 (far above every FAR bar): evidence for the payer, so the driver confirms.
    score = FUSION.face_llr.inverse(0.5 - FUSION.plate.llr(NO, None))
    ev = evidence(payer(NO, score, FACE_ONLY), last_sighting=clone)
    strict = dataclasses.replace(POLICY, step_up_far=POLICY.target_far)
    verdict = decide(ev, strict, FUSION)
    assert verdict.fusion.fused_llr == pytest.approx(0.5)
    assert verdict.fusion.estimated_far > strict.step_up_far and verdict.outcome is STEP_UP
    # Fused LLR exactly 0 (no plate, no face): nothing for the payer, so DENY.
    nothing = evidence(
        payer(ABSENT, None, PLATE_ONLY), plate_read=False, vehicle_sent=False, **NO_FACE
    )
    verdict = decide(nothing, POLICY, FUSION)
    assert verdict.fusion.fused_llr == 0.0 and verdict.outcome is DENY
    assert "FACE_REQUIRED" in {r.code for r in verdict.reasons}


def test_a_soft_signal_at_exactly_the_target_is_not_reported_above_it() -> None:
    ev = evidence(payer(), direction=Direction.ENTRY, last_sighting=ENTRY_SEEN)
    far = _far(ev)
    at = dataclasses.replace(POLICY, target_far=far, step_up_far=max(far, 1e-2))
    codes = {r.code for r in decide(ev, at, FUSION).reasons}
    assert "ENTRY_WITHOUT_EXIT" in codes and "FAR_ABOVE_TARGET" not in codes


# --- issue 26: equality boundaries and the policy's own figures -------------------------------


def _far(ev: Evidence, policy: GatePolicy = POLICY) -> float:
    return decide(ev, policy, FUSION).fusion.estimated_far


def test_a_far_exactly_at_the_target_allows_and_just_above_it_does_not() -> None:
    ev = evidence(payer(EXACT, 0.5))
    far = _far(ev)
    assert 1e-9 < far < 1e-2
    at = dataclasses.replace(POLICY, target_far=far, step_up_far=max(far, 1e-2))
    assert decide(ev, at, FUSION).outcome is ALLOW
    below = dataclasses.replace(at, target_far=math.nextafter(far, 0.0))
    verdict = decide(ev, below, FUSION)
    assert verdict.outcome is STEP_UP
    assert "FAR_ABOVE_TARGET" in {r.code for r in verdict.reasons}


def test_the_plate_only_target_is_the_policys_own() -> None:
    ev = evidence(payer(EXACT, None, PLATE_ONLY), amount_minor=500, **NO_FACE)
    far = _far(ev)
    at = dataclasses.replace(POLICY, plate_only_target_far=far)
    verdict = decide(ev, at, FUSION)
    assert verdict.outcome is ALLOW and "PLATE_ONLY_TIER" in {r.code for r in verdict.reasons}
    below = dataclasses.replace(POLICY, plate_only_target_far=math.nextafter(far, 0.0))
    assert decide(ev, below, FUSION).outcome is not ALLOW
    # The plate-only target never applies above the tier: there the full target does.
    loose = dataclasses.replace(POLICY, target_far=0.5, step_up_far=0.5)
    over = dataclasses.replace(ev, amount_minor=1001)
    assert decide(over, loose, FUSION).outcome is STEP_UP  # FACE_REQUIRED, not the target


def test_the_step_up_bar_is_the_policys_own_and_inclusive() -> None:
    ev = evidence(payer(EXACT, 0.4))
    far = _far(ev)
    strict = dataclasses.replace(POLICY, target_far=far / 10, step_up_far=far)
    assert decide(ev, strict, FUSION).outcome is STEP_UP
    stricter = dataclasses.replace(strict, step_up_far=math.nextafter(far, 0.0))
    assert decide(ev, stricter, FUSION).outcome is DENY
    # A soft signal with evidence for the payer steps up whatever the step-up bar.
    inside = dataclasses.replace(ev, direction=Direction.ENTRY, last_sighting=ENTRY_SEEN)
    assert decide(inside, stricter, FUSION).outcome is STEP_UP


def test_the_clone_prior_reaches_the_fusion() -> None:
    ev = evidence(payer())
    fused = decide(ev, dataclasses.replace(POLICY, clone_prior=0.2), FUSION).fusion
    assert fused == FUSION.fuse(EXACT, 0.75, searched=0, clone_prior=0.2, templates=1)
    assert fused.plate_llr < decide(ev, POLICY, FUSION).fusion.plate_llr


def test_the_fused_payer_counts_templates_times_frames_and_the_searched() -> None:
    p = dataclasses.replace(payer(NO, 0.6, FACE_ONLY, searched=7), templates=3, frames=2)
    verdict = decide(evidence(p), POLICY, FUSION)
    assert verdict.fusion == FUSION.fuse(NO, 0.6, searched=7, clone_prior=None, templates=6)
    assert verdict.face_score == 0.6 and verdict.identity_id == "payer"


def test_the_payer_with_the_strongest_evidence_pays_and_ties_go_by_id() -> None:
    weak, strong = payer(EXACT, 0.4, pid="a"), payer(EXACT, 0.8, pid="b")
    for order in ((weak, strong), (strong, weak)):
        assert decide(evidence(*order), POLICY, FUSION).identity_id == "b"
    twins = (payer(EXACT, 0.7, pid="x"), payer(EXACT, 0.7, pid="y"))
    assert decide(evidence(*twins), POLICY, FUSION).identity_id == "y"
    assert decide(evidence(*reversed(twins)), POLICY, FUSION).identity_id == "y"


def test_an_unknown_vehicle_is_fused_as_what_was_read() -> None:
    site = dataclasses.replace(POLICY, clone_prior=0.3)
    read = decide(evidence(), site, FUSION)
    assert read.outcome is DENY and read.identity_id == "" and read.payment_ref == ""
    assert read.fusion == FUSION.fuse(NO, None, clone_prior=0.3) != FUSION.fuse(NO, None)
    unread = decide(
        evidence(plate_read=False), dataclasses.replace(POLICY, clone_prior=0.3), FUSION
    )
    assert unread.fusion == FUSION.fuse(ABSENT, None, clone_prior=0.3)
    assert unread.face_score is None


def test_the_liveness_reason_names_the_least_live_frames_score() -> None:
    ev = evidence(
        payer(),
        face_liveness=LIVE_FACE,
        burst_liveness=(Liveness(0.2, LivenessDecision.ATTACK), ATTACK_FACE),
    )
    verdict = decide(ev, dataclasses.replace(POLICY, require_liveness=True), FUSION)
    (attack,) = [r for r in verdict.reasons if r.code == "PRESENTATION_ATTACK_SUSPECTED"]
    assert "0.020" in attack.message
    unsure = dataclasses.replace(
        ev, burst_liveness=(Liveness(0.5, LivenessDecision.UNCERTAIN), UNCERTAIN_FACE)
    )
    verdict = decide(unsure, dataclasses.replace(POLICY, require_liveness=True), FUSION)
    (doubt,) = [r for r in verdict.reasons if r.code == "LIVENESS_UNCERTAIN"]
    assert "0.450" in doubt.message


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_liveness_verdict_does_not_depend_on_the_frames_order(order: tuple) -> None:
    frames = (LIVE_FACE, ATTACK_FACE, UNCERTAIN_FACE)
    first, *rest = (frames[i] for i in order)
    ev = evidence(payer(), face_liveness=first, burst_liveness=tuple(rest))
    verdict = decide(ev, dataclasses.replace(POLICY, require_liveness=True), FUSION)
    assert verdict.outcome is DENY
    assert [r.code for r in verdict.reasons if "LIVENESS" in r.code or "ATTACK" in r.code] == [
        "PRESENTATION_ATTACK_SUSPECTED"
    ]


def test_a_policy_names_its_camera_colour_by_default() -> None:
    assert GatePolicy(policy_id="p").camera == "colour"
    assert GatePolicy(policy_id="p", camera="ir").camera == "ir"
    with pytest.raises(ValueError, match="camera"):
        GatePolicy(policy_id="p", camera="thermal")


def test_the_floor_names_a_payer_without_an_enrolled_face() -> None:
    ev = evidence(payer(EXACT, None), face_found=True)
    floor = FUSION.face_score_at(1e-5)
    msg = _messages(ev, face_floor_fmr=1e-5)["FACE_BELOW_FLOOR"]
    assert msg == f"no face < floor {floor:.3f} (FMR 1e-05)"


def test_liveness_messages_name_the_camera_and_the_missing_evidence() -> None:
    live = {"require_liveness": True}
    grey = _messages(evidence(payer(), face_liveness=LIVE_FACE), camera="grey", **live)
    assert grey["LIVENESS_UNCERTAIN"] == "the gate's camera is grey: liveness needs colour"
    small = dataclasses.replace(LIVE_FACE, missing="face too small")
    unsure = _messages(evidence(payer(), face_liveness=small), **live)
    assert unsure["LIVENESS_UNCERTAIN"] == "liveness uncertain: face too small"


def test_untrusted_plate_text_takes_the_plate_evidence_of_its_own_payers_only() -> None:
    by_text = dataclasses.replace(payer(EXACT, 0.95, pid="text"), plate_by_text=True)
    by_camera = payer(EXACT, 0.95, pid="camera")
    verdict = decide(evidence(by_text, by_camera), POLICY, FUSION)
    assert verdict.identity_id == "camera" and verdict.outcome is ALLOW
    assert verdict.fusion.plate_llr > 0


def test_a_text_mismatch_with_a_blocking_signal_is_denied_and_charges_nobody() -> None:
    ev = evidence(payer(EXACT, 0.95), plate_text_mismatch=True, face_elsewhere=True)
    blocked = decide(dataclasses.replace(ev, payers=(payer(EXACT, 0.1),)), POLICY, FUSION)
    assert blocked.outcome is DENY and "PLATE_TEXT_MISMATCH" in {r.code for r in blocked.reasons}
    steps = decide(evidence(payer(EXACT, 0.95), plate_text_mismatch=True), POLICY, FUSION)
    assert steps.outcome is STEP_UP
    assert (steps.identity_id, steps.payment_ref, steps.face_score) == ("", "", 0.95)
