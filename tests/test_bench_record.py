"""`make bench-quick` is a check, not a record: it leaves the committed results as they are."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def bench_outputs(target: str) -> list[str]:
    """The folders and files a make target's bench commands write (from `make -n`)."""
    plan = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    written = []
    for line in plan.splitlines():
        if "-m benchmarks" not in line:
            continue
        words = shlex.split(line)
        written += [words[i + 1] for i, w in enumerate(words) if w in ("--out", "--dest")]
    return written


def test_bench_quick_writes_only_where_git_ignores() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    quick, full = bench_outputs("bench-quick"), bench_outputs("bench")
    assert quick and full
    assert all(path.startswith("benchmarks/out/") for path in quick), quick
    # What they write is ignored: the folders, a run's rows beside the committed summaries.
    probes = [f"{path}/results.json" for path in quick if not path.endswith(".md")]
    probes += [p for p in quick if p.endswith(".md")]
    probes += [f"{path}/rows.json" for path in full if not path.endswith(".md")]
    ignored = subprocess.run(
        ["git", "check-ignore", *probes], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert sorted(ignored) == sorted(probes)
    assert all(path.startswith("benchmarks/results/") for path in full)  # the record


@pytest.mark.slow  # every quick bench: about 10 minutes on a quiet machine
@pytest.mark.timeout(3600)  # beyond the suite's 600 s per test
def test_make_bench_quick_leaves_git_status_clean() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    before = git("status", "--porcelain", "--untracked-files=all")
    done = subprocess.run(
        ["make", "bench-quick"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert git("status", "--porcelain", "--untracked-files=all") == before
    assert (REPO / "benchmarks" / "out" / "RESULTS.md").is_file()
    # Not a terminal: progress is one line per stage, no bar redrawn into the log.
    assert "\r" not in done.stderr
