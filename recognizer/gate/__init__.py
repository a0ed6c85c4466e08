"""The parking-gate decision: inputs and replay, evidence gathering, pure rules, the engine."""

from recognizer.gate.engine import (
    Authorized,
    Decision,
    Direction,
    GateEngine,
    GateEvent,
    Outcome,
    Reason,
    sha256_hex,
)

__all__ = [
    "Authorized",
    "Decision",
    "Direction",
    "GateEngine",
    "GateEvent",
    "Outcome",
    "Reason",
    "sha256_hex",
]
