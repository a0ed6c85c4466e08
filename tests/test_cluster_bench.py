"""Known-answer tests of the cluster benchmark's helpers: no model, no PostgreSQL, under 5 s."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from benchmarks.cli import bench
from benchmarks.cluster import STORE_OPS, LagSample, StoreOps, main, visibility_ms


def test_visibility_follows_the_writers_order_not_the_answers() -> None:
    # B's index had 10 vectors; "x" (2 templates) committed before "y" (1 template), but
    # "y" was answered first. B holds y only once x is in too: 13 vectors.
    samples = [LagSample(1.00, 1, 0.1, 10), LagSample(1.05, 2, 0.1, 12), LagSample(1.10, 0, 0, 13)]
    acks = {"x": 1.02, "y": 0.98}
    ms, early, missing = visibility_ms(acks, [("x", 2), ("y", 1)], samples, 10)
    assert [round(v) for v in ms] == [30, 120] and early == 0 and missing == 0


def test_visibility_counts_early_and_missing() -> None:
    samples = [LagSample(1.0, 0, 0.0, 11)]
    ms, early, missing = visibility_ms({"x": 1.5, "y": 1.5}, [("x", 1), ("y", 1)], samples, 10)
    assert ms == [0.0] and early == 1 and missing == 1  # x seen before its answer; y never


def test_store_ops_time_every_operation_on_sqlite(tmp_path: Path) -> None:
    ops = StoreOps({"url": "", "reps": 3, "prefill": 25, "seed": 0}, tmp_path)
    try:
        for op in STORE_OPS:
            for k in range(3):
                wall, cpu = ops.time(op, k)
                assert wall > 0 and cpu >= 0
    finally:
        ops.close()
    assert (tmp_path / "recognizer.db").is_file()


def test_worker_entry_refuses_unknown_work_and_the_command_is_registered() -> None:
    assert main(["nope", "{}"]) == 2
    result = CliRunner().invoke(bench, ["cluster", "--help"])
    assert result.exit_code == 0 and "--sizes" in result.output
