"""Who is calling: the API key the auth interceptor matched, for checks that depend on the
resource (a gate key may act only for the gates in its scope)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from recognizer.config import ApiKey
from recognizer.errors import PermissionDenied

_current: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("principal", default=None)


def bind(behavior: Callable[[Any, Any], Any], key: ApiKey) -> Callable[[Any, Any], Any]:
    """The handler, run with `key` as the current principal."""

    def as_principal(request: Any, context: Any) -> Any:
        token = _current.set(key)
        try:
            return behavior(request, context)
        finally:
            _current.reset(token)

    return as_principal


def require_gate(gate_id: str) -> None:
    """PERMISSION_DENIED unless the caller's key may act for this gate."""
    key = _current.get()
    if key is not None and not key.may_act_for(gate_id):
        raise PermissionDenied(
            f"this API key may not act for gate {gate_id!r} (its gates: {', '.join(key.gates)})",
            field="gate_id",
            reason="GATE_OUT_OF_SCOPE",
        )
