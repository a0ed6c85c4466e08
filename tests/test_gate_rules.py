"""The gate rules as a pure function: a table of evidence -> outcome and reasons, with a
synthetic fusion model and no models, store or datasets. Every outcome and every reason code
is reached (checked at the end), including each integrity hole the gate once had."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from recognizer.face.types import Liveness, LivenessDecision
from recognizer.fusion import FusionModel, ImpostorTail, PlateEvidence, PlateModel, fit_linear_llr
from recognizer.gate.rules import REASONS, decide
from recognizer.gate.types import (
    Binding,
    Direction,
    Evidence,
    Factors,
    Outcome,
    Payer,
    Sighting,
)
from recognizer.policy import GatePolicy

EXACT, CAND, NO, ABSENT = (
    PlateEvidence.EXACT,
    PlateEvidence.CANDIDATE,
    PlateEvidence.NO_MATCH,
    PlateEvidence.ABSENT,
)
ALLOW, STEP_UP, DENY = Outcome.ALLOW, Outcome.STEP_UP, Outcome.DENY
THRESHOLD = 0.30
NOW = 1_800_000_000.0


def _fusion() -> FusionModel:
    rng = np.random.default_rng(3)
    genuine = rng.normal(0.65, 0.1, 20_000)
    impostor = rng.normal(0.05, 0.08, 20_000)
    plate = PlateModel(
        genuine={"exact": 0.93, "candidate": 0.02, "no_match": 0.05},
        misread={"exact": 0.001, "candidate": 0.001},
        clone_prior=0.05,
    )
    return FusionModel(fit_linear_llr(genuine, impostor), ImpostorTail.fit(impostor), plate)


FUSION = _fusion()
POLICY = GatePolicy(
    policy_id="p",
    plate_only_max_minor=1000,
    target_far=1e-5,
    plate_only_target_far=0.05,
    step_up_far=1e-2,
    directions=("entry", "exit"),
    min_travel_seconds=120,
)


def binding(factors: Factors = Factors.PLATE_AND_FACE, ceiling: int = 0) -> Binding:
    return Binding(f"b-{factors.value}", f"ref-{factors.value}", factors, ceiling)


def payer(
    plate: PlateEvidence = EXACT,
    face: float | None = 0.75,
    *bindings: Binding,
    searched: int = 0,
    pid: str = "payer",
) -> Payer:
    return Payer(pid, plate, face, searched, bindings or (binding(),))


def evidence(*payers: Payer, **changes: object) -> Evidence:
    base = Evidence(
        gate_id="G-1",
        amount_minor=5000,
        direction=Direction.UNSPECIFIED,
        now=NOW,
        vehicle_sent=True,
        plate_read=True,
        face_sent=True,
        face_found=True,
        face_threshold=THRESHOLD,
        payers=payers,
        face_elsewhere=False,
        last_sighting=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


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
        "plate-only tier: the bound plate among the candidates",
        evidence(payer(CAND, None, PLATE_ONLY), amount_minor=500, **NO_FACE),
        {},
        ALLOW,
        {"PLATE_ONLY_TIER", "PLATE_CANDIDATE_MATCH"},
        {"FACE_REQUIRED"},
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
    # Only an ALLOW or a STEP_UP names the binding to charge; a DENY never does.
    assert bool(verdict.payment_ref) == (outcome is not DENY)
    if outcome is ALLOW:
        target = policy.plate_only_target_far if "PLATE_ONLY_TIER" in codes else policy.target_far
        assert verdict.fusion.estimated_far <= target


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


def test_a_policy_names_its_camera_colour_by_default() -> None:
    assert GatePolicy(policy_id="p").camera == "colour"
    assert GatePolicy(policy_id="p", camera="ir").camera == "ir"
    with pytest.raises(ValueError, match="camera"):
        GatePolicy(policy_id="p", camera="thermal")
