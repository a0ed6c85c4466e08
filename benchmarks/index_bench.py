"""Index benchmark: each kind the gallery can choose, against exact flat search.

Synthetic clustered unit vectors shaped like face templates: a few hundred "population"
clusters, identities around them, several templates per identity around the identity, and
probes that are fresh noisy views of enrolled identities (same-identity cosine ~0.6, as with
SFace). Ground truth is exact flat search over the same data, so recall@1 is "the
approximate index returned the same best template as flat".

Reports build time, size (serialised bytes and RSS delta), recall@1, per-query latency p50/p99
at batch 1 and batch 64, and a delete check (remove 1% of labels; none may come back).

    python -m benchmarks.index_bench --sizes 100000 1000000 --out var/bench/index
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from benchmarks.report import Report, progress
from recognizer.gallery.index import APPROXIMATE, FLAT, VectorIndex

TARGET_MS = 3.0
TARGET_RECALL = 0.99
TEMPLATES_PER_IDENTITY = 4
# ivf_pqfs probes 3/8 of the lists by default: 1536 of 4096 at 1M, 384 of 1024 at 100k.
NPROBES = (64, 128, 256, 512, 1024, 1536, 2048)


@dataclass(slots=True)
class Row:
    size: int
    kind: str
    params: str
    build_s: float
    index_bytes: int
    rss_delta_bytes: int
    recall_at_1: float
    identity_recall_at_1: float
    b1_p50_ms: float
    b1_p99_ms: float
    b64_p50_ms: float
    b64_p99_ms: float
    delete_ok: bool | None = None
    remove_s: float | None = None
    meets_target: bool = False  # template recall@1 and b1 p50 within the target
    meets_target_identity: bool = False  # the same with identity recall@1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synth(
    n: int, queries: int, dim: int, seed: int, clusters: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, gallery vectors, probe vectors); probes are new views of enrolled identities."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // TEMPLATES_PER_IDENTITY)
    pop = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    # Identity centres: cosine ~0.3 to their population cluster.
    centres = pop[rng.integers(0, clusters, n_ids)]
    centres += rng.standard_normal((n_ids, dim), dtype=np.float32) * np.float32(0.28)
    _unit(centres)
    owner = np.arange(n) % n_ids
    x = np.empty((n, dim), np.float32)
    step = 100_000
    for i in range(0, n, step):  # chunked to keep the temporaries small at 1M
        j = min(n, i + step)
        x[i:j] = centres[owner[i:j]]
        x[i:j] += rng.standard_normal((j - i, dim), dtype=np.float32) * np.float32(0.072)
        _unit(x[i:j])
    probe_ids = rng.integers(0, n_ids, queries)
    q = centres[probe_ids] + rng.standard_normal((queries, dim), dtype=np.float32) * np.float32(
        0.072
    )
    labels = np.arange(n, dtype=np.int64) + 1  # store labels start at 1
    return labels, x, _unit(q)


def _latency(index: VectorIndex, q: np.ndarray, batch: int, k: int = 10) -> tuple[float, float]:
    """Per-query milliseconds (p50, p99) over the probe set at one batch size."""
    times = []
    for i in range(0, len(q) - batch + 1, batch):
        t0 = time.perf_counter()
        index.search(q[i : i + batch], k)
        times.append((time.perf_counter() - t0) * 1000.0 / batch)
    arr = np.asarray(times)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _recall(
    index: VectorIndex, q: np.ndarray, truth: np.ndarray, n_ids: int
) -> tuple[float, float]:
    """Template recall@1 (same label as flat) and identity recall@1 (same identity)."""
    _, got = index.search(q, 1)
    same_label = float(np.mean(got[:, 0] == truth))
    same_id = float(np.mean((got[:, 0] - 1) % n_ids == (truth - 1) % n_ids))
    return same_label, same_id


def _ivf_params(nlist: int, nprobe: int, default: int) -> str:
    return f"nlist={nlist} nprobe={nprobe}" + (" (default)" if nprobe == default else "")


def _delete_check(
    index: VectorIndex, labels: np.ndarray, x: np.ndarray, q: np.ndarray, seed: int
) -> tuple[bool, float]:
    """Remove 1% of labels; neither their own vectors nor the probes may return them."""
    rng = np.random.default_rng(seed + 1)
    gone = rng.choice(labels, size=max(1, len(labels) // 100), replace=False)
    before = index.ntotal
    t0 = time.perf_counter()
    removed = index.remove(gone)
    took = time.perf_counter() - t0
    rows = gone - labels[0]
    _, own = index.search(x[rows[:2000]], 10)
    _, probes = index.search(q, 10)
    ok = (
        removed == len(gone)
        and index.ntotal == before - len(gone)
        and not np.isin(own, gone).any()
        and not np.isin(probes, gone).any()
    )
    return bool(ok), took


def _flat_row(
    n: int, dim: int, labels: np.ndarray, x: np.ndarray, q: np.ndarray, seed: int, b1_queries: int
) -> tuple[Row, np.ndarray]:
    """The exact reference (and the gallery's kind up to flat_max): its row, and every
    probe's true nearest label."""
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    flat = VectorIndex(dim, flat_max=n)
    flat.rebuild(labels, x, kind=FLAT)
    build = time.perf_counter() - t0
    rss = _rss_bytes() - rss0
    _, truth = flat.search(q, 1)
    b1 = _latency(flat, q[:b1_queries], 1)
    b64 = _latency(flat, q, 64)
    ok, rm = _delete_check(flat, labels, x, q, seed)
    row = Row(n, FLAT, "IndexIDMap2(IndexFlatIP)", build, flat.serialized_size(), rss,
              1.0, 1.0, *b1, *b64, ok, rm)  # fmt: skip
    return row, truth[:, 0]


def _approx_rows(
    n: int,
    dim: int,
    kind: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    truth: np.ndarray,
    nprobes: tuple[int, ...],
    seed: int,
) -> list[Row]:
    """An approximate kind the gallery can pick above flat_max, swept over nprobe."""
    labels, x, q = data
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    ivf = VectorIndex(dim, flat_max=0, approx=kind)
    ivf.rebuild(labels, x)
    build = time.perf_counter() - t0
    gc.collect()
    rss = _rss_bytes() - rss0
    size = ivf.serialized_size()
    default_nprobe = ivf.nprobe
    rows = []
    for nprobe in progress(sorted({*nprobes, default_nprobe}), f"{kind} n={n}"):
        if nprobe > ivf.nlist:
            continue
        ivf.nprobe = nprobe
        rec = _recall(ivf, q, truth, max(1, n // TEMPLATES_PER_IDENTITY))
        b1 = _latency(ivf, q, 1)
        b64 = _latency(ivf, q, 64)
        params = _ivf_params(ivf.nlist, nprobe, default_nprobe)
        rows.append(Row(n, kind, params, build, size, rss, *rec, *b1, *b64))
    ok, rm = _delete_check(ivf, labels, x, q, seed)
    for r in rows:
        r.delete_ok, r.remove_s = ok, rm
    del ivf
    gc.collect()
    return rows


def measure(
    sizes: tuple[int, ...],
    dim: int,
    queries: int,
    seed: int,
    nprobes: tuple[int, ...],
    flat_b1_queries: int,
    kinds: tuple[str, ...],
) -> list[Row]:
    """Every size: the flat reference, then each approximate kind over the nprobe sweep."""
    rows: list[Row] = []
    for n in sizes:
        labels, x, q = synth(n, queries, dim, seed)
        gc.collect()
        flat, truth = _flat_row(n, dim, labels, x, q, seed, flat_b1_queries)
        rows.append(flat)
        gc.collect()
        for kind in kinds:
            rows += _approx_rows(n, dim, kind, (labels, x, q), truth, nprobes, seed)
        del x
        gc.collect()
    for r in rows:
        fast = r.b1_p50_ms <= TARGET_MS
        r.meets_target = fast and r.recall_at_1 >= TARGET_RECALL
        r.meets_target_identity = fast and r.identity_recall_at_1 >= TARGET_RECALL
    return rows


def run_index_bench(
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    dim: int = 128,
    queries: int = 1000,
    seed: int = 0,
    threads: int = 1,
    nprobes: tuple[int, ...] = NPROBES,
    flat_b1_queries: int = 200,
    kinds: tuple[str, ...] = APPROXIMATE,
) -> dict:
    """Measure: the results tree (`report` writes it with the shared writer)."""
    faiss.omp_set_num_threads(threads)
    load_before = os.getloadavg()[0]  # latencies on a shared box are only as good as this
    rows = measure(sizes, dim, queries, seed, nprobes, flat_b1_queries, kinds)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": threads,
            "faiss": faiss.__version__,
            "python": platform.python_version(),
            "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "dim": dim,
        "queries": queries,
        "seed": seed,
        "target": {"recall_at_1": TARGET_RECALL, "ms_per_query": TARGET_MS},
        "rows": [asdict(r) for r in rows],
    }
    return result


def report(result: dict) -> Report:
    """The results with their table, for the shared writer (report.md, results.json)."""
    rep = Report("Index benchmark", results=result)
    rep.p(markdown(result))
    return rep


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Index benchmark: dim {result['dim']}, {result['queries']} probes, "
        f"{m['cpus']} CPUs (load average {m['loadavg_1m_before_after']} before/after), "
        f"faiss {m['faiss']} with {m['faiss_threads']} thread(s). "
        f"Latency is per query. Target: recall@1 >= {TARGET_RECALL} at <= {TARGET_MS} ms.",
        "",
        "| size | kind | params | build s | index MB | RSS delta MB | recall@1 "
        "| identity recall@1 | b1 p50 ms | b1 p99 ms | b64 p50 ms | b64 p99 ms "
        "| delete ok | remove 1% s | meets (tmpl/id) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']:,} | {r['kind']} | {r['params']} | {r['build_s']:.1f} "
            f"| {r['index_bytes'] / 2**20:.0f} | {r['rss_delta_bytes'] / 2**20:.0f} "
            f"| {r['recall_at_1']:.4f} | {r['identity_recall_at_1']:.4f} "
            f"| {r['b1_p50_ms']:.2f} | {r['b1_p99_ms']:.2f} "
            f"| {r['b64_p50_ms']:.3f} | {r['b64_p99_ms']:.3f} | {r['delete_ok']} "
            f"| {r['remove_s'] if r['remove_s'] is None else round(r['remove_s'], 2)} "
            f"| {_yes(r['meets_target'])}/{_yes(r['meets_target_identity'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nprobes", type=int, nargs="+", default=list(NPROBES))
    ap.add_argument("--kinds", nargs="+", default=list(APPROXIMATE), choices=list(APPROXIMATE))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/index"))
    args = ap.parse_args(argv)
    result = run_index_bench(
        sizes=tuple(args.sizes),
        dim=args.dim,
        queries=args.queries,
        seed=args.seed,
        threads=args.threads,
        nprobes=tuple(args.nprobes),
        kinds=tuple(args.kinds),
    )
    print(markdown(result))
    report(result).write(args.out)


if __name__ == "__main__":
    main()
