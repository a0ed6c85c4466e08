"""Failed authentication is audited at most once per peer (and key) per minute, with a
count (issue 32): the limiter on an injected clock, no sleeps; and, through a server with
no models, what it still held is written when it stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from recognizer.client import Client
from recognizer.service.authfail import (
    OVERFLOW,
    FailedAuthAudit,
    Failures,
    FailureWindow,
    peer_host,
)
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import client_for, start_server
from tests.helpers import Clock, store_only


def test_a_peer_is_reported_at_once_then_at_most_once_per_window_with_the_count() -> None:
    clock = Clock()
    w = FailureWindow(window_s=60.0, clock=clock)
    start = clock.now
    first = w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID")
    assert first == Failures("ipv4:10.0.0.1", "", 1, (("API_KEY_INVALID", 1),))
    for i in range(9):
        clock.now += 5.0  # 45 s in all: inside the window
        assert w.hit("ipv4:10.0.0.1", "", "API_KEY_MISSING" if i % 3 else "API_KEY_INVALID") is None
    assert w.due() == []  # the window has not passed
    clock.now = start + 60.0
    again = w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID")
    # the nine counted in the window and this one, by reason
    assert again == Failures(
        "ipv4:10.0.0.1", "", 10, (("API_KEY_INVALID", 4), ("API_KEY_MISSING", 6))
    )
    assert w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID") is None


def test_counts_left_in_a_window_are_reported_by_due_and_quiet_peers_are_forgotten() -> None:
    clock = Clock()
    w = FailureWindow(window_s=60.0, clock=clock)
    assert w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID") is not None
    assert w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID") is None
    assert w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID") is None
    clock.now += 59.9
    assert w.due() == []
    clock.now += 0.1
    assert w.due() == [Failures("ipv4:10.0.0.1", "", 2, (("API_KEY_INVALID", 2),))]
    assert len(w) == 1  # reported just now: kept, so the next failure waits a window
    clock.now += 60.0
    assert w.due() == [] and len(w) == 0


def test_peers_and_keys_are_counted_apart_and_the_table_is_bounded() -> None:
    clock = Clock()
    w = FailureWindow(window_s=60.0, max_peers=3, clock=clock)
    assert w.hit("ipv4:10.0.0.1", "", "API_KEY_INVALID") is not None
    assert w.hit("ipv4:10.0.0.1", "gate-7", "ROLE_NOT_ALLOWED") is not None  # another key
    assert w.hit("ipv4:10.0.0.2", "", "API_KEY_INVALID") is not None
    # Full: a flood from new addresses is counted under one overflow peer.
    flood = [w.hit(f"ipv4:10.1.0.{i}", "", "API_KEY_INVALID") for i in range(100)]
    assert flood[0] == Failures(OVERFLOW, "", 1, (("API_KEY_INVALID", 1),))
    assert flood[1:] == [None] * 99 and len(w) == 4
    clock.now += 60.0
    assert Failures(OVERFLOW, "", 99, (("API_KEY_INVALID", 99),)) in w.due()


def test_the_port_of_each_connection_is_not_part_of_the_peer() -> None:
    assert peer_host("ipv4:127.0.0.1:54321") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:54321") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_a_row_that_cannot_be_written_is_counted_again() -> None:
    clock = Clock()
    rows: list[tuple[Any, ...]] = []
    down = [True]

    def write(actor: str, action: str, target: str, detail: dict[str, object]) -> None:
        if down[0]:
            raise RuntimeError("models are still loading")
        rows.append((actor, action, target, detail))

    audit = FailedAuthAudit(write, FailureWindow(60.0, clock=clock))
    audit.failed("ipv4:10.0.0.9:4000", "", "API_KEY_MISSING")  # not written: given back
    audit.failed("ipv4:10.0.0.9:4001", "", "API_KEY_MISSING")
    down[0] = False
    clock.now += 60.0
    audit.flush()
    assert rows == [
        ("", "auth_failed", "ipv4:10.0.0.9", {"count": 2, "reasons": {"API_KEY_MISSING": 2}})
    ]


def test_at_shutdown_every_count_still_inside_its_window_is_written() -> None:
    clock = Clock()
    rows: list[tuple[Any, ...]] = []

    def write(actor: str, action: str, target: str, detail: dict[str, object]) -> None:
        rows.append((actor, action, target, detail))

    window = FailureWindow(60.0, clock=clock)
    audit = FailedAuthAudit(write, window)
    for _ in range(3):
        audit.failed("ipv4:10.0.0.7:4000", "", "API_KEY_INVALID")
    audit.failed("ipv4:10.0.0.8:4000", "env-gate-1", "GATE_OUT_OF_SCOPE")
    assert len(rows) == 2  # each peer's first at once; two more held for the minute
    clock.now += 1.0
    audit.flush()
    assert len(rows) == 2  # not due yet
    audit.close()
    assert rows[2:] == [
        ("", "auth_failed", "ipv4:10.0.0.7", {"count": 2, "reasons": {"API_KEY_INVALID": 2}})
    ]
    assert len(window) == 0
    audit.close()  # nothing left: nothing written twice
    assert len(rows) == 3


def test_a_stopping_server_writes_the_failures_it_still_held(tmp_path: Path) -> None:
    running = start_server(
        tmp_path, runtime_factory=store_only, auth_window=FailureWindow(60.0, clock=Clock())
    )
    try:
        assert running.runtime.wait(30)
        for key in ("wrong-key", "wrong-key", "", "wrong-key"):
            stranger = Client.connect(f"127.0.0.1:{running.port}", key, retry=False)
            with pytest.raises(grpc.RpcError):
                stranger.identity.ListIdentities(
                    identity_pb2.ListIdentitiesRequest(), metadata=stranger.metadata
                )
            stranger.close()
    finally:
        running.stop(grace=1.0)
    # The data directory again, as the next server opens it.
    again = start_server(tmp_path, runtime_factory=store_only)
    try:
        assert again.runtime.wait(30)
        admin = client_for(again, "admin")
        rows = [
            r
            for r in admin.admin.ListAudit(
                gate_pb2.ListAuditRequest(page_size=100), metadata=admin.metadata
            ).records
            if r.action == "auth_failed"
        ]
        admin.close()
    finally:
        again.stop(grace=1.0)
    counts = sorted(int(r.detail["count"]) for r in rows)
    assert counts == [1, 3], "the first at once, the three after it at the stop"
