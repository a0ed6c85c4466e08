"""Who is calling: the API key the auth interceptor matched, and the method it called, for
checks that depend on the resource (a gate key may act only for the gates in its scope), for
what a role may see (only admin reads personal fields) and for audit rows (the key's name)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from recognizer.config import ApiKey, Role
from recognizer.errors import PermissionDenied

_current: contextvars.ContextVar[tuple[ApiKey, str] | None] = contextvars.ContextVar(
    "principal", default=None
)


def key_name(key: ApiKey) -> str:
    """A key's name for logs and audit; an unnamed one by the start of its hash, never the
    key itself."""
    return key.name or f"sha256:{key.sha256[:8]}"


def bind(
    behavior: Callable[[Any, Any], Any], key: ApiKey, method: str = ""
) -> Callable[[Any, Any], Any]:
    """The handler, run with `key` as the current principal calling `method`."""

    def as_principal(request: Any, context: Any) -> Any:
        token = _current.set((key, method))
        try:
            return behavior(request, context)
        finally:
            _current.reset(token)

    return as_principal


def bind_stream(
    behavior: Callable[[Any, Any], Iterator[Any]], key: ApiKey, method: str = ""
) -> Callable[[Any, Any], Iterator[Any]]:
    """A server-streaming handler, run with `key` as the current principal: when it is
    called and at each step of its stream (gRPC reads the stream outside the call)."""
    bound = bind(behavior, key, method)

    def as_principal(request: Any, context: Any) -> Iterator[Any]:
        # Called now, not when first read: the handler sets its stream up in the call (a
        # watch fixes where it starts before the response headers go out).
        return _steps(iter(bound(request, context)), key, method)

    return as_principal


def _steps(stream: Iterator[Any], key: ApiKey, method: str) -> Iterator[Any]:
    """The stream's items, each produced with `key` as the current principal."""
    while True:
        token = _current.set((key, method))
        try:
            item = next(stream)
        except StopIteration:
            return
        finally:
            _current.reset(token)
        yield item


def actor() -> str:
    """The current key's name ("" outside a call)."""
    found = _current.get()
    return key_name(found[0]) if found is not None else ""


def method() -> str:
    """The gRPC method being called ("" outside a call)."""
    found = _current.get()
    return found[1] if found is not None else ""


def reads_personal() -> bool:
    """Only an admin key sees plates, names and payment references."""
    found = _current.get()
    return found is not None and found[0].role is Role.ADMIN


def require_gate(gate_id: str) -> None:
    """PERMISSION_DENIED unless the caller's key may act for this gate."""
    found = _current.get()
    if found is not None and not found[0].may_act_for(gate_id):
        key = found[0]
        raise PermissionDenied(
            f"this API key may not act for gate {gate_id!r} (its gates: {', '.join(key.gates)})",
            field="gate_id",
            reason="GATE_OUT_OF_SCOPE",
        )
