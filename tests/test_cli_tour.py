"""The README's command-line tour, end to end: the real `recognizer` CLI in subprocesses
against a real server on a loopback port. Enrol with a plate and a payment, authorize a gate
event with a vehicle frame and a face, list the decision, then manage the identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recognizer.policy import PolicySet
from recognizer.service.server import RunningServer
from tests.conftest import KEYS, REPO, dataset, loaded_server
from tests.helpers import scene

POLICY = {"policy_id": "tour", "gates": ["P1-*"], "target_far": 1e-5, "track_presence": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with loaded_server(
        tmp_path_factory.mktemp("tour"), policies=PolicySet.from_config([POLICY])
    ) as running:
        yield running


def cli(server: RunningServer, *args: str, as_json: bool = True) -> str | dict:
    env = {
        **os.environ,
        "RECOGNIZER_TARGET": f"127.0.0.1:{server.port}",
        "RECOGNIZER_API_KEY": KEYS["admin"],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args, *(["--json"] if as_json else [])],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if as_json else proc.stdout


def photo(name: str, k: int) -> Path:
    return sorted(dataset("faces", "lfw10", name).iterdir())[k]


def test_the_cli_tour(server: RunningServer, tmp_path: Path) -> None:
    frame_bytes, plate = scene(0)
    frame = tmp_path / "car.jpg"
    frame.write_bytes(frame_bytes)

    enrolled = cli(
        server, "enroll", "Colin Powell", str(photo("Colin_Powell", 0)), "--plate", plate
    )
    identity_id = enrolled["identityId"]
    assert enrolled["faceCount"] == 1 and enrolled["plates"] == [plate]
    binding = cli(server, "bind-payment", identity_id, "wx-pay-123", "--factors", "plate_and_face")
    assert binding["paymentRef"] == "wx-pay-123"

    event = (
        "authorize",
        "--gate", "P1-north",
        "--event", "evt-1",
        "--vehicle", str(frame),
        "--face", str(photo("Colin_Powell", 3)),
        "--amount", "1500",
    )  # fmt: skip
    decision = cli(server, *event)
    assert decision["outcome"] == "OUTCOME_ALLOW", decision["reasons"]
    assert decision["identityId"] == identity_id and decision["paymentRef"] == "wx-pay-123"
    assert decision["eventId"] == "evt-1" and float(decision["estimatedFar"]) <= 1e-5
    # The same event again, as a person reads it: replayed, with its reasons and estimate.
    text = cli(server, *event, as_json=False)
    assert text.startswith("ALLOW  (replayed)") and "est. FAR" in text
    assert "PLATE_EXACT_MATCH" in text and "FACE_MATCH" in text

    records = cli(server, "decisions", "--gate", "P1-north")["decisions"]
    assert [r["eventId"] for r in records] == ["evt-1"]
    assert "evt-1" in cli(server, "decisions", "--gate", "P1-north", as_json=False)

    shown = cli(server, "identities", "show", identity_id)
    assert shown["payments"][0]["paymentRef"] == "wx-pay-123"
    listed = cli(server, "identities", "list")["identities"]
    assert identity_id in {i["identityId"] for i in listed}
    cli(server, "unbind-plate", identity_id, plate)
    cli(server, "unbind-payment", identity_id, shown["payments"][0]["bindingId"])
    deleted = cli(server, "identities", "delete", identity_id)
    assert deleted["templatesRemoved"] == 1
    assert identity_id not in {
        i["identityId"] for i in cli(server, "identities", "list").get("identities", [])
    }


def test_read_plate_says_whether_the_province_was_read_or_guessed(
    server: RunningServer, tmp_path: Path
) -> None:
    from tests.helpers import scene_without_province

    for name, (data, truth) in (("full", scene(20)), ("cut", scene_without_province(20))):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        out = cli(server, "read-plate", str(path), as_json=False)
        assert isinstance(out, str)
        (row,) = [line for line in out.splitlines() if truth[1:] in line]
        assert ("guessed" in row.split()) == (name == "cut"), (name, row)
        assert ("read" in row.split()) == (name == "full"), (name, row)
