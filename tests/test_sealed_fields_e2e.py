"""Personal data at rest, end to end (issue #32's acceptance): `recognizer serve` with a
template key; people enrolled with names, plates, payment references and face sources (free
text naming them) through the API; Authorize events at a gate; an online backup (and, on
PostgreSQL, its pg_dump). No name,
plate (with or without its province character) or payment reference appears, in UTF-8,
UTF-16 or JSON escapes, anywhere under the data directory, in the backup or in the dump. The
same store with the wrong key, or with no key, is refused at boot and left byte for byte as
it was. Each variant takes about 20 s here, so both stay in the default tier."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from recognizer.store.crypto import KEY_ENV, NEW_KEY_ENV
from recognizer.v1 import gate_pb2, identity_pb2
from tests import procserver
from tests.conftest import ENV_KEYS, require_models
from tests.helpers import lfw_face
from tests.keyfixtures import snapshot
from tests.personal import hits_in, needles, scan

KEY = base64.b64encode(bytes(range(7, 39))).decode()
WRONG = base64.b64encode(bytes(range(9, 41))).decode()
PROVINCES = "京沪粤苏浙川鲁豫鄂湘"
LFW = ["George_W_Bush", "Colin_Powell"]
SURNAMES = ["王", "李", "张", "刘", "陈", "Müller", "O'Neil", "Sørensen", "García", "Nguyễn"]
POLICY = """
[[policies]]
policy_id = "sealed-e2e"
gates = ["G-*"]
plate_only_max_minor = 500
track_presence = true
trust_plate_text = true  # the plate_text stands for the gate's own reader
"""


def people(n: int) -> list[tuple[str, str, str]]:
    """(display name, plate, payment reference) of n distinct people."""
    return [
        (
            f"{SURNAMES[k % 10]} Person{k:02d}",
            f"{PROVINCES[k % 10]}{'ABCDEFGHJK'[k // 10 % 10]}{73100 + k:05d}",
            f"wxpay-{k:04d}-7f3a{k * 7919 % 10000:04d}",
        )
        for k in range(n)
    ]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, NEW_KEY_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def enrol_and_drive(
    server: procserver.ServerProcess, who: list[tuple[str, str, str]], events: int
) -> None:
    admin, gate = server.client("admin"), server.client("gate")
    try:
        ids = []
        for name, plate, ref in who:
            ident = admin.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name=name, external_ref=ref),
                metadata=admin.metadata,
            )
            admin.identity.BindPlate(
                identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=plate),
                metadata=admin.metadata,
            )
            admin.identity.BindPayment(
                identity_pb2.BindPaymentRequest(
                    identity_id=ident.identity_id,
                    payment_ref=ref,
                    factors=identity_pb2.FACTOR_PLATE,
                    ceiling_minor=1000,
                ),
                metadata=admin.metadata,
            )
            ids.append(ident.identity_id)
        # A face for two of them, with a `source` that names the person (client free text).
        for k, person in enumerate(LFW[:2]):
            admin.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=ids[k], images=[lfw_face(person, 0)], source=f"photo of {who[k][0]}"
                ),
                metadata=admin.metadata,
            )
        # Read back through the API: the fields open, plates are found by their index.
        got = admin.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=ids[-1]), metadata=admin.metadata
        )
        assert (got.display_name, list(got.plates)) == (who[-1][0], [who[-1][1]])
        found = admin.identity.LookupPlate(
            identity_pb2.LookupPlateRequest(plate=who[0][1]), metadata=admin.metadata
        )
        assert list(found.identity_ids) == [ids[0]]
        with pytest.raises(grpc.RpcError) as err:  # "already bound", through the index
            admin.identity.BindPlate(
                identity_pb2.BindPlateRequest(identity_id=ids[1], plate=who[0][1]),
                metadata=admin.metadata,
            )
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        outcomes = []
        for i in range(events):
            name, plate, ref = who[i % len(who)]
            observed = Timestamp()
            observed.FromNanoseconds(time.time_ns())
            direction = gate_pb2.DIRECTION_EXIT if (i // len(who)) % 2 else gate_pb2.DIRECTION_ENTRY
            r = gate.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id="G-1",
                    event_id=f"evt-{i}",
                    plate_text=plate,
                    amount_minor=300,
                    currency="CNY",
                    direction=direction,
                    observed_at=observed,
                ),
                metadata=gate.metadata,
            )
            outcomes.append(r.outcome)
            if r.outcome == gate_pb2.OUTCOME_ALLOW:
                assert r.payment_ref == ref
        assert gate_pb2.OUTCOME_ALLOW in outcomes  # payment references went into decisions too
    finally:
        admin.close()
        gate.close()


def data_files(data: Path) -> dict[str, tuple[str, int]]:
    """Every file but SQLite's -shm (its shared-memory WAL index, no data: a reader records
    its read marks there)."""
    return {k: v for k, v in snapshot(data).items() if not k.endswith("-shm")}


def refused_boots(data: Path, env: dict[str, str]) -> None:
    """The wrong key, and no key at all: `serve` exits 2 and the files stay as they were."""
    before = data_files(data)
    for key_env in ({KEY_ENV: WRONG}, {}):
        r = cli("serve", "--port", "0", "--data-dir", str(data), env={**env, **key_env})
        assert r.returncode == 2, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, r.stderr
        assert ("wrong key" if key_env else "no template key") in errors[0]
    assert data_files(data) == before


def run(tmp: Path, n: int, events: int, pg_url: str = "") -> None:
    require_models("default")
    who = people(n)
    pats = needles(*zip(*who, strict=True))
    data, config = tmp / "data", tmp / "policy.toml"
    config.write_text(POLICY, encoding="utf-8")
    env = {KEY_ENV: KEY, "RECOGNIZER_API_KEYS": ENV_KEYS, "RECOGNIZER_METRICS_PORT": "0"}
    if pg_url:
        env["RECOGNIZER_DATABASE_URL"] = pg_url
    server = procserver.start(
        data,
        extra_env={**env, "RECOGNIZER_ALLOW_PLAINTEXT": "false"},
        args=("--config", str(config)),
    )
    try:
        enrol_and_drive(server, who, events)
        backup = cli("backup", str(tmp / "backup"), "--data-dir", str(data), env=env)
        assert backup.returncode == 0, backup.stderr
        assert scan([data], pats) == [], "personal data under the data directory (server up)"
    finally:
        assert server.terminate() == 0
    assert scan([data, tmp / "backup"], pats) == []
    if pg_url:
        from recognizer.store.postgres import _client_tool

        dump = subprocess.run(
            [_client_tool("pg_restore"), "--file=-", str(tmp / "backup" / "recognizer.pgdump")],
            check=True,
            capture_output=True,
        ).stdout
        assert b"COPY public.decisions" in dump and dump.count(b"\n") > 2 * events
        assert hits_in(dump, pats, "pg_dump") == []
    refused_boots(data, {k: v for k, v in env.items() if k != KEY_ENV})


def test_no_personal_string_at_rest_50_people_200_events(tmp_path: Path) -> None:
    run(tmp_path, 50, 200)


def test_no_personal_string_at_rest_on_postgres(tmp_path: Path, pg_url: str) -> None:
    run(tmp_path, 50, 200, pg_url)


RELEASE = Path(__file__).parent / "data" / "release-ce6c065"


@pytest.mark.parametrize("kind", ["encrypted", "plain"])
def test_the_previous_release_serves_after_its_upgrade(tmp_path: Path, kind: str) -> None:
    """The previous release's data directory (tests/data/release-ce6c065), served: with its
    key it is sealed on that first boot, and with allow_plaintext (no key) it stays plain."""
    require_models("default")
    data = tmp_path / "data"
    shutil.copytree(RELEASE / kind, data)
    ids = json.loads((RELEASE / f"{kind}-ids.json").read_text())
    personal = json.loads((RELEASE / "personal.json").read_text(encoding="utf-8"))
    pats = needles(personal["names"], personal["plates"], personal["payment_refs"])
    if kind == "encrypted":
        env = {KEY_ENV: base64.b64encode(bytes(range(32))).decode()}
        env["RECOGNIZER_ALLOW_PLAINTEXT"] = "false"
    else:
        env = {"RECOGNIZER_ALLOW_PLAINTEXT": "true"}
    server = procserver.start(data, extra_env=env)
    try:
        admin = server.client("admin")
        try:
            for k, identity_id in enumerate(ids):
                got = admin.identity.GetIdentity(
                    identity_pb2.GetIdentityRequest(identity_id=identity_id),
                    metadata=admin.metadata,
                )
                assert got.display_name == personal["names"][k]
                assert list(got.plates) == [personal["plates"][k]]
                found = admin.identity.LookupPlate(
                    identity_pb2.LookupPlateRequest(plate=personal["plates"][k]),
                    metadata=admin.metadata,
                )
                assert list(found.identity_ids) == [identity_id]
        finally:
            admin.close()
    finally:
        assert server.terminate() == 0
    left = scan([data], pats)
    if kind == "encrypted":
        assert left == []  # database, WAL, free pages and the pre-restore copy
    else:
        assert left  # allow_plaintext: kept as that release kept them
