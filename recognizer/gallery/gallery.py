"""The facade the servicers call: the store (truth) plus the FAISS index derived from it.

Writes go to the store first, then the index catches up by replaying the store's change log
from its watermark, always in seq order and under the index write lock. So the watermark
saved with a checkpoint is exactly what the index holds, whatever order concurrent writers
finish in, and a crash between store and index is repaired by the same replay on start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recognizer.errors import FailedPrecondition, InvalidArgument, Unavailable
from recognizer.gallery.index import FLAT, VectorIndex, default_nlist, is_unit, remove_stale_temps
from recognizer.store import files
from recognizer.store.ports import Store
from recognizer.store.rows import AuditEntry, Change, DeleteCounts, TemplateRow

log = logging.getLogger("recognizer.gallery")

AGGREGATES = ("max", "mean2")


@dataclass(frozen=True, slots=True)
class Match:
    identity_id: str
    score: float  # aggregated cosine similarity of the identity's best templates
    label: int  # the identity's best-scoring template


@dataclass(frozen=True, slots=True)
class GalleryStats:
    model: str
    dim: int
    ready: bool
    kind: str
    ntotal: int
    store_templates: int
    identities: int
    watermark: int
    store_seq: int
    nprobe: int
    nlist: int
    last_checkpoint_at: float
    consistent: bool  # as the last check found it, before any repair
    orphan_vectors: int = 0  # in the index, not in the store (as of the index watermark)
    missing_vectors: int = 0  # in the store, not in the index
    checked_at: float = 0.0  # when the index was last compared with the store (0: never)


class _RWLock:
    """Many concurrent searches, or one mutation; waiting writers block new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _aggregate(scores: list[float], how: str) -> float:
    """Scores sorted best first. mean2 rewards identities with two consistent templates."""
    if how == "max" or len(scores) == 1:
        return float(scores[0])
    return float((scores[0] + scores[1]) / 2.0)


class Gallery:
    def __init__(
        self,
        store: Store,
        model: str,
        dim: int,
        index_path: Path | None,
        flat_max: int = 100_000,
        aggregate: str = "max",
        index_params: dict[str, Any] | None = None,
        checkpoint_on_delete: bool = True,
        replay_rebuild_fraction: float = 0.5,
    ) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.store = store
        self.model = model
        self.dim = dim
        self.index_path = Path(index_path) if index_path is not None else None
        self.flat_max = flat_max
        self.aggregate = aggregate
        # Deleted vectors must not linger in the persisted index until the next periodic save.
        self.checkpoint_on_delete = checkpoint_on_delete
        # Replaying most of the gallery is slower than rebuilding it (and skips kind choice).
        self.replay_rebuild_fraction = replay_rebuild_fraction
        self._index_params = dict(index_params or {})
        self._index = self._new_index()
        self._watermark = 0
        self._saved_watermark = -1
        self._last_checkpoint_at = 0.0
        self._file_key = ""  # id of the key that sealed the index file on disk ("" plaintext)
        self._ready = False
        self._lock = _RWLock()
        self._save_lock = threading.Lock()  # one checkpoint writes the file at a time
        # Changes a rebuild's snapshot already held beyond its settled position (a shared
        # store, where later transactions can commit first): replay skips them once.
        self._ahead: set[tuple[int, str]] = set()
        self._removed = False  # a replay removed vectors: sync() checkpoints them away
        # Set by a node that follows a shared store (follower.py): False while the replica
        # is too far behind to answer a 1:N search.
        self.fresh: Callable[[], bool] | None = None
        self._checked: GalleryStats | None = None  # what the last check() found

    @property
    def _tag(self) -> str:
        return f"{self.store.store_id}/{self.model}"

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, flat_max=self.flat_max, **self._index_params)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def index(self) -> VectorIndex:
        return self._index

    @property
    def watermark(self) -> int:
        return self._watermark

    def open(self) -> None:
        """Load the persisted index and replay forward, or rebuild; then check consistency."""
        t0 = time.perf_counter()
        with self._lock.write():
            how = self._load_or_rebuild_locked()
            count = self.store.count_templates(self.model)
            if self._wrong_kind(count):
                log.info(
                    "index kind %s does not suit %d templates; rebuilding", self._index.kind, count
                )
                self._rebuild_locked()
                how = "rebuilt (kind by size)"
            if self._index.ntotal != self.store.count_templates(self.model):
                self._catch_up_locked()  # a write may have landed since the count
            if self._index.ntotal != self.store.count_templates(self.model):
                log.warning(
                    "index holds %d vectors, store %d; rebuilding",
                    self._index.ntotal,
                    self.store.count_templates(self.model),
                )
                self._rebuild_locked()
                how = "rebuilt (inconsistent)"
            self._ready = True
        if self._file_unsealed():
            # A plaintext file (release 0.1.0), or one sealed with a key being retired.
            log.info("index file is not sealed with the current key; rewriting it")
            self.checkpoint(force=True)
        log.info(
            "gallery %s ready: %s, %s index, %d vectors, watermark %d, %.2fs",
            self.model,
            how,
            self._index.kind,
            self._index.ntotal,
            self._watermark,
            time.perf_counter() - t0,
        )

    def _load_or_rebuild_locked(self) -> str:
        loaded = None
        if self.index_path is not None:
            files.tighten(self.index_path)  # written 0644 by release 0.1.0
            remove_stale_temps(self.index_path)
            loaded = VectorIndex.load(
                self.index_path,
                cipher=self.store.cipher,
                flat_max=self.flat_max,
                **self._index_params,
            )
        if loaded is None:
            self._rebuild_locked()
            return "rebuilt (no usable index file)"
        index, watermark = loaded
        self._file_key = index.sealed_with
        seq = self.store.current_seq()
        if index.dim != self.dim:
            log.warning("index file has dim %d, model %d; rebuilding", index.dim, self.dim)
            self._rebuild_locked()
            return "rebuilt (dimension changed)"
        if index.tag != self._tag:
            log.warning("index file was built from %r, not %r; rebuilding", index.tag, self._tag)
            self._rebuild_locked()
            return "rebuilt (other store or model)"
        if watermark > seq:
            # The store was restored or replaced: the index reflects writes it no longer has.
            log.warning("index watermark %d is ahead of the store (%d); rebuilding", watermark, seq)
            self._rebuild_locked()
            return "rebuilt (index ahead of store)"
        self._index, self._watermark = index, watermark
        self._saved_watermark = watermark
        replayed = self._catch_up_locked()
        return f"loaded at {watermark}, replayed {replayed} changes"

    def _file_unsealed(self) -> bool:
        cipher = self.store.cipher
        if not cipher.encrypted or self.index_path is None or not self.index_path.exists():
            return False
        return self._file_key != cipher.primary_id

    def _wrong_kind(self, count: int) -> bool:
        """Kind by size, with hysteresis so a gallery near flat_max does not flip-flop."""
        if self._index.kind == FLAT:
            return count > self.flat_max
        if count < self.flat_max // 2 or self._index.kind != self._index.approx:
            return True  # too small, or saved by a build with another approximate kind
        # IVF trained for a much smaller (or larger) gallery has badly sized lists.
        nlist = self._index.nlist
        wanted = self._index.ivf_nlist or default_nlist(count)
        return nlist * 4 <= wanted or wanted * 4 <= nlist

    def rebuild(self) -> None:
        """Rebuild from the store now (kind chosen by size)."""
        with self._lock.write():
            self._rebuild_locked()

    def _rebuild_locked(self) -> None:
        # One read snapshot: the seq and the templates agree even while writers commit.
        with self.store.snapshot():
            seq = self.store.current_seq()
            chunks = list(self.store.iter_templates(self.model))
            # Visible but not yet settled: already in `chunks`, and replayed after `seq`.
            ahead = self.store.changes_since(seq, self.model, settled_only=False)
        if chunks:
            labels = np.concatenate([c[0] for c in chunks])
            vectors = np.concatenate([c[1] for c in chunks])
        else:
            labels, vectors = np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        index = self._new_index()
        index.rebuild(labels, vectors)
        self._index, self._watermark = index, seq
        self._ahead = {(ch.label, ch.op) for ch in ahead}
        self._saved_watermark = -1
        self._catch_up_locked()

    def _catch_up_locked(self) -> int:
        """Apply the store's changes after the watermark, in seq order. Returns how many."""
        changes = self.store.changes_since(self._watermark, self.model)
        if not changes:
            return 0
        big = max(10_000, int(self._index.ntotal * self.replay_rebuild_fraction))
        if len(changes) > big:
            log.info("%d changes to replay; rebuilding instead", len(changes))
            self._rebuild_locked()
            # The rebuilt index left the removed vectors out: the file must lose them too.
            self._removed = self._removed or any(ch.op == "remove" for ch in changes)
            return len(changes)
        # Labels are never reused, so each has at most one add and one remove: its last op
        # says whether it belongs in the index.
        final: dict[int, str] = {}
        for ch in changes:
            if (ch.label, ch.op) in self._ahead:  # the rebuild already applied it
                self._ahead.discard((ch.label, ch.op))
                continue
            final[ch.label] = ch.op
        removes = [label for label, op in final.items() if op == "remove"]
        adds = [label for label, op in final.items() if op == "add"]
        if removes:
            self._index.remove(removes)
            self._removed = True
        if adds:
            # Rows removed since are skipped here; their removal is a later change.
            labels, vectors = self.store.vectors_for_labels(adds)
            if len(labels):
                self._index.add(labels, vectors)
        self._watermark = changes[-1].seq
        return len(changes)

    def checkpoint(self, force: bool = False) -> bool:
        """Save the index with the watermark it reflects. False if nothing needed saving."""
        if self.index_path is None or not self._ready:
            return False
        with self._save_lock, self._lock.read():  # searches continue; mutation waits
            if not force and self._watermark == self._saved_watermark:
                return False
            if self._ahead:
                return False  # the file could not say which later changes it holds
            t0 = time.perf_counter()
            cipher = self.store.cipher
            self._index.save(self.index_path, self._watermark, tag=self._tag, cipher=cipher)
            self._saved_watermark = self._watermark
            self._file_key = getattr(cipher, "primary_id", "") if cipher.encrypted else ""
            self._last_checkpoint_at = time.time()
        log.info(
            "index checkpoint at seq %d (%d vectors) in %.2fs",
            self._saved_watermark,
            self._index.ntotal,
            time.perf_counter() - t0,
        )
        return True

    def close(self, close_store: bool = True) -> None:
        """Final checkpoint on graceful stop; the gallery owns the store it was given."""
        try:
            self.checkpoint()
        finally:
            self._ready = False
            if close_store:
                self.store.close()

    # --- writes -------------------------------------------------------------------------------

    def _unit_rows(self, vectors: np.ndarray, field: str) -> np.ndarray:
        x = np.array(vectors, dtype=np.float32, copy=True)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] == 0:
            raise InvalidArgument(
                f"expected embeddings of shape (N, {self.dim}), got {np.shape(vectors)}",
                field=field,
            )
        if not np.all(np.isfinite(x)):
            raise InvalidArgument("embedding is not finite", field=field)
        if not is_unit(x):
            # The embedder normalises, once; anything else is a caller's bug, not ours to fix.
            raise InvalidArgument("embeddings must be L2-normalised (unit norm)", field=field)
        return x

    def sync(self) -> int:
        """Replay the store's settled changes into the index; returns how many. A replay
        that removed vectors (this node's deletions or another node's) checkpoints them out
        of the index file at once."""
        if not self._ready:  # before open() the store alone is written; open() replays it
            return 0
        with self._lock.write():
            applied = self._catch_up_locked()
            removed, self._removed = self._removed, False
        if removed:
            self._after_delete()
        return applied

    def enroll(
        self,
        identity_id: str,
        vectors: np.ndarray,
        source: str = "",
        quality: float = 0.0,
        audit: AuditEntry | None = None,
    ) -> list[TemplateRow]:
        """Store first (the source of truth, with its audit record), then the index."""
        x = self._unit_rows(vectors, "vectors")
        rows = self.store.add_templates(identity_id, x, self.model, source, quality, audit)
        self.sync()
        return rows

    def remove_template(self, identity_id: str, label: int, audit: AuditEntry | None = None) -> int:
        remaining = self.store.remove_template(identity_id, label, audit)
        self.sync()
        return remaining

    def delete_identity(self, identity_id: str, audit: AuditEntry | None = None) -> DeleteCounts:
        counts = self.store.delete_identity(identity_id, audit)
        self.sync()
        return counts

    def _after_delete(self) -> None:
        if self.checkpoint_on_delete:
            try:
                self.checkpoint()
            except OSError as exc:  # the store delete stands; the next checkpoint retries
                log.error("checkpoint after delete failed: %s", exc)

    # --- reads --------------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self._ready:
            raise FailedPrecondition("face index is not loaded yet", reason="INDEX_NOT_READY")

    def identify(
        self, vector: np.ndarray, top_k: int, owners: dict[int, str | None] | None = None
    ) -> list[Match]:
        """Best identities first; an identity's score aggregates its retrieved templates.

        `owners` (label -> identity, None for a deleted row) is a cache the caller keeps for
        several searches of one request: labels it holds are not asked of the store again."""
        self._require_ready()
        if self.fresh is not None and not self.fresh():
            raise Unavailable(
                "this node's face index is behind the shared store; retry, or ask another node",
                reason="REPLICA_LAGGING",
            )
        if top_k <= 0:
            return []
        q = self._unit_rows(vector, "embedding")[:1]
        k = top_k * 4 + 8  # several templates per identity: over-fetch, then group
        with self._lock.read():
            scores, labels = self._index.search(q, k)
        hits = [(int(lb), float(s)) for lb, s in zip(labels[0], scores[0], strict=True) if lb >= 0]
        # Labels whose rows were deleted since the search are dropped here.
        known = {} if owners is None else owners
        wanted = [lb for lb, _ in hits if lb not in known]
        if wanted:
            found = self.store.identity_for_labels(wanted)
            known.update({lb: found.get(lb) for lb in wanted})
        per: dict[str, list[tuple[float, int]]] = {}
        for label, score in hits:
            owner = known.get(label)
            if owner is not None:
                per.setdefault(owner, []).append((score, label))
        matches = [
            Match(owner, _aggregate([s for s, _ in found], self.aggregate), found[0][1])
            for owner, found in per.items()
        ]
        matches.sort(key=lambda m: (-m.score, m.identity_id))
        return matches[:top_k]

    def templates_for(self, identity_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Each identity's enrolled vectors (one row each), all in one store query; an identity
        without an enrolled face (or unknown) is absent."""
        found = self.store.templates_for(identity_ids, self.model)
        return {
            i: np.stack([r.vector for r in rows if r.vector is not None]).astype(np.float32)
            for i, rows in found.items()
        }

    def score_against(self, templates: np.ndarray, vector: np.ndarray) -> float:
        """Exact cosine of a probe against enrolled vectors, aggregated as in identify."""
        q = self._unit_rows(vector, "embedding")[0]
        return _aggregate(sorted((templates @ q).tolist(), reverse=True), self.aggregate)

    def score(self, identity_id: str, vector: np.ndarray) -> tuple[float, int] | None:
        """(aggregated score, enrolled faces) of a probe against one identity, in one store
        query; None when it has no enrolled face (or is unknown)."""
        self._unit_rows(vector, "embedding")
        templates = self.templates_for((identity_id,)).get(identity_id)
        if templates is None:
            return None
        return self.score_against(templates, vector), len(templates)

    def verify(self, identity_id: str, vector: np.ndarray) -> float:
        """Exact cosine against the identity's stored templates (aggregated as in identify)."""
        scored = self.score(identity_id, vector)
        if scored is None:
            self.store.get_identity(identity_id)  # NotFound for an unknown identity
            raise FailedPrecondition(
                f"identity {identity_id} has no enrolled face",
                field="identity_id",
                reason="NO_TEMPLATES",
            )
        return scored[0]

    def check(self) -> GalleryStats:
        """Compares the index with the store (every label of both: O(N), so the checkpoint
        thread runs it, never a request) and reports what it found before any repair; then
        repairs (replays the log, or rebuilds), logging it. `stats` reports it after."""
        with self._lock.read():
            kind, ntotal = self._index.kind, self._index.ntotal
            nprobe, nlist, watermark = self._index.nprobe, self._index.nlist, self._watermark
            index_labels = self._index.labels()
            # The store as of the watermark: writes after it are not in the index yet.
            with self.store.snapshot():
                store_labels = self.store.labels_for_model(self.model)
                later = self.store.changes_since(watermark, self.model, settled_only=False)
                store_seq = self.store.current_seq()
            later = [ch for ch in later if (ch.label, ch.op) not in self._ahead]
        expected = _labels_at_watermark(store_labels, later)
        orphans = np.setdiff1d(index_labels, expected).size
        missing = np.setdiff1d(expected, index_labels).size
        consistent = orphans == 0 and missing == 0 and index_labels.size == expected.size
        if not consistent:
            log.error(
                "index and store disagree at watermark %d: %d orphan vectors, %d missing;"
                " rebuilding from the store",
                watermark,
                orphans,
                missing,
            )
            self.rebuild()
        elif later:
            self.sync()
        found = GalleryStats(
            model=self.model,
            dim=self.dim,
            ready=self._ready,
            kind=kind,
            ntotal=ntotal,
            store_templates=len(store_labels),
            identities=self.store.count_identities(),
            watermark=watermark,
            store_seq=store_seq,
            nprobe=nprobe,
            nlist=nlist,
            last_checkpoint_at=self._last_checkpoint_at,
            # The same label sets, not just the same counts: an orphan vector and a missing
            # one would cancel out in a count.
            consistent=consistent,
            orphan_vectors=orphans,
            missing_vectors=missing,
            checked_at=time.time(),
        )
        self._checked = found
        return found

    def stats(self) -> GalleryStats:
        """Reads only: the index's own figures, the store's counts, and what the last check
        found (consistent is False until a check has run). Never repairs."""
        with self._lock.read():
            kind, ntotal = self._index.kind, self._index.ntotal
            nprobe, nlist, watermark = self._index.nprobe, self._index.nlist, self._watermark
        last = self._checked
        return GalleryStats(
            model=self.model,
            dim=self.dim,
            ready=self._ready,
            kind=kind,
            ntotal=ntotal,
            store_templates=self.store.count_templates(self.model),
            identities=self.store.count_identities(),
            watermark=watermark,
            store_seq=self.store.current_seq(),
            nprobe=nprobe,
            nlist=nlist,
            last_checkpoint_at=self._last_checkpoint_at,
            consistent=last is not None and last.consistent,
            orphan_vectors=last.orphan_vectors if last is not None else 0,
            missing_vectors=last.missing_vectors if last is not None else 0,
            checked_at=last.checked_at if last is not None else 0.0,
        )


def _labels_at_watermark(store_labels: np.ndarray, later: list[Change]) -> np.ndarray:
    """The labels the store held at the watermark, from today's labels and the changes since.

    Labels are never reused, so a label's first change after the watermark says whether it
    was there: an 'add' means not yet, a 'remove' means it was.
    """
    first: dict[int, str] = {}
    for ch in later:
        first.setdefault(ch.label, ch.op)
    added = np.fromiter((lb for lb, op in first.items() if op == "add"), np.int64)
    removed = np.fromiter((lb for lb, op in first.items() if op == "remove"), np.int64)
    return np.union1d(np.setdiff1d(store_labels, added), removed)
