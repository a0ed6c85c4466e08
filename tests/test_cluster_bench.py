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


def test_the_report_is_written_again_from_its_rows_json_alone(tmp_path: Path) -> None:
    from benchmarks import cluster
    from benchmarks.report import load_results

    nan = float("nan")
    results = {
        "settings": cluster.Settings.quick((1000,)),
        "load": {"start": "1.00 1.00 1.00", "service_before": "1.50 1.00 1.00", "end": "2 2 2"},
        "service": {
            "rows": [
                cluster.ServiceRow("SQLite, 1 node", "IdentifyFace", 4, 16, 16, 2.0, 8.0, 30.0,
                                   60.0, {}),
                cluster.ServiceRow("PostgreSQL, 1 node", "IdentifyFace", 4, 16, 15, 2.0, 7.5,
                                   45.0, 66.0, {"UNAVAILABLE": 1}),
            ],
            "notes": ["gallery: 6 identities"],
        },
        "store": {
            "rows": [cluster.StoreRow("enrol", 2.0, 2.2, 1.1, 1.0, 1.05, 1.05, 9.0, (1.1, nan),
                                      (1.0,) * 9, (1.1,) * 9)],
            "notes": [],
        },
        "lag": [cluster.LagResult("/metrics", 5.0, 2, 40, 0, 90, 0.0, 0.1, 0.2, 0.0, 1.0, 2,
                                  60.0, 140.0, nan, 1, 0)],
        "catchup": [cluster.CatchupRow(1000, 0.5, 0.2, "flat", 1000, 80.0, 90.0, 1.0, 0.3,
                                       1000, 2000, 0.1, 0.5, 95.0)],
        "inputs": {"faces": "../shared/datasets/faces", "plates": "../shared/datasets/plates"},
    }  # fmt: skip
    first = cluster.render(results)
    first.write(tmp_path)
    title, tree = load_results(tmp_path / "rows.json")
    again = cluster.render(tree)
    assert again.title == title == first.title
    assert again.sections == first.sections  # nothing but the results shapes the report
    text = first.markdown()
    # PostgreSQL against SQLite: 15 of 16 in 2 s, p50 45 ms against 30 (the same-run ratios).
    assert "| IdentifyFace | PostgreSQL, 1 node | 4 | 15 | 7.5 | 45 | 66 | UNAVAILABLE 1 |" in text
    assert "| 0.9375 | 1.5 |" in text
    assert "1.10 –" in text  # a per-round ratio the run could not compute stays a dash
    assert "Load before 1.50 1.00 1.00" in text and "| 1,000 |" in text
