"""Faults of the store, shared by both adapters: the caller's deadline bounds every wait, a
full disk or an unreachable database is a condition that health reports (and that clears by
itself), and a stopping server can interrupt calls stuck in the store.

- `wait_bound(default_s)`: how long the store may wait now (for a lock, a pooled session, a
  statement): the adapter's default, or less when the current call's deadline
  (`recognizer.deadline`, a contextvar the admission interceptor sets) is nearer.
- `before_commit()`: the deadline checked again just before COMMIT, so a call whose deadline
  passed while it waited or wrote stores nothing.
- `StoreHealth`: "writes failing for a full disk" and "database unreachable", with listeners
  (the server's health) and a probe thread that clears a condition once the store works
  again, without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from recognizer import deadline
from recognizer.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("recognizer.store")

STORAGE_FULL = "STORAGE_FULL"
SHUTTING_DOWN = "SHUTTING_DOWN"
FULL_RETRY_S = 5.0  # a full disk is freed by an operator: come back in seconds, not at once
MIN_WAIT_S = 0.001


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached within `database_wait_s` (the node exits 2)."""


def wait_bound(default_s: float) -> tuple[float, bool]:
    """(seconds a store wait may take now, whether the caller's deadline set it). Raises
    DeadlineExceeded when the caller is gone or no time is left: then nothing starts."""
    budget = deadline.current()
    if budget is None:
        return default_s, False
    budget.check("store")
    left = budget.remaining()
    if left is None or left >= default_s:
        return default_s, False
    return max(left, MIN_WAIT_S), True


def before_commit() -> None:
    """The deadline again, just before COMMIT: raising here rolls the transaction back. The
    commit's own recent cost must still fit (deadline.stage), since an answer that arrives
    after the deadline tells the caller nothing was stored."""
    with deadline.stage("store.commit"):
        pass


def deadline_passed(what: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the deadline ran out while the store waited for {what}; nothing was stored",
        reason="DEADLINE_EXCEEDED",
    )


def storage_full(detail: str) -> Unavailable:
    return Unavailable(
        f"the store's disk is full ({detail}): writes are refused until space is freed; "
        "reads still work",
        reason=STORAGE_FULL,
        retry_after_s=FULL_RETRY_S,
    )


def shutting_down() -> Unavailable:
    return Unavailable(
        "the server is stopping: the store call was interrupted and nothing was stored; "
        "retry on another node",
        reason=SHUTTING_DOWN,
        retry_after_s=1.0,
    )


class StoreHealth:
    """Two conditions: `full` (writes fail for want of space) and `unreachable` (the database
    cannot be reached). Listeners get the health after each change. While a condition holds,
    a probe thread calls `probe(condition)` every `interval_s`; when it returns True (or
    an ordinary call succeeds) the condition clears."""

    FULL = "full"
    UNREACHABLE = "unreachable"

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._down: dict[str, str] = {}
        self._listeners: list[Callable[[StoreHealth], None]] = []
        self._probes: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def writable(self) -> bool:
        return not self._down

    @property
    def reachable(self) -> bool:
        return self.UNREACHABLE not in self._down

    @property
    def full(self) -> bool:
        return self.FULL in self._down

    def on_change(self, listener: Callable[[StoreHealth], None]) -> None:
        self._listeners.append(listener)

    def set_probe(self, condition: str, probe: Callable[[], bool]) -> None:
        self._probes[condition] = probe

    def fail(self, condition: str, why: str) -> None:
        with self._lock:
            if condition in self._down:
                return
            self._down[condition] = why
            self._start_probing()
        log.warning("store %s: %s", condition, why)
        self._notify()

    def ok(self, condition: str | None = None) -> None:
        """A call (or the probe) found the store working: clear `condition` (None: all)."""
        if not self._down:  # the common case, without the lock
            return
        with self._lock:
            gone = [c for c in self._down if condition is None or c == condition]
            for c in gone:
                del self._down[c]
        if gone:
            log.warning("store %s: recovered", ", ".join(gone))
            self._notify()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a listener's fault must not break a store call
                log.exception("store health listener failed")

    def _start_probing(self) -> None:
        if self._thread is None:  # caller holds the lock
            self._thread = threading.Thread(target=self._run, name="store-probe", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                down = list(self._down)
                if not down:
                    self._thread = None
                    return
            for condition in down:
                probe = self._probes.get(condition)
                try:
                    working = probe() if probe is not None else False
                except Exception:
                    working = False
                if working:
                    self.ok(condition)
