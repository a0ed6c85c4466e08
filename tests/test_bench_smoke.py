"""Known-answer tests of the benchmark helpers: no model runs, no network, well under 5 s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.faces import pair_scores
from benchmarks.plates import (
    PlateOutcome,
    accuracy,
    match_reads,
    normalize_ocr,
    top_confusions,
)
from benchmarks.report import Report, fmt, md_table, to_jsonable
from benchmarks.service import check_target
from devtools.datasets import FaceImage, parse_ccpd_name, parse_crop_name, truth_type
from devtools.stats import GAP, align, char_accuracy, confusions, edit_distance, median, ratio


def test_ccpd_name_decoding() -> None:
    # The example of the CCPD README: indices 0_0_22_27_27_33_16 are 皖AY339S.
    name = "025-95_113-154&383_386&473-386&473_177&454_154&383_363&402-0_0_22_27_27_33_16-37-15.jpg"
    assert parse_ccpd_name(name) == "皖AY339S"
    assert parse_ccpd_name("01-89_92-300&547_485&612-496&612_301&613_297&552_492&551-"
                           "0_0_28_32_30_31_33-140-41.jpg") == "皖A48679"  # fmt: skip
    # An eight-character (new energy) name and a province index past 皖.
    assert parse_ccpd_name("1-2_3-1&2_3&4-1&2_3&4_5&6_7&8-12_1_3_24_25_26_27_28-1-1.jpg") == (
        "京BD01234"
    )
    assert parse_ccpd_name("皖AD12345.jpg") is None
    assert parse_ccpd_name("a-b-c-d-0_0_99_1_1_1_1-1-1.jpg") is None  # index out of range


def test_crop_name_parsing() -> None:
    assert parse_crop_name("皖AD12345.jpg") == "皖AD12345"
    assert parse_crop_name("川X90621_2.jpg") == "川X90621"
    assert parse_crop_name(Path("/x/京PL3N67_10.png").name) == "京PL3N67"


def test_rapidocr_normalisation() -> None:
    assert normalize_ocr(["皖A·D1234 5"]) == "皖AD12345"
    assert normalize_ocr(["PARKING", "粤B.5PQ23", "12:30"]) == "粤B5PQ23"
    assert normalize_ocr(["皖A", "12345"]) == "皖A12345"  # a two-row plate read as two boxes
    assert normalize_ocr(["X皖AT789S"]) == "皖AT789S"  # plate inside a longer line
    assert normalize_ocr(["hello", "ab"]) == "HELLO"  # nothing plate-like: the longest line
    assert normalize_ocr([]) == ""
    assert normalize_ocr([" ", "·"]) == ""


def test_alignment_and_char_accuracy() -> None:
    assert align("AB1", "AB1") == [("A", "A"), ("B", "B"), ("1", "1")]
    assert align("皖A123", "皖A128") == [
        ("皖", "皖"),
        ("A", "A"),
        ("1", "1"),
        ("2", "2"),
        ("3", "8"),
    ]
    assert align("AB", "A") == [("A", "A"), ("B", GAP)]
    assert align("A", "AB") == [("A", "A"), (GAP, "B")]
    assert edit_distance("kitten", "sitting") == 3
    assert char_accuracy("ABCD", "ABCE") == pytest.approx(0.75)
    assert char_accuracy("ABCD", "") == 0.0
    assert char_accuracy("AB", "XYZW") == 0.0  # floored at zero


def test_confusion_counting() -> None:
    c = confusions([("皖A0D12", "皖AOD12"), ("皖A0D13", "皖AOD1"), ("京B1", "京B1")])
    assert c[("0", "O")] == 2
    assert c[("3", GAP)] == 1
    assert sum(c.values()) == 3
    outs = [
        PlateOutcome("a", "皖A0D12", "皖AOD12", "ordinary_7", ""),
        PlateOutcome("b", "皖A0D13", "皖AOD13", "ordinary_7", ""),
        PlateOutcome("c", "皖A8D13", "", "ordinary_7", ""),  # no read: no confusion counted
        PlateOutcome("d", "皖A8D13", "皖A8D13", "ordinary_7", ""),
    ]
    assert top_confusions(outs) == [("0", "O", 2)]
    acc = accuracy(outs)
    assert acc.n == 4 and acc.exact == 0.25
    assert acc.char == pytest.approx((5 / 6 + 5 / 6 + 0 + 1) / 4)
    assert acc.exact_ci[0] < 0.25 < acc.exact_ci[1]


def test_truth_type_and_matching() -> None:
    assert truth_type("皖AD12345") == "green_new_energy"
    assert truth_type("粤B1234学") == "learner"
    assert truth_type("粤B12345", "yellow") == "yellow"
    assert truth_type("粤B12345") == "ordinary_7"
    assert match_reads(["粤B12345", "京A11111"], ["京A11112", "粤B12345", "X"]) == [
        "粤B12345",
        "京A11112",
    ]
    assert match_reads(["粤B12345"], []) == [""]
    # An unread plate listed first must not take a later plate's exact read (津KNG518.jpg of
    # the street set: label order gave 津AHP676 the read of 津AD9823).
    assert match_reads(["津KNG518", "津AHP676", "津AD9823"], ["津AD9823", "津KNG518"]) == [
        "津KNG518",
        "",
        "津AD9823",
    ]


def test_pair_scores_known_answer() -> None:
    e = {Path(p): np.array(v, np.float32) for p, v in
         {"a1": [1, 0], "a2": [0.6, 0.8], "b1": [0, 1]}.items()}  # fmt: skip
    imgs = [FaceImage("a", Path("a1")), FaceImage("a", Path("a2")), FaceImage("b", Path("b1")),
            FaceImage("b", Path("missing"))]  # fmt: skip
    gen, imp = pair_scores(imgs, e)
    assert gen.tolist() == pytest.approx([0.6])
    assert sorted(imp.tolist()) == pytest.approx([0.0, 0.8])
    gen_d, _ = pair_scores(imgs, e, distance=True)
    assert gen_d.tolist() == pytest.approx([1 - np.sqrt(0.16 + 0.64)])


def test_target_must_be_loopback() -> None:
    assert check_target("127.0.0.1:50051") == ("127.0.0.1", 50051)
    for bad in ("10.0.0.1:50051", "example.com:443", "127.0.0.1", "127.0.0.1:0", ":1"):
        with pytest.raises(ValueError):
            check_target(bad)


def test_report_writing(tmp_path: Path) -> None:
    assert md_table(["a", "b"], [[1, 0.5], ["x|y", float("nan")]]) == (
        "| a | b |\n|---|---|\n| 1 | 0.5 |\n| x\\|y | – |"
    )
    assert fmt(1.23456e-5) == "1.23e-05" and fmt(None) == "n/a" and fmt(True) == "yes"
    # Reports never print a machine's absolute paths: the shared data relative to the checkout,
    # anything else by its own name.
    from devtools.datasets import DATASETS

    assert to_jsonable([Path("/elsewhere/my-faces"), DATASETS / "faces"]) == [
        ".../my-faces",
        "../shared/datasets/faces",
    ]
    assert to_jsonable({"x": np.float32(1.5), "n": float("nan"), "p": Path("a/b")}) == {
        "x": 1.5,
        "n": None,
        "p": "a/b",
    }
    rep = Report("T", machine={"cpu": "c", "cores": 2, "python": "3", "onnxruntime": "1",
                               "numpy": "2", "faiss": "1", "opencv": "5", "date": "d"})  # fmt: skip
    rep.h("S")
    rep.table(["k"], [[1]])
    rep.results = {"v": np.arange(2)}
    rep.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# T\n\nMachine: c, 2 cores") and "## S" in md and "| 1 |" in md
    assert json.loads((tmp_path / "results.json").read_text())["results"] == {"v": [0, 1]}


def test_small_helpers() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert np.isnan(median([]))
    assert ratio(1.0, 4.0) == 0.25 and np.isnan(ratio(1.0, 0.0))


def test_committed_results_are_summaries_that_a_baseline_still_compares(tmp_path: Path) -> None:
    import dataclasses

    import click

    from benchmarks import fusion
    from benchmarks.report import ROWS_NAME

    def row(person: str, outcome: str, reasons: list[str]) -> dict:
        return {
            "event": {
                "kind": "genuine",
                "person": person,
                "vehicle": f"plates/street/{person}.jpg",
                "face": f"faces/set/{person}/{person}_0001.jpg",
            },
            "present": person, "outcome": outcome, "identity_id": person, "plate_exact": True,
            "plate_llr": 3.0, "face_llr": 14.0, "fused_llr": 17.0, "estimated_far": 1e-9,
            "face_top1": person, "face_score": 0.75, "reasons": reasons,
        }  # fmt: skip

    rows = [row(f"p{k}", "ALLOW", ["PLATE_EXACT_MATCH", "FACE_MATCH"]) for k in range(60)]
    probes = [{"path": f"x/{k}.jpg", "score": 0.5} for k in range(60)]  # other rows: counted
    machine = {k: "-" for k in ("cpu", "cores", "python", "onnxruntime", "numpy", "faiss")}
    machine |= {"opencv": "-", "date": "-"}
    rep = Report("fusion", machine=machine)
    rep.results = {"systems": {"far": 0.0}, "events": rows, "faces": {"answers": probes}}
    rep.write(tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())["results"]
    assert summary["systems"] == {"far": 0.0}
    assert summary["faces"]["answers"] == {"rows": 60, "in": ROWS_NAME}
    outcomes = fusion.outcomes_from_json(tmp_path / ROWS_NAME)  # the whole rows, to report
    assert [e["event"] for e in summary["events"]] == [o.event.key() for o in outcomes]
    assert summary["events"][0] == {
        "event": outcomes[0].event.key(),
        "outcome": "ALLOW",
        "reasons": ["PLATE_EXACT_MATCH", "FACE_MATCH"],
    }
    # A later run where one event moved: the summary, as a baseline, lists it with reasons.
    now = [dataclasses.replace(outcomes[7], outcome="STEP_UP", reasons=("FACE_REQUIRED",))]
    moved = fusion.moved_events(now, tmp_path / "results.json")
    assert moved == [
        {
            "event": outcomes[7].event.key(),
            "before": "ALLOW",
            "after": "STEP_UP",
            "reasons_before": ["PLATE_EXACT_MATCH", "FACE_MATCH"],
            "reasons_after": ["FACE_REQUIRED"],
        }
    ]
    with pytest.raises(click.ClickException):
        fusion.outcomes_from_json(tmp_path / "results.json")  # a summary cannot be re-reported


def _written_again(tmp_path: Path, render, results: dict) -> str:  # type: ignore[no-untyped-def]
    """A report from a run's results, and again from its rows.json alone: the same
    sections (nothing but the results shapes it). Returns the Markdown."""
    from benchmarks.report import load_results

    first = render(results)
    first.write(tmp_path / "run")
    title, tree = load_results(tmp_path / "run" / "rows.json")
    again = render(tree)
    assert again.title == title == first.title
    assert again.sections == first.sections
    return first.markdown()


def test_service_ramp_and_comparison_reports_come_back_from_rows_json(tmp_path: Path) -> None:
    from benchmarks import service
    from benchmarks.service import AUTH_STRANGER, CompareLevel, LevelResult, ServerDelta

    nan = float("nan")
    ramp = {
        "target": "127.0.0.1:1",
        "notes": ["gallery: 6 payers"],
        "levels": [
            LevelResult("ReadPlates", 1, 16, 2.0, 8.0, 120.0, 130.0, 140.0, {"OK": 16},
                        ServerDelta(16, 1.6, 1.28, 2.0), 1.25, 1.5625),
            LevelResult("ReadPlates", 2, 16, 2.0, 8.0, 240.0, 250.0, 260.0,
                        {"OK": 15, "UNAVAILABLE": 1}, None, nan, nan),
        ],
        "prometheus": {"before": {"x": 1.0}, "after": {"x": 17.0}},
        "inputs": {"where": "here", "requests": 16, "max_seconds": 30.0, "faces": "f",
                   "plates": "p"},
    }  # fmt: skip
    text = _written_again(tmp_path / "ramp", lambda r: service.render(r, tmp_path), ramp)
    # Handler CPU 1.6 s and inference 1.28 s over 16 calls: 100 and 80 ms a call.
    assert "| ReadPlates | 1 | 16 | 8 | 120 | 130 | 140 | – | 100 | 80 | 1.25 | 1.562 |" in text
    assert "UNAVAILABLE 1" in text and "| x | 1 | 17 | 16 |" in text
    from benchmarks.rewrite import rewrite  # into a folder that does not exist yet: plots too

    fresh = tmp_path / "fresh" / "dir"
    assert rewrite(tmp_path / "ramp" / "run", fresh).read_text().endswith(text.split("\n", 4)[-1])
    assert (fresh / "service_qps.png").is_file() and (fresh / "service_p99_ms.png").is_file()

    levels = [
        CompareLevel(server, AUTH_STRANGER, 4, r, qps, 100.0 / qps, 50.0, {"OK": 16})
        for r in range(3)
        for server, qps in (("base", 10.0 + r), ("branch", 13.0 + r))
    ]
    summary = service.compare_summary(levels)
    got = summary[f"{AUTH_STRANGER} @ 4"]
    assert got["base_qps"] == 11.0 and got["branch_qps"] == 14.0
    assert got["qps_ratio"] == pytest.approx(14 / 11)
    compare = {"base_src": "/x", "rounds": 3, "requests": 16, "load_before": (1.0, 1.0, 1.0),
               "load_after": (2.0, 2.0, 2.0), "summary": summary, "levels": levels,
               "inputs": {"profile": "default", "base": ".../x", "max_seconds": 60.0,
                          "faces": "f", "plates": "p", "cores": 2}}  # fmt: skip
    text = _written_again(tmp_path / "compare", service.render_compare, compare)
    assert "| Authorize stranger's car QPS, 4 callers ≥ 1.3x | 1.27x | no |" in text
    # The same code with one setting changed on the base server says which.
    compare["inputs"] = {**compare["inputs"], "base_env": {"RECOGNIZER_MAX_IN_FLIGHT": "2"}}
    text = _written_again(tmp_path / "compare-env", service.render_compare, compare)
    assert "`.../x` (same interpreter and models; base: `RECOGNIZER_MAX_IN_FLIGHT=2`)" in text


def test_bench_service_refuses_a_base_setting_that_is_not_one() -> None:
    from click.testing import CliRunner

    from benchmarks.cli import bench

    done = CliRunner().invoke(bench, ["service", "--base-src", ".", "--base-env", "MAX=2"])
    assert done.exit_code == 2 and "RECOGNIZER_NAME=VALUE" in done.output


def test_burst_latency_report_comes_back_from_rows_json(tmp_path: Path) -> None:
    from benchmarks import burst_latency as bl

    times = {bl.ONE: [10.0, 12.0, 14.0], bl.BURST.format(n=3): [20.0, 24.0, 28.0]}
    results = {
        "profile": "default", "frames": 3, "load_before": (1.0, 1.0, 1.0),
        "load_after": (1.0, 1.0, 1.0), "p50_ms": {k: v[1] for k, v in times.items()},
        "p95_ms": {k: v[2] for k, v in times.items()}, "times_ms": times,
        "inputs": {"base": "-", "requests": 3, "payers": 6, "faces": "f", "plates": "p",
                   "cores": 2},
    }  # fmt: skip
    text = _written_again(tmp_path, bl.render, results)
    assert "| 3 frames, plate bound | 3 | 24 | 28 | 2 |" in text


def test_bench_report_writes_a_run_again_from_its_rows_json(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmarks import burst_latency as bl
    from benchmarks.cli import bench

    times = {bl.ONE: [10.0, 12.0, 14.0]}
    results = {
        "profile": "default", "frames": 3, "load_before": (1.0, 1.0, 1.0),
        "load_after": (1.0, 1.0, 1.0), "p50_ms": {bl.ONE: 12.0}, "p95_ms": {bl.ONE: 14.0},
        "times_ms": times,
        "inputs": {"base": "-", "requests": 3, "payers": 6, "faces": "f", "plates": "p",
                   "cores": 2},
    }  # fmt: skip
    bl.render(results).write(tmp_path / "run")
    done = CliRunner().invoke(
        bench, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "again")]
    )
    assert done.exit_code == 0, done.output
    for name in ("report.md", "results.json"):  # the run's machine line and figures, as they were
        assert (tmp_path / "again" / name).read_text() == (tmp_path / "run" / name).read_text()
    # A run from before reports were written from results alone is refused, clearly.
    rows = json.loads((tmp_path / "run" / "rows.json").read_text())
    del rows["results"]["inputs"]
    (tmp_path / "run" / "rows.json").write_text(json.dumps(rows))
    done = CliRunner().invoke(bench, ["report", str(tmp_path / "run")])
    assert done.exit_code != 0 and "measure it again" in done.output


def test_refused_genuine_events_are_counted_by_the_factor_that_failed() -> None:
    from benchmarks import fusion

    def genuine(i: int, outcome: str, reasons: list[str], charged: str = "") -> fusion.Outcome:
        person = f"p{i}"
        return fusion.outcome_from_row({
            "event": {"kind": "genuine", "person": person,
                      "vehicle": f"plates/street/car{i % 2}.jpg",
                      "face": f"faces/set/{person}/{person}_0002.jpg"},
            "present": person, "outcome": outcome, "identity_id": charged or person,
            "plate_exact": True, "plate_llr": 3.0, "face_llr": 1.0, "fused_llr": 4.0,
            "estimated_far": 1e-3, "face_top1": "", "face_score": 0.4, "reasons": reasons,
        })  # fmt: skip

    exact = "PLATE_EXACT_MATCH"
    outcomes = [
        genuine(0, "ALLOW", [exact, "FACE_MATCH"]),  # a correct accept: not refused
        genuine(1, "STEP_UP", ["PLATE_NO_MATCH", "LIVENESS_UNCERTAIN"]),  # the plate comes first
        genuine(2, "STEP_UP", ["PLATE_CANDIDATE_MATCH", "FAR_ABOVE_TARGET"]),  # it named the payer
        genuine(3, "STEP_UP", [exact, "LIVENESS_UNCERTAIN", "FACE_BELOW_FLOOR"]),
        genuine(4, "STEP_UP", [exact, "FACE_BELOW_THRESHOLD", "FACE_BELOW_FLOOR"]),
        genuine(5, "STEP_UP", [exact, "FAR_ABOVE_TARGET"]),
        genuine(6, "ALLOW", [exact, "FACE_MATCH"], charged="p0"),  # someone else charged
    ]
    causes = [fusion.refusal_cause(o) for o in outcomes[1:]]
    assert causes == ["plate", "face", "liveness", "face floor", "face", "charged wrongly"]
    rep = Report("fusion")
    fusion._refusals_section(rep, outcomes)
    text = rep.markdown()
    # Two face refusals on two frames of two people; the correct accept is in no row.
    assert "| face | 2 | 2 | 2 |" in text and "| plate | 1 | 1 | 1 |" in text
    assert "frames behind the plate refusals (events each): `car1.jpg` 1." in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 5


def test_a_fusion_report_written_again_names_the_machine_and_time_of_its_run(
    tmp_path: Path,
) -> None:
    from benchmarks import fusion
    from benchmarks.report import ROWS_NAME

    person = "p0"
    row = {
        "event": {"kind": "genuine", "person": person, "vehicle": "plates/street/car.jpg",
                  "face": f"faces/set/{person}/{person}_0002.jpg"},
        "present": person, "outcome": "ALLOW", "identity_id": person, "plate_exact": True,
        "plate_llr": 3.0, "face_llr": 14.0, "fused_llr": 17.0, "estimated_far": 1e-9,
        "face_top1": person, "face_score": 0.75, "reasons": ["PLATE_EXACT_MATCH", "FACE_MATCH"],
    }  # fmt: skip
    measured = {k: "-" for k in ("python", "onnxruntime", "numpy", "faiss", "opencv")}
    measured |= {"cpu": "the bench machine", "cores": 2, "date": "2026-01-02T03:04:05+00:00"}
    run = Report("Fusion benchmark", machine=measured)
    run.results = {
        "systems": fusion.summary([fusion.outcome_from_row(row)])["systems"],
        "one_to_n": fusion.one_to_n([]),
        "events": [row],
    }
    run.write(tmp_path / "run")
    again = fusion.report_from_rows(tmp_path / "run" / ROWS_NAME, tmp_path / "again")
    assert again.machine == measured
    written = json.loads((tmp_path / "again" / "results.json").read_text())
    assert written["machine"]["date"] == measured["date"]
