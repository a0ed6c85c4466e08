"""Call budgets: the caller's deadline and cancellation, visible to domain code.

The admission interceptor opens a `Budget` for each call; domain code calls `check(stage)`
before each expensive stage (decode, a model branch, storing a result), so work for a caller
that has gone stops at the next stage boundary and stores nothing. No gRPC types here: the
budget only knows a monotonic expiry time and a cancelled() callback. Work handed to other
threads through `accounting.submit` carries the budget along (contextvars).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from recognizer.errors import DeadlineExceeded


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Budget:
    expires_at: float | None  # time.monotonic() seconds; None: the caller set no deadline
    cancelled: Callable[[], bool] = field(default=_never, repr=False)

    @classmethod
    def after(cls, seconds: float | None, cancelled: Callable[[], bool] = _never) -> Budget:
        return cls(None if seconds is None else time.monotonic() + seconds, cancelled)

    def remaining(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - time.monotonic()

    def check(self, stage: str, need_s: float = 0.0) -> None:
        """Raise DeadlineExceeded if the caller is gone or `need_s` no longer fits."""
        if self.cancelled():
            raise DeadlineExceeded(f"the call was cancelled before {stage}", reason="CANCELLED")
        left = self.remaining()
        if left is not None and left < need_s:
            raise DeadlineExceeded(
                f"the deadline ran out before {stage}", reason="DEADLINE_EXCEEDED"
            )


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("budget", default=None)


def current() -> Budget | None:
    return _current.get()


def check(stage: str, need_s: float = 0.0) -> None:
    """Check the current call's budget; a no-op outside a call (tests, CLI, benchmarks)."""
    budget = _current.get()
    if budget is not None:
        budget.check(stage, need_s)


@contextmanager
def running(budget: Budget | None) -> Iterator[None]:
    token = _current.set(budget)
    try:
        yield
    finally:
        _current.reset(token)
