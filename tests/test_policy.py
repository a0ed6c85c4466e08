"""Gate policies as data: which policy a gate gets, what a policy may say, and what it refuses
to start with. Pure: no models, store or datasets."""

from __future__ import annotations

import pytest

from recognizer.policy import SAFE_DEFAULT, GatePolicy, PolicySet, is_currency_code


def test_the_first_matching_policy_wins_and_an_unknown_gate_gets_the_safe_default() -> None:
    north = GatePolicy("north", gates=("N-*", "X-1"))
    xs = GatePolicy("xs", gates=("X-*",))
    policies = PolicySet((north, xs))
    assert policies.for_gate("N-7") is north
    assert policies.for_gate("X-1") is north  # both match: the first listed wins
    assert policies.for_gate("X-2") is xs
    assert policies.for_gate("n-7") is SAFE_DEFAULT  # globs are case-sensitive
    assert policies.for_gate("Q-1") is SAFE_DEFAULT
    assert PolicySet().for_gate("N-7") is SAFE_DEFAULT
    own = GatePolicy("own-default")
    assert PolicySet((north,), own).for_gate("Q-1") is own
    assert PolicySet((xs, north)).for_gate("X-1") is xs
    assert policies.all() == (north, xs, SAFE_DEFAULT)


def test_the_safe_default_needs_the_face_for_every_amount() -> None:
    assert SAFE_DEFAULT.policy_id == "default-safe"
    assert SAFE_DEFAULT.plate_only_max_minor == 0
    assert not any(SAFE_DEFAULT.plate_only_allows(a) for a in (0, 1, 100))
    assert SAFE_DEFAULT.track_presence and not SAFE_DEFAULT.needs_direction
    assert SAFE_DEFAULT.currency == "CNY"


@pytest.mark.parametrize(
    ("ceiling", "amount", "allows"),
    [(0, 0, False), (0, 1, False), (1, 0, True), (1, 1, True), (1, 2, False), (500, 500, True)],
)
def test_the_plate_only_tier(ceiling: int, amount: int, allows: bool) -> None:
    assert GatePolicy("p", plate_only_max_minor=ceiling).plate_only_allows(amount) is allows


@pytest.mark.parametrize(
    ("settings", "needs"),
    [
        ({}, False),
        ({"directions": ("entry",)}, True),
        ({"directions": ("exit",)}, True),
        ({"require_direction": True}, True),
        ({"directions": ("entry",), "default_direction": "entry"}, True),
    ],
)
def test_which_policies_need_a_direction(settings: dict, needs: bool) -> None:
    assert GatePolicy("p", **settings).needs_direction is needs


@pytest.mark.parametrize(
    ("required", "from_amount", "amount", "expected"),
    [(False, 0, 10, False), (True, 0, 0, True), (True, 10, 9, False), (True, 10, 10, True)],
)
def test_liveness_from_an_amount(
    required: bool, from_amount: int, amount: int, expected: bool
) -> None:
    policy = GatePolicy("p", require_liveness=required, liveness_min_amount_minor=from_amount)
    assert policy.liveness_required(amount) is expected


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("CNY", True),
        ("EUR", True),
        ("XOF", True),  # the CFA franc: money, though it starts with X
        ("XXX", False),  # ISO 4217's "no currency"
        ("XTS", False),  # ISO 4217's testing code
        ("", False),
        ("CN", False),
        ("CNYY", False),
        ("cny", False),
        ("Cny", False),
        ("C1Y", False),
        ("ＣＮＹ", False),  # fullwidth capitals
        ("\U0001f4b0", False),
        ("ÄÖÜ", False),  # capitals, but not ASCII
    ],
)
def test_currency_codes(code: str, ok: bool) -> None:
    assert is_currency_code(code) is ok


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"target_far": 0.0}, "target_far must be within (0, 1)"),
        ({"target_far": 1.0, "step_up_far": 1.0}, "target_far must be within (0, 1)"),
        ({"plate_only_target_far": 0.0}, "plate_only_target_far must be within"),
        ({"plate_only_target_far": 1.0}, "plate_only_target_far must be within"),
        ({"step_up_far": 1.0}, "step_up_far must be within"),
        ({"target_far": 0.02, "step_up_far": 0.01}, "target_far must be <= step_up_far"),
        ({"plate_only_max_minor": -1}, "amounts and times must be >= 0"),
        ({"min_travel_seconds": -0.5}, "amounts and times must be >= 0"),
        ({"liveness_min_amount_minor": -1}, "amounts and times must be >= 0"),
        ({"clone_prior": -0.01}, "clone_prior must be within [0, 1)"),
        ({"clone_prior": 1.0}, "clone_prior must be within [0, 1)"),
        ({"directions": ("entry", "sideways")}, "unknown directions ['sideways']"),
        ({"default_direction": "exit", "directions": ("entry",)}, "default_direction must be"),
        ({"default_direction": "up"}, "default_direction must be"),
        (
            {"currency": "XXX"},
            "currency 'XXX' is not an ISO 4217 code of money (three capitals; not XXX or XTS)",
        ),
        ({"currency": "cny"}, "currency 'cny' is not an ISO 4217 code"),
    ],
)
def test_out_of_range_settings_stop_start_up(settings: dict, words: str) -> None:
    with pytest.raises(ValueError) as err:
        GatePolicy("bad", **settings)
    assert str(err.value).startswith("policy bad: ") and words in str(err.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"target_far": 0.01, "step_up_far": 0.01},  # equal is allowed
        {"target_far": 1e-12, "plate_only_target_far": 0.999, "step_up_far": 0.999},
        {"plate_only_max_minor": 0, "min_travel_seconds": 0, "liveness_min_amount_minor": 0},
        {"clone_prior": 0.0},
        {"clone_prior": 0.999},
        {"directions": ("exit",), "default_direction": "exit"},
        {"directions": ()},
        {"currency": "EUR"},
    ],
)
def test_settings_at_their_bounds_are_accepted(settings: dict) -> None:
    policy = GatePolicy("ok", **settings)
    for key, value in settings.items():
        assert getattr(policy, key) == value


def test_policies_from_the_config_file() -> None:
    policies = PolicySet.from_config(
        [
            {"policy_id": "a", "gates": ["A-*"], "directions": ["entry"], "currency": "EUR"},
            {"policy_id": "b", "gates": ["B-1", "B-2"], "require_direction": True},
        ]
    )
    a, b = policies.policies
    assert a.gates == ("A-*",) and a.directions == ("entry",) and a.currency == "EUR"
    assert b.gates == ("B-1", "B-2") and b.directions == ("entry", "exit") and b.require_direction
    assert policies.default is SAFE_DEFAULT and policies.for_gate("B-2") is b
    with pytest.raises(ValueError) as err:
        PolicySet.from_config([{"policy_id": "c", "curency": "EUR"}])
    assert "unknown policy settings ['curency']" in str(err.value)
    assert "currency" in str(err.value).split("known:")[1]
    assert PolicySet.from_config([]).policies == ()


@pytest.mark.parametrize("fmr", [0.0, 1.0, 1.5, -1e-4])
def test_a_face_floor_is_an_fmr_within_zero_and_one(fmr: float) -> None:
    with pytest.raises(ValueError, match="face_floor_fmr must be within"):
        GatePolicy(policy_id="p", face_floor_fmr=fmr)
    assert GatePolicy(policy_id="p", face_floor_fmr=None).face_floor_fmr is None


def test_an_unknown_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown directions"):
        GatePolicy(policy_id="p", directions=("entry", "sideways"))
