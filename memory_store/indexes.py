"""The FAISS side of one memory shard: every tenant's vector indexes, their snapshots and what they cover.

Every tenant has up to two indexes, keyed by entry id: "visual" and "text" (`memory_store.service` says
what goes in them and in which order). An index is snapshotted every ``snapshot_every_frames`` changes to
it, with a manifest of the Redis epoch and the Kafka offsets ("topic:partition" -> highest) of the segments
applied to it; a snapshot only shortens the next rebuild, so one that fails is logged, not raised.

Threads: the memory actor serves several calls at once. Each `VectorIndex` has its own lock; this class
guards only its own dicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from memory_store.config import MemoryConfig
from memory_store.rebuild import new_index, rebuild_index
from memory_store.records import IndexKind
from memory_store.redis_tier import RedisTier
from memory_store.vector_index import VectorIndex
from operators.frames import StageError

log = logging.getLogger(__name__)

KINDS: tuple[IndexKind, ...] = get_args(IndexKind)
_DIM_MISMATCH = {"visual": "embedding_dim_mismatch", "text": "text_embedding_dim_mismatch"}


class TenantIndexes:
    """index_dir: where snapshots go (one folder per tenant, the text index's in its ``text`` subfolder);
    None keeps the indexes in memory only."""

    def __init__(self, tier: RedisTier, config: MemoryConfig, index_dir: Path | None):
        self.tier = tier
        self.config = config
        self.index_dir = index_dir
        self._indexes: dict[tuple[str, IndexKind], VectorIndex] = {}
        self._unsnapshotted: dict[tuple[str, IndexKind], int] = {}
        # Per tenant, the Kafka offsets of the segments applied to its indexes: what a snapshot covers.
        self._offsets: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str, kind: IndexKind) -> VectorIndex | None:
        with self._lock:
            return self._indexes.get((tenant_id, kind))

    def for_write(self, tenant_id: str, kind: IndexKind, dim: int) -> VectorIndex:
        """The tenant's index, made at its first vector; StageError when ``dim`` is not the index's."""
        with self._lock:
            index = self._indexes.get((tenant_id, kind))
            if index is None:
                index = self._indexes[(tenant_id, kind)] = new_index(dim, self.config)
        if index.dim != dim:
            raise StageError(_DIM_MISMATCH[kind], f"tenant {tenant_id} indexes {index.dim}-dim {kind} embeddings; "
                             f"this segment has {dim}", stage="memory")
        return index

    def adopt(self, tenant_id: str, kind: IndexKind, index: VectorIndex) -> VectorIndex:
        """``index`` as the tenant's, unless another call made one first (then that one)."""
        with self._lock:
            return self._indexes.setdefault((tenant_id, kind), index)

    def by_tenant(self) -> dict[tuple[str, IndexKind], VectorIndex]:
        """A copy of the map, for reports."""
        with self._lock:
            return dict(self._indexes)

    def applied(self, tenant_id: str, source: str, offset: int) -> None:
        """A segment of Kafka ``source`` ("topic:partition") at ``offset`` is in the tenant's indexes."""
        with self._lock:
            applied = self._offsets.setdefault(tenant_id, {})
            applied[source] = max(applied.get(source, -1), offset)

    def remove(self, tenant_id: str, removed_ids: Sequence[int]) -> None:
        """Take ids Redis no longer holds out of the tenant's indexes."""
        if not removed_ids:
            return
        for kind in KINDS:
            index = self.get(tenant_id, kind)
            if index is not None:
                self.changed(tenant_id, kind, index.remove(removed_ids))

    def changed(self, tenant_id: str, kind: IndexKind, count: int) -> None:
        """``count`` entries of the index were added or removed: snapshot it when enough have."""
        if self.index_dir is None or count == 0:
            return
        with self._lock:
            pending = self._unsnapshotted.get((tenant_id, kind), 0) + count
            due = pending >= self.config.snapshot_every_frames
            # Reset before writing, so concurrent writes do not start a second snapshot.
            self._unsnapshotted[(tenant_id, kind)] = 0 if due else pending
        if due:
            self.snapshot(tenant_id, kind)

    def snapshot(self, tenant_id: str, kind: IndexKind) -> None:
        """Write the index's snapshot now (when it has one and snapshots are on)."""
        with self._lock:
            index = self._indexes.get((tenant_id, kind))
            offsets = dict(self._offsets.get(tenant_id, {}))
        if self.index_dir is None or index is None:
            return
        started = time.monotonic()
        try:
            index.snapshot(self._snapshot_dir(tenant_id, kind), epoch=self.tier.epoch(tenant_id), offsets=offsets)
        except OSError:
            # The write itself is durable and indexed; without the snapshot the next start reads more from Redis.
            log.exception("%s FAISS snapshot of tenant %s failed", kind, tenant_id)
            return
        log.info("%s FAISS snapshot of tenant %s: %d vectors in %.2f s", kind, tenant_id, len(index),
                 time.monotonic() - started)

    def _snapshot_dir(self, tenant_id: str, kind: IndexKind) -> Path:
        assert self.index_dir is not None
        # The prefix keeps every tenant id (".." included: it is a valid id) a plain folder name. The text
        # index goes in a subfolder: no tenant's folder can collide with it, and the visual snapshot only
        # ever replaces its own files (index-*.npz, manifest.json) in its folder.
        tenant_dir = self.index_dir / f"tenant-{tenant_id}"
        return tenant_dir if kind == "visual" else tenant_dir / "text"

    def rebuild(self, tenants: Sequence[str]) -> None:
        """Make every index of ``tenants`` hold exactly the entries Redis holds for it: snapshot (if trusted),
        then catch up (`memory_store.rebuild`). It replaces the indexes, so it must not run beside writes."""
        started = time.monotonic()
        indexes: dict[tuple[str, IndexKind], VectorIndex] = {}
        caught_up: dict[tuple[str, IndexKind], int] = {}
        for tenant in tenants:
            for kind in KINDS:
                index_started = time.monotonic()
                snapshot_dir = self._snapshot_dir(tenant, kind) if self.index_dir is not None else None
                rebuilt = rebuild_index(self.tier, tenant, kind, snapshot_dir)
                if rebuilt.index is not None:
                    indexes[(tenant, kind)] = rebuilt.index
                    caught_up[(tenant, kind)] = rebuilt.from_redis + rebuilt.removed
                log.info("tenant %s%s: %d entries from snapshot (%d of its removed since), %d from Redis in %.2f s",
                         tenant, "" if kind == "visual" else f" {kind}", rebuilt.from_snapshot, rebuilt.removed,
                         rebuilt.from_redis, time.monotonic() - index_started)
        with self._lock:
            self._indexes = indexes
            self._unsnapshotted = {}
            # The indexes now hold exactly what Redis holds, so they cover every segment Redis recorded.
            self._offsets = {tenant: self.tier.offsets(tenant) for tenant in tenants}
        log.info("rebuilt %d indexes, %d vectors, in %.2f s", len(indexes), sum(len(i) for i in indexes.values()),
                 time.monotonic() - started)
        # A long catch-up counts toward the next snapshot like any write, so the next start need not repeat it.
        for (tenant, kind), added in caught_up.items():
            self.changed(tenant, kind, added)
