"""Operations through real `recognizer serve` processes: two servers on one machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from recognizer import __version__
from recognizer.config import hash_key
from recognizer.store.schema import SCHEMA_VERSION
from recognizer.v1 import gate_pb2
from tests import procserver
from tests.conftest import ENV_KEYS, KEYS
from tests.helpers import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_once(data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A `recognizer serve` expected to stop by itself (a busy port): its exit and output."""
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", "serve", "--data-dir", str(data_dir), *args],
        env={
            **os.environ,
            "RECOGNIZER_API_KEYS": ENV_KEYS,
            "RECOGNIZER_ALLOW_PLAINTEXT": "true",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_second_server_names_the_busy_port_and_exits_2(tmp_path: Path) -> None:
    metrics = free_port()  # the "default" both share, as 9464 would be
    shared = {"RECOGNIZER_METRICS_PORT": str(metrics)}
    first = procserver.start(tmp_path / "a", extra_env=shared, wait_serving=False)
    try:
        # Its own --port, the same metrics port: the metrics port is what is busy.
        second = serve_once(tmp_path / "b", "--port", str(free_port()), env=shared)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        [line] = error_lines(second.stderr)
        assert f"127.0.0.1:{metrics}" in line and "--metrics-port" in line
        assert "RECOGNIZER_METRICS_PORT" in line

        # The first server's gRPC port: that one is named, with its own setting.
        # RECOGNIZER_LOG_LEVEL is accepted: the busy port, not the variable, stops this one.
        third = serve_once(
            tmp_path / "c",
            "--port",
            str(first.port),
            "--metrics-port",
            "0",
            env={"RECOGNIZER_LOG_LEVEL": "DEBUG"},
        )
        assert third.returncode == 2, third.stderr
        assert "Traceback" not in third.stderr
        [line] = error_lines(third.stderr)
        assert f":{first.port}" in line and "--port" in line and "RECOGNIZER_PORT" in line
        assert first.alive()
    finally:
        assert first.terminate() == 0


def test_a_node_whose_models_do_not_load_exits_2_naming_them(tmp_path: Path) -> None:
    # A node that can never serve stops, so its supervisor restarts it and alerts; before,
    # it stayed up NOT_SERVING for good.
    models = tmp_path / "models"
    models.mkdir()
    proc = serve_once(
        tmp_path / "data",
        "--port",
        "0",
        "--metrics-port",
        "0",
        env={"RECOGNIZER_MODELS_DIR": str(models)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert str(models) in line and "recognizer models fetch" in line


def test_with_metrics_off_and_another_data_dir_both_serve(tmp_path: Path) -> None:
    metrics = {"RECOGNIZER_METRICS_PORT": str(free_port())}
    first = procserver.start(tmp_path / "a", extra_env=metrics)
    try:
        second = procserver.start(tmp_path / "b", extra_env=metrics, args=("--metrics-port", "0"))
        try:
            assert second.port != first.port
            for server in (first, second):
                c = server.client()
                try:
                    assert c.wait_serving(5)
                finally:
                    c.close()
            assert any('"metrics": "off"' in line for line in second.log)
            # The key comes from a file (or the environment), not the command line.
            key_file = tmp_path / "admin.key"
            key_file.write_text(KEYS["admin"] + "\n", encoding="utf-8")
            listed = cli(
                "identities", "list", "--target", f"127.0.0.1:{second.port}",
                "--api-key-file", str(key_file),
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            by_env = cli(
                "identities", "list", "--target", f"127.0.0.1:{second.port}",
                env={"RECOGNIZER_API_KEY_FILE": str(key_file)},
            )  # fmt: skip
            assert by_env.returncode == 0, by_env.stderr
            key_file.write_text("not-a-key\n", encoding="utf-8")
            refused = cli(
                "identities", "list", "--target", f"127.0.0.1:{second.port}",
                "--api-key-file", str(key_file),
            )  # fmt: skip
            assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
            # The server warns once about templates stored unencrypted, and says which
            # schema version it found and which it reached.
            log = "".join(second.log)
            assert log.count("RECOGNIZER_TEMPLATE_KEY is not set") == 1
            assert f"schema found at version 0, migrated to {SCHEMA_VERSION}" in log
        finally:
            assert second.terminate() == 0
    finally:
        assert first.terminate() == 0


def test_version_and_quiet_admin_commands(tmp_path: Path) -> None:
    shown = cli("--version")
    assert shown.returncode == 0 and __version__ in shown.stdout
    # No template key set: an admin command does not warn about it; only `serve` does.
    checked = cli("keys", "check", "--data-dir", str(tmp_path / "data"))
    assert checked.returncode == 0, checked.stderr
    assert "TEMPLATE_KEY" not in checked.stderr
    migrated = cli("db", "migrate", "--data-dir", str(tmp_path / "data"))
    assert migrated.returncode == 0, migrated.stderr
    assert "TEMPLATE_KEY" not in migrated.stderr
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in migrated.stdout


def access_lines(server: procserver.ServerProcess) -> list[dict]:
    out = []
    for line in list(server.log):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "recognizer.access":
            out.append(entry)
    return out


def test_a_disputed_authorize_is_found_in_the_access_log(tmp_path: Path) -> None:
    server = procserver.start(tmp_path / "data")
    gate, admin = server.client("gate"), server.client("admin")
    try:
        for k in range(3):  # other traffic around the disputed one
            gate.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id="P1-north", event_id=f"evt-{k}", plate_text="京A12345"
                ),
                metadata=gate.metadata,
            )
        response, call = gate.gate.Authorize.with_call(
            gate_pb2.AuthorizeRequest(
                gate_id="P1-north", event_id="evt-disputed", plate_text="京B12345"
            ),
            metadata=(*gate.metadata, ("x-request-id", "dispute-42")),
        )
        assert ("x-request-id", "dispute-42") in tuple(call.initial_metadata())

        found: list[dict] = []
        for _ in range(100):  # the log pump runs in its own thread
            found = [e for e in access_lines(server) if e.get("event_id") == "evt-disputed"]
            if found:
                break
            time.sleep(0.05)
        [line] = found
        assert line["method"] == "/recognizer.v1.GateService/Authorize" and line["code"] == "OK"
        assert line["gate_id"] == "P1-north" and line["request_id"] == "dispute-42"
        assert line["decision_id"] == response.decision_id
        outcome = gate_pb2.Outcome.Name(response.outcome).removeprefix("OUTCOME_").lower()
        assert line["outcome"] == outcome
        assert line["reasons"] == [r.code for r in response.reasons] and line["reasons"]
        # The key's name, as configured from RECOGNIZER_API_KEYS; never the key.
        assert line["key"] == f"env-gate-{hash_key(KEYS['gate'])[:8]}"
        assert all(key not in "".join(server.log) for key in KEYS.values())
        # Every line has its own request id.
        ids = [e["request_id"] for e in access_lines(server)]
        assert len(ids) == len(set(ids))

        # From the line to the stored decision record.
        records = admin.admin.ListDecisions(
            gate_pb2.ListDecisionsRequest(gate_id="P1-north"), metadata=admin.metadata
        ).decisions
        [record] = [r for r in records if r.decision_id == line["decision_id"]]
        assert record.event_id == "evt-disputed" and record.gate_id == "P1-north"
    finally:
        gate.close()
        admin.close()
        assert server.terminate() == 0


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_restore_refuses_a_live_data_directory_and_changes_nothing(tmp_path: Path) -> None:
    live, backup = tmp_path / "live", tmp_path / "backup"
    quiet = {"RECOGNIZER_CHECKPOINT_SECONDS": "3600"}  # an idle server writes nothing
    server = procserver.start(live, extra_env=quiet)
    try:
        made = cli("backup", str(backup), "--data-dir", str(live))
        assert made.returncode == 0, made.stderr
        before = snapshot(live)
        assert "recognizer.db" in before
        refused = cli("restore", str(backup), "--data-dir", str(live))
        assert refused.returncode != 0
        assert "in use by a running server" in refused.stderr and "Traceback" not in refused.stderr
        assert snapshot(live) == before
        assert not list(live.glob("pre-restore-*"))
        # A second server on the same directory stops at once, naming it.
        second = serve_once(live, "--port", str(free_port()), "--metrics-port", "0", env={})
        assert second.returncode == 2, second.stderr
        [line] = error_lines(second.stderr)
        assert str(live) in line and "--data-dir" in line
        assert server.alive()
    finally:
        assert server.terminate() == 0
    # Once the server has stopped, the lock is gone with it.
    done = cli("restore", str(backup), "--data-dir", str(live))
    assert done.returncode == 0, done.stderr
    assert len(list(live.glob("pre-restore-*"))) == 1


def test_purge_pre_restore_removes_only_old_restore_folders(tmp_path: Path) -> None:
    import datetime as dt

    from recognizer.maintenance import PRE_RESTORE, PRE_RESTORE_STAMP

    now = dt.datetime.now(dt.UTC)
    old = tmp_path / f"{PRE_RESTORE}{(now - dt.timedelta(days=40)).strftime(PRE_RESTORE_STAMP)}"
    new = tmp_path / f"{PRE_RESTORE}{(now - dt.timedelta(days=2)).strftime(PRE_RESTORE_STAMP)}"
    other = tmp_path / f"{PRE_RESTORE}mine"  # not a name restore gives
    for folder in (old, new, other):
        folder.mkdir()
        (folder / "recognizer.db").write_bytes(b"x")
    done = cli("purge", "--pre-restore", "--older-than-days", "30", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "removed 1 pre-restore folders" in done.stdout
    assert not old.exists() and new.is_dir() and other.is_dir()
    plain = cli("purge", "--older-than-days", "0", "--data-dir", str(tmp_path))
    assert plain.returncode == 0, plain.stderr
    assert new.is_dir()  # only with --pre-restore
