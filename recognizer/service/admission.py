"""Admission by expected finish time: per-method slots, a FIFO queue, and wait estimates.

A call starts at once when its method has a free slot. Otherwise it queues, unless the
estimated wait (the calls ahead of it, times the method's recent service time, over the
slots) plus its own service time would outlast its deadline: then it is refused at once,
and told to come back after that estimated wait. A queued call that reaches the front
starts only if its service time still fits in what is left of its deadline. No gRPC types
here; the interceptor maps each `QueueOutcome` to a status.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from recognizer.deadline import RecentCosts

POLL_S = 0.05  # how often a queued call looks whether its caller has gone
MIN_RETRY_S = 0.02  # never tell a client to come back sooner than this


class QueueOutcome(StrEnum):
    ADMITTED = "admitted"
    FULL = "full"  # the queue is at its bound
    LATE = "late"  # the estimated finish is past the deadline: come back later
    QUEUE_TIMEOUT = "queue_timeout"  # waited max_wait without a slot
    TOO_SHORT = "too_short"  # the deadline cannot hold the work itself (or ran out queued)
    CANCELLED = "cancelled"  # the caller went away while queued


@dataclass(frozen=True, slots=True)
class QueueVerdict:
    outcome: QueueOutcome
    waited_s: float = 0.0  # time spent queued
    retry_after_s: float = 0.0  # for refusals: the estimated wait, with jitter
    queued_ahead: int = 0  # for refusals: calls that were waiting ahead of this one


def _never() -> bool:
    return False


def uniform_jitter() -> float:
    return random.uniform(0.8, 1.2)  # spread the retries of callers refused together


class _Waiter:
    __slots__ = ("granted", "wake")

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.granted = False


class MethodQueue:
    """At most `limit` calls of one method run; at most `queue` more wait, first come first
    served. A finishing call hands its slot straight to the head of the queue."""

    def __init__(
        self,
        name: str,
        limit: int,
        queue: int,
        costs: RecentCosts,
        *,
        max_wait_s: float = 5.0,
        min_deadline_s: float = 0.005,
        jitter: Callable[[], float] = uniform_jitter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.limit = limit
        self.queue = queue
        self.running = 0
        self.started = 0  # calls admitted so far
        self._costs = costs
        self._max_wait = max_wait_s
        self._min_deadline = min_deadline_s
        self._jitter = jitter
        self._clock = clock
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def service_s(self) -> float:
        return self._costs.expected(self.name)

    def _wait_ahead(self, service: float) -> float:
        """Estimated queue wait of a call arriving now (caller holds the lock): with every
        slot busy, a slot frees every service/limit seconds on average, and the calls
        already queued take the next ones."""
        if self.running < self.limit and not self._waiters:
            return 0.0
        return (len(self._waiters) + 1) * service / self.limit

    def _refusal(self, outcome: QueueOutcome, wait: float, waited: float = 0.0) -> QueueVerdict:
        """A refusal telling the caller to come back after the estimated wait (caller holds
        the lock)."""
        delay = max(MIN_RETRY_S, wait * self._jitter())
        return QueueVerdict(outcome, waited, delay, len(self._waiters))

    def enter(
        self, remaining: float | None, cancelled: Callable[[], bool] = _never
    ) -> QueueVerdict:
        """Admit, queue, or refuse a call with `remaining` seconds to its deadline (None:
        no deadline). On ADMITTED the caller owns a slot and must call `leave` once."""
        t0 = self._clock()
        service = self.service_s()
        # Its own run is bounded generously (mean + 2 deviations): a call admitted on the
        # mean alone overruns its deadline half the time near the limit, wasting the work.
        own = self._costs.expected(self.name, spread=2.0)
        with self._lock:
            if remaining is not None and remaining < self._min_deadline + service:
                return QueueVerdict(QueueOutcome.TOO_SHORT)  # no queue could make this fit
            if self.running < self.limit and not self._waiters:
                self.running += 1
                self.started += 1
                return QueueVerdict(QueueOutcome.ADMITTED)
            wait = self._wait_ahead(service)
            if len(self._waiters) >= self.queue:
                return self._refusal(QueueOutcome.FULL, wait)
            if remaining is not None and wait + own > remaining:
                return self._refusal(QueueOutcome.LATE, wait)
            me = _Waiter()
            self._waiters.append(me)
        # Leave the queue once the rest of the deadline could no longer hold the work.
        limit = self._max_wait
        if remaining is not None:
            limit = min(limit, remaining - self._min_deadline - own)
        give_up = t0 + limit
        while not me.wake.wait(max(0.0, min(POLL_S, give_up - self._clock()))):
            if cancelled() or self._clock() >= give_up:
                break
        waited = self._clock() - t0
        with self._lock:
            if not me.granted:
                self._waiters.remove(me)
                if cancelled():
                    return QueueVerdict(QueueOutcome.CANCELLED, waited)
                if limit < self._max_wait:
                    return QueueVerdict(QueueOutcome.TOO_SHORT, waited)
                return self._refusal(QueueOutcome.QUEUE_TIMEOUT, self._wait_ahead(service), waited)
        # At the front: start only if the work still fits in what is left.
        if cancelled():
            self._release()
            return QueueVerdict(QueueOutcome.CANCELLED, waited)
        if remaining is not None and remaining - waited < self._min_deadline + service:
            self._release()
            return QueueVerdict(QueueOutcome.TOO_SHORT, waited)
        with self._lock:
            self.started += 1
        return QueueVerdict(QueueOutcome.ADMITTED, waited)

    def leave(self, service_s: float | None = None) -> None:
        """Free the slot of an admitted call that ran for `service_s` seconds."""
        if service_s is not None:
            self._costs.observe(self.name, service_s)
        self._release()

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                head = self._waiters.popleft()  # the slot passes on: running stays the same
                head.granted = True
                head.wake.set()
            else:
                self.running -= 1
