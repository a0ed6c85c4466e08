"""Store benchmark: the plate lookups the gate makes on every event (`identities_for_plate`,
`last_sighting`), this checkout against an earlier release's source tree, in one run.

Each side is its own process (benchmarks/store_worker.py, PYTHONPATH = its source tree) with
its own SQLite store sealed with a template key and the same identities, plates and
sightings. The sides are interleaved: each round sends one batch of calls to one side, then
the same batch (the same plates) to the other, alternating which goes first, so load on a
shared machine falls on both alike. Reported: per-call medians over every round, and the
ratio this checkout / base.

    .venv/bin/python -m benchmarks store --base-src /work/rel-ce6c065
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from benchmarks.report import REPO_ROOT, Report, shown
from devtools.stats import median, ratio

OPS = ("identities_for_plate", "last_sighting")
WORKER = Path(__file__).with_name("store_worker.py")


class Side:
    """A worker process and its pipes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self._in: IO[str] = proc.stdin
        self._out: IO[str] = proc.stdout

    def wait_ready(self) -> None:
        line = self._out.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"store worker did not start: {line!r} (exit {self.proc.poll()})")

    def calls(self, op: str, n: int) -> list[int]:
        self._in.write(json.dumps({"op": op, "calls": n}) + "\n")
        self._in.flush()
        return [int(t) for t in json.loads(self._out.readline())]


@contextmanager
def side(src: Path, people: int, seed: int) -> Iterator[Side]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), tmp, str(people), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=src,
            env={**os.environ, "PYTHONPATH": str(src)},
        )
        try:
            yield Side(proc)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(60)


def run(base_src: Path, people: int, rounds: int, calls: int, seed: int = 7) -> dict[str, object]:
    """Per op: every per-call time (ns) of each side, and the per-round medians."""
    times: dict[str, dict[str, list[int]]] = {op: {"branch": [], "base": []} for op in OPS}
    per_round: dict[str, list[float]] = {op: [] for op in OPS}
    with ExitStack() as stack:
        sides = {
            "branch": stack.enter_context(side(REPO_ROOT, people, seed)),
            "base": stack.enter_context(side(base_src, people, seed)),
        }
        for s in sides.values():
            s.wait_ready()
        for r in range(rounds):
            for op in OPS:
                order = ("branch", "base") if r % 2 == 0 else ("base", "branch")
                got = {name: sides[name].calls(op, calls) for name in order}
                for name, t in got.items():
                    times[op][name] += t
                per_round[op].append(ratio(median(got["branch"]), median(got["base"])))
    return {"times": times, "per_round_ratio": per_round}


def report(base_src: Path, people: int, rounds: int, calls: int, result: dict) -> Report:
    rep = Report(f"Store: plate lookups, this checkout against {shown(base_src)}")
    rep.p(
        f"SQLite stores sealed with a template key, {people} identities each with a bound plate "
        f"and two sightings; {rounds} rounds of {calls} calls per operation and side, "
        "interleaved (alternating which side goes first); warm page cache. Per-call times."
    )
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for op in OPS:
        branch = median(result["times"][op]["branch"]) / 1000
        base = median(result["times"][op]["base"]) / 1000
        rounds_r = sorted(result["per_round_ratio"][op])
        summary[op] = {"branch_p50_us": branch, "base_p50_us": base, "ratio": ratio(branch, base)}
        rows.append(
            [
                op,
                f"{branch:.1f}",
                f"{base:.1f}",
                f"{ratio(branch, base):.3f}",
                f"{rounds_r[0]:.3f}–{rounds_r[-1]:.3f}",
            ]
        )
    rep.table(
        ["operation", "this checkout p50 (µs)", "base p50 (µs)", "ratio", "per-round ratios"],
        rows,
    )
    rep.results = {
        "base_src": str(base_src),
        "people": people,
        "rounds": rounds,
        "calls": calls,
        "summary": summary,
        "per_round_ratio": result["per_round_ratio"],
        "loadavg": os.getloadavg(),
    }
    return rep
