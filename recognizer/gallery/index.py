"""FAISS index derived from the store: inner product over L2-normalised float32, id-mapped.

Labels are the store's template labels (int64). The kind is chosen by size when the index is
(re)built: exact flat up to `flat_max` vectors, IVF above it. IVF is used rather than HNSW
because it can really remove ids (`remove_ids`), which "delete really deletes" needs; HNSW
could only hide them until a rebuild. The benchmark (benchmarks/index_bench.py) checks
recall against flat. The IVF kinds:

- "ivf_pqfs" (the default): 4-bit PQ fast-scan codes (dim/2 bytes a vector) find candidates,
  then exact float32 vectors re-rank them, so returned scores are exact cosines. The codes
  scan ~6x faster than float16 (1.7 vs 12 ms a query at 1M with the same lists probed),
  which buys probing 3/8 of the lists: templates are only ~0.6 alike, so an identity's
  siblings scatter over lists and a narrow probe misses the best one (recall@1 0.87 at 1M
  with 1/16 of the lists probed, 0.996 at 3/8). Costs the float32 copy in memory, like flat.
- "ivf_fp16": float16 vectors in the lists, half the memory of IVF-Flat, scores to ~1e-3.
- "ivf_flat": float32 vectors in the lists.

Persistence is one file: a small JSON header (watermark, kind, dim, the byte size of each
serialised section, one sha256 over them) followed by the sections: the index, and for
"ivf_pqfs" the exact vectors. It is written to a temp file, fsynced and renamed, so a crash
leaves either the old file or the new one; a file that fails its checksum is treated as
missing and the gallery rebuilds from the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from recognizer.store import files

log = logging.getLogger("recognizer.gallery.index")

FLAT = "flat"
IVF_FLAT = "ivf_flat"
IVF_FP16 = "ivf_fp16"
IVF_PQFS = "ivf_pqfs"
KINDS = (FLAT, IVF_FLAT, IVF_FP16, IVF_PQFS)
APPROXIMATE = (IVF_FLAT, IVF_FP16, IVF_PQFS)

_MAGIC = b"RECOGIDX"
_FORMAT = 2  # 2: a list of sections (1 had a single payload)
_SEALED = 3  # 3: format 2's sections, sealed in chunks with the template key
_FORMATS = (1, 2, _SEALED)
_HEADER = struct.Struct("<8sII")  # magic, format version, header JSON length
_CHUNK_LEN = struct.Struct("<I")
CHUNK_BYTES = 4 << 20  # plaintext per sealed chunk: bounds the extra memory of sealing


UNIT_TOLERANCE = 1e-3  # float32 embeddings normalised once upstream land well within this


def is_unit(x: np.ndarray) -> bool:
    """Every row has unit L2 norm, so inner product is cosine."""
    norms = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
    return bool(np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE))


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """A C-contiguous float32 (N, dim) copy of unit-norm rows (the embedder normalises)."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {np.shape(vectors)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("vectors contain NaN or infinity")
    if not is_unit(x):
        raise ValueError("vectors must be L2-normalised (unit norm)")
    return x


def _as_labels(labels: np.ndarray | list[int], n: int | None = None) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1))
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"{ids.shape[0]} labels for {n} vectors")
    return ids


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) lists, as a power of two: ~1k at 100k vectors, 4k at 1M."""
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(65_536, max(64, 2 ** round(math.log2(target)))))


def default_nprobe(nlist: int, ntotal: int, scan_budget: int = 65_536) -> int:
    """Lists per query so that about `scan_budget` vectors are scanned (~2 ms at 128-d on
    one core), as a power of two: 256 of 4096 lists at 1M, 512 of 1024 at 100k."""
    per_list = max(ntotal, 1) / max(nlist, 1)
    want = 2 ** round(math.log2(max(1.0, scan_budget / per_list)))
    return int(min(nlist, max(16, want)))


class VectorIndex:
    """Thread-compatible, not thread-safe: the Gallery serialises mutation against search."""

    def __init__(
        self,
        dim: int,
        flat_max: int = 100_000,
        hnsw_m: int = 32,
        ivf_nlist: int | None = None,
        nprobe: int | None = None,
        ef_search: int = 128,
        hnsw_coarse_above: int = 16_384,
        train_points_per_list: int = 64,
        scan_budget: int = 65_536,
        approx: str = IVF_PQFS,
        pqfs_probe_fraction: float = 0.375,
        refine_factor: int = 4,
        refine_min: int = 64,
    ) -> None:
        if approx not in APPROXIMATE:
            raise ValueError(f"approx must be one of {APPROXIMATE}, got {approx!r}")
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.flat_max = flat_max
        self.hnsw_m = hnsw_m  # M of the HNSW coarse quantizer, used for very large nlist
        self.ivf_nlist = ivf_nlist  # None: chosen from the size at build time
        self.hnsw_coarse_above = hnsw_coarse_above  # nlist above which flat coarse is too slow
        self.train_points_per_list = train_points_per_list
        self.scan_budget = scan_budget  # vectors scanned per query when nprobe is automatic
        self.approx = approx  # the kind chosen above flat_max
        # Share of lists an "ivf_pqfs" search probes when nprobe is automatic: its codes are
        # cheap to scan, and recall@1 is bounded by how many of the siblings' lists it sees.
        self.pqfs_probe_fraction = pqfs_probe_fraction
        # "ivf_pqfs" re-ranks max(refine_min, k * refine_factor) candidates exactly: 4-bit
        # codes can put the true best a few dozen places down.
        self.refine_factor = refine_factor
        self.refine_min = refine_min
        self._nprobe = nprobe
        self._ef_search = ef_search
        self.tag = ""  # set by load(): what the saved index was built from
        self.sealed_with = ""  # set by load(): the id of the key that sealed the file
        self._index: Any = self._new_flat()
        self._exact: Any | None = None  # "ivf_pqfs" only: float32 vectors for re-ranking

    # --- construction -------------------------------------------------------------------------

    def _new_flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _new_ivf(self, nlist: int, kind: str) -> Any:
        quantizer: Any
        index: Any
        if nlist > self.hnsw_coarse_above:
            # Assigning to tens of thousands of centroids by brute force would dominate.
            quantizer = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            quantizer.hnsw.efSearch = self._ef_search
        else:
            quantizer = faiss.IndexFlatIP(self.dim)
        if kind == IVF_PQFS:
            if self.dim % 8:
                raise ValueError(f"ivf_pqfs needs a dimension divisible by 8, not {self.dim}")
            # dim/4 sub-quantizers of 4 bits: fast-scan's SIMD layout; coarse enough to be
            # cheap, fine enough that the true neighbour stays among the re-ranked candidates.
            index = faiss.IndexIVFPQFastScan(
                quantizer, self.dim, nlist, self.dim // 4, 4, faiss.METRIC_INNER_PRODUCT
            )
        elif kind == IVF_FP16:
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                faiss.METRIC_INNER_PRODUCT,
            )  # fmt: skip
            index.by_residual = False  # fp16 is precise enough; residuals only cost time
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # The C++ index owns its quantizer, so it cannot be freed under it from Python.
        quantizer.this.disown()
        index.own_fields = True
        index.cp.spherical = True  # centroids on the unit sphere, like the data
        index.cp.niter = 10
        index.cp.max_points_per_centroid = self.train_points_per_list
        return index

    def wanted_kind(self, n: int) -> str:
        return FLAT if n <= self.flat_max else self.approx

    def rebuild(self, labels: np.ndarray, vectors: np.ndarray, kind: str | None = None) -> str:
        """Replace the contents; the kind is chosen by size unless forced. Returns the kind."""
        ids = _as_labels(labels)
        x = _as_matrix(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} labels for {x.shape[0]} vectors")
        kind = kind or self.wanted_kind(len(ids))
        if kind == FLAT:
            index = self._new_flat()
        elif kind in APPROXIMATE:
            nlist = self.ivf_nlist or default_nlist(len(ids))
            if len(ids) < nlist:
                raise ValueError(f"IVF with {nlist} lists needs at least {nlist} vectors")
            index = self._new_ivf(nlist, kind)
            index.train(x)
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        self._index = index
        self._exact = self._new_flat() if kind == IVF_PQFS else None
        self._add(ids, x)
        self._apply_tuning()  # the automatic nprobe depends on the size
        return kind

    # --- tuning -------------------------------------------------------------------------------

    def _ivf(self) -> Any | None:
        return faiss.extract_index_ivf(self._index) if self.kind != FLAT else None

    def _apply_tuning(self) -> None:
        ivf = self._ivf()
        if ivf is None:
            return
        if self.kind == IVF_PQFS:
            auto = max(1, math.ceil(ivf.nlist * self.pqfs_probe_fraction))
            # The gallery searches one probe at a time; fast-scan's one-query kernel (10) ran
            # ~25% faster there than the automatic choice, which suits batches (bench index).
            self._index.implem = 10
        else:
            auto = default_nprobe(ivf.nlist, ivf.ntotal, self.scan_budget)
        ivf.nprobe = min(ivf.nlist, self._nprobe or auto)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = self._ef_search

    @property
    def nprobe(self) -> int:
        ivf = self._ivf()
        return int(ivf.nprobe) if ivf is not None else 0

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = int(value)
        self._apply_tuning()

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = int(value)
        self._apply_tuning()

    @property
    def nlist(self) -> int:
        ivf = self._ivf()
        return int(ivf.nlist) if ivf is not None else 0

    # --- data ---------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return _kind_of(self._index)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, labels: np.ndarray | list[int], vectors: np.ndarray) -> None:
        x = _as_matrix(vectors, self.dim)
        self._add(_as_labels(labels, x.shape[0]), x)

    def _add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(x, ids)
            if self._exact is not None:
                self._exact.add_with_ids(x, ids)

    def remove(self, labels: np.ndarray | list[int]) -> int:
        ids = _as_labels(labels)
        if not len(ids):
            return 0
        selector = faiss.IDSelectorBatch(ids)
        if self._exact is not None:
            self._exact.remove_ids(selector)  # the float32 copy goes too
        return int(self._index.remove_ids(selector))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,k) float32, labels (N,k) int64); missing slots are -1 with score -inf."""
        q = _as_matrix(queries, self.dim)
        if k <= 0:
            raise ValueError("k must be positive")
        if self.ntotal == 0:
            return (
                np.full((q.shape[0], k), -np.inf, np.float32),
                np.full((q.shape[0], k), -1, np.int64),
            )
        if self._exact is not None:
            wanted = max(self.refine_min, k * self.refine_factor)
            _, candidates = self._index.search(q, min(self.ntotal, wanted))
            return _rerank(self._exact, q, np.asarray(candidates, np.int64), k)
        scores, labels = self._index.search(q, k)
        scores = np.asarray(scores, np.float32)
        scores[labels < 0] = -np.inf
        return scores, np.asarray(labels, np.int64)

    def labels(self) -> np.ndarray:
        """Every stored label (for consistency checks and tests)."""
        if self.kind == FLAT:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        ivf = self._ivf()
        assert ivf is not None  # not FLAT
        invlists = ivf.invlists
        parts = []
        for i in range(ivf.nlist):
            size = invlists.list_size(i)
            if size:
                ptr = invlists.get_ids(i)
                parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(i, ptr)
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _sections(self) -> list[np.ndarray]:
        parts = [self._index] if self._exact is None else [self._index, self._exact]
        return [faiss.serialize_index(p) for p in parts]

    def serialized_size(self) -> int:
        return sum(int(s.nbytes) for s in self._sections())

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Path, watermark: int, tag: str = "", cipher: Any = None) -> None:
        """Atomically write the index and the store seq it reflects (temp, fsync, rename).

        `tag` names what the index was built from (store and model); `load` returns it on
        the index so a file from another store or model is not replayed onto. With an
        encrypting `cipher` the sections are sealed chunk by chunk (format 3).
        """
        sections = self._sections()
        digest = hashlib.sha256()
        for section in sections:
            digest.update(section.data)
        header = {
            "watermark": int(watermark),
            "tag": tag,
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "sections": [int(s.nbytes) for s in sections],
            "sha256": digest.hexdigest(),
        }
        _write_file(Path(path), header, [s.data for s in sections], cipher)

    @classmethod
    def load(cls, path: Path, cipher: Any = None, **params: Any) -> tuple[VectorIndex, int] | None:
        """(index, watermark), or None if the file is missing, sealed with a key not held,
        or fails any check. `sealed_with` on the index names the key that sealed the file."""
        path = Path(path)
        try:
            read = _read_file(path, cipher)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("index file %s unreadable (%s); it will be rebuilt", path, exc)
            return None
        except Exception as exc:  # corrupt file of any shape: never fatal, rebuild instead
            log.warning("index file %s is corrupt (%s); it will be rebuilt", path, exc)
            return None
        header, body = read.header, read.body
        try:
            sizes = [int(n) for n in header.get("sections", [header.get("nbytes", -1)])]
            if len(body) != sum(sizes) or min(sizes) < 0:
                raise ValueError("truncated payload")
            if hashlib.sha256(body).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            offsets = np.cumsum([0, *sizes])
            parts = [
                faiss.deserialize_index(np.frombuffer(body[a:b], dtype=np.uint8))
                for a, b in itertools.pairwise(offsets)
            ]
            raw = parts[0]
            vi = cls(int(header["dim"]), **params)
            if raw.d != vi.dim or raw.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ValueError("dimension or metric does not match the header")
            if isinstance(raw, faiss.IndexIDMap2):
                vi._index = raw
            else:
                # deserialize_index already returns the concrete class; downcasting again
                # would make a second owner of the same C++ object.
                if _kind_of(raw) not in APPROXIMATE:
                    raise ValueError(f"unexpected index type {type(raw).__name__}")
                vi._index = raw
            if vi.kind == IVF_PQFS:
                if len(parts) != 2 or not isinstance(parts[1], faiss.IndexIDMap2):
                    raise ValueError("ivf_pqfs without its exact vectors")
                vi._exact = parts[1]
            elif len(parts) != 1:
                raise ValueError(f"{len(parts)} sections for kind {vi.kind}")
            if vi.kind != header["kind"] or vi.ntotal != int(header["ntotal"]):
                raise ValueError("contents do not match the header")
            if vi._exact is not None and vi._exact.ntotal != vi.ntotal:
                raise ValueError("exact vectors do not match the index")
            vi._apply_tuning()
            vi.tag = str(header.get("tag", ""))
            vi.sealed_with = read.sealed_with
            return vi, int(header["watermark"])
        except Exception as exc:  # corrupt file of any shape: never fatal, rebuild instead
            log.warning("index file %s is corrupt (%s); it will be rebuilt", path, exc)
            return None


@dataclass(frozen=True, slots=True)
class _Read:
    header: dict[str, Any]
    body: memoryview
    sealed_with: str  # key id, "" for a plaintext file


def _chunk_aad(header: bytes, i: int) -> bytes:
    # The header (watermark, tag, sizes, digest) is bound to every chunk, and so is its place.
    return b"recognizer.index.v1|" + hashlib.sha256(header).digest() + struct.pack("<Q", i)


def _chunks(parts: list[memoryview], size: int) -> Iterator[bytes]:
    """The concatenation of `parts`, `size` bytes at a time (without joining them)."""
    buf = bytearray()
    for part in parts:
        start = 0
        while start < len(part):
            take = min(size - len(buf), len(part) - start)
            buf += part[start : start + take]
            start += take
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def _write_file(path: Path, header: dict[str, Any], parts: list[memoryview], cipher: Any) -> None:
    """Write header + parts to a 0600 temp file (sealed if the cipher encrypts), fsync, rename."""
    sealed = bool(getattr(cipher, "encrypted", False))
    header = {k: v for k, v in header.items() if k != "sealed"}
    if sealed:
        header["sealed"] = {"key_id": cipher.primary_id, "chunk": CHUNK_BYTES}
    head = json.dumps(header).encode()
    files.private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with files.open_private(tmp) as f:
            f.write(_HEADER.pack(_MAGIC, _SEALED if sealed else _FORMAT, len(head)))
            f.write(head)
            if sealed:
                for i, chunk in enumerate(_chunks(parts, CHUNK_BYTES)):
                    blob = cipher.encrypt(chunk, _chunk_aad(head, i))
                    f.write(_CHUNK_LEN.pack(len(blob)))
                    f.write(blob)
            else:
                for part in parts:
                    f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _read_file(path: Path, cipher: Any) -> _Read:
    """Header and plaintext body of an index file; a sealed body is opened chunk by chunk
    into one buffer. Raises on anything malformed, or a key not held."""
    with open(path, "rb") as f:
        magic, version, hlen = _HEADER.unpack(f.read(_HEADER.size))
        if magic != _MAGIC or version not in _FORMATS:
            raise ValueError("bad magic or format version")
        head = f.read(hlen)
        header = json.loads(head)
        if version != _SEALED:
            return _Read(header, memoryview(f.read()), "")
        kid = str(header["sealed"]["key_id"])
        if cipher is None or cipher.key_id_of(_peek_prefix(f)) != kid:
            raise ValueError(f"sealed with key id {kid}, which is not held")
        total = sum(int(n) for n in header["sections"])
        body = np.empty(total, np.uint8)
        pos, i = 0, 0
        while pos < total:
            (n,) = _CHUNK_LEN.unpack(f.read(_CHUNK_LEN.size))
            plain = cipher.decrypt(f.read(n), _chunk_aad(head, i))
            if pos + len(plain) > total:
                raise ValueError("sealed body longer than its header says")
            body[pos : pos + len(plain)] = np.frombuffer(plain, np.uint8)
            pos, i = pos + len(plain), i + 1
        if f.read(1):
            raise ValueError("trailing bytes after the sealed body")
        return _Read(header, body.data, kid)


def _peek_prefix(f: BinaryIO) -> bytes:
    """The first chunk's magic and key id, leaving the file where it was."""
    at = f.tell()
    prefix = f.read(_CHUNK_LEN.size + 64)[_CHUNK_LEN.size :]
    f.seek(at)
    return prefix


def remove_stale_temps(path: Path) -> int:
    """Delete temp files of writers of `path` that died mid-write (call with no writer
    running, e.g. before the gallery opens). Returns how many."""
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return len(stale)


def reseal_file(path: Path, cipher: Any) -> bool:
    """Rewrite an index file sealed with the cipher's primary key (from plaintext or another
    key it holds). False if it already was, or there is no file."""
    remove_stale_temps(Path(path))
    try:
        read = _read_file(Path(path), cipher)
    except FileNotFoundError:
        return False
    if read.sealed_with == cipher.primary_id:
        return False
    _write_file(Path(path), read.header, [read.body], cipher)
    return True


def reseal_files(paths: Sequence[Path], cipher: Any) -> int:
    """Reseal each index file (reseal_file); how many were rewritten."""
    return sum(reseal_file(p, cipher) for p in paths)


def copy_file(src: Path, dest: Path, cipher: Any) -> None:
    """Copy an index file as a private file; with an encrypting cipher a file not sealed
    with its current key is sealed on the way (a backup never holds a plaintext index)."""
    if getattr(cipher, "encrypted", False):
        read = _read_file(Path(src), cipher)
        if read.sealed_with != cipher.primary_id:
            _write_file(Path(dest), read.header, [read.body], cipher)
            return
    with open(src, "rb") as f, files.open_private(Path(dest)) as out:
        shutil.copyfileobj(f, out, CHUNK_BYTES)
        out.flush()
        os.fsync(out.fileno())


def _rerank(
    exact: Any, q: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 scores of each row's candidates (by label, from `exact`), best k first."""
    scores = np.full((q.shape[0], k), -np.inf, np.float32)
    labels = np.full((q.shape[0], k), -1, np.int64)
    for i, row in enumerate(candidates):
        found = row[row >= 0]
        if not len(found):
            continue
        sims = exact.reconstruct_batch(found) @ q[i]
        best = np.argsort(-sims, kind="stable")[:k]
        scores[i, : len(best)] = sims[best]
        labels[i, : len(best)] = found[best]
    return scores, labels


def _kind_of(index: Any) -> str:
    if isinstance(index, faiss.IndexIDMap2):
        return FLAT
    if isinstance(index, faiss.IndexIVFFlat):
        return IVF_FLAT
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return IVF_FP16
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return IVF_PQFS
    return type(index).__name__


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
