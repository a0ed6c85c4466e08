"""Call budgets: the caller's deadline and cancellation, visible to domain code.

The admission interceptor opens a `Budget` for each call; domain code calls `check(stage)`
before each expensive stage (decode, a model branch, storing a result), so work for a caller
that has gone stops at the next stage boundary and stores nothing. No gRPC types here: the
budget only knows a monotonic expiry time and a cancelled() callback. Work handed to other
threads through `accounting.submit` carries the budget along (contextvars).

A budget may carry `RecentCosts`: then `stage(name)` times each stage into it, and `check`
also refuses a stage whose recent cost no longer fits in the time left.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from recognizer import tracing
from recognizer.errors import DeadlineExceeded


def _never() -> bool:
    return False


class RecentCosts:
    """Recent wall seconds of named steps (stages, methods): an EWMA of the cost and of its
    mean deviation (as TCP estimates round trips), both fading while a step goes unobserved.
    A cost learned in a burst must not refuse every later call for ever: a refused step is
    never timed again, so without the fade its estimate could never fall.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        half_life_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._alpha = alpha
        self._half_life = half_life_s
        self._clock = clock
        # name -> (EWMA seconds, EWMA absolute deviation, last observed at)
        self._costs: dict[str, tuple[float, float, float]] = {}
        self._lock = threading.Lock()

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            now = self._clock()
            old = self._costs.get(name)
            if old is None:
                self._costs[name] = (seconds, seconds / 2, now)
                return
            mean, dev, _ = old
            dev += self._alpha * (abs(seconds - mean) - dev)
            mean += self._alpha * (seconds - mean)
            self._costs[name] = (mean, dev, now)

    def expected(self, name: str, spread: float = 0.0) -> float:
        """Seconds the step is expected to take now (plus `spread` mean deviations, for a
        bound most runs stay under); 0.0 for a step never timed."""
        with self._lock:
            mean, dev, at = self._costs.get(name, (0.0, 0.0, 0.0))
            age = max(0.0, self._clock() - at)
        return float((mean + spread * dev) * 0.5 ** (age / self._half_life))


@dataclass(frozen=True, slots=True)
class Budget:
    expires_at: float | None  # time.monotonic() seconds; None: the caller set no deadline
    cancelled: Callable[[], bool] = field(default=_never, repr=False)
    costs: RecentCosts | None = field(default=None, repr=False)

    @classmethod
    def after(
        cls,
        seconds: float | None,
        cancelled: Callable[[], bool] = _never,
        costs: RecentCosts | None = None,
    ) -> Budget:
        return cls(None if seconds is None else time.monotonic() + seconds, cancelled, costs)

    def remaining(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - time.monotonic()

    def check(self, stage: str, need_s: float = 0.0) -> None:
        """Raise DeadlineExceeded if the caller is gone, or if `need_s` no longer fits in the
        time left. With costs, the need is at least the stage's recent cost plus one mean
        deviation: a stage started with only its average cost left overruns half the time,
        and work that finishes after the deadline is work for nobody."""
        if self.cancelled():
            raise DeadlineExceeded(f"the call was cancelled before {stage}", reason="CANCELLED")
        left = self.remaining()
        if left is None:
            return
        if self.costs is not None:
            need_s = max(need_s, self.costs.expected(stage, spread=1.0))
        if left < need_s:
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


@contextmanager
def stage(name: str) -> Iterator[None]:
    """`check(name)`, then run the block and time it into the budget's costs (if it
    completes: a stage that failed says little about what the next one will cost)."""
    budget = _current.get()
    if budget is None:
        with tracing.span(name):
            yield
        return
    budget.check(name)
    t0 = time.monotonic()
    with tracing.span(name):
        yield
    if budget.costs is not None:
        budget.costs.observe(name, time.monotonic() - t0)
