"""One tenant's frame embeddings in FAISS, with exact stream and time filters.

The index is derived state: Redis holds every embedding, so a lost or corrupt
snapshot costs a rebuild, never data. Ids are the Redis index ids of the frames
(``ll:{t}:ids``), which are dense from 1: each is allocated in the same
transaction that writes its frame, and frames are never deleted. A snapshot
therefore names the id up to which it is complete (``covered_id``; not its
largest id, because concurrent writes can add id 5 before id 4), and a restart
reads from Redis only what lies past it.

A tenant's text index holds a subset of these ids (frames with on-screen text),
so its ids are not dense and ``covered_id`` is only a lower bound there; the
rebuild works out its covered point against Redis (``memory_store.rebuild``).

Ownership: one memory actor owns a tenant's index. It serves writes and queries
from several threads (a Ray actor with max_concurrency > 1), and FAISS is not
safe for a writer beside other readers or writers, so every access takes the lock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import faiss
import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors (cosine), filterable by stream and wallclock."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # Filter columns, row i describing the i-th vector added (FAISS's internal order).
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

    def __len__(self) -> int:
        with self._lock:
            return self._n

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
            return len(fresh)

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
            params = None
            scope = self._n
            if stream_ids is not None or t_from is not None or t_to is not None:
                selected = self._ids[: self._n][self._scope_mask(stream_ids, t_from, t_to)]
                scope = len(selected)
                # The selector must outlive the search: FAISS holds a raw pointer to it.
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(selected))
            if scope == 0 or k < 1:
                return []
            scores, labels = self._index.search(query, min(k, scope), params=params)
        return [(int(i), float(s)) for i, s in zip(labels[0], scores[0]) if i >= 0]

    def vector(self, frame_id: int) -> np.ndarray | None:
        """The stored (normalised) vector of an id, or None if absent."""
        with self._lock:
            if frame_id not in self._present:
                return None
            return self._index.reconstruct(int(frame_id))

    def ids(self) -> np.ndarray:
        """The ids in the index, ascending (a copy)."""
        with self._lock:
            return np.sort(self._ids[: self._n])

    def covered_id(self) -> int:
        """The largest id such that every id from 1 to it is in the index (see the module docstring)."""
        with self._lock:
            return _covered(self._ids[: self._n])

    def snapshot(self, directory: Path) -> Path:
        """Write the index to ``directory`` so that a crash at any moment leaves a loadable snapshot.

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
            max_id = int(ids.max()) if len(ids) else 0
            covered = _covered(ids)
            name = f"index-{max_id}-{len(ids)}.npz"
            _write_atomic(directory / name, lambda f: np.savez(f, faiss=data, ids=ids, streams=streams,
                                                               wallclocks=wallclocks, stream_names=names))
            manifest = {"file": name, "count": len(ids), "max_id": max_id, "covered_id": covered, "dim": self.dim,
                        "created_at": time.time()}
            _write_atomic(directory / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            for old in directory.glob("index-*.npz"):
                if old.name != name:
                    old.unlink()
        return directory / MANIFEST

    @classmethod
    def load(cls, directory: Path) -> VectorIndex | None:
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
            restored = cls._from_parts(manifest, index, **columns)
        except Exception as exc:  # any unreadable or inconsistent snapshot is rebuilt from Redis
            log.warning("ignoring FAISS snapshot in %s: %s: %s", directory, type(exc).__name__, exc)
            return None
        log.info("loaded FAISS snapshot %s: %d vectors, max id %d", manifest["file"], manifest["count"],
                 manifest["max_id"])
        return restored

    @classmethod
    def _from_parts(cls, manifest: dict, index: faiss.Index, ids: np.ndarray, streams: np.ndarray,
                    wallclocks: np.ndarray, stream_names: np.ndarray) -> VectorIndex:
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"expected IndexIDMap2, found {type(index).__name__}")
        count = int(manifest["count"])
        if not (index.ntotal == len(ids) == len(streams) == len(wallclocks) == count):
            raise ValueError(f"manifest says {count} vectors; index {index.ntotal}, columns {len(ids)}")
        if index.d != int(manifest["dim"]):
            raise ValueError(f"manifest says dim {manifest['dim']}, index has {index.d}")
        if not np.array_equal(faiss.vector_to_array(index.id_map), ids):
            raise ValueError("index ids differ from the id column")
        if count and (int(ids.max()) != int(manifest["max_id"]) or int(streams.max()) >= len(stream_names)):
            raise ValueError("max id or stream codes do not match the manifest")
        restored = cls(index.d)
        restored._index = index
        restored._stream_names = [str(s) for s in stream_names]
        restored._stream_codes = {s: i for i, s in enumerate(restored._stream_names)}
        restored._append_columns(ids, streams, wallclocks)
        return restored

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


def _covered(ids: np.ndarray) -> int:
    ids = np.sort(ids)
    gaps = np.flatnonzero(ids != np.arange(1, len(ids) + 1))
    return int(gaps[0]) if len(gaps) else len(ids)


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
