"""The container image, built and run by a real Docker daemon on this machine.

No image registry is reachable here, so the test makes its base image from Debian's packages
(`debootstrap` of bookworm with python3 and its venv module, then `docker import`) and passes it
as the Dockerfile's BASE build argument; users keep python:3.11-slim. The daemon is Debian's
docker.io, started by the test as root with a data root of its own under .cache/container
(kept, so a second run reuses the base and the layers), no bridge and no iptables: every
container uses host networking and binds 127.0.0.1 only.

Then: the image builds (wheel, install, models fetched and verified), runs as a non-root user
with its API keys and template key from secret files, turns healthy through the gRPC health
service, and answers ReadPlates and /metrics on loopback.

Slow (`make test-slow`; `make container-deps` installs docker.io and debootstrap as root):
the first run debootstraps and downloads the dependencies, about 10 minutes; later ones
reuse the daemon's cache.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, missing

pytestmark = pytest.mark.slow

STATE = REPO / ".cache" / "container"
BASE_TAR = STATE / "base-bookworm.tar"
BASE_IMAGE = "recognizer-test-base:bookworm"
IMAGE = "recognizer:test"
MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(cmd: list[str], timeout: float, env: dict[str, str] | None = None, **kw) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kw
    )
    assert proc.returncode == 0, f"{cmd[:5]}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_tarball() -> Path:
    """bookworm minbase + python3, python3-venv, ca-certificates, as a tar for docker import."""
    if BASE_TAR.is_file():
        return BASE_TAR
    rootfs = STATE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    sh(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            MIRROR,
        ],
        timeout=1500,
    )
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    # This machine's trust store: where TLS to the registries passes through a proxy with its
    # own CA, the host's bundle holds it (pip is pointed at it by PIP_CERT, set at import).
    if HOST_CA.is_file():
        shutil.copyfile(HOST_CA, rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    part = BASE_TAR.with_suffix(".part")
    with tarfile.open(part, "w") as tar:
        tar.add(rootfs, arcname=".")
    part.replace(BASE_TAR)
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_TAR


@pytest.fixture(scope="module")
def docker() -> Iterator[dict[str, str]]:
    """A Docker daemon of the test's own; the environment that points the client at it."""
    if os.geteuid() != 0:
        missing("the container test starts dockerd as root; run it as root")
    for tool in ("dockerd", "docker", "debootstrap"):
        if shutil.which(tool) is None:
            missing(
                f"{tool} is not installed: `make container-deps` installs docker.io, debootstrap"
            )
    STATE.mkdir(parents=True, exist_ok=True)
    run_dir = Path(f"/tmp/rz-docker-{os.getpid()}")  # a short path: the socket's limit is 108
    run_dir.mkdir()
    sock = run_dir / "docker.sock"
    log = (STATE / "dockerd.log").open("w")
    daemon = subprocess.Popen(
        [
            "dockerd",
            f"--data-root={STATE / 'docker'}",
            f"--exec-root={run_dir / 'exec'}",
            f"--pidfile={run_dir / 'docker.pid'}",
            f"--host=unix://{sock}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # The classic builder: it honours --network=host and needs no buildx plugin.
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
    try:
        for _ in range(60):
            if (
                sock.exists()
                and subprocess.run(
                    ["docker", "version"], capture_output=True, env=env, check=False
                ).returncode
                == 0
            ):
                break
            if daemon.poll() is not None:
                missing(f"dockerd cannot run here: {(STATE / 'dockerd.log').read_text()[-800:]}")
            time.sleep(1)
        else:
            pytest.fail("dockerd did not answer within 60 s")
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        log.close()
        # dockerd leaves its default network namespace bind-mounted under the exec root.
        netns = run_dir / "exec" / "netns" / "default"
        if netns.exists():
            subprocess.run(["umount", str(netns)], capture_output=True, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def image(docker: dict[str, str]) -> str:
    images = sh(["docker", "images", "-q", BASE_IMAGE], 60, env=docker)
    if not images.strip():
        change = f"ENV PIP_CERT={HOST_CA}"
        sh(
            ["docker", "import", "--change", change, str(base_tarball()), BASE_IMAGE],
            600,
            env=docker,
        )
    sh(
        [
            "docker",
            "build",
            "--network=host",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "-t",
            IMAGE,
            str(REPO),
        ],
        3000,
        env=docker,
    )
    return IMAGE


def test_the_image_runs_as_a_user_with_secrets_from_files_and_turns_healthy(
    docker: dict[str, str], image: str, tmp_path: Path
) -> None:
    config = json.loads(sh(["docker", "image", "inspect", image], 60, env=docker))[0]["Config"]
    assert config["User"] == "recognizer"
    assert not [
        e for e in config["Env"] if e.startswith(("RECOGNIZER_API_KEYS=", "RECOGNIZER_TEMPLATE"))
    ]
    assert config["Healthcheck"]["Test"][-1].endswith("healthcheck.py")

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api_keys").write_text("admin:box-admin,gate:box-gate\n")
    (secrets / "template_key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    for f in secrets.iterdir():
        f.chmod(0o644)  # the container's user (uid 10001) reads the bind-mounted files
    port, metrics = free_port(), free_port()
    name = f"rz-test-{os.getpid()}"
    sh(
        [
            "docker", "run", "-d", "--name", name, "--network=host",
            "-v", f"{secrets}:/run/secrets:ro",
            "-e", "RECOGNIZER_HOST=127.0.0.1",
            "-e", f"RECOGNIZER_PORT={port}",
            "-e", f"RECOGNIZER_METRICS_PORT={metrics}",
            "-e", "RECOGNIZER_API_KEYS_FILE=/run/secrets/api_keys",
            "-e", "RECOGNIZER_TEMPLATE_KEY_FILE=/run/secrets/template_key",
            image,
        ],
        120,
        env=docker,
    )  # fmt: skip
    try:
        status = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and status != "healthy":
            state = json.loads(sh(["docker", "inspect", name], 60, env=docker))[0]["State"]
            assert state["Running"], sh(["docker", "logs", name], 60, env=docker)
            status = state.get("Health", {}).get("Status", "")
            time.sleep(2)
        assert status == "healthy", sh(["docker", "logs", name], 60, env=docker)
        assert sh(["docker", "exec", name, "id", "-u"], 60, env=docker).strip() == "10001"

        from recognizer.client import Client
        from recognizer.v1 import recognition_pb2

        c = Client.connect(f"127.0.0.1:{port}", "box-admin")
        frame = (REPO / "examples" / "car.jpg").read_bytes()
        reply = c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=frame), metadata=c.metadata, timeout=60
        )
        c.close()
        assert [p.text for p in reply.plates] == ["京A12345"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            assert b"recognizer_" in r.read()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, env=docker, check=False)


COMPOSE_PORTS = (55471, 50071, 50072, 9471, 9472, 9490)  # deploy/compose.yaml's


def _port_free(port: int) -> bool:
    """Nobody listens there (a closed server's TIME_WAIT connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_compose_runs_postgresql_two_nodes_and_prometheus(
    docker: dict[str, str], image: str, tmp_path: Path
) -> None:
    """deploy/compose.yaml as written, with stand-ins for the postgres and prometheus images
    built from Debian packages (tests/container/): both nodes turn healthy on the shared
    database, an identity made on one is read on the other, Prometheus scrapes both."""
    if shutil.which("docker-compose") is None:
        missing("docker-compose is not installed: `make container-deps` installs it")
    busy = [p for p in COMPOSE_PORTS if not _port_free(p)]
    if busy:
        missing(f"ports {busy} of deploy/compose.yaml are taken on 127.0.0.1")
    for name in ("postgres", "prometheus"):
        sh(
            [
                "docker", "build", "--network=host", "--build-arg", f"BASE={BASE_IMAGE}",
                "-t", f"recognizer-test-{name}", str(REPO / "tests" / "container" / name),
            ],
            1200,
            env=docker,
        )  # fmt: skip
    sh(["docker", "tag", image, "recognizer:latest"], 60, env=docker)
    secrets = tmp_path / "secrets"
    sh(["sh", str(REPO / "deploy" / "make-secrets.sh"), str(secrets)], 60)
    env = {
        **docker,
        "RECOGNIZER_BASE": BASE_IMAGE,
        "POSTGRES_IMAGE": "recognizer-test-postgres",
        "PROMETHEUS_IMAGE": "recognizer-test-prometheus",
        "SECRETS_DIR": str(secrets),
        "COMPOSE_PROJECT_NAME": f"rztest{os.getpid()}",
    }
    compose = ["docker-compose", "-f", str(REPO / "deploy" / "compose.yaml")]
    admin = secrets.joinpath("api_keys").read_text().strip().split(",")[0].split(":", 1)[1]
    try:
        sh([*compose, "up", "-d", "--no-build"], 600, env=env)
        ids = {n: sh([*compose, "ps", "-q", n], 60, env=env).strip() for n in ("node1", "node2")}
        deadline = time.monotonic() + 400
        health: dict[str, str] = {}
        while time.monotonic() < deadline and set(health.values()) != {"healthy"}:
            for node, cid in ids.items():
                state = json.loads(sh(["docker", "inspect", cid], 60, env=env))[0]["State"]
                health[node] = state.get("Health", {}).get("Status", "")
            time.sleep(3)
        assert set(health.values()) == {"healthy"}, (
            health,
            sh([*compose, "logs", "--tail=60"], 120, env=env)[-6000:],
        )

        from recognizer.client import Client
        from recognizer.v1 import identity_pb2

        one = Client.connect("127.0.0.1:50071", admin)
        two = Client.connect("127.0.0.1:50072", admin)
        made = one.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name="compose"),
            metadata=one.metadata,
            timeout=30,
        )
        seen = two.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=made.identity_id),
            metadata=two.metadata,
            timeout=30,
        )
        one.close()
        two.close()
        assert seen.display_name == "compose"

        up: set[str] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(up) < 2:
            url = "http://127.0.0.1:9490/api/v1/targets"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    targets = json.load(r)["data"]["activeTargets"]
                up = {t["scrapeUrl"] for t in targets if t["health"] == "up"}
            except OSError:
                pass
            time.sleep(2)
        assert up == {"http://127.0.0.1:9471/metrics", "http://127.0.0.1:9472/metrics"}, up
    finally:
        subprocess.run(
            [*compose, "down", "-v", "--timeout", "20"],
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )
