"""No function in benchmarks/ runs past 60 lines (issue 33: measure, results and report are
separate steps, each short enough to read at once)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MAX_LINES = 60


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function, nested ones included, longer than `limit` lines."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_the_rule_counts_nested_functions_and_decorated_lines_exactly() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    short = f"def f():\n{body}\n    return 0\n"  # 60 lines: allowed
    nested = f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    nested += "        return 1\n        return 2\n    return inner\n"
    assert long_functions(short) == []
    assert dict(long_functions(nested)) == {"outer": 63, "inner": 61}


def test_no_function_in_benchmarks_is_over_60_lines() -> None:
    files = sorted(BENCHMARKS.glob("*.py"))
    assert files
    long = {
        f"{p.name}:{name}": n
        for p in files
        for name, n in long_functions(p.read_text(encoding="utf-8"))
    }
    assert long == {}, long
