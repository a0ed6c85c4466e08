"""Shared report writer for every bench: machine info, Markdown tables, JSON, plots.

Each bench builds a :class:`Report` (title + Markdown sections + a results dict) and calls
:meth:`Report.write`, which produces ``report.md`` and ``results.json`` in the output folder;
plots are written beside them with the helpers below (matplotlib, Agg backend).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def shown(path: Path | str) -> str:
    """A path as reports print it: relative to the checkout when beside it (the shared
    datasets), else from the dataset folder's own name, never a machine's absolute path."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return ".../" + p.name


T = TypeVar("T")


# --- machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two reports: CPU, cores, library versions, date."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "faiss": _version("faiss-cpu"),
        "opencv": _version("opencv-python-headless"),
        "grpcio": _version("grpcio"),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


# --- formatting --------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """One cell: floats to `digits` significant places, NaN as a dash, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100.0 * value:.{digits}f}%"


def num(value: Any, spec: str) -> str:
    """A number in a format spec, or a dash where a results tree holds none (JSON keeps NaN
    and infinities as null, so a report written from results.json meets None)."""
    return "–" if value is None else format(value, spec)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells go through :func:`fmt` unless already strings."""

    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, paths and enums as plain JSON values (NaN -> null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return shown(obj)
    return obj


def typed(cls: type[T], items: Iterable[Any]) -> list[T]:
    """Records as `cls` (a flat dataclass), whether measured just now or read back from a
    results tree's JSON rows: a report reads both alike."""
    return [x if isinstance(x, cls) else cls(**x) for x in items]


def load_results(path: Path) -> tuple[str, dict[str, Any]]:
    """(title, results tree) of an earlier run's rows.json, to write its report again."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    return payload["title"], payload["results"]


# --- report ------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """Markdown sections in order plus a JSON-able results tree."""

    title: str
    sections: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def h(self, text: str, level: int = 2) -> None:
        self.sections.append(f"{'#' * level} {text}")

    def p(self, text: str) -> None:
        self.sections.append(text)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.sections.append(md_table(headers, rows))

    def image(self, path: Path, alt: str) -> None:
        self.sections.append(f"![{alt}]({path.name})")

    def markdown(self) -> str:
        m = self.machine
        head = [
            f"# {self.title}",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; onnxruntime "
            f"{m['onnxruntime']}; numpy {m['numpy']}; faiss {m['faiss']}; opencv {m['opencv']}; "
            f"{m['date']}.",
        ]
        return "\n\n".join(["\n".join(head), *self.sections]) + "\n"

    def write(self, out_dir: Path) -> Path:
        """report.md; results.json, a summary fit to commit (`compact`); and rows.json, the
        whole results (git-ignored: `--from-results` reads it)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.md").write_text(self.markdown(), encoding="utf-8")
        payload = to_jsonable(
            {"title": self.title, "machine": self.machine, "results": self.results}
        )
        (out_dir / ROWS_NAME).write_text(
            json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        write_compact(payload, out_dir / "results.json")
        return out_dir / "report.md"


# --- committed results: summaries ---------------------------------------------------------

ROWS_NAME = "rows.json"  # a run's every row, beside its results.json; not committed
ROW_LIMIT = 50  # a longer list of records is rows, not a summary


def event_key(event: Any) -> str:
    """An event's id by file names only (fusion's Event.key), from its JSON form."""
    if not isinstance(event, dict):
        return str(event)
    car = Path(event["vehicle"]).name if event.get("vehicle") else "-"
    face = Path(event["face"])
    return f"{event['kind']}|{car}|{face.parent.name}/{face.name}"


def _event_row(value: Any) -> bool:
    return isinstance(value, dict) and {"event", "outcome"} <= value.keys()


def compact(value: Any) -> Any:
    """What a committed results.json keeps: every summary figure; of each event row its id,
    outcome and reasons (what `--baseline` compares); other long lists of records only
    their count (the rows are in rows.json)."""
    if _event_row(value):
        return {
            "event": event_key(value["event"]),
            "outcome": value["outcome"],
            "reasons": value.get("reasons"),
        }
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if not isinstance(value, list):
        return value
    records = all(isinstance(v, dict) and not _event_row(v) for v in value)
    if len(value) > ROW_LIMIT and records:
        return {"rows": len(value), "in": ROWS_NAME}
    return [compact(v) for v in value]


def write_compact(payload: Any, path: Path) -> None:
    path.write_text(
        json.dumps(compact(payload), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


# --- progress ----------------------------------------------------------------------------


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr when it is a terminal; otherwise one line per stage as it ends
    (how many, how long), so a log gets no redrawn bar and still shows the run moving."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, unit="it")
        return
    t0, done = time.perf_counter(), 0
    try:
        for item in items:
            done += 1
            yield item
    finally:
        print(f"{desc}: {done} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)


# --- plots -------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_det(
    path: Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    *,
    xlabel: str = "FMR (false match rate)",
    ylabel: str = "FNMR (false non-match rate)",
) -> Path:
    """DET curves (FNMR against FMR, both log) for {label: (genuine, impostor)} score sets."""
    from devtools.metrics import det_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    floor = 1.0
    for label, (gen, imp) in curves.items():
        if len(gen) == 0 or len(imp) == 0:
            continue
        det = det_curve(gen, imp)
        # Zero rates cannot sit on a log axis: clamp to half the smallest step of each set.
        fmr = np.maximum(det.fmr, 0.5 / len(imp))
        fnmr = np.maximum(det.fnmr, 0.5 / len(gen))
        floor = min(floor, 0.5 / len(imp), 0.5 / len(gen))
        ax.step(fmr, fnmr, where="post", label=f"{label} (g={len(gen)}, i={len(imp)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(floor, 1e-6), 1.0)
    ax.set_ylim(max(floor, 1e-6), 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return _save(plt, fig, path)


def plot_bars(
    path: Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str,
) -> Path:
    """Grouped bars: one group per label, one bar per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(labels) + 2), 4.2))
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(labels))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_lines(
    path: Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    logx: bool = False,
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, vals in series.items():
        ax.plot(x[: len(vals)], vals, marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


# --- RESULTS.md ---------------------------------------------------------------------------

RESULT_ORDER = ("faces", "plates", "fusion", "pad", "index", "service")


def collect_results(results_dir: Path, dest: Path, commands: Sequence[str] = ()) -> Path:
    """One page with every report found under results_dir, links rewritten to stay valid."""
    m = machine_info()
    parts = [
        "# Benchmark results",
        "",
        f"Regenerated {m['date']} on {m['cpu']}, {m['cores']} cores, single-threaded "
        f"inference (onnxruntime {m['onnxruntime']}, faiss {m['faiss']}). "
        "Regenerate with `make bench` (or `make bench-quick`, under 10 minutes).",
    ]
    if commands:
        parts += ["", "Commands:", "", "```sh", *commands, "```"]
    names = (
        sorted(
            (d.name for d in results_dir.iterdir() if (d / "report.md").is_file()),
            key=lambda n: (RESULT_ORDER.index(n) if n in RESULT_ORDER else 99, n),
        )
        if results_dir.is_dir()
        else []
    )
    rel = (
        results_dir.relative_to(dest.parent)
        if results_dir.is_relative_to(dest.parent)
        else results_dir
    )
    for name in names:
        body = (results_dir / name / "report.md").read_text(encoding="utf-8")
        # Demote headings one level and point images at their folder.
        lines = [("#" + line) if line.startswith("#") else line for line in body.splitlines()]
        text = "\n".join(lines)
        text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", rf"![\1]({rel}/{name}/\2)", text)
        parts += ["", text]
    dest.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return dest
