"""Configuration mistakes stop start-up with a message that names them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer.config import ConfigError, load_config
from tests.conftest import REPO


def test_unknown_file_setting_names_the_nearest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('max_inflight = 4\n[tls]\ncertificate = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'max_inflight'.*did you mean 'max_in_flight'"):
        load_config(bad, env={})
    bad.write_text('[tls]\ncertificate = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[tls\] 'certificate'; valid: cert"):
        load_config(bad, env={})


def test_unknown_environment_variable_names_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"RECOGNIZER_MAX_INFLIGHT.*RECOGNIZER_MAX_IN_FLIGHT"):
        load_config(env={"RECOGNIZER_MAX_INFLIGHT": "2"})
    # The client's and the key commands' variables are not config fields, and are fine.
    allowed = {
        "RECOGNIZER_API_KEY": "k",
        "RECOGNIZER_TARGET": "127.0.0.1:1",
        "RECOGNIZER_TEMPLATE_KEY": "",
        "RECOGNIZER_DATABASE_URL": "",
        "RECOGNIZER_MAX_IN_FLIGHT": "2",
    }
    assert load_config(env=allowed).max_in_flight == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECOGNIZER_PORT": "seventy"}, "port = 'seventy' is not a int"),
        ({"RECOGNIZER_PORT": "70000"}, "port = 70000 is out of range"),
        ({"RECOGNIZER_MAX_IN_FLIGHT": "0"}, "max_in_flight = 0 is out of range"),
        ({"RECOGNIZER_ALLOW_SHARED_PLATES": "maybe"}, "allow_shared_plates"),
        ({"RECOGNIZER_PROFILE": "fancy"}, "profile must be one of"),
        ({"RECOGNIZER_API_KEYS": "gaet:abc"}, "api_keys"),
    ],
)
def test_types_and_ranges_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_a_bad_policy_setting_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('[[policies]]\npolicy_id = "p"\ntarget_far = 2.0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="target_far"):
        load_config(bad, env={})
    bad.write_text('[[policies]]\npolicy_id = "p"\nplate_only_max = 5\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="plate_only_max"):
        load_config(bad, env={})


@pytest.mark.parametrize("where", ["file", "environment"])
def test_serve_stops_on_a_misspelt_setting(tmp_path: Path, where: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOGNIZER_")}
    args = [sys.executable, "-m", "recognizer.cli", "serve", "--port", "0"]
    args += ["--data-dir", str(tmp_path / "data")]
    if where == "file":
        cfg = tmp_path / "c.toml"
        cfg.write_text("retention_dayz = 3\n", encoding="utf-8")
        args += ["--config", str(cfg)]
    else:
        env["RECOGNIZER_RETENTION_DAYZ"] = "3"
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode != 0
    assert "RETENTION_DAYZ" in proc.stderr.upper() and "retention_days" in proc.stderr.lower()
    assert not (tmp_path / "data").exists()  # stopped before creating anything
