"""Keep the resident set near its working size after bursts of load (glibc malloc).

Measured with `python -m benchmarks overload` (48 Authorize callers, 2 cores): RSS rose from
~350 MB to ~700 MB and stayed there. glibc gives each thread that contends for the heap an
arena of its own (up to 8 per core: 17 heaps after a DetectFaces burst), and freed memory
stays in those arenas. Two arenas, plus `malloc_trim` once a burst is over, bring it back to
~1.25x the warmed-up level; what remains is mostly onnxruntime's per-session CPU arenas
(turning those off as well came back below the baseline, but cost ~5% of inference time).
Elsewhere (musl, macOS) these calls are no-ops.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("recognizer.memory")

_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - probing for glibc
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas (0: leave the default). Takes effect for arenas created
    afterwards, so call it before the server's threads start allocating."""
    if count <= 0 or _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, count))


def release_free_memory() -> bool:
    """Return the free memory of every malloc arena to the system."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class IdleTrim:
    """Calls `trim` once after each burst: when `activity()` (a count of calls) has moved
    since the last trim and `idle()` says nothing runs or waits. Trimming under load would
    only stall allocations for memory that is about to be reused."""

    def __init__(
        self,
        idle: Callable[[], bool],
        activity: Callable[[], int],
        every_s: float = 1.0,
        trim: Callable[[], bool] = release_free_memory,
    ) -> None:
        self._idle = idle
        self._activity = activity
        self._every = every_s
        self._trim = trim
        self._trimmed_at = activity()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="idle-trim", daemon=True)

    def tick(self) -> bool:
        """Trim if a burst has ended since the last trim; True if it trimmed."""
        seen = self._activity()
        if seen == self._trimmed_at or not self._idle():
            return False
        self._trimmed_at = seen
        self._trim()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.tick()
            except Exception as exc:  # never let housekeeping kill the server
                log.error("idle trim failed: %s", exc)

    def start(self) -> IdleTrim:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
