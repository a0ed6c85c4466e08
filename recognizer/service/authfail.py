"""Failed authentication, audited at most once per peer (and key) per window, with a count.

A peer that keeps sending a wrong key must not turn every refusal into a store write, yet
none of its attempts may go uncounted: the first failure is reported at once, later ones in
the same window are counted and reported when the window has passed (by the next failure or
by `due`, which the server calls periodically). The table is bounded: when it is full, new
peers are counted together under OVERFLOW.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("recognizer.access")

OVERFLOW = "*"  # the peer that stands for every peer beyond the table's bound
ACTION = "auth_failed"


@dataclass(frozen=True, slots=True)
class Failures:
    """Failed calls from one peer (with one key name, "" for no or an unknown key)."""

    peer: str
    key_name: str
    count: int
    reasons: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class _Peer:
    reported_at: float | None = None
    reasons: Counter[str] = field(default_factory=Counter)


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` -> `ipv4:127.0.0.1`: a peer is its address, whatever the port
    of each new connection."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


class FailureWindow:
    """Counts failures per (peer, key name); reports each at most once per `window_s`."""

    def __init__(
        self,
        window_s: float = 60.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._max = max_peers
        self._clock = clock
        self._peers: dict[tuple[str, str], _Peer] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)

    def hit(self, peer: str, key_name: str, reason: str) -> Failures | None:
        """Count one failure; the failures to report now, if this peer is due."""
        now = self._clock()
        with self._lock:
            slot = (peer, key_name)
            if slot not in self._peers and len(self._peers) >= self._max:
                self._prune(now)
                if len(self._peers) >= self._max:
                    slot = (OVERFLOW, "")
            state = self._peers.setdefault(slot, _Peer())
            state.reasons[reason] += 1
            return self._report(slot, state, now)

    def due(self) -> list[Failures]:
        """Counts whose window has passed, and forget peers with nothing left to report."""
        now = self._clock()
        with self._lock:
            out = [f for slot, s in list(self._peers.items()) if (f := self._report(slot, s, now))]
            self._prune(now)
        return out

    def drain(self) -> list[Failures]:
        """Every count still held, whatever its window (the server is stopping)."""
        now = self._clock()
        with self._lock:
            out = [
                f
                for slot, s in self._peers.items()
                if (f := self._report(slot, s, now, due_only=False))
            ]
            self._peers.clear()
        return out

    def giveback(self, failures: Failures) -> None:
        """A report that could not be written: count it again with the next one."""
        with self._lock:
            state = self._peers.setdefault((failures.peer, failures.key_name), _Peer())
            state.reasons.update(dict(failures.reasons))

    def _report(
        self, slot: tuple[str, str], state: _Peer, now: float, *, due_only: bool = True
    ) -> Failures | None:
        """The counts to write, or None (none held, or, with `due_only`, its window not past)."""
        if not state.reasons:
            return None
        if due_only and state.reported_at is not None and now - state.reported_at < self.window_s:
            return None
        state.reported_at = now
        reasons = tuple(sorted(state.reasons.items()))
        state.reasons = Counter()
        return Failures(slot[0], slot[1], sum(n for _, n in reasons), reasons)

    def _prune(self, now: float) -> None:
        stale = [
            slot
            for slot, s in self._peers.items()
            if not s.reasons and (s.reported_at is None or now - s.reported_at >= self.window_s)
        ]
        for slot in stale:
            del self._peers[slot]


class FailedAuthAudit:
    """Writes what a FailureWindow reports as audit rows, through `write(actor, action,
    target, detail)`; a row that cannot be written (the store not open yet) is counted again."""

    def __init__(
        self,
        write: Callable[[str, str, str, dict[str, object]], None],
        window: FailureWindow | None = None,
    ) -> None:
        self._write = write
        self.window = window if window is not None else FailureWindow()

    def failed(self, peer: str, key_name: str, reason: str) -> None:
        found = self.window.hit(peer_host(peer), key_name, reason)
        if found is not None:
            self._record(found)

    def flush(self) -> None:
        for found in self.window.due():
            self._record(found)

    def close(self) -> None:
        """Write every count still held (the server stops; nothing is carried over)."""
        for found in self.window.drain():
            self._record(found)

    def _record(self, f: Failures) -> None:
        detail: dict[str, object] = {"count": f.count, "reasons": dict(f.reasons)}
        try:
            self._write(f.key_name, ACTION, f.peer, detail)
        except Exception as exc:  # the store may be loading or down: keep the count
            log.warning(
                "failed authentication not audited yet (%s): %d from %s", exc, f.count, f.peer
            )
            self.window.giveback(f)
