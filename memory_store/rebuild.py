"""Restart: rebuild one vector index of a tenant so that it holds exactly what Redis holds.

Two steps: load the index's last snapshot if Redis confirms it, then add every
frame of the index's id set in Redis past the snapshot's *covered* id: the largest
id up to which the snapshot lacks nothing Redis has. Adds skip ids already
present, so the result is the snapshot's ids plus Redis's ids past covered, which
is all of Redis's ids and no more (a snapshot only ever holds durable frames).

How covered is found depends on the id set (both are described in `redis_tier`):
- visual: every frame is in ``ll:{t}:ids`` and ids are dense from 1, so the index
  alone knows: covered is the end of its gap-free prefix (`VectorIndex.covered_id`).
- text: only frames with a text embedding are in ``ll:{t}:text_ids``, so a missing id
  may just be a frame without text. Covered is the largest id c of the snapshot for
  which Redis counts as many text ids <= c as the snapshot holds: the snapshot's ids
  are a subset of Redis's, so equal counts mean none is missing. Once an id is
  missing it is missing below every larger c, so the test holds for a prefix of
  the snapshot's sorted ids and a binary search finds c in log2(n) ZCOUNTs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory_store.records import IndexEntry, IndexKind
from memory_store.redis_tier import RedisTier
from memory_store.vector_index import VectorIndex

log = logging.getLogger(__name__)

# Frames per FAISS add while rebuilding: large enough to amortise the call, small enough to stream.
_REBUILD_CHUNK = 4096


@dataclass(frozen=True)
class Rebuilt:
    """A rebuilt index (None when Redis holds no frame for it), with where its vectors came from."""

    index: VectorIndex | None
    from_snapshot: int
    from_redis: int
    after_id: int


def rebuild_index(tier: RedisTier, tenant_id: str, kind: IndexKind, snapshot_dir: Path | None) -> Rebuilt:
    """The tenant's ``kind`` index: its snapshot in ``snapshot_dir`` (if any and trusted), caught up from Redis."""
    index, after = _trusted_snapshot(tier, tenant_id, kind, snapshot_dir) if snapshot_dir is not None else (None, 0)
    from_snapshot = len(index) if index is not None else 0
    added = 0
    for chunk in _chunks(tier.frames_since(tenant_id, after, kind), _REBUILD_CHUNK):
        if index is None:
            index = VectorIndex(len(chunk[0].embedding))
        added += add_entries(index, chunk)
    return Rebuilt(index, from_snapshot, added, after)


def add_entries(index: VectorIndex, entries: Sequence[IndexEntry]) -> int:
    """Add frames read from Redis; returns how many were not in the index yet."""
    if not entries:
        return 0
    return index.add([e.id for e in entries], np.stack([e.embedding for e in entries]),
                     [e.stream_id for e in entries], [e.wallclock for e in entries])


def _trusted_snapshot(tier: RedisTier, tenant_id: str, kind: IndexKind,
                      directory: Path) -> tuple[VectorIndex | None, int]:
    """The snapshot and its covered id, or (None, 0) when there is none or Redis disagrees with it."""
    index = VectorIndex.load(directory)
    if index is None:
        return None, 0
    covered = index.covered_id() if kind == "visual" else _counted_covered_id(tier, tenant_id, index.ids())
    if covered == 0:
        # Nothing of it can be confirmed, and the catch-up reads every frame anyway.
        return None, 0
    # Ids are never reused while Redis keeps its data. A Redis that lost its data since (a wiped
    # volume, a restart without AOF) has no frame under that id, or another frame (or text) there.
    (frame_key,) = tier.frame_keys_for_ids(tenant_id, [covered])
    stored = tier.index_entries(tenant_id, [frame_key], kind) if frame_key is not None else []
    if not stored or not np.allclose(stored[0].embedding / np.linalg.norm(stored[0].embedding),
                                     index.vector(covered), atol=1e-5):
        log.warning("%s FAISS snapshot of tenant %s does not match Redis at id %d; rebuilding from Redis", kind,
                    tenant_id, covered)
        return None, 0
    return index, covered


def _counted_covered_id(tier: RedisTier, tenant_id: str, ids: np.ndarray) -> int:
    """Covered id of a text snapshot holding ``ids`` (ascending), found by counting in Redis (module docstring)."""
    # Invariant: the snapshot lacks no text id of Redis's up to ids[lo - 1] (if lo > 0), and lacks one up to ids[hi]
    # (if hi < len(ids)).
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if tier.frame_count_upto(tenant_id, "text", int(ids[mid])) == mid + 1:
            lo = mid + 1
        else:
            hi = mid
    return int(ids[lo - 1]) if lo else 0


def _chunks(entries: Iterable[IndexEntry], size: int) -> Iterator[list[IndexEntry]]:
    chunk: list[IndexEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
