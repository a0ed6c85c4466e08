"""AdminService.WatchDecisions: decisions streamed as they are stored, on every node.

Each stream reads the store for what was stored after its mark, in the order decisions
were committed (`WatchedDecisions`), so what it sends is right whatever wakes it. One thread
per server waits for the store's decision signal (SQLite: in this process; PostgreSQL: the
NOTIFY the deciding transaction sends, heard by every node) and wakes the streams at once;
they poll every `poll_s` as well, so a lost notification costs at most that long.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from recognizer.errors import NotFound, Unavailable
from recognizer.store.faults import shutting_down
from recognizer.store.ports import WatchedDecisions
from recognizer.store.rows import DecisionMark, DecisionRow

log = logging.getLogger("recognizer.watch")

BATCH = 100  # decisions read per store query


class DecisionFeed:
    def __init__(
        self,
        source: Callable[[], WatchedDecisions],
        max_streams: int,
        poll_s: float = 0.5,
    ) -> None:
        self._source = source  # the store, once loaded (raises FailedPrecondition before)
        self._max_streams = max_streams
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._woken = 0  # bumped when a decision may have been stored
        self._streams = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(
        self, gate_id: str, after_decision_id: str, active: Callable[[], bool]
    ) -> Iterator[DecisionRow]:
        """Decisions after `after_decision_id` (else after the last one stored now), of
        `gate_id` (else every gate), until `active()` turns false or the feed closes
        (UNAVAILABLE SHUTTING_DOWN). Where it starts is fixed by this call, before the
        stream is read: a decision stored once it returns is in the stream."""
        store = self._source()
        return self._stream(store, self._start(store, after_decision_id), gate_id, active)

    def _stream(
        self,
        store: WatchedDecisions,
        mark: DecisionMark,
        gate_id: str,
        active: Callable[[], bool],
    ) -> Iterator[DecisionRow]:
        self._enter()
        try:
            while True:
                with self._cond:
                    if self._closed:
                        raise shutting_down()
                    woken = self._woken
                rows = store.decisions_after(mark, BATCH)
                for _, row in rows:
                    if not gate_id or row.gate_id == gate_id:
                        yield row
                if rows:  # past every row read, the other gates' too
                    mark = rows[-1][0]
                if len(rows) == BATCH:
                    continue  # more are waiting: no pause
                self._pause(woken)
                if not active():
                    return
        finally:
            with self._cond:
                self._streams -= 1

    def _pause(self, woken: int) -> None:
        """Until a wake-up after `woken`, the feed's closing, or `poll_s`."""
        with self._cond:
            self._cond.wait_for(lambda: self._woken != woken or self._closed, self._poll_s)

    @staticmethod
    def _start(store: WatchedDecisions, after_decision_id: str) -> DecisionMark:
        if not after_decision_id:
            return store.decision_head()
        mark = store.decision_mark(after_decision_id)
        if mark is None:
            raise NotFound(
                f"after_decision_id {after_decision_id!r} names no stored decision (never"
                " stored, or purged by retention): watch from now on, or list what you missed"
                " with ListDecisions",
                field="after_decision_id",
            )
        return mark

    def _enter(self) -> None:
        with self._cond:
            if self._closed:
                raise shutting_down()
            if self._streams >= self._max_streams:
                raise Unavailable(
                    f"{self._streams} decision streams are open on this node, its limit "
                    f"(watch_max_streams = {self._max_streams}): retry later or on another node",
                    reason="TOO_MANY_STREAMS",
                    retry_after_s=5.0,
                )
            self._streams += 1
            if self._thread is None:  # the first stream starts the listener
                self._thread = threading.Thread(
                    target=self._listen, name="decision-feed", daemon=True
                )
                self._thread.start()

    def _listen(self) -> None:
        while not self._closed:
            try:
                woke = self._source().wait_for_decision(self._poll_s)
            except Exception as exc:  # the store closing, the database away: streams poll
                log.warning("decision feed: %s", exc)
                with self._cond:
                    self._cond.wait(self._poll_s)
                continue
            if woke:
                with self._cond:
                    self._woken += 1
                    self._cond.notify_all()

    def close(self) -> None:
        """End every stream (UNAVAILABLE SHUTTING_DOWN) and stop the listener."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=2 * self._poll_s + 5)
