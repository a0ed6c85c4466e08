"""A node whose PostgreSQL goes away: calls fail fast and clearly, health follows, and
everything comes back when the database does (a real server and a real database, both on
127.0.0.1; the database is this test's own, so stopping it disturbs nobody)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from recognizer.v1 import identity_pb2
from tests.conftest import client_for, loaded_server, local_postgres
from tests.helpers import error_reason

RECOGNITION = "recognizer.v1.RecognitionService"
IDENTITY = "recognizer.v1.IdentityService"
GATE = "recognizer.v1.GateService"


def test_calls_are_unavailable_while_the_database_is_down_and_recover(tmp_path: Path) -> None:
    from devtools import pg_local

    with (
        local_postgres("recognizer-pg-down-") as db,
        loaded_server(
            tmp_path, database_url=db.url, replica_poll_s=0.1, replica_max_lag_s=1.0
        ) as running,
    ):
        admin = client_for(running, "admin")
        create = identity_pb2.CreateIdentityRequest(display_name="before")
        admin.identity.CreateIdentity(create, metadata=admin.metadata, timeout=10)
        db.stop()
        with pytest.raises(grpc.RpcError) as err:
            admin.identity.CreateIdentity(create, metadata=admin.metadata, timeout=30)
        # The pool's own wait ended the call: had it waited out the caller's deadline, the
        # code would be DEADLINE_EXCEEDED (no clock bound needed to tell them apart).
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_reason(err.value) == "DATABASE_UNAVAILABLE"
        deadline = time.monotonic() + 10
        while admin.health(RECOGNITION) != "NOT_SERVING":
            assert time.monotonic() < deadline, "health did not follow the database down"
            time.sleep(0.1)
        assert admin.health() == "SERVING"  # the process is alive: only 1:N work stops
        for service in (IDENTITY, GATE):  # the writing services step aside too
            assert admin.health(service) == "NOT_SERVING", service
        pg_local.start(db.data, durable=False, port=db.port)  # the same database comes back
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.identity.CreateIdentity(create, metadata=admin.metadata, timeout=10)
                break
            except grpc.RpcError as exc:  # stale pooled connections are replaced first
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "calls did not recover"
                time.sleep(0.5)
        deadline = time.monotonic() + 10
        while {admin.health(s) for s in (RECOGNITION, IDENTITY, GATE)} != {"SERVING"}:
            assert time.monotonic() < deadline, "health did not recover"
            time.sleep(0.1)
        listed = admin.identity.ListIdentities(
            identity_pb2.ListIdentitiesRequest(), metadata=admin.metadata
        )
        assert [i.display_name for i in listed.identities] == ["before", "before"]
        admin.close()
