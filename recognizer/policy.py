"""Gate policies: which factors a gate needs, amount tiers, directions, target false-accept rate.

Policies come from the config file (`[[policies]]` with `gates = ["P1-*", ...]` glob patterns);
the first match wins, and an unknown gate gets the safe default: face and plate for any amount.

A policy also says which direction an event must name (`require_direction`, or a single
allowed direction; `default_direction` fills an UNSPECIFIED one in) and the one `currency` its
amounts are in (an ISO 4217 code; default CNY).

Plate-only payment (amounts up to `plate_only_max_minor`, on a PLATE binding) is a site's
accepted risk: `plate_only_target_far` is the false-accept probability the site accepts for
small amounts, and `clone_prior` is the site's estimate of how often an impostor vehicle
carries a cloned plate (a clone reads like the real plate, so it bounds what any plate read
can prove). An exact read's estimated FAR is about `clone_prior` times the reader's exact-read
rate, so the target must sit above that for the tier to be reachable: `GateEngine` checks
each policy against the fusion calibration at start and refuses one whose tier never allows.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The face floor shipped (see GatePolicy.face_floor_fmr): chosen by `bench fusion`'s
# worst-case impostors (README "Threat model").
FACE_FLOOR_FMR: float | None = 1e-4
DIRECTIONS = ("entry", "exit")
# ISO 4217 codes that name no money a gate can charge: "no currency" and the testing code.
NOT_MONEY = frozenset({"XXX", "XTS"})


def is_currency_code(code: str) -> bool:
    """Shaped like an ISO 4217 alphabetic code (three ASCII capitals) that names money."""
    return (
        len(code) == 3
        and code.isascii()
        and code.isalpha()
        and code.isupper()
        and (code not in NOT_MONEY)
    )


CAMERAS = ("colour", "grey", "ir")


@dataclass(frozen=True, slots=True)
class GatePolicy:
    policy_id: str
    gates: tuple[str, ...] = ("*",)
    # Up to this amount (minor units) the plate alone may ALLOW; above it the face is required.
    plate_only_max_minor: int = 0
    target_far: float = 1e-5  # fused false-accept target for ALLOW
    plate_only_target_far: float = 5e-2  # when the plate alone decides a small amount
    step_up_far: float = 1e-2  # at or below this a doubtful event may STEP_UP, above: DENY
    directions: tuple[str, ...] = ("entry", "exit")
    min_travel_seconds: float = 120.0  # the same plate at two gates sooner than this: a clone?
    track_presence: bool = True  # flag entry twice without exit, exit without entry
    clone_prior: float | None = None  # None: the fusion calibration's (0.05 as shipped)
    # Liveness (README "Liveness"): off until measured on data like the site's. On, a face
    # the liveness stage calls a likely attack is DENY (PRESENTATION_ATTACK_SUSPECTED) and
    # an uncertain one STEP_UP (LIVENESS_UNCERTAIN), for amounts >= liveness_min_amount_minor.
    require_liveness: bool = False
    liveness_min_amount_minor: int = 0
    # A gate's own `plate_text` counts as an exact read only where the site trusts that
    # gate's reader; elsewhere it only names which payers to score (no plate evidence).
    trust_plate_text: bool = False
    # PLATE_AND_FACE also needs the face to pass on its own: a score whose estimated 1:1
    # false-match rate is at most this (a targeted attacker brings the payer's cloned plate
    # and the face most like the payer's). None: no floor beyond the fused target.
    face_floor_fmr: float | None = FACE_FLOOR_FMR
    # An event without a direction is INVALID_ARGUMENT where the policy requires one (this, or
    # a single allowed direction), unless `default_direction` ("entry" or "exit") fills it in.
    require_direction: bool = False
    default_direction: str = ""
    currency: str = "CNY"  # amounts are in this ISO 4217 currency; a request's "" means it
    # The gate's face camera: "colour" (default), "grey" or "ir". The liveness model reads
    # colour; on a grey or IR camera (night) it has no evidence, so liveness answers
    # UNCERTAIN there and a policy that requires it STEP_UPs every face event (README
    # "Liveness"), never DENY.
    camera: str = "colour"

    def __post_init__(self) -> None:
        for name in ("target_far", "plate_only_target_far", "step_up_far"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"policy {self.policy_id}: {name} must be within (0, 1)")
        if self.target_far > self.step_up_far:
            raise ValueError(f"policy {self.policy_id}: target_far must be <= step_up_far")
        if (
            self.plate_only_max_minor < 0
            or self.min_travel_seconds < 0
            or self.liveness_min_amount_minor < 0
        ):
            raise ValueError(f"policy {self.policy_id}: amounts and times must be >= 0")
        if self.face_floor_fmr is not None and not 0.0 < self.face_floor_fmr < 1.0:
            raise ValueError(f"policy {self.policy_id}: face_floor_fmr must be within (0, 1)")
        if self.clone_prior is not None and not 0.0 <= self.clone_prior < 1.0:
            raise ValueError(f"policy {self.policy_id}: clone_prior must be within [0, 1)")
        if self.camera not in CAMERAS:
            raise ValueError(
                f"policy {self.policy_id}: camera must be one of {list(CAMERAS)}, "
                f"got {self.camera!r}"
            )
        unknown = set(self.directions) - set(DIRECTIONS)
        if unknown:
            raise ValueError(f"policy {self.policy_id}: unknown directions {sorted(unknown)}")
        if self.default_direction and self.default_direction not in self.directions:
            raise ValueError(
                f"policy {self.policy_id}: default_direction must be one of {self.directions}"
            )
        if not is_currency_code(self.currency):
            raise ValueError(
                f"policy {self.policy_id}: currency {self.currency!r} is not an ISO 4217 code "
                "of money (three capitals; not XXX or XTS)"
            )

    def matches(self, gate_id: str) -> bool:
        return any(fnmatch.fnmatchcase(gate_id, pattern) for pattern in self.gates)

    def liveness_required(self, amount_minor: int) -> bool:
        return self.require_liveness and amount_minor >= self.liveness_min_amount_minor

    def plate_only_allows(self, amount_minor: int) -> bool:
        """The amount is within the plate-only tier; a ceiling of 0 means no tier at all (the
        face is required for every amount, 0 included)."""
        return self.plate_only_max_minor > 0 and amount_minor <= self.plate_only_max_minor

    @property
    def needs_direction(self) -> bool:
        """An event must say which way it goes (or take `default_direction`)."""
        return self.require_direction or len(self.directions) == 1


SAFE_DEFAULT = GatePolicy(policy_id="default-safe", plate_only_max_minor=0)


@dataclass(frozen=True, slots=True)
class PolicySet:
    policies: tuple[GatePolicy, ...] = ()
    default: GatePolicy = SAFE_DEFAULT

    def for_gate(self, gate_id: str) -> GatePolicy:
        for p in self.policies:
            if p.matches(gate_id):
                return p
        return self.default

    @classmethod
    def from_config(cls, items: Iterable[Mapping[str, Any]]) -> PolicySet:
        known = {f.name for f in dataclasses.fields(GatePolicy)}
        policies = []
        for item in items:
            fields = dict(item)
            unknown = sorted(set(fields) - known)
            if unknown:
                raise ValueError(f"unknown policy settings {unknown}; known: {sorted(known)}")
            for key in ("gates", "directions"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            policies.append(GatePolicy(**fields))
        return cls(tuple(policies))

    def all(self) -> tuple[GatePolicy, ...]:
        return (*self.policies, self.default)
