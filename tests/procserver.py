"""Run `recognizer serve` as a real subprocess on a loopback port (for crash and fuzz tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from recognizer.client import Client
from tests.conftest import ENV_KEYS, KEYS


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)

    def client(self, role: str = "admin") -> Client:
        return Client.connect(f"127.0.0.1:{self.port}", KEYS[role], retry=False)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 180,
    wait_serving: bool = True,
    args: tuple[str, ...] = (),
) -> ServerProcess:
    """A server process once it listens, and (with `wait_serving`) once it is SERVING."""
    env = {
        **os.environ,
        "RECOGNIZER_API_KEYS": ENV_KEYS,
        "RECOGNIZER_METRICS_PORT": "0",
        "RECOGNIZER_ALLOW_PLAINTEXT": "true",  # a test data directory (unless a key is given)
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recognizer.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "INFO",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    port_box: list[int] = []
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:  # keep reading so the pipe never fills and blocks the server
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not port_box:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("msg") == "listening":
                    port_box.append(int(entry["address"].rsplit(":", 1)[1]))
                    found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(60):
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines[-20:]))
    server = ServerProcess(proc, port_box[0], lines)
    if not wait_serving:
        return server
    c = server.client()
    try:
        if not c.wait_serving(ready_timeout):
            server.kill()
            raise RuntimeError("server never became SERVING:\n" + "".join(lines[-20:]))
    finally:
        c.close()
    return server
