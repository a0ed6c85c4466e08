"""Per-request CPU and inference accounting that follows work into helper threads.

A request's handler opens a `Usage` (ObserveInterceptor); onnxruntime calls add their thread
CPU time to whichever Usage is current; work submitted to another thread through `submit`
carries the Usage along (contextvars) and adds that thread's CPU too. Thread CPU time, not
wall time: under load a wall clock counts the wait for a core as work.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Usage:
    cpu: float = 0.0  # CPU seconds in helper threads (the handler's own thread is separate)
    inference: float = 0.0  # CPU seconds inside onnxruntime, any thread
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, cpu: float = 0.0, inference: float = 0.0) -> None:
        with self.lock:
            self.cpu += cpu
            self.inference += inference


_current: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)


def begin() -> tuple[Usage, contextvars.Token[Usage | None]]:
    usage = Usage()
    return usage, _current.set(usage)


def end(token: contextvars.Token[Usage | None]) -> None:
    _current.reset(token)


def add_inference(seconds: float) -> None:
    usage = _current.get()
    if usage is not None:
        usage.add(inference=seconds)


def submit(pool: Executor, fn: Callable[[], T]) -> Future[T]:
    """Run fn in the pool with the caller's Usage, crediting that thread's CPU to it."""
    ctx = contextvars.copy_context()

    def run() -> T:
        c0 = time.thread_time()
        try:
            return fn()
        finally:
            usage = _current.get()
            if usage is not None:
                usage.add(cpu=time.thread_time() - c0)

    return pool.submit(ctx.run, run)
