"""The rows the storage ports return: plain frozen values, the same from every adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recognizer.store.crypto import TemplateCipher

# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityRow:
    id: str
    display_name: str
    external_ref: str
    metadata: dict[str, str]
    created_at: float


@dataclass(frozen=True, slots=True)
class TemplateRow:
    label: int
    identity_id: str
    model: str
    dim: int
    source: str
    quality: float
    created_at: float
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DeleteCounts:
    templates: int
    plates: int
    payments: int


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: str  # 'add' | 'remove'
    label: int
    model: str


@dataclass(frozen=True, slots=True)
class PaymentRow:
    binding_id: str
    identity_id: str
    payment_ref: str
    factors: str
    ceiling_minor: int
    created_at: float


@dataclass(frozen=True, slots=True)
class PlateHolder:
    """An identity bound to a plate, with its payment bindings (oldest first)."""

    identity_id: str
    payments: tuple[PaymentRow, ...] = ()


@dataclass(frozen=True, slots=True)
class DecisionRow:
    decision_id: str
    gate_id: str
    event_id: str
    outcome: str
    payload: bytes  # the serialised response, opaque to the store
    identity_id: str = ""
    inputs: str = "{}"  # JSON text
    created_at: float = 0.0
    input_digest: str = ""  # sha256 of the inputs (recognizer.gate.inputs): replay compares it


@dataclass(frozen=True, slots=True)
class DecisionMark:
    """Where a stored decision stands in the order decisions are watched (WatchDecisions).

    `position` orders decisions as they were committed: SQLite's rowid (one writer at a
    time), PostgreSQL's writing transaction id. `created_at` lets PostgreSQL scan only recent
    rows (its decisions have no index on the transaction id)."""

    position: int
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    actor_role: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record to commit with the change it records. The store adds what only the
    change knows (new template labels, a new binding id) to `detail`."""

    actor_role: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SightingRow:
    plate: str
    gate_id: str
    direction: str
    at: float
    # The direction of the plate's last sighting that named one ("" when none did): an event
    # without a direction is seen for clone checks, and does not end a presence.
    presence: str = ""


class SightingMoved(Exception):
    """`put_decision(seen=...)`: the plate's last sighting is no longer the one the decision
    was made from (another decision for the plate was recorded meanwhile). Nothing was
    stored; decide again from `last` and retry."""

    def __init__(self, last: SightingRow | None) -> None:
        super().__init__("the plate's last sighting moved")
        self.last = last


class _Unchecked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHECKED"


UNCHECKED: Any = _Unchecked()  # put_decision(seen=UNCHECKED): the sighting is not checked


def template_aad(label: int, identity_id: str, model: str) -> bytes:
    return f"recognizer.template.v1|{label}|{identity_id}|{model}".encode()


def open_template(cipher: TemplateCipher, row: tuple[Any, ...]) -> np.ndarray:
    label, identity_id, model, dim, blob = row
    plain = cipher.decrypt(bytes(blob), template_aad(label, identity_id, model))
    v = np.frombuffer(plain, dtype="<f4")
    if v.shape[0] != dim:
        raise ValueError(f"template {label}: {v.shape[0]} values, expected {dim}")
    return v.astype(np.float32)
