"""Restart: rebuild one vector index of a tenant so that it holds exactly what Redis holds.

Redis's id set of the index's kind (``ll:{t}:ids`` or ``ll:{t}:text_ids``) is the
truth: entry ids are never reused, and an entry leaves that set in the same
transaction that deletes it (merges, retention, replacing writes). So the rebuild
is a reconciliation by id:

1. load the last snapshot, unless its manifest names another Redis epoch (the data
   it indexed is gone: a wiped or replaced Redis starts a new epoch);
2. remove the snapshot's ids that Redis no longer has;
3. check one vector against Redis (the largest id both hold), in case ids were
   handed out again by a Redis restored from an older backup;
4. add Redis's ids the snapshot lacks, read a page at a time, in id order.

The result holds Redis's ids and no others, and every vector it took from the
snapshot is the one Redis holds. Reading the id set costs ~16 bytes per entry;
vectors are read only for what the snapshot lacks. A snapshot's trained IVF is
kept as it is, so a restart from a snapshot searches exactly as before it.

`reconcile` is the same walk on a live index: a replayed segment calls it to
repair an index that missed a write's adds or removes (an attempt that failed
after EXEC).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory_store.config import MemoryConfig
from memory_store.records import IndexEntry, IndexKind
from memory_store.redis_tier import RedisTier
from memory_store.vector_index import VectorIndex

log = logging.getLogger(__name__)

# Entries per FAISS add while rebuilding: large enough to amortise the call, small enough to stream.
_REBUILD_CHUNK = 4096


@dataclass(frozen=True)
class Rebuilt:
    """A rebuilt index (None when Redis holds no entry for it), with where its vectors came from."""

    index: VectorIndex | None
    from_snapshot: int
    from_redis: int
    removed: int


def new_index(dim: int, config: MemoryConfig) -> VectorIndex:
    return VectorIndex(dim, ivf_min_vectors=config.ivf_min_vectors, nprobe=config.ivf_nprobe)


def rebuild_index(tier: RedisTier, tenant_id: str, kind: IndexKind, snapshot_dir: Path | None) -> Rebuilt:
    """The tenant's ``kind`` index: its snapshot in ``snapshot_dir`` (if any and trusted), reconciled with Redis."""
    config = tier.config
    index = None
    if snapshot_dir is not None:
        index = VectorIndex.load(snapshot_dir, ivf_min_vectors=config.ivf_min_vectors, nprobe=config.ivf_nprobe)
    if index is not None and index.manifest.get("epoch") != tier.epoch(tenant_id):
        log.warning("%s FAISS snapshot of tenant %s does not match Redis (epoch %s, Redis has %s); rebuilding from "
                    "Redis", kind, tenant_id, index.manifest.get("epoch"), tier.epoch(tenant_id))
        index = None
    stored = tier.id_set(tenant_id, kind)
    from_snapshot = removed = 0
    if index is not None:
        removed = index.remove(np.setdiff1d(index.ids(), np.fromiter(stored, np.int64, len(stored))))
        if not _spot_check(tier, tenant_id, kind, index, stored):
            index, removed = None, 0
        else:
            from_snapshot = len(index)
    added = 0
    for chunk in _chunks(_missing(tier, tenant_id, kind, index, stored), _REBUILD_CHUNK):
        if index is None:
            index = new_index(len(chunk[0].embedding), config)
        added += add_entries(index, chunk)
    return Rebuilt(index, from_snapshot, added, removed)


def reconcile(tier: RedisTier, tenant_id: str, kind: IndexKind, index: VectorIndex) -> tuple[int, int]:
    """Make a live index hold exactly Redis's ids of its kind; (added, removed)."""
    stored = tier.id_set(tenant_id, kind)
    removed = index.remove(np.setdiff1d(index.ids(), np.fromiter(stored, np.int64, len(stored))))
    added = sum(add_entries(index, chunk)
                for chunk in _chunks(_missing(tier, tenant_id, kind, index, stored), _REBUILD_CHUNK))
    return added, removed


def add_entries(index: VectorIndex, entries: Sequence[IndexEntry]) -> int:
    """Add entries read from Redis; returns how many were not in the index yet."""
    if not entries:
        return 0
    return index.add([e.id for e in entries], np.stack([e.embedding for e in entries]),
                     [e.stream_id for e in entries], [e.wallclock for e in entries])


def _missing(tier: RedisTier, tenant_id: str, kind: IndexKind, index: VectorIndex | None,
             stored: dict[int, str]) -> Iterator[IndexEntry]:
    have = set(index.ids().tolist()) if index is not None else set()
    wanted = [i for i in sorted(stored) if i not in have]
    for start in range(0, len(wanted), tier.page_size):
        yield from tier.index_entries(tenant_id, [stored[i] for i in wanted[start : start + tier.page_size]], kind)


def _spot_check(tier: RedisTier, tenant_id: str, kind: IndexKind, index: VectorIndex, stored: dict[int, str]) -> bool:
    common = index.ids()
    if not len(common):
        return True
    newest = int(common[-1])
    (entry,) = tier.index_entries(tenant_id, [stored[newest]], kind)
    if np.allclose(entry.embedding / np.linalg.norm(entry.embedding), index.vector(newest), atol=1e-5):
        return True
    log.warning("%s FAISS snapshot of tenant %s does not match Redis at id %d; rebuilding from Redis", kind,
                tenant_id, newest)
    return False


def _chunks(entries: Iterable[IndexEntry], size: int) -> Iterator[list[IndexEntry]]:
    chunk: list[IndexEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
