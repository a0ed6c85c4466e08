"""Cluster benchmark (issue #16): PostgreSQL as the shared store, a FAISS replica per node.

Four parts, in one run, each against a throwaway PostgreSQL on 127.0.0.1 that this module
starts (devtools/pg_local.py, fsync on, like a real one) and stops:

1. service: one node on SQLite against two nodes on one PostgreSQL, IdentifyFace and
   Authorize at the same total concurrency, in interleaved rounds;
2. store: the SqliteStore of this checkout against the previous release's (commit
   BASE_COMMIT, unpacked with `git archive`), each in its own subprocess, alternating; and
   PostgresStore for reference;
3. lag: enrolments on node A while node B's replica lag is sampled, and per enrolment the
   time until B's index holds it;
4. catch-up: a new node's gallery opened from an empty index over a database filled with
   100k and 1M templates, then 1,000 more applied by sync().

Parts 2 and 4 run in subprocesses (`python -m benchmarks.cluster WORKER JSON`): the store
worker must import another checkout's `recognizer`, and a fresh process gives each catch-up
size its own peak RSS.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import REPO_ROOT, Report, num, shown, to_jsonable, typed
from devtools.metrics import percentiles
from devtools.stats import median, ratio

BASE_COMMIT = "64951ce"  # the release before the storage ports (SQLite only)
MODEL = "bench-model"  # catch-up and store workers: any name, it only keys the rows
DIM = 128
STORE_OPS = ("enrol", "put_decision", "get_identity", "identity_for_labels", "identify")
METHODS = ("IdentifyFace", "Authorize")
RESULT_MARK = "CLUSTER-WORKER-RESULT "  # the worker's one line of JSON on stdout
READY_MARK = "CLUSTER-WORKER-READY "  # a store worker's first line: what it imported


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- PostgreSQL ---------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A durable throwaway PostgreSQL (pg_local.Cluster); stopped and removed on the way out."""
    from devtools import pg_local

    with pg_local.throwaway(durable=True) as cluster:
        yield cluster


def _new_database(cluster: Any, name: str) -> str:
    return str(cluster.create_database(f"{name}_{uuid.uuid4().hex[:8]}"))


def _drop_database(cluster: Any, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(cluster.url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- workers (subprocesses) -----------------------------------------------------------------


def _worker(kind: str, args: dict[str, Any], pythonpath: Path, timeout: float) -> dict[str, Any]:
    """Run `kind` in `python -m benchmarks.cluster` with `pythonpath` first; its result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(REPO_ROOT)])}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as cwd:  # nothing shadows
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.cluster", kind, json.dumps(args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    raise RuntimeError(f"worker {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class StoreOps:
    """The store operations a request makes, on whichever `recognizer` is importable: a
    store in `folder` (or at args["url"]), a prefilled gallery, and inputs drawn up front."""

    def __init__(self, args: dict[str, Any], folder: Path) -> None:
        from recognizer.gallery.gallery import Gallery
        from recognizer.store.rows import DecisionRow

        rng = np.random.default_rng(args["seed"])
        self.store: Any = _open_store(args["url"], folder / "recognizer.db")
        store = self.store
        ids = []
        for k in range(args["prefill"]):  # a gallery to look things up in
            ident = store.create_identity(f"pre-{k}").id
            store.add_templates(ident, _unit_vectors(rng, 1), MODEL, "bench")
            ids.append(ident)
        labels = np.concatenate([lb for lb, _ in store.iter_templates(MODEL)])
        gallery = Gallery(store, MODEL, DIM, index_path=None)
        gallery.open()
        nonce = uuid.uuid4().hex[:8]
        reps = int(args["reps"])
        # Inputs drawn before the clock starts: only the store's work is timed.
        fresh, queries = _unit_vectors(rng, reps), _unit_vectors(rng, reps)
        wanted = [rng.choice(labels, 20, replace=False).tolist() for _ in range(reps)]

        def enrol(k: int) -> None:
            ident = store.create_identity(f"new-{nonce}-{k}").id
            store.add_templates(ident, fresh[k : k + 1], MODEL, "bench")

        def decide(k: int) -> None:
            now = time.time()
            row = DecisionRow(
                uuid.uuid4().hex, "G-bench", f"E-{nonce}-{k}", "ALLOW", b"\x00" * 256,
                ids[k % len(ids)], "{}", now, "digest",
            )  # fmt: skip
            store.put_decision(row, sighting=(f"P{k % 97}", "G-bench", "entry", now))

        self._ops: dict[str, Callable[[int], Any]] = {
            "enrol": enrol,
            "put_decision": decide,
            "get_identity": lambda k: store.get_identity(ids[k * 7919 % len(ids)]),
            "identity_for_labels": lambda k: store.identity_for_labels(wanted[k]),
            "identify": lambda k: gallery.identify(queries[k], 5),
        }

    def time(self, op: str, k: int) -> tuple[float, float]:
        """(wall ms, CPU ms) of one call. CPU is the whole process's (FAISS may use several
        threads) and leaves out the waits for fsync, which another job's disk load stretches."""
        c0, t0 = time.process_time(), time.perf_counter()
        self._ops[op](k)
        return (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0

    def close(self) -> None:
        self.store.close()


def _open_store(url: str, path: Path, pool_size: int = 8) -> Any:
    """The store at `url` (PostgreSQL) or `path` (SQLite), through the importable release's
    own factory: `recognizer.store.open` from the storage package on, the adapters before."""
    try:
        from recognizer.store.open import StoreLocation
    except ImportError:  # a release before the storage package
        if url:
            from recognizer.gallery.postgres import PostgresStore

            return PostgresStore(url, pool_size=pool_size)
        from recognizer.gallery.store import SqliteStore

        return SqliteStore(path)
    from recognizer.store.crypto import NullCipher

    location = StoreLocation(url=url) if url else StoreLocation(sqlite_path=path)
    return location.open(NullCipher(), pool_size=pool_size)


def _imported() -> dict[str, Any]:
    import recognizer

    return {
        "recognizer": recognizer.__file__,
        # True from the storage ports on (the shared SQL of both adapters).
        "shared_sql": any(
            _has_module(m) for m in ("recognizer.store.sql", "recognizer.gallery.sql")
        ),
    }


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its package is missing
        return False


def store_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Answer `OP K` lines on stdin with `WALL_MS CPU_MS`, so that the parent can alternate
    the old and the new store call by call; until stdin closes."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        ops = StoreOps(args, Path(tmp))
        try:
            print(READY_MARK + json.dumps(_imported()), flush=True)
            for line in sys.stdin:
                op, k = line.split()
                wall, cpu = ops.time(op, int(k))
                print(f"{wall!r} {cpu!r}", flush=True)
        finally:
            ops.close()
    return {"done": True}


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def catchup_worker(args: dict[str, Any]) -> dict[str, Any]:
    """What a new node does at start (rebuild its replica from the store), then one sync()."""
    from recognizer.gallery.gallery import Gallery

    rss0 = _rss_kb()
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as tmp:
        index_path = Path(tmp) / "x.faiss"
        t0 = time.perf_counter()
        gallery = Gallery(_open_store(args["url"], Path()), MODEL, DIM, index_path=index_path)
        gallery.open()
        open_s = time.perf_counter() - t0
        peak_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kind, ntotal = gallery.index.kind, gallery.index.ntotal
        # Another node's writes: its own store instance, one transaction per enrolment.
        writer = _open_store(args["url"], Path(), pool_size=1)
        rng = np.random.default_rng(7)
        t0 = time.perf_counter()
        for k in range(args["more"] // 10):
            ident = writer.create_identity(f"late-{k}").id
            writer.add_templates(ident, _unit_vectors(rng, 10), MODEL, "bench")
        write_s = time.perf_counter() - t0
        writer.close()
        t0 = time.perf_counter()
        applied = gallery.sync()
        sync_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gallery.checkpoint(force=True)
        checkpoint_s = time.perf_counter() - t0
        file_mb = index_path.stat().st_size / 2**20 if index_path.exists() else 0.0
        after = gallery.index.ntotal
        gallery.close()
    return {
        "open_s": open_s,
        "kind": kind,
        "ntotal": ntotal,
        "rss_before_mb": rss0 / 1024,
        "peak_rss_open_mb": peak_open / 1024,
        "write_s": write_s,
        "sync_s": sync_s,
        "sync_applied": applied,
        "ntotal_after": after,
        "checkpoint_s": checkpoint_s,
        "file_mb": file_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "store-worker": store_worker,
    "catchup-worker": catchup_worker,
}


# --- 1. service: SQLite node against two PostgreSQL nodes -----------------------------------


@dataclass(frozen=True, slots=True)
class ServiceRow:
    setup: str
    method: str
    concurrency: int
    requests: int
    ok: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]


@dataclass(slots=True)
class _Node:
    """One running server: its target, admin key and (for replicas) /metrics URL."""

    target: str
    key: str
    metrics_url: str = ""
    clients: list[Any] = field(default_factory=list)

    def client(self) -> Any:
        from recognizer.client import Client

        c = Client.connect(self.target, self.key)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _start_node(stack: contextlib.ExitStack, profile: str, env: dict[str, str]) -> _Node:
    from benchmarks.service import free_port, subprocess_server

    mport = free_port()
    target, key = stack.enter_context(
        subprocess_server(profile, env={**env, "RECOGNIZER_METRICS_PORT": str(mport)})
    )
    node = _Node(target, key, f"http://127.0.0.1:{mport}/metrics")
    stack.callback(node.close)
    return node


def _gallery_size(client: Any) -> int:
    from recognizer.v1 import gate_pb2

    r = client.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=client.metadata, timeout=10)
    return int(r.gallery.index_size)


def _wait_for(check: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def _calls(
    clients: Sequence[Any], probes: Sequence[bytes], scenes: Sequence[bytes]
) -> dict[str, Callable[[int], None]]:
    """IdentifyFace and Authorize, call i on clients[i % len]: round-robin over the nodes."""
    from recognizer.v1 import gate_pb2, recognition_pb2

    def identify(i: int) -> None:
        c = clients[i % len(clients)]
        req = recognition_pb2.IdentifyFaceRequest(image=probes[i % len(probes)], top_k=5)
        c.recognition.IdentifyFace(req, metadata=c.metadata, timeout=60)

    gate_base = gate_pb2.AuthorizeRequest(
        gate_id="bench-cluster", amount_minor=100, currency="CNY",
        direction=gate_pb2.DIRECTION_ENTRY,
    )  # fmt: skip

    def authorize(i: int) -> None:
        c = clients[i % len(clients)]
        req = gate_pb2.AuthorizeRequest()
        req.CopyFrom(gate_base)
        req.event_id = f"cluster-{uuid.uuid4().hex}"  # a new event: a replay skips the work
        req.vehicle_image = scenes[i % len(scenes)]
        req.face_image = probes[i % len(probes)]
        c.gate.Authorize(req, metadata=c.metadata, timeout=60)

    return {"IdentifyFace": identify, "Authorize": authorize}


def _service_setups(
    sqlite_node: _Node, pg_nodes: Sequence[_Node], faces_dir: Path, plates_dir: Path
) -> tuple[dict[str, dict[str, Callable[[int], None]]], list[str]]:
    """The same gallery on SQLite and (through the first node) on PostgreSQL, and the calls
    of each set-up, every node warmed up."""
    from benchmarks.service import _files, _setup_gallery

    notes: list[str] = []
    scenes = [p.read_bytes() for p in _files(plates_dir, 64)]
    sq = sqlite_node.client()
    probes, enrolled = _setup_gallery(sq, faces_dir, 6)
    _setup_gallery(pg_nodes[0].client(), faces_dir, 6)
    want = _gallery_size(pg_nodes[0].clients[0])
    for node in pg_nodes[1:]:
        probe = node.client()
        if not _wait_for(lambda c=probe: _gallery_size(c) >= want, 30):
            notes.append(f"{node.target} had not caught up with the enrolments after 30 s")
    notes.append(
        f"gallery: {enrolled} identities enrolled on each set-up (on PostgreSQL through the "
        f"first node); {len(probes)} face probes, {len(scenes)} plate frames"
    )
    setups = {
        "SQLite, 1 node": _calls([sq], probes, scenes),
        # One process against one process: the store's cost alone, whatever share of the
        # cores a second process would take from the other jobs on the machine.
        "PostgreSQL, 1 node": _calls([pg_nodes[0].client()], probes, scenes),
        f"PostgreSQL, {len(pg_nodes)} nodes": _calls(
            [n.client() for n in pg_nodes], probes, scenes
        ),
    }
    for calls in setups.values():
        for call in calls.values():
            for i in range(len(pg_nodes)):  # warm every node, outside the measurement
                call(i)
    return setups, notes


def run_service(
    sqlite_node: _Node,
    pg_nodes: Sequence[_Node],
    faces_dir: Path,
    plates_dir: Path,
    *,
    concurrency: int,
    requests: int,
    rounds: int,
    max_seconds: float,
) -> tuple[list[ServiceRow], list[str]]:
    from benchmarks.service import run_level

    setups, notes = _service_setups(sqlite_node, pg_nodes, faces_dir, plates_dir)
    lat: dict[tuple[str, str], list[float]] = defaultdict(list)
    ok: dict[tuple[str, str], int] = defaultdict(int)
    wall: dict[tuple[str, str], float] = defaultdict(float)
    errors: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    order = list(setups)
    for r in range(rounds):
        # Alternate which set-up goes first, so a drift in the machine's load hits both.
        for name in order if r % 2 == 0 else order[::-1]:
            for method, call in setups[name].items():
                key = (name, method)
                got, statuses, seconds = run_level(call, concurrency, requests, max_seconds)
                lat[key].extend(got)
                ok[key] += statuses.pop("OK", 0)
                wall[key] += seconds
                errors[key].update(statuses)
    rows = []
    for key in ((name, method) for name in order for method in METHODS):
        p = percentiles(lat[key], (50, 99))
        done = ok[key] + sum(errors[key].values())
        rows.append(
            ServiceRow(
                *key, concurrency, done, ok[key], wall[key], ratio(ok[key], wall[key]),
                p["p50"], p["p99"], dict(errors[key]),
            )
        )  # fmt: skip
    return rows, notes


# --- 2. store operations: this checkout against the previous release ------------------------


@dataclass(frozen=True, slots=True)
class StoreRow:
    op: str
    old_ms: float  # medians over every call of every round
    new_ms: float
    paired_ratio: float  # median over calls of new / old, each pair a moment apart
    old_cpu_ms: float
    new_cpu_ms: float
    cpu_ratio: float
    postgres_ms: float
    round_ratios: tuple[float, ...]  # wall, per round: median new / median old
    old_deciles_ms: tuple[float, ...]  # wall p10..p90 (results.json: the shape, bimodal or not)
    new_deciles_ms: tuple[float, ...]


@contextlib.contextmanager
def base_tree(commit: str = BASE_COMMIT) -> Iterator[Path]:
    """The previous release's `recognizer` package, unpacked from git (no worktree left)."""
    with tempfile.TemporaryDirectory(prefix="recognizer-base-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", commit, "recognizer"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


class _Session:
    """A store worker in its own process, importing `recognizer` from `tree` first."""

    def __init__(self, tree: Path, args: dict[str, Any], cwd: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tree), str(REPO_ROOT)]),
            # One FAISS thread: waking idle OpenMP threads on 2 busy cores costs ms at random.
            "OMP_NUM_THREADS": "1",
        }
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cluster", "store-worker", json.dumps(args)],
            cwd=cwd,  # an empty folder: nothing there shadows a module
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        line = self._line()
        while not line.startswith(READY_MARK):
            line = self._line()
        self.imported: dict[str, Any] = json.loads(line[len(READY_MARK) :])
        expected = Path(tree, "recognizer", "__init__.py").resolve()
        if Path(self.imported["recognizer"]).resolve() != expected:
            self.close()
            raise RuntimeError(f"worker imported {self.imported['recognizer']}, not {expected}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self._err.seek(0)
            raise RuntimeError(f"store worker ended:\n{self._err.read()[-3000:]}")
        return line

    def time(self, op: str, k: int) -> tuple[float, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{op} {k}\n")
        self.proc.stdin.flush()
        wall, cpu = self._line().split()
        return float(wall), float(cpu)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


Timings = dict[str, list[tuple[float, float]]]  # op -> (wall ms, CPU ms) per call


def _deciles(calls: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    return tuple(float(x) for x in np.percentile([t[0] for t in calls], range(10, 100, 10)))


def _store_round(
    base: Path, args: dict[str, Any], cwd: Path, r: int, reps: int, sessions: list[_Session]
) -> dict[str, Timings]:
    """One fresh pair of worker processes (old, new), every operation called alternately."""
    pair = {"old": _Session(base, args, cwd)}
    sessions.append(pair["old"])
    pair["new"] = _Session(REPO_ROOT, args, cwd)
    sessions.append(pair["new"])
    if pair["old"].imported["shared_sql"] or not pair["new"].imported["shared_sql"]:
        raise RuntimeError("the old worker has the shared SQL, or the new one lacks it")
    got: dict[str, Timings] = {"old": {}, "new": {}}
    try:
        for k in range(reps):
            for i, op in enumerate(STORE_OPS):
                order = ("old", "new") if (k + i + r) % 2 == 0 else ("new", "old")
                for which in order:
                    got[which].setdefault(op, []).append(pair[which].time(op, k))
    finally:
        for session in pair.values():
            session.close()
    return got


def run_store(
    pg_url: str, *, rounds: int, reps: int, prefill: int, timeout_s: float = 1800.0
) -> tuple[list[StoreRow], list[str]]:
    """Old and new SQLite stores in two processes, called alternately, op by op: each pair
    of calls is a moment apart, so the other jobs' load weighs on both alike."""
    old: list[Timings] = []
    new: list[Timings] = []
    sessions: list[_Session] = []
    # Bounded whatever happens: a stuck worker is killed, and its read then fails.
    watchdog = threading.Timer(timeout_s, lambda: [s.kill() for s in sessions])
    watchdog.daemon = True
    watchdog.start()
    args = {"url": "", "reps": reps, "prefill": prefill, "seed": 1}
    pg_reps = min(reps, 200)
    try:
        with base_tree() as base, tempfile.TemporaryDirectory(prefix="bench-cluster-") as cwd:
            for r in range(rounds):
                got = _store_round(base, args, Path(cwd), r, reps, sessions)
                old.append(got["old"])
                new.append(got["new"])
            pg_session = _Session(REPO_ROOT, {**args, "url": pg_url, "reps": pg_reps}, Path(cwd))
            sessions.append(pg_session)
            try:
                pg = {op: [pg_session.time(op, k)[0] for k in range(pg_reps)] for op in STORE_OPS}
            finally:
                pg_session.close()
    finally:
        watchdog.cancel()
    notes = [
        f"old: `recognizer` unpacked from commit {BASE_COMMIT} (`git archive`) and imported "
        "first on PYTHONPATH; each worker reported the `recognizer.__file__` it imported "
        "(checked against the tree) and whether its store module has the shared SqlStore "
        "(the new one must, the old one must not)",
        f"{rounds} rounds, each a fresh pair of processes and SQLite files; {reps} calls of "
        "every operation per process, old and new alternating call by call (which goes first "
        f"alternates too); PostgreSQL: {pg_reps} calls of each, new code only; every "
        "worker runs FAISS on one thread (OMP_NUM_THREADS=1)",
    ]
    return [_store_row(op, old, new, pg[op]) for op in STORE_OPS], notes


def _store_row(
    op: str, old: Sequence[Timings], new: Sequence[Timings], pg: list[float]
) -> StoreRow:
    o = [t for run in old for t in run[op]]
    n = [t for run in new for t in run[op]]
    wall_o, wall_n = median([t[0] for t in o]), median([t[0] for t in n])
    cpu_o, cpu_n = median([t[1] for t in o]), median([t[1] for t in n])
    per_round = tuple(
        ratio(median([t[0] for t in b[op]]), median([t[0] for t in a[op]]))
        for a, b in zip(old, new, strict=True)
    )
    paired = median([ratio(b[0], a[0]) for a, b in zip(o, n, strict=True)])
    return StoreRow(
        op, wall_o, wall_n, paired, cpu_o, cpu_n, ratio(cpu_n, cpu_o), median(pg), per_round,
        _deciles(o), _deciles(n),
    )  # fmt: skip


# --- 3. replica lag under an enrolment load -------------------------------------------------


@dataclass(frozen=True, slots=True)
class LagSample:
    at: float  # monotonic, when the probe's answer arrived
    changes: int
    seconds: float
    templates: int  # vectors in B's index


@dataclass(frozen=True, slots=True)
class LagResult:
    probe: str
    seconds: float
    enrollers: int
    enrolments: int
    errors: int
    samples: int
    lag_s_p50: float
    lag_s_p99: float
    lag_s_max: float
    changes_p50: float
    changes_p99: float
    changes_max: int
    visible_ms_p50: float
    visible_ms_p99: float
    visible_ms_max: float
    seen_before_ack: int  # B held it before A's answer reached the caller
    never_seen: int


def visibility_ms(
    acks: dict[str, float],
    order: Sequence[tuple[str, int]],
    samples: Sequence[LagSample],
    base: int,
) -> tuple[list[float], int, int]:
    """Per enrolment, ms from A's answer to the first sample of B holding it.

    `order` is (identity, templates) in the writers' transaction order, the order a replica
    applies them in; so B holds an enrolment once its index has grown by the templates of
    that enrolment and of every earlier one. Returns (ms list, seen before the answer,
    never seen)."""
    out: list[float] = []
    early = missing = 0
    needed = base
    for ident, n in order:
        needed += n
        seen = next((s.at for s in samples if s.templates >= needed), None)
        if ident not in acks:
            continue
        if seen is None:
            missing += 1
            continue
        if seen < acks[ident]:
            early += 1
        out.append(max(0.0, seen - acks[ident]) * 1000.0)
    return out, early, missing


def _prometheus_probe(url: str) -> Callable[[], tuple[int, float, int]]:
    """B's /metrics page: the follower's lag and the index size, read without side effects."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    wanted = (
        "recognizer_replica_lag_changes",
        "recognizer_replica_lag_seconds",
        "recognizer_gallery_templates",
    )

    def probe() -> tuple[int, float, int]:
        with urllib.request.urlopen(url, timeout=10) as resp:  # 127.0.0.1 only
            text = resp.read().decode("utf-8")
        got = {
            s.name: float(s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name in wanted
        }
        return int(got[wanted[0]]), got[wanted[1]], int(got[wanted[2]])

    return probe


def _getmetrics_probe(client: Any) -> Callable[[], tuple[int, float, int]]:
    """B's GetMetrics: note that it checks the gallery, which also replays pending changes."""
    from recognizer.v1 import gate_pb2

    def probe() -> tuple[int, float, int]:
        r = client.admin.GetMetrics(
            gate_pb2.GetMetricsRequest(), metadata=client.metadata, timeout=10
        )
        return int(r.replica.changes), float(r.replica.seconds), int(r.gallery.index_size)

    return probe


def _writer_order(pg_url: str, identities: Sequence[str]) -> list[tuple[str, int]]:
    import psycopg

    with psycopg.connect(pg_url) as db:
        rows = db.execute(
            "SELECT t.identity_id, MIN(c.xid::text::bigint), COUNT(*) FROM changes c"
            " JOIN templates t ON t.label = c.label"
            " WHERE c.op = 'add' AND t.identity_id = ANY(%s) GROUP BY t.identity_id",
            (list(identities),),
        ).fetchall()
    return [(str(r[0]), int(r[2])) for r in sorted(rows, key=lambda r: r[1])]


@dataclass(slots=True)
class _LagLoad:
    """What the enrolling threads and the sampler of one lag run share."""

    probe: Callable[[], tuple[int, float, int]]
    deadline: float
    samples: list[LagSample] = field(default_factory=list)
    acks: dict[str, float] = field(default_factory=dict)  # identity -> when A answered
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, every_s: float) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            with contextlib.suppress(Exception):  # one failed read is one sample fewer
                changes, lag_s, templates = self.probe()
                self.samples.append(LagSample(time.monotonic(), changes, lag_s, templates))
            self.stop.wait(max(0.0, every_s - (time.monotonic() - t0)))

    def enrol(self, a: Any, images: Sequence[bytes], w: int, enrollers: int) -> None:
        import grpc

        from recognizer.v1 import identity_pb2

        k = w
        while time.monotonic() < self.deadline:
            try:
                ident = a.identity.CreateIdentity(
                    identity_pb2.CreateIdentityRequest(display_name=f"lag-{w}-{k}"),
                    metadata=a.metadata,
                    timeout=30,
                ).identity_id
                a.identity.EnrollFace(
                    identity_pb2.EnrollFaceRequest(
                        identity_id=ident, images=[images[k % len(images)]], force=True
                    ),
                    metadata=a.metadata,
                    timeout=30,
                )
                with self.lock:
                    self.acks[ident] = time.monotonic()
            except grpc.RpcError:
                with self.lock:
                    self.errors += 1
            k += enrollers


def run_lag(
    a: Any,
    probe: Callable[[], tuple[int, float, int]],
    probe_name: str,
    pg_url: str,
    images: Sequence[bytes],
    *,
    seconds: float,
    enrollers: int,
    sample_s: float,
) -> LagResult:
    base = probe()[2]
    load = _LagLoad(probe, time.monotonic() + seconds)
    sampling = threading.Thread(target=load.sample, args=(sample_s,), daemon=True)
    sampling.start()
    workers = [
        threading.Thread(target=load.enrol, args=(a, images, w, enrollers), daemon=True)
        for w in range(enrollers)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 120)
    load_end = time.monotonic()
    # Keep sampling until B holds every acknowledged enrolment (bounded).
    samples, acks = load.samples, load.acks
    _wait_for(lambda: bool(samples) and samples[-1].templates >= base + len(acks), 30, 0.1)
    load.stop.set()
    sampling.join(10)
    vis, early, missing = visibility_ms(acks, _writer_order(pg_url, list(acks)), samples, base)
    during = [s for s in samples if s.at <= load_end] or samples
    lag = percentiles([s.seconds for s in during], (50, 99))
    chg = percentiles([s.changes for s in during], (50, 99))
    v = percentiles(vis, (50, 99))
    return LagResult(
        probe_name, seconds, enrollers, len(acks), load.errors, len(during),
        lag["p50"], lag["p99"], max((s.seconds for s in during), default=float("nan")),
        chg["p50"], chg["p99"], max((s.changes for s in during), default=0),
        v["p50"], v["p99"], max(vis, default=float("nan")), early, missing,
    )  # fmt: skip


# --- 4. catch-up of a new node --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatchupRow:
    templates: int
    fill_s: float
    open_s: float
    kind: str
    ntotal: int
    rss_before_mb: float
    peak_rss_open_mb: float
    write_s: float  # the other store instance writing the 1,000 more (200 transactions)
    sync_s: float
    sync_applied: int
    ntotal_after: int
    checkpoint_s: float
    file_mb: float
    peak_rss_mb: float


def fill(url: str, n: int, seed: int = 0, chunk: int = 50_000) -> float:
    """`n` identities of one template each, with their 'add' changes, by COPY: seconds.

    Plaintext little-endian float32 vectors, as the NullCipher stores them."""
    import psycopg

    _open_store(url, Path()).close()  # the schema, through the adapter's own migrations
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    now = time.time()
    with psycopg.connect(url) as db:
        with db.cursor() as cur:
            # From schema 3 an identity keeps its template count, and meta the identities'.
            counted = cur.execute(
                "SELECT 1 FROM information_schema.columns"
                " WHERE table_name = 'identities' AND column_name = 'templates'"
            ).fetchone()
            columns = "id, display_name, created_at" + (", templates" if counted else "")
            for start in range(0, n, chunk):
                count = min(chunk, n - start)
                vectors = _unit_vectors(rng, count).astype("<f4")
                names = [f"fill-{start + k:08d}" for k in range(count)]
                with cur.copy(f"COPY identities ({columns}) FROM STDIN") as copy:
                    for name in names:
                        copy.write_row((name, name, now, 1) if counted else (name, name, now))
                with cur.copy(
                    "COPY templates (identity_id, model, dim, vector, source, created_at)"
                    " FROM STDIN"
                ) as copy:
                    for name, v in zip(names, vectors, strict=True):
                        copy.write_row((name, MODEL, DIM, v.tobytes(), "bench", now))
            # The change log in the same transaction: one writer xid for all of it.
            cur.execute(
                "INSERT INTO changes (op, label, model) SELECT 'add', label, model"
                " FROM templates ORDER BY label"
            )
            if counted:
                cur.execute(
                    "INSERT INTO meta VALUES ('identities', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(n),),
                )
        db.commit()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE")  # as a loaded database would be
    return time.perf_counter() - t0


def run_catchup(cluster: Any, sizes: Sequence[int], more: int) -> list[CatchupRow]:
    rows = []
    for n in sizes:
        url = _new_database(cluster, f"catchup_{n}")
        try:
            fill_s = fill(url, n)
            got = _worker("catchup-worker", {"url": url, "more": more}, REPO_ROOT, 7200)
            rows.append(CatchupRow(n, fill_s, **got))
        finally:
            _drop_database(cluster, url)
    return rows


# --- the whole run --------------------------------------------------------------------------


PARTS = ("service", "store", "lag", "catchup")


@dataclass(frozen=True, slots=True)
class Settings:
    sizes: tuple[int, ...]
    parts: tuple[str, ...] = PARTS
    profile: str = "default"
    concurrency: int = 4
    requests: int = 48  # per method, set-up and round
    service_rounds: int = 4
    store_rounds: int = 3  # pairs of store workers (old, new)
    store_reps: int = 500
    store_prefill: int = 2000
    lag_seconds: float = 20.0

    @classmethod
    def quick(cls, sizes: tuple[int, ...], **kw: Any) -> Settings:
        small = {"requests": 16, "service_rounds": 2, "store_rounds": 1, "store_reps": 60}
        return cls(sizes, **{**small, "store_prefill": 500, "lag_seconds": 5.0, **kw})


def _face_images(faces_dir: Path, limit: int = 200) -> list[bytes]:
    from benchmarks.service import _files

    return [p.read_bytes() for p in _files(faces_dir, limit)]


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does: servers, then PostgreSQL


def run(faces_dir: Path, plates_dir: Path, out: Path, settings: Settings) -> Report:
    results: dict[str, Any] = {"settings": settings, "load": {}}
    load = results["load"]
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with postgres() as cluster, contextlib.ExitStack() as stack:
            load["start"] = _load()
            if "service" in settings.parts or "lag" in settings.parts:
                _measure_nodes(cluster, stack, settings, faces_dir, plates_dir, results)
                stack.close()  # the nodes stop before the workers need the cores
            if "store" in settings.parts:
                load["store_before"] = _load()
                rows_s, notes_s = run_store(
                    _new_database(cluster, "micro"),
                    rounds=settings.store_rounds,
                    reps=settings.store_reps,
                    prefill=settings.store_prefill,
                )
                load["store_after"] = _load()
                results["store"] = {"rows": rows_s, "notes": notes_s}
            if "catchup" in settings.parts:
                load["catchup_before"] = _load()
                results["catchup"] = run_catchup(cluster, settings.sizes, 1000)
                load["catchup_after"] = _load()
            load["end"] = _load()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    results["inputs"] = {"faces": shown(faces_dir), "plates": shown(plates_dir)}
    rep = render(results)
    rep.write(out)
    return rep


def _measure_nodes(
    cluster: Any,
    stack: contextlib.ExitStack,
    settings: Settings,
    faces_dir: Path,
    plates_dir: Path,
    results: dict[str, Any],
) -> None:
    """The service and lag parts, on two nodes sharing one PostgreSQL database."""
    load = results["load"]
    url = _new_database(cluster, "nodes")
    # The nodes of one store share its template key: each server started alone gets its own,
    # and a node refuses a store sealed under another key.
    key = base64.b64encode(os.urandom(32)).decode()
    pg_env = {"RECOGNIZER_DATABASE_URL": url, "RECOGNIZER_TEMPLATE_KEY": key}
    nodes = [_start_node(stack, settings.profile, pg_env) for _ in range(2)]
    if "service" in settings.parts:
        sqlite_node = _start_node(stack, settings.profile, {})
        load["service_before"] = _load()
        rows, notes = run_service(
            sqlite_node, nodes, faces_dir, plates_dir,
            concurrency=settings.concurrency, requests=settings.requests,
            rounds=settings.service_rounds, max_seconds=60.0,
        )  # fmt: skip
        load["service_after"] = _load()
        results["service"] = {"rows": rows, "notes": notes}
    if "lag" in settings.parts:
        images = _face_images(faces_dir)
        a, b = nodes[0].client(), nodes[1].client()
        load["lag_before"] = _load()
        results["lag"] = [
            run_lag(
                a, probe, name, url, images, seconds=settings.lag_seconds, enrollers=2,
                sample_s=0.05,
            )
            for name, probe in (
                ("/metrics", _prometheus_probe(nodes[1].metrics_url)),
                ("GetMetrics", _getmetrics_probe(b)),
            )
        ]  # fmt: skip
        load["lag_after"] = _load()


# --- the report: from the results alone -----------------------------------------------------


def render(results: Mapping[str, Any]) -> Report:
    """The report of a results tree (a run's, or an earlier run's rows.json)."""
    tree = to_jsonable(results)
    load = tree["load"]
    rep = Report("Cluster benchmark: PostgreSQL and FAISS replicas (issue #16)")
    rep.p(
        "All on 127.0.0.1: a throwaway PostgreSQL 15 (devtools/pg_local.py, fsync on) and "
        "`recognizer serve` subprocesses with the real models. The machine has 2 cores shared "
        "with another engineer's tests and benchmarks: load averages (1, 5, 15 min) are given "
        "per part, and the same-run ratios matter more than the absolute figures. "
        f"Load at start {load.get('start')}, at the end {load.get('end')}."
    )
    if "service" in tree:
        _service_section(rep, tree)
    if "store" in tree:
        _store_section(rep, tree)
    if "lag" in tree:
        _lag_section(rep, tree)
    if "catchup" in tree:
        _catchup_section(rep, tree)
    rep.results = dict(results)
    return rep


def _loads(tree: Mapping[str, Any], part: str) -> str:
    load = tree["load"]
    return f"Load before {load.get(f'{part}_before')}, after {load.get(f'{part}_after')}."


def _service_section(rep: Report, tree: Mapping[str, Any]) -> None:
    settings, inputs = tree["settings"], tree["inputs"]
    rows = typed(ServiceRow, tree["service"]["rows"])
    rep.h("Service: one SQLite node against two nodes on one PostgreSQL")
    rep.p(
        f"{settings['concurrency']} callers in total; on two nodes the calls go round-robin "
        f"over both. {settings['service_rounds']} interleaved rounds of "
        f"{settings['requests']} requests per method and set-up (the set-up that goes first "
        f"alternates); percentiles over every round. Faces from `{inputs['faces']}`, frames "
        f"from `{inputs['plates']}`. Both nodes share the same 2 cores, so two nodes cannot "
        "double the QPS here: the point is the cost of PostgreSQL against SQLite per call. "
        "`PostgreSQL, 1 node` sends every call to the first of the two nodes: one server "
        "process against one, since two processes also take a larger share of cores "
        "that other jobs are using. " + _loads(tree, "service")
    )
    for n in tree["service"]["notes"]:
        rep.p(f"- {n}")
    by = {(r.setup, r.method): r for r in rows}
    setups = list(dict.fromkeys(r.setup for r in rows))
    table = []
    for r in rows:
        first = by[(setups[0], r.method)]
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "–"
        table.append([
            r.method, r.setup, r.concurrency, r.ok, r.qps, r.p50_ms, r.p99_ms, errs,
            ratio(r.qps, first.qps), ratio(r.p50_ms, first.p50_ms),
        ])  # fmt: skip
    rep.table(
        ["method", "set-up", "callers", "ok", "QPS", "p50 ms", "p99 ms", "errors",
         "QPS / SQLite", "p50 / SQLite"],
        sorted(table, key=lambda t: (METHODS.index(t[0]), setups.index(t[1]))),
    )  # fmt: skip


def _store_section(rep: Report, tree: Mapping[str, Any]) -> None:
    rows = typed(StoreRow, tree["store"]["rows"])
    rep.h("Store operations: SQLite before and after the refactoring")
    rep.p(
        "The SQLite store of this checkout against the previous release's, each in its own "
        f"process with a new file prefilled with {tree['settings']['store_prefill']} "
        "identities. Medians in ms. `enrol` is create_identity and add_templates of one "
        "template (two transactions, each fsynced); `put_decision` writes a decision with its "
        "plate sighting (one transaction); `identity_for_labels` asks for 20 labels; "
        "`identify` is Gallery.identify (flat index, top 5) with its label lookup. Wall time "
        "of a write is mostly the fsync, which the other jobs' disk load stretches at random; "
        "CPU time (the worker process's) leaves the wait out and shows the code's own cost. "
        "The wall times of a write spread over an order of magnitude (an fsync is quick, or "
        "queues behind the other jobs' writes; deciles in results.json), so whole-run "
        "medians move with the disk load; the paired ratio (the median, over calls, of "
        "new / old for two calls made a moment apart) and the per-round ratios do less. "
        "PostgreSQL: the same operations through PostgresStore against the server above, "
        "for reference (a round trip per statement, fsync on). " + _loads(tree, "store")
    )
    for n in tree["store"]["notes"]:
        rep.p(f"- {n}")
    rep.table(
        ["operation", f"{BASE_COMMIT} wall ms", "now wall ms", "paired new / old wall",
         "per-round new / old wall", f"{BASE_COMMIT} CPU ms", "now CPU ms",
         "new / old CPU", "PostgreSQL wall ms"],
        [[r.op, r.old_ms, r.new_ms, r.paired_ratio,
          " ".join(num(x, ".2f") for x in r.round_ratios), r.old_cpu_ms, r.new_cpu_ms,
          r.cpu_ratio, r.postgres_ms] for r in rows],
    )  # fmt: skip
    worst_wall = max(rows, key=lambda r: _sortable(r.paired_ratio))
    worst_cpu = max(rows, key=lambda r: _sortable(r.cpu_ratio))
    rep.p(
        "Goal: within 10% (new / old ≤ 1.10). Largest paired wall ratio: "
        f"{worst_wall.op} {num(worst_wall.paired_ratio, '.3f')}; largest CPU ratio: "
        f"{worst_cpu.op} {num(worst_cpu.cpu_ratio, '.3f')}."
    )


def _sortable(x: float | None) -> float:
    return float("nan") if x is None else x


def _lag_section(rep: Report, tree: Mapping[str, Any]) -> None:
    rep.h("Replica lag under an enrolment load")
    rep.p(
        "The follower measures its lag right after each replay, so the figure reads 0 "
        "unless a change was committed but not yet settled (an older transaction still "
        "open) at that moment; the visible time is the end-to-end figure. "
        "Nodes A and B on one PostgreSQL with the default follower settings (NOTIFY, "
        "replica_poll_s 0.5). Callers enrol real faces on A (CreateIdentity then "
        "EnrollFace of one photo) while B is sampled every 50 ms. Lag is the follower's "
        "own figure (changes not applied, age of the oldest, as GetMetrics.replica and "
        "/metrics report it) over the samples during the load. Visible is, per "
        "enrolment, the time from A's answer to the first sample in which B's index holds "
        "it (B applies whole transactions in writer order, so its index size says which "
        "enrolments it holds); the resolution is the 50-ms sampling. Two runs: sampling "
        "B's /metrics page, which reads the follower without side effects, and sampling "
        "GetMetrics, whose gallery check also replays pending changes on B (so it "
        "shortens what it measures). " + _loads(tree, "lag")
    )
    rep.table(
        ["sampled through", "seconds", "enrollers", "enrolments", "errors", "samples",
         "lag s p50", "lag s p99", "lag s max", "changes p50", "changes p99",
         "changes max", "visible ms p50", "visible ms p99", "visible ms max",
         "on B before A's answer", "never seen"],
        [list(r.values()) for r in tree["lag"]],  # a LagResult's fields, in order
    )  # fmt: skip


def _catchup_section(rep: Report, tree: Mapping[str, Any]) -> None:
    rep.h("Catch-up of a new node from an empty index")
    rep.p(
        "A database filled by COPY (one identity and one plaintext 128-d template each, "
        "and their change rows), then in a fresh process: `Gallery(PostgresStore(url), "
        "dim=128, index_path=<empty dir>).open()`, what a new node does at start (above "
        "flat_max = 100,000 it trains an IVF index); then another store instance writes "
        "1,000 more templates (100 identities of 10, create_identity and add_templates a "
        "transaction each) and `gallery.sync()` applies them; "
        "then one checkpoint of the index file. Peak RSS is the process's (ru_maxrss). "
        + _loads(tree, "catchup")
    )
    rep.table(
        ["templates", "fill s", "open s", "index", "RSS before MB", "peak RSS after open MB",
         "write 1,000 s", "sync s", "applied", "index after", "checkpoint s", "file MB",
         "peak RSS MB"],
        [[f"{r.templates:,}", r.fill_s, r.open_s, r.kind, r.rss_before_mb,
          r.peak_rss_open_mb, r.write_s, r.sync_s, r.sync_applied, r.ntotal_after,
          r.checkpoint_s, r.file_mb, r.peak_rss_mb]
         for r in typed(CatchupRow, tree["catchup"])],
    )  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """Worker entry: `python -m benchmarks.cluster WORKER JSON`; prints one result line."""
    if len(argv) != 2 or argv[0] not in WORKERS:
        print(f"usage: python -m benchmarks.cluster {{{','.join(WORKERS)}}} JSON", file=sys.stderr)
        return 2
    result = WORKERS[argv[0]](json.loads(argv[1]))
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
