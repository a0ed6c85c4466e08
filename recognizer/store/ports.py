"""Storage ports: what the service needs from its source of truth, adapter-free.

Callers depend on these protocols and open a store through `store/open.py`, never through
an adapter (an import-linter contract enforces it), so PostgreSQL can serve them beside the
embedded SQLite (`store/sqlite.py`). Every adapter passes the one contract suite
(`tests/test_store_contract.py`). Writes that must be atomic with their record take it as an
argument and commit both in one transaction: an admin change with its `AuditEntry`, a gate
decision with its plate sighting, a template change with its change-log row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recognizer.store.crypto import TemplateCipher
from recognizer.store.rows import (
    AuditEntry,
    AuditRow,
    Change,
    DecisionMark,
    DecisionRow,
    DeleteCounts,
    IdentityRow,
    PaymentRow,
    PlateHolder,
    SightingRow,
    TemplateRow,
)


@runtime_checkable
class Identities(Protocol):
    def create_identity(
        self,
        display_name: str,
        external_ref: str = "",
        metadata: dict[str, str] | None = None,
        audit: AuditEntry | None = None,
    ) -> IdentityRow: ...
    def get_identity(self, identity_id: str) -> IdentityRow: ...
    def list_identities(self, limit: int, after: str = "") -> list[IdentityRow]: ...
    def count_identities(self) -> int: ...
    def delete_identity(
        self, identity_id: str, audit: AuditEntry | None = None
    ) -> DeleteCounts: ...


@runtime_checkable
class Templates(Protocol):
    """Templates are sealed by the adapter's cipher; vectors come back decrypted."""

    def add_templates(
        self,
        identity_id: str,
        vectors: np.ndarray,
        model: str,
        source: str = "",
        quality: float = 0.0,
        audit: AuditEntry | None = None,
    ) -> list[TemplateRow]: ...
    def remove_template(
        self, identity_id: str, label: int, audit: AuditEntry | None = None
    ) -> int: ...
    def templates(self, identity_id: str, model: str) -> list[TemplateRow]: ...
    def templates_for(
        self, identity_ids: Iterable[str], model: str
    ) -> dict[str, list[TemplateRow]]: ...
    def template_labels(self, identity_id: str) -> list[int]: ...
    def max_templates_per_identity(self) -> int: ...
    def count_templates(self, model: str) -> int: ...
    def labels_for_model(self, model: str) -> np.ndarray: ...
    def vectors_for_labels(self, labels: Iterable[int]) -> tuple[np.ndarray, np.ndarray]: ...
    def iter_templates(
        self, model: str, chunk_size: int = 65_536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
    def identity_for_labels(self, labels: Iterable[int]) -> dict[int, str]: ...


@runtime_checkable
class ChangeLog(Protocol):
    """Every template add and removal, in commit order, for the FAISS index to follow.

    A position (`Change.seq`, `current_seq()`) is opaque to callers: SQLite's change seq,
    PostgreSQL's writer transaction id. Reading after a position never skips a change that
    commits later (settled_only); several changes of one transaction may share a position."""

    def changes_since(self, seq: int, model: str, settled_only: bool = True) -> list[Change]: ...
    def current_seq(self) -> int: ...
    def backlog(self, seq: int, model: str) -> tuple[int, float]: ...
    def snapshot(self) -> AbstractContextManager[None]: ...


@runtime_checkable
class Bindings(Protocol):
    def bind_plate(
        self,
        identity_id: str,
        plate: str,
        allow_shared: bool = False,
        audit: AuditEntry | None = None,
    ) -> None: ...
    def unbind_plate(
        self, identity_id: str, plate: str, audit: AuditEntry | None = None
    ) -> None: ...
    def identities_for_plate(self, plate: str) -> list[str]: ...
    def plate_holders(self, plates: Iterable[str]) -> dict[str, list[PlateHolder]]: ...
    def plates_for(self, identity_id: str) -> list[str]: ...
    def bind_payment(
        self,
        identity_id: str,
        payment_ref: str,
        factors: str,
        ceiling_minor: int,
        audit: AuditEntry | None = None,
    ) -> PaymentRow: ...
    def unbind_payment(
        self, identity_id: str, binding_id: str, audit: AuditEntry | None = None
    ) -> None: ...
    def payments_for(self, identity_id: str) -> list[PaymentRow]: ...


@runtime_checkable
class Decisions(Protocol):
    """One decision per (gate_id, event_id); the first stored stands."""

    def get_decision(self, gate_id: str, event_id: str) -> DecisionRow | None: ...
    def put_decision(
        self,
        row: DecisionRow | None = None,
        /,
        sighting: tuple[str, str, str, float] | None = None,
        seen: SightingRow | None = ...,
        **fields: Any,
    ) -> DecisionRow: ...
    def list_decisions(
        self, gate_id: str = "", identity_id: str = "", since: float = 0, limit: int = 100
    ) -> list[DecisionRow]: ...
    def purge_decisions(self, older_than: float) -> int: ...


class WatchedDecisions(Protocol):
    """Decisions in the order they were stored, for watchers (AdminService.WatchDecisions).
    Both adapters; kept out of `Store` so a store double needs it only where it is watched."""

    def wait_for_decision(self, timeout_s: float) -> bool: ...
    def decision_mark(self, decision_id: str) -> DecisionMark | None: ...
    def decision_head(self) -> DecisionMark: ...
    def decisions_after(
        self, mark: DecisionMark, limit: int
    ) -> list[tuple[DecisionMark, DecisionRow]]: ...


@runtime_checkable
class Sightings(Protocol):
    def record_sighting(self, plate: str, gate_id: str, direction: str, at: float) -> None: ...
    def last_sighting(self, plate: str) -> SightingRow | None: ...
    def purge_sightings(self, older_than: float) -> int:
        """Older than `older_than`, except each plate's latest sighting."""
        ...


@runtime_checkable
class Audit(Protocol):
    def audit(self, actor_role: str, action: str, target: str, detail: dict[str, Any]) -> None: ...
    def audit_all(self, entries: Iterable[AuditEntry]) -> None: ...
    def list_audit(
        self,
        limit: int = 100,
        *,
        since: float = 0.0,
        until: float = 0.0,
        actor: str = "",
        target: str = "",
        before_id: int = 0,
    ) -> list[AuditRow]: ...


@runtime_checkable
class Store(Identities, Templates, ChangeLog, Bindings, Decisions, Sightings, Audit, Protocol):
    """Everything the service keeps, behind one adapter."""

    store_id: str
    cipher: TemplateCipher
    schema_upgraded_from: int  # the schema version this process found (and migrated from)

    def backup(self, dest: Path) -> None: ...
    def close(self) -> None: ...
