"""Keeps a node's FAISS replica following a shared store's change log.

A thread waits for the store's NOTIFY (or `poll_s`, whichever comes first), replays the log
into the gallery, then measures how far behind the replica is. The lag is what the health
service, GetMetrics and /metrics report, and what makes the gallery refuse 1:N searches
while the replica is more than `max_lag_s` behind: an answer from a stale gallery could
miss a deletion or a new enrolment made on another node.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

log = logging.getLogger("recognizer.gallery.follower")


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    changes: int  # committed changes not yet in this node's index
    seconds: float  # age of the oldest of them; or, if the store cannot be read, since it was

    def within(self, bound_s: float) -> bool:
        return self.seconds <= bound_s


@runtime_checkable
class FollowedStore(Protocol):
    """A store other nodes write to: its change log is followed."""

    def wait_for_change(self, timeout_s: float) -> bool: ...
    def backlog(self, seq: int, model: str) -> tuple[int, float]: ...


class FollowedGallery(Protocol):
    model: str

    @property
    def watermark(self) -> int: ...
    def sync(self) -> int: ...


class Follower:
    def __init__(
        self,
        gallery: FollowedGallery,
        store: FollowedStore,
        poll_s: float = 0.5,
        max_lag_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gallery = gallery
        self.store = store
        self.poll_s = poll_s
        self.max_lag_s = max_lag_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled_at = -math.inf  # when the store was last read successfully
        self._pending = 0
        self._age_s = 0.0
        self._listeners: list[Callable[[bool], None]] = []
        self._fresh = False

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Called with True/False when the replica becomes fresh/lagging."""
        self._listeners.append(listener)

    def poll_once(self) -> ReplicaLag:
        """Replay the log into the index, then measure what is left."""
        started = self._clock()
        try:
            self.gallery.sync()
            pending, age = self.store.backlog(self.gallery.watermark, self.gallery.model)
        except Exception as exc:  # the database may be down: the lag then grows with time
            log.warning("replica could not follow the store: %s", exc)
        else:
            self._polled_at, self._pending, self._age_s = started, pending, age
        lag = self.lag()
        fresh = lag.within(self.max_lag_s)
        if fresh != self._fresh:
            self._fresh = fresh
            log.log(
                logging.INFO if fresh else logging.WARNING,
                "replica %s: %d changes, %.2fs behind",
                "caught up" if fresh else "lagging",
                lag.changes,
                lag.seconds,
            )
            for listener in self._listeners:
                listener(fresh)
        return lag

    def lag(self) -> ReplicaLag:
        since = self._clock() - self._polled_at
        if self._pending:
            return ReplicaLag(self._pending, self._age_s + since)
        # Nothing was pending when last read: stale only if reads have stopped.
        return ReplicaLag(0, max(0.0, since - 2 * self.poll_s))

    def fresh(self) -> bool:
        return self.lag().within(self.max_lag_s)

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="replica-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.store.wait_for_change(self.poll_s)
            if not self._stop.is_set():
                self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.poll_s + 5)
