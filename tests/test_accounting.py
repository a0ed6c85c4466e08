"""Per-request accounting follows work into helper threads."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from recognizer import accounting


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_usage_follows_submitted_work_and_only_the_current_request() -> None:
    pool = ThreadPoolExecutor(2)
    usage, token = accounting.begin()
    try:
        accounting.add_inference(0.25)
        fut = accounting.submit(pool, lambda: (_spin(0.05), accounting.add_inference(0.5)))
        fut.result()
    finally:
        accounting.end(token)
    assert usage.inference == 0.75
    assert usage.cpu >= 0.04
    accounting.add_inference(1.0)  # no request open: counted nowhere
    assert usage.inference == 0.75
    pool.shutdown()
