"""One report writer for every bench (issue 33): only benchmarks/report.py writes a report's
text, JSON or plots; the benches hand it their results (`Report.write`)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WRITER = "report.py"
# Calls that write a report's files. Model caches (write_bytes) and logs are not reports.
REPORT_WRITES = {"write_text", "savefig", "dump"}


def report_writes(source: str) -> list[str]:
    """The report-writing calls in a module: `x.write_text(...)`, `fig.savefig(...)`,
    `json.dump(...)`."""
    return [
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in REPORT_WRITES
    ]


def test_the_check_sees_a_report_written_by_hand() -> None:
    by_hand = "import json\n(out / 'report.md').write_text(md)\njson.dump(r, f)\n"
    assert report_writes(by_hand) == ["write_text", "dump"]
    assert report_writes("path.write_bytes(model)\n") == []


def test_only_the_shared_writer_writes_reports() -> None:
    files = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != WRITER)
    assert files and (BENCHMARKS / WRITER).is_file()
    assert report_writes((BENCHMARKS / WRITER).read_text(encoding="utf-8"))
    writes = {p.name: report_writes(p.read_text(encoding="utf-8")) for p in files}
    assert {name: w for name, w in writes.items() if w} == {}
