"""Retention of sightings (issue 32), on SQLite and PostgreSQL: the server purges sightings
past `sightings_retention_days` on its own schedule, and `recognizer purge` applies it (and
`retention_days` to decisions); each plate's latest sighting stays, so a car that entered
40 days ago and is still parked exits normally."""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from recognizer.client import Client
from recognizer.policy import PolicySet
from recognizer.service.runtime import default_engines, fusion_path
from recognizer.store.crypto import NullCipher
from recognizer.store.open import StoreLocation
from recognizer.store.rows import DecisionRow
from recognizer.v1 import gate_pb2
from tests import helpers
from tests.conftest import REPO, client_for, loaded_server, missing
from tests.helpers import codes
from tests.helpers import lfw_face as face

DAY = 86400.0
POLICY = {
    "policy_id": "retention",
    "gates": ["G-*"],
    "plate_only_max_minor": 500,
    "target_far": 1e-5,
    "min_travel_seconds": 120,
    "track_presence": True,
    "trust_plate_text": True,  # plate_text stands for the gate's own reader
}
ADAPTERS = ["sqlite", "postgres"]


def database_url(adapter: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url") if adapter == "postgres" else ""


def authorize(c: Client, plate: str, direction: int, photo: bytes) -> gate_pb2.AuthorizeResponse:
    return c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="G-1",
            event_id=uuid.uuid4().hex,
            plate_text=plate,
            face_image=photo,
            amount_minor=1000,
            currency="CNY",
            direction=direction,
        ),
        metadata=c.metadata,
        timeout=60,
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_car_that_entered_40_days_ago_exits_normally_after_the_scheduled_purge(
    adapter: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = database_url(adapter, request)
    policies = PolicySet.from_config([POLICY])
    plate, name = "京A40040", "Tony_Blair"
    back = [45 * DAY]  # how far in the past the first server's gate lives

    def gate_clock() -> float:
        return time.time() - back[0]

    with loaded_server(
        tmp_path,
        runtime_factory=functools.partial(default_engines, clock=gate_clock),
        policies=policies,
        database_url=url,
        retention_interval_s=86400,  # no purge while the past is written
    ) as past:
        if not fusion_path(past.runtime.config).is_file():
            missing("no fusion calibration; run scripts/calibrate_fusion.py")
        c = client_for(past, "admin")
        helpers.make_payer(c, name, [plate], payment_ref="ref-parked")
        authorize(c, plate, gate_pb2.DIRECTION_EXIT, face(name, 1))  # 45 days ago: an old exit
        back[0] = 40 * DAY
        entered = authorize(c, plate, gate_pb2.DIRECTION_ENTRY, face(name, 2))  # still parked
        assert entered.outcome == gate_pb2.OUTCOME_ALLOW, codes(entered)
        c.close()
    with loaded_server(
        tmp_path, policies=policies, database_url=url, retention_interval_s=0.2
    ) as now:
        c = client_for(now, "admin")
        purged = None
        deadline = time.monotonic() + 60
        while purged is None and time.monotonic() < deadline:  # bounded: the job's first runs
            rows = c.admin.ListAudit(
                gate_pb2.ListAuditRequest(key_name="server:retention"), metadata=c.metadata
            ).records
            purged = next((r for r in rows if r.action == "purge"), None)
            time.sleep(0.1)
        assert purged is not None, "the server never purged on its schedule"
        assert purged.detail["sightings"] == 1  # the old exit; the entry is the plate's latest
        assert purged.detail["sightings_days"] == 30  # the default sightings_retention_days
        left = authorize(c, plate, gate_pb2.DIRECTION_EXIT, face(name, 3))
        assert "EXIT_WITHOUT_ENTRY" not in codes(left)
        assert left.outcome == gate_pb2.OUTCOME_ALLOW, codes(left)
        c.close()


def cli_purge(data_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOGNIZER_")}
    if url:
        env["RECOGNIZER_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", "purge", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_purge_applies_both_retentions_and_keeps_each_plates_latest_sighting(
    adapter: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = database_url(adapter, request)
    location = StoreLocation(url=url) if url else StoreLocation(tmp_path / "recognizer.db")
    now = time.time()
    store = location.open(NullCipher())
    try:
        for event, age in (("year-old", 400), ("month-old", 40), ("new", 1)):
            store.put_decision(
                DecisionRow(event, "G-1", event, "deny", b"", created_at=now - age * DAY)
            )
        for plate, direction, age in (
            ("京A00001", "exit", 45),  # purged: not the latest
            ("京A00001", "entry", 40),  # parked since: the latest, kept
            ("京B00002", "entry", 35),  # purged
            ("京B00002", "exit", 2),
        ):
            store.record_sighting(plate, "G-1", direction, now - age * DAY)
    finally:
        store.close()
    done = cli_purge(tmp_path, url)
    assert done.returncode == 0, done.stderr
    assert "purged 1 decision records older than 365 days" in done.stdout, done.stdout
    assert "2 sightings older than 30 days" in done.stdout, done.stdout
    store = location.open(NullCipher())
    try:
        assert {d.event_id for d in store.list_decisions(limit=10)} == {"month-old", "new"}
        parked = store.last_sighting("京A00001")
        assert parked is not None and parked.direction == "entry"
        assert parked.at == pytest.approx(now - 40 * DAY)
        row = store.list_audit(1)[0]
        assert (row.action, row.actor_role) == ("purge", f"cli:{getpass.getuser()}")
        assert row.detail["sightings"] == 2 and row.detail["decisions"] == 1
    finally:
        store.close()
