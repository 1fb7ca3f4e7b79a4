"""One tenant's index entries in FAISS, with exact stream and time filters.

The index is derived state: Redis holds every embedding, so a lost or corrupt
snapshot costs a rebuild, never data. Ids are the Redis index ids of the entries
(``ll:{t}:ids``): frames, event segments and merged entries. Each is allocated in
the transaction that writes its entry and never reused, and entries leave Redis
(merged, expired, replaced) in the transaction that removes their id, so a
restart reconciles a snapshot with Redis by id alone (``memory_store.rebuild``).

Index type follows size, deterministically: exact (``IndexIDMap2`` over a flat
inner-product index) while small; once it holds ``ivf_min_vectors`` vectors it is
rebuilt as IVF (``IndexIVFFlat``, sqrt(n) lists, trained on every vector in id
order with FAISS's fixed seed), retrained when it has grown 4x since, and turned
back into flat under half the threshold. IVF because entries are removed all the
time (merges, retention) and HNSW cannot remove. The same adds and removes thus
give the same index; a snapshot holds the trained index itself, so a restart from
it searches exactly as before. Searches scoped to streams or times probe every
list and stay exact; unscoped ones probe ``nprobe`` lists.

A snapshot is written atomically (data file, then a manifest renamed over the
old one) and its manifest records what it covers: the tenant's Redis ``epoch``
(`keys.epoch`: a snapshot of another Redis's data is refused) and the Kafka
offsets of the segments applied to it (per "topic:partition", the highest).

Ownership: one memory actor owns a tenant's index. It serves writes and queries
from several threads (a Ray actor with max_concurrency > 1), and FAISS is not
safe for a writer beside other readers or writers, so every access takes the lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import faiss
except ImportError as exc:  # the two FAISS builds are extras: exactly one must be chosen
    raise ImportError("FAISS is not installed: install livelens with the `cpu` extra (faiss-cpu, what `make setup` "
                      "does) or the `gpu` extra (faiss-gpu-cu12), e.g. pip install -e '.[cpu]'") from exc

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Grow the IVF's lists with the index: retrain once it holds this many times the vectors it was trained on.
_RETRAIN_GROWTH = 4


class VectorIndex:
    """Inner-product search over L2-normalised vectors (cosine), filterable by stream and wallclock.

    ivf_min_vectors: size at which the index turns into IVF (None: always flat).
    nprobe: lists an unscoped IVF search probes.
    """

    def __init__(self, dim: int, *, ivf_min_vectors: int | None = None, nprobe: int = 16):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.ivf_min_vectors = ivf_min_vectors
        self.nprobe = nprobe
        self._index: faiss.Index = _flat(dim)
        self._trained_on = 0  # vectors the IVF was trained on; 0 while flat
        # Filter columns, one row per vector, in the order added (removals compact them).
        # Capacity doubles, so n single-frame adds cost O(n), not O(n^2) copies.
        self._n = 0
        self._ids = np.empty(0, dtype=np.int64)
        self._streams = np.empty(0, dtype=np.int32)
        self._wallclocks = np.empty(0, dtype=np.float64)
        self._stream_names: list[str] = []
        self._stream_codes: dict[str, int] = {}
        self._present: set[int] = set()
        self._lock = threading.Lock()
        # Separate from _lock so that searches go on while a snapshot is being written.
        self._snapshot_lock = threading.Lock()
        # What the loaded snapshot's manifest said it covers (epoch, offsets); {} for a new index.
        self.manifest: dict[str, Any] = {}

    def __len__(self) -> int:
        with self._lock:
            return self._n

    @property
    def kind(self) -> str:
        return "ivf" if self._trained_on else "flat"

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, stream_ids: Sequence[str],
            wallclocks: Sequence[float] | np.ndarray) -> int:
        """Add vectors under their ids, skipping ids already present (replays are no-ops). Returns how many it added."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        wallclocks = np.asarray(wallclocks, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [n, {self.dim}], got {vectors.shape}")
        if not (len(ids) == len(vectors) == len(stream_ids) == len(wallclocks)):
            raise ValueError("ids, vectors, stream_ids and wallclocks need one entry per vector")
        with self._lock:
            _, first = np.unique(ids, return_index=True)
            fresh = np.array(sorted(i for i in first if int(ids[i]) not in self._present), dtype=np.int64)
            if len(fresh) == 0:
                return 0
            batch = np.ascontiguousarray(vectors[fresh])
            faiss.normalize_L2(batch)
            self._index.add_with_ids(batch, ids[fresh])
            self._append_columns(ids[fresh], [self._stream_code(stream_ids[i]) for i in fresh], wallclocks[fresh])
            self._fit_type()
            return len(fresh)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by id (merged, expired or replaced entries); absent ids are skipped. Returns how many went."""
        with self._lock:
            gone = np.array(sorted({int(i) for i in ids} & self._present), dtype=np.int64)
            if len(gone) == 0:
                return 0
            # An IVF's by-id map removes only by an explicit array; the flat id map takes either.
            self._index.remove_ids(faiss.IDSelectorArray(gone))
            keep = ~np.isin(self._ids[: self._n], gone)
            n = int(keep.sum())
            for column in (self._ids, self._streams, self._wallclocks):
                column[:n] = column[: self._n][keep]
            self._n = n
            self._present.difference_update(gone.tolist())
            self._fit_type()
            return len(gone)

    def search(self, vector: np.ndarray, k: int, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None) -> list[tuple[int, float]]:
        """The k best (id, cosine) pairs, best first, among vectors of ``stream_ids`` with wallclock in [t_from, t_to].

        Filters go into FAISS as an id selector, so the k results are the exact best
        within the scope rather than whatever of an unfiltered top-k survives.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1).copy()
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dim {query.shape[1]}, the index {self.dim}")
        faiss.normalize_L2(query)
        with self._lock:
            scope = self._n
            selector = None
            if stream_ids is not None or t_from is not None or t_to is not None:
                selected = self._ids[: self._n][self._scope_mask(stream_ids, t_from, t_to)]
                scope = len(selected)
                # The selector must outlive the search: FAISS holds a raw pointer to it.
                selector = faiss.IDSelectorBatch(selected)
            if scope == 0 or k < 1:
                return []
            if self._trained_on:
                # A scoped search probes every list: the scope may live in lists the query is far from.
                nprobe = self._index.nlist if selector is not None else min(self.nprobe, self._index.nlist)
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe) if selector is not None else \
                    faiss.SearchParametersIVF(nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, labels = self._index.search(query, min(k, scope), params=params)
        return [(int(i), float(s)) for i, s in zip(labels[0], scores[0]) if i >= 0]

    def vector(self, entry_id: int) -> np.ndarray | None:
        """The stored (normalised) vector of an id, or None if absent."""
        with self._lock:
            if entry_id not in self._present:
                return None
            return self._index.reconstruct(int(entry_id))

    def ids(self) -> np.ndarray:
        """The ids in the index, ascending (a copy)."""
        with self._lock:
            return np.sort(self._ids[: self._n])

    # -- index type ------------------------------------------------------------------------

    def _fit_type(self) -> None:
        """Convert between flat and IVF as the size asks (class docstring). Called with the lock held."""
        limit = self.ivf_min_vectors
        if limit is None:
            return
        if not self._trained_on and self._n >= limit:
            self._rebuild(ivf=True)
        elif self._trained_on and self._n < limit // 2:
            self._rebuild(ivf=False)
        elif self._trained_on and self._n >= _RETRAIN_GROWTH * self._trained_on:
            self._rebuild(ivf=True)

    def _rebuild(self, *, ivf: bool) -> None:
        started = time.monotonic()
        ids = np.sort(self._ids[: self._n])
        vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) else \
            np.empty((0, self.dim), np.float32)
        if ivf:
            # sqrt(n) lists, with the 39 training points per list FAISS's k-means asks for.
            nlist = max(1, min(int(math.sqrt(len(ids))), len(ids) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            # By-id reconstruction and removal need the direct map.
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            self._trained_on = len(ids)
        else:
            index = _flat(self.dim)
            self._trained_on = 0
        index.add_with_ids(vectors, ids)
        self._index = index
        log.info("index of %d vectors rebuilt as %s in %.2f s", len(ids), self.kind, time.monotonic() - started)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, directory: Path, *, epoch: str | None = None,
                 offsets: dict[str, int] | None = None) -> Path:
        """Write the index to ``directory`` so that a crash at any moment leaves a loadable snapshot.

        epoch: the tenant's Redis epoch; offsets: the Kafka offsets of the segments applied so far.
        Order: the data file under a new name, fsynced; then the manifest naming it,
        fsynced and renamed over the old one (the commit point); then older data files
        are removed. Until the rename the previous manifest and its data stay intact.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._snapshot_lock:
            with self._lock:
                # Copies, so the file is written without holding up searches and adds.
                data = faiss.serialize_index(self._index)
                ids = self._ids[: self._n].copy()
                streams = self._streams[: self._n].copy()
                wallclocks = self._wallclocks[: self._n].copy()
                names = np.array(self._stream_names, dtype=np.str_)
                trained_on = self._trained_on
            max_id = int(ids.max()) if len(ids) else 0
            name = f"index-{max_id}-{len(ids)}.npz"
            _write_atomic(directory / name, lambda f: np.savez(f, faiss=data, ids=ids, streams=streams,
                                                               wallclocks=wallclocks, stream_names=names))
            manifest = {"file": name, "count": len(ids), "max_id": max_id, "dim": self.dim,
                        "type": "ivf" if trained_on else "flat", "trained_on": trained_on, "epoch": epoch,
                        "offsets": dict(sorted((offsets or {}).items())), "created_at": time.time()}
            _write_atomic(directory / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            for old in directory.glob("index-*.npz"):
                if old.name != name:
                    old.unlink()
        return directory / MANIFEST

    @classmethod
    def load(cls, directory: Path, *, ivf_min_vectors: int | None = None, nprobe: int = 16) -> VectorIndex | None:
        """The snapshot in ``directory``, or None (logged) when there is none or it cannot be trusted."""
        manifest_path = Path(directory) / MANIFEST
        if not manifest_path.exists():
            log.info("no FAISS snapshot in %s", directory)
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            with np.load(Path(directory) / manifest["file"], allow_pickle=False) as npz:
                index = faiss.deserialize_index(npz["faiss"])  # already its concrete type
                columns = {name: npz[name] for name in ("ids", "streams", "wallclocks", "stream_names")}
            restored = cls._from_parts(manifest, index, ivf_min_vectors, nprobe, **columns)
        except Exception as exc:  # any unreadable or inconsistent snapshot is rebuilt from Redis
            log.warning("ignoring FAISS snapshot in %s: %s: %s", directory, type(exc).__name__, exc)
            return None
        log.info("loaded FAISS snapshot %s: %d vectors (%s), max id %d", manifest["file"], manifest["count"],
                 manifest.get("type", "flat"), manifest["max_id"])
        return restored

    @classmethod
    def _from_parts(cls, manifest: dict, index: faiss.Index, ivf_min_vectors: int | None, nprobe: int,
                    ids: np.ndarray, streams: np.ndarray, wallclocks: np.ndarray,
                    stream_names: np.ndarray) -> VectorIndex:
        ivf = manifest.get("type", "flat") == "ivf"
        expected = faiss.IndexIVFFlat if ivf else faiss.IndexIDMap2
        if not isinstance(index, expected):
            raise TypeError(f"expected {expected.__name__}, found {type(index).__name__}")
        count = int(manifest["count"])
        if not (index.ntotal == len(ids) == len(streams) == len(wallclocks) == count):
            raise ValueError(f"manifest says {count} vectors; index {index.ntotal}, columns {len(ids)}")
        if index.d != int(manifest["dim"]):
            raise ValueError(f"manifest says dim {manifest['dim']}, index has {index.d}")
        if not ivf and not np.array_equal(faiss.vector_to_array(index.id_map), ids):
            raise ValueError("index ids differ from the id column")
        if count and (int(ids.max()) != int(manifest["max_id"]) or int(streams.max()) >= len(stream_names)):
            raise ValueError("max id or stream codes do not match the manifest")
        restored = cls(index.d, ivf_min_vectors=ivf_min_vectors, nprobe=nprobe)
        restored._index = index
        restored._trained_on = int(manifest.get("trained_on", 0)) if ivf else 0
        restored._stream_names = [str(s) for s in stream_names]
        restored._stream_codes = {s: i for i, s in enumerate(restored._stream_names)}
        restored._append_columns(ids, streams, wallclocks)
        restored.manifest = {"epoch": manifest.get("epoch"), "offsets": manifest.get("offsets", {})}
        return restored

    # -- columns ---------------------------------------------------------------------------

    def _stream_code(self, stream_id: str) -> int:
        code = self._stream_codes.get(stream_id)
        if code is None:
            code = self._stream_codes[stream_id] = len(self._stream_names)
            self._stream_names.append(stream_id)
        return code

    def _append_columns(self, ids: np.ndarray, streams: Sequence[int] | np.ndarray, wallclocks: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > len(self._ids):
            capacity = max(need, 2 * len(self._ids), 1024)
            self._ids = _grown(self._ids, capacity, self._n)
            self._streams = _grown(self._streams, capacity, self._n)
            self._wallclocks = _grown(self._wallclocks, capacity, self._n)
        self._ids[self._n : need] = ids
        self._streams[self._n : need] = streams
        self._wallclocks[self._n : need] = wallclocks
        self._present.update(int(i) for i in ids)
        self._n = need

    def _scope_mask(self, stream_ids: Sequence[str] | None, t_from: float | None, t_to: float | None) -> np.ndarray:
        mask = np.ones(self._n, dtype=bool)
        if stream_ids is not None:
            codes = [self._stream_codes[s] for s in stream_ids if s in self._stream_codes]
            mask &= np.isin(self._streams[: self._n], codes)
        if t_from is not None:
            mask &= self._wallclocks[: self._n] >= t_from
        if t_to is not None:
            mask &= self._wallclocks[: self._n] <= t_to
        return mask


def _flat(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _grown(column: np.ndarray, capacity: int, used: int) -> np.ndarray:
    bigger = np.empty(capacity, dtype=column.dtype)
    bigger[:used] = column[:used]
    return bigger


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file so that ``path`` holds either its old content or all of the new, even across a power cut."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
