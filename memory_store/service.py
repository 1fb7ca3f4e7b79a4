"""The memory service: Redis holds what is durable, FAISS finds it.

The order of a write is what keeps the two consistent:

1. Redis, one transaction per segment (`RedisTier.write_segment`). EXEC returning
   means durable (AOF ``appendfsync always``), so the caller may commit the
   segment's Kafka offsets once `write` returns.
2. FAISS, only after EXEC: a frame becomes searchable only once it is durable,
   and the index never holds a frame that Redis lacks. A crash between 1 and 2
   loses nothing: the restarted actor rebuilds from Redis, and a replay of the
   segment (same process, earlier add failed) re-adds its frames.
3. A snapshot every ``snapshot_every_frames`` frames per tenant. It only shortens
   the next rebuild; a failed or corrupt one costs a longer rebuild, no data.

On start (`rebuild`), for every tenant Redis knows: load its snapshot if Redis
confirms it, then add every frame Redis holds past the id the snapshot covers.
A restarted memory actor thus serves exactly what Redis holds.

Threads: the Ray actor serves several calls at once. Each tenant's `VectorIndex`
has its own lock; this class only guards its own dicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from memory_store.redis_tier import FrameRecord, IndexEntry, RedisTier, StreamInfo, WriteResult
from memory_store.vector_index import VectorIndex
from operators.frames import CompressedBatch, StageError
from pipelines.config import MemoryConfig

log = logging.getLogger(__name__)

# Frames per FAISS add while rebuilding: large enough to amortise the call, small enough to stream.
_REBUILD_CHUNK = 4096


@dataclass(frozen=True)
class Hit:
    """One retrieved frame. Times: ``t_*`` seconds from the stream's start, ``wallclock_*`` epoch seconds."""

    frame_key: str
    stream_id: str
    seq: int
    t_start: float
    t_end: float
    wallclock_start: float
    wallclock_end: float
    score: float
    thumbnail: str | None


class MemoryStore:
    """Write segments, search and read frames, for every tenant of one memory shard.

    index_dir: where FAISS snapshots go (one folder per tenant); None keeps the
        index in memory only, so every start reads all embeddings from Redis.
    owns_tenant: which tenants this shard serves when ``MemoryConfig.shards`` > 1
        (all tenants share one Redis; each shard indexes only its own). None: all.
    """

    def __init__(self, client: redis.Redis, config: MemoryConfig, *, index_dir: Path | None = None,
                 owns_tenant: Callable[[str], bool] | None = None):
        self.config = config
        self.tier = RedisTier(client, config)
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._owns = owns_tenant or (lambda tenant_id: True)
        self._indexes: dict[str, VectorIndex] = {}
        self._unsnapshotted: dict[str, int] = {}
        self._lock = threading.Lock()
        self.rebuild()

    # -- writing -------------------------------------------------------------------------------

    def write(self, batch: CompressedBatch) -> WriteResult | None:
        """Store a segment; None when it was already stored (a replay), which the source counts as such."""
        seg = batch.segment
        if not self._owns(seg.tenant_id):
            raise ValueError(f"tenant {seg.tenant_id} belongs to another memory shard")
        if batch.embedding.ndim != 2:
            raise StageError("bad_embedding", f"embedding must be [N, E], got {batch.embedding.shape}", stage="memory")
        # Checked before Redis: a vector FAISS cannot take must never become durable.
        index = self._index_for(seg.tenant_id, batch.embedding.shape[1])
        result = self.tier.write_segment(batch)
        if result is None:
            # Durable already. An earlier attempt may have failed between EXEC and the add below;
            # add skips ids it has, so re-adding the segment's frames repairs exactly that case.
            frame_keys = self.tier.segment_frame_keys(seg.tenant_id, seg.stream_id, seg.seq)
            repaired = self._add(index, self.tier.index_entries(seg.tenant_id, frame_keys))
            if repaired:
                log.warning("replay of %s/%s/%d indexed %d frames that were durable but not searchable",
                            seg.tenant_id, seg.stream_id, seg.seq, repaired)
                self._count_for_snapshot(seg.tenant_id, repaired)
            return None
        added = index.add(result.ids, batch.embedding, [seg.stream_id] * len(result.ids), result.wallclocks)
        self._count_for_snapshot(seg.tenant_id, added)
        return result

    def _index_for(self, tenant_id: str, dim: int) -> VectorIndex:
        with self._lock:
            index = self._indexes.get(tenant_id)
            if index is None:
                index = self._indexes[tenant_id] = VectorIndex(dim)
        if index.dim != dim:
            raise StageError("embedding_dim_mismatch",
                             f"tenant {tenant_id} indexes {index.dim}-dim embeddings; this segment has {dim}",
                             stage="memory")
        return index

    def _count_for_snapshot(self, tenant_id: str, added: int) -> None:
        if self.index_dir is None or added == 0:
            return
        with self._lock:
            pending = self._unsnapshotted.get(tenant_id, 0) + added
            due = pending >= self.config.snapshot_every_frames
            # Reset before writing, so concurrent writes do not start a second snapshot.
            self._unsnapshotted[tenant_id] = 0 if due else pending
        if due:
            self._snapshot(tenant_id)

    def _snapshot(self, tenant_id: str) -> None:
        with self._lock:
            index = self._indexes[tenant_id]
        started = time.monotonic()
        try:
            index.snapshot(self._snapshot_dir(tenant_id))
        except OSError:
            # The write itself is durable and indexed; without the snapshot the next start reads more from Redis.
            log.exception("FAISS snapshot of tenant %s failed", tenant_id)
            return
        log.info("FAISS snapshot of tenant %s: %d vectors in %.2f s", tenant_id, len(index),
                 time.monotonic() - started)

    def _snapshot_dir(self, tenant_id: str) -> Path:
        assert self.index_dir is not None
        # The prefix keeps every tenant id (".." included: it is a valid id) a plain folder name.
        return self.index_dir / f"tenant-{tenant_id}"

    # -- reading -------------------------------------------------------------------------------

    def search(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[Hit]:
        """The k frames most similar to ``vector`` within the scope, best first.

        stream_ids: None for every stream of the tenant. t_from / t_to: epoch seconds,
        inclusive, compared with a frame's start; None leaves that side open.
        """
        with self._lock:
            index = self._indexes.get(tenant_id)
        if index is None:
            return []
        found = index.search(vector, k, stream_ids=stream_ids, t_from=t_from, t_to=t_to)
        frame_keys = self.tier.frame_keys_for_ids(tenant_id, [frame_id for frame_id, _ in found])
        records = self.tier.frames(tenant_id, [key for key in frame_keys if key is not None], tokens=False)
        if len(records) != len(found) or None in records:
            raise LookupError(f"ids {[i for i, _ in found]} of tenant {tenant_id} are not all in Redis: restart "
                              "the memory actor to rebuild its index from what Redis holds")
        return [Hit(r.frame_key, r.stream_id, r.seq, r.pts_s, r.t_end_s, r.wallclock_start, r.wallclock_end, score,
                    r.thumbnail) for (_, score), r in zip(found, records)]

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None = None, n: int = 8) -> list[FrameRecord]:
        """The n newest frames by wallclock (None: of every stream), oldest first, tokens included while kept."""
        return self.tier.recent(tenant_id, stream_ids, n)

    def streams(self, tenant_id: str) -> list[StreamInfo]:
        return self.tier.streams(tenant_id)

    def frames(self, tenant_id: str, frame_keys: Sequence[str]) -> list[FrameRecord | None]:
        return self.tier.frames(tenant_id, frame_keys)

    def thumbnail(self, key: str) -> bytes | None:
        return self.tier.thumbnail(key)

    def stats(self) -> dict[str, Any]:
        """Frames Redis holds against vectors the indexes hold (this shard's tenants): equal when all is well."""
        tenants = self._tenants()
        with self._lock:
            sizes = {tenant: len(index) for tenant, index in self._indexes.items()}
        return {
            "tenants": len(tenants),
            "frames": sum(self.tier.frame_count(t) for t in tenants),
            "indexed": sum(sizes.values()),
            "index_sizes": sizes,
        }

    # -- restart -------------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Make every tenant's index hold exactly the frames Redis holds: snapshot (if trusted), then catch up.

        Runs in the constructor, before the actor serves anything; it replaces the
        indexes, so it must not run beside writes.
        """
        started = time.monotonic()
        indexes: dict[str, VectorIndex] = {}
        caught_up: dict[str, int] = {}
        for tenant in self._tenants():
            tenant_started = time.monotonic()
            index = self._trusted_snapshot(tenant)
            from_snapshot = len(index) if index is not None else 0
            after = index.covered_id() if index is not None else 0
            added = 0
            for chunk in _chunks(self.tier.frames_since(tenant, after), _REBUILD_CHUNK):
                if index is None:
                    index = VectorIndex(len(chunk[0].embedding))
                added += self._add(index, chunk)
            if index is not None:
                indexes[tenant] = index
                caught_up[tenant] = added
            log.info("tenant %s: %d frames from snapshot, %d from Redis (after id %d) in %.2f s", tenant,
                     from_snapshot, added, after, time.monotonic() - tenant_started)
        with self._lock:
            self._indexes = indexes
            self._unsnapshotted = {}
        log.info("rebuilt %d tenant indexes, %d frames, in %.2f s", len(indexes),
                 sum(len(i) for i in indexes.values()), time.monotonic() - started)
        # A long catch-up counts toward the next snapshot like any write, so the next start need not repeat it.
        for tenant, added in caught_up.items():
            self._count_for_snapshot(tenant, added)

    def _trusted_snapshot(self, tenant_id: str) -> VectorIndex | None:
        """The tenant's snapshot, unless Redis disagrees with it (for example Redis lost its data since)."""
        if self.index_dir is None:
            return None
        index = VectorIndex.load(self._snapshot_dir(tenant_id))
        if index is None:
            return None
        covered = index.covered_id()
        if covered == 0:
            return index
        # Ids are dense and never reused while Redis keeps its data. A Redis that lost its data since
        # (a wiped volume, a restart without AOF) has no frame under that id, or another frame there.
        (frame_key,) = self.tier.frame_keys_for_ids(tenant_id, [covered])
        stored = self.tier.index_entries(tenant_id, [frame_key])[0].embedding if frame_key else None
        if stored is None or not np.allclose(stored / np.linalg.norm(stored), index.vector(covered), atol=1e-5):
            log.warning("FAISS snapshot of tenant %s does not match Redis at id %d; rebuilding from Redis",
                        tenant_id, covered)
            return None
        return index

    def _tenants(self) -> list[str]:
        return [tenant for tenant in self.tier.tenants() if self._owns(tenant)]

    @staticmethod
    def _add(index: VectorIndex, entries: Sequence[IndexEntry]) -> int:
        if not entries:
            return 0
        return index.add([e.id for e in entries], np.stack([e.embedding for e in entries]),
                         [e.stream_id for e in entries], [e.wallclock for e in entries])


def _chunks(entries: Iterable[IndexEntry], size: int) -> Iterator[list[IndexEntry]]:
    chunk: list[IndexEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
