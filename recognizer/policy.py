"""Gate policies: which factors a gate needs, amount tiers, directions, target false-accept rate.

Policies come from the config file (`[[policies]]` with `gates = ["P1-*", ...]` glob patterns);
the first match wins, and an unknown gate gets the safe default: face and plate for any amount.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


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

    def matches(self, gate_id: str) -> bool:
        return any(fnmatch.fnmatchcase(gate_id, pattern) for pattern in self.gates)

    def face_required(self, amount_minor: int) -> bool:
        return amount_minor > self.plate_only_max_minor


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
        policies = []
        for item in items:
            fields = dict(item)
            for key in ("gates", "directions"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            policies.append(GatePolicy(**fields))
        return cls(tuple(policies))
