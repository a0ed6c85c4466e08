"""Start-up benchmark: how long a gallery takes to open (store + index file -> ready to
search) with a plaintext index file and with one sealed with the template key, side by side.

For each size a plaintext data directory is built once (random unit templates, the index
kind chosen by size, checkpointed); a copy is encrypted with `keys encrypt`'s code (which
reseals the same trained index), so both open the same index. Opens alternate plain /
encrypted so load on a shared machine hits both alike; the page cache is warm (the files
were just written), so the figures are CPU cost (read, decrypt, deserialise), not disk.

    .venv/bin/python -m benchmarks index --startup --sizes 100000,1000000
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.report import Report
from recognizer.gallery.gallery import Gallery
from recognizer.gallery.index import reseal_files
from recognizer.store.crypto import AesGcmCipher, NullCipher, TemplateCipher
from recognizer.store.open import StoreLocation
from recognizer.store.rekey import rekey

MODEL = "bench-model"
KEY = bytes(range(32))
PER_IDENTITY = 100  # identities do not matter to start-up; templates do
CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class StartupRow:
    size: int
    kind: str
    index_bytes_plain: int
    index_bytes_sealed: int
    build_s: float  # store + index build + first checkpoint (plaintext)
    encrypt_s: float  # `keys encrypt` of the copy: templates and index file resealed
    runs: int
    plain_p50_s: float
    sealed_p50_s: float
    plain_min_s: float
    sealed_min_s: float


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "nproc": str(os.cpu_count()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def _gallery(data: Path, cipher: TemplateCipher, dim: int) -> Gallery:
    store = StoreLocation(sqlite_path=data / "recognizer.db").open(cipher)
    return Gallery(store, MODEL, dim, data / "faces.faiss")


def build(data: Path, n: int, dim: int, seed: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    g = _gallery(data, NullCipher(), dim)
    store, rng = g.store, np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for i in range(0, m, PER_IDENTITY):
            ident = store.create_identity(f"p{start + i}")
            store.add_templates(ident.id, x[i : i + PER_IDENTITY], MODEL)
    g.open()  # builds the index from the store (kind by size)
    kind = g.index.kind
    g.checkpoint(force=True)
    g.close()
    return kind, time.perf_counter() - t0


def open_once(data: Path, cipher: TemplateCipher, dim: int) -> float:
    t0 = time.perf_counter()
    g = _gallery(data, cipher, dim)
    g.open()
    elapsed = time.perf_counter() - t0
    assert g.index.ntotal > 0
    g.close()
    return elapsed


def run_startup_bench(
    sizes: tuple[int, ...], dim: int, repeats: int, work: Path, seed: int = 0
) -> dict:
    rows = []
    for n in sizes:
        plain, sealed = work / f"plain-{n}", work / f"sealed-{n}"
        for d in (plain, sealed):
            shutil.rmtree(d, ignore_errors=True)
        kind, build_s = build(plain, n, dim, seed)
        shutil.copytree(plain, sealed)
        t0 = time.perf_counter()
        rekey(
            sealed / "recognizer.db",
            functools.partial(reseal_files, [sealed / "faces.faiss"]),
            None,
            KEY,
            batch=10_000,
        )
        encrypt_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"plain": [], "sealed": []}
        for _ in range(repeats):
            times["plain"].append(open_once(plain, NullCipher(), dim))
            times["sealed"].append(open_once(sealed, AesGcmCipher(KEY), dim))
        rows.append(
            StartupRow(
                size=n,
                kind=kind,
                index_bytes_plain=(plain / "faces.faiss").stat().st_size,
                index_bytes_sealed=(sealed / "faces.faiss").stat().st_size,
                build_s=build_s,
                encrypt_s=encrypt_s,
                runs=repeats,
                plain_p50_s=statistics.median(times["plain"]),
                sealed_p50_s=statistics.median(times["sealed"]),
                plain_min_s=min(times["plain"]),
                sealed_min_s=min(times["sealed"]),
            )
        )
        for d in (plain, sealed):
            shutil.rmtree(d, ignore_errors=True)
    return {"machine": machine(), "dim": dim, "rows": [asdict(r) for r in rows]}


def report(result: dict) -> Report:
    """The results with their table, for the shared writer (report.md, results.json)."""
    rep = Report("Gallery start-up: plaintext against sealed index files", results=result)
    rep.p(markdown(result))
    return rep


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Gallery start-up: plaintext vs sealed index file",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores ({m['machine']}), Python {m['python']}, "
        f"load average {m['loadavg_1m']} at the end (shared machine). dim {result['dim']}; "
        "warm page cache. Open = SqliteStore (key checked against the KCV) + Gallery.open "
        "(index file read, opened, deserialised, store counts compared).",
        "",
        "| templates | kind | index file plain / sealed | open p50 plain | open p50 sealed "
        "| overhead | min plain / sealed | runs | build | keys encrypt |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        overhead = r["sealed_p50_s"] / r["plain_p50_s"] - 1.0
        lines.append(
            f"| {r['size']:,} | {r['kind']} "
            f"| {r['index_bytes_plain'] / 1e6:.1f} / {r['index_bytes_sealed'] / 1e6:.1f} MB "
            f"| {r['plain_p50_s']:.3f} s | {r['sealed_p50_s']:.3f} s | {overhead:+.0%} "
            f"| {r['plain_min_s']:.3f} / {r['sealed_min_s']:.3f} s | {r['runs']} "
            f"| {r['build_s']:.0f} s | {r['encrypt_s']:.1f} s |"
        )
    return "\n".join(lines) + "\n"
