"""`bench report DIR`: a bench's report written again from its run's rows.json alone.

Every bench below measures, keeps what it measured as its results tree, and writes report.md
from that tree only; so an earlier run's report can be redone (a wording fixed, a table
added) without measuring again. A run is recognised by its report title.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import ROWS_NAME, Report

Render = Callable[[dict[str, Any]], Report]


def renderer(title: str, out: Path) -> Render | None:
    """The render function of the bench that wrote a report of this title."""
    from benchmarks import burst_latency, calibration, cluster, faces, fusion, service

    by_prefix: dict[str, Render] = {
        "Fusion benchmark": lambda r: fusion.render(r, title, out),
        "Face calibration": calibration.render,
        "Face benchmark": faces.render,
        "Service benchmark": lambda r: service.render(r, out),
        "Service against an earlier release": service.render_compare,
        "Cluster benchmark": cluster.render,
        "Authorize latency": burst_latency.render,
    }
    return next((f for prefix, f in by_prefix.items() if title.startswith(prefix)), None)


def rewrite(run_dir: Path, out: Path) -> Path:
    """report.md (and results.json, rows.json) in `out` from `run_dir`'s rows.json, with
    the run's own machine line. Raises ValueError for a run it cannot report again."""
    payload = json.loads((run_dir / ROWS_NAME).read_text(encoding="utf-8"))
    render = renderer(payload["title"], out)
    if render is None:
        raise ValueError(f"no report writer for {payload['title']!r}")
    out.mkdir(parents=True, exist_ok=True)  # plots are drawn there before report.md
    try:
        rep = render(payload["results"])
    except KeyError as exc:  # results from before reports were written from results alone
        raise ValueError(f"{run_dir / ROWS_NAME} lacks {exc}: measure it again") from None
    rep.machine = payload["machine"]
    return rep.write(out)
