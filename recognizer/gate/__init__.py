"""The parking-gate decision: inputs and replay, evidence gathering, pure rules, the engine."""

from recognizer.gate.engine import GateEngine
from recognizer.gate.inputs import EventInputs, sha256_hex
from recognizer.gate.types import (
    Authorized,
    Decision,
    Direction,
    GateEvent,
    GateRequest,
    Outcome,
    Reason,
)

__all__ = [
    "Authorized",
    "Decision",
    "Direction",
    "EventInputs",
    "GateEngine",
    "GateEvent",
    "GateRequest",
    "Outcome",
    "Reason",
    "sha256_hex",
]
