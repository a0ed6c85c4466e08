"""Under CI (RECOGNIZER_TESTS_STRICT=1) a test whose sample data or model is missing fails and
names what is missing; elsewhere it skips with the same words. So does every other skip:
a direct `pytest.skip`, `importorskip`, a skip marker, a module skipped as it is collected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, STRICT_ENV

PROBE = """
from tests.conftest import dataset


def test_needs_data():
    dataset("faces", "no-such-set")
"""
SKIPS = """
import pytest


def test_skips_itself():
    pytest.skip("a direct skip")


def test_imports_what_is_not_there():
    pytest.importorskip("no_such_module_anywhere")


@pytest.mark.skipif(True, reason="a skip marker")
def test_marked():
    pass


@pytest.mark.xfail(reason="an expected failure is no skip", strict=True)
def test_expected_to_fail():
    assert False


def test_runs():
    assert True
"""
MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_anywhere")


def test_never_collected():
    pass
"""


def run_probe(tmp_path: Path, strict: bool, probe: str = PROBE) -> subprocess.CompletedProcess[str]:
    test = REPO / "tests" / f"test_zz_probe_{os.getpid()}.py"
    test.write_text(probe, encoding="utf-8")
    try:
        env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
        if strict:
            env[STRICT_ENV] = "1"
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        test.unlink()


def test_missing_data_fails_under_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    strict = run_probe(tmp_path, strict=True)
    assert strict.returncode == 1, strict.stdout
    assert "no-such-set" in strict.stdout and "1 failed" in strict.stdout
    relaxed = run_probe(tmp_path, strict=False)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 skipped" in relaxed.stdout


def test_every_kind_of_skip_fails_under_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    strict = run_probe(tmp_path, strict=True, probe=SKIPS)
    assert strict.returncode == 1, strict.stdout
    # The marker's skip comes while setting up: it fails as an error.
    assert "2 failed, 1 passed, 1 xfailed, 1 error" in strict.stdout, strict.stdout
    for reason in ("a direct skip", "no_such_module_anywhere", "a skip marker"):
        assert reason in strict.stdout
    relaxed = run_probe(tmp_path, strict=False, probe=SKIPS)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in relaxed.stdout, relaxed.stdout


def test_a_module_skipped_at_collection_fails_under_ci(tmp_path: Path) -> None:
    strict = run_probe(tmp_path, strict=True, probe=MODULE_SKIP)
    assert strict.returncode != 0 and "no_such_module_anywhere" in strict.stdout, strict.stdout
    assert "skipped" not in strict.stdout.splitlines()[-1], strict.stdout
    relaxed = run_probe(tmp_path, strict=False, probe=MODULE_SKIP)
    # Nothing left to run is pytest's exit code 5, not a failure.
    assert relaxed.returncode == 5 and "1 skipped" in relaxed.stdout, relaxed.stdout
