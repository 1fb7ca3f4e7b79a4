"""The memory service's shard as a Ray actor: `MemoryActor`, a thin wrapper around memory_store.service.MemoryStore
that takes a tenant's segment writes in stream order and answers the query side's reads.

A tenant's writes always go to the same shard (its FAISS indexes live there: pipelines/ray/placement.py
`memory_shard`); the shard rebuilds its indexes from Redis when it (re)starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from operators.frames import CompressedBatch, tag_stage
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.ray.placement import memory_shard
from pipelines.ray.supervision import RESTART, await_predecessors
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)

# A shard's reads (searches, timelines, stats) at once, beside its writes.
READ_THREADS = 4


@ray.remote(**RESTART)
class MemoryActor:
    """One shard of the memory service. Rebuilds its FAISS indexes from Redis when it (re)starts.

    An asyncio actor, so that a write waits for its stream's earlier writes without holding anything: Ray
    starts a concurrent actor's calls as their arguments arrive, and a segment's write can come before its
    predecessor's. (As a threaded actor with one write thread, such a write held that thread for the whole
    predecessor wait while the predecessor queued behind it: a 5 s stall, then every later segment of the
    stream in flight failed and went round again.) The store's writes then run one at a time, in order, on
    one thread: a stream's tiers fold its frames into events in time order, and two segments written at once
    would race on the stream's open event. Reads run on threads of their own beside them.
    """

    def __init__(self, config: LivelensConfig, shard_index: int):
        metrics.configure(config.metrics)
        from memory_store.service import MemoryStore

        if not config.redis.url:
            raise RuntimeError("no Redis URL: set LIVELENS_REDIS_URL or run `livelens up`")
        client = redis_client(config.redis)
        index_dir = (config.data_dir / "faiss" / f"shard-{shard_index}").resolve()
        shards = config.memory.shards
        self.store = MemoryStore(client, config.memory, index_dir=index_dir,
                                 owns_tenant=lambda tenant: memory_shard(tenant, shards) == shard_index)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="memory-write")
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="memory-read")
        metrics.report_memory_every(config.metrics.memory_interval_s, shard_index, self.store.stats)
        threading.Thread(target=self._sweep_retention, args=(config.memory.retention_sweep_s,), daemon=True,
                         name="retention").start()

    def _sweep_retention(self, every_s: float) -> None:
        """Retention for streams that stopped writing (paused, deleted): writing streams apply it on each write."""
        while True:
            time.sleep(every_s)
            try:
                self.store.expire()
            except Exception:  # the next sweep retries; a write in between applies retention to its stream
                log.exception("retention sweep failed; next in %.0f s", every_s)

    async def write(self, batch: CompressedBatch, texts: list | None = None, replace: bool = False,
                    transcript=None, after: list | None = None):
        """``replace``: `livelens replay` rebuilding a segment (MemoryStore.write); live ingest never sets it.
        ``transcript``: the segment's transcript lines (operators.transcribe.Transcript), stored with it.
        ``after``: the writes of the stream's earlier segments in flight, which must have been stored (or refused
        as bad input) first."""
        await await_predecessors(after, "memory write")
        call = metrics.StageCall("memory", batch.segment, len(batch))
        write = functools.partial(tag_stage, "memory",
                                  functools.partial(self.store.write, replace=replace, transcript=transcript),
                                  batch, texts)
        result = await asyncio.get_running_loop().run_in_executor(self._writer, write)
        return call.done(result, frames=len(result.ids) if result is not None else 0)  # None: a replay

    async def call(self, method: str, *args, **kwargs):
        """Read-side calls by name, `rebuild` (catch the FAISS indexes up with Redis, e.g. after a backfill
        wrote to Redis directly), `delete_stream` (end a stream, history kept until retention), `expire`,
        `purge_stream` (a replay rebuilding a stream from its first segment), and the stream controls'
        `erase_stream` and `set_retention` (pipelines/streams/)."""
        if method not in {"search", "search_text", "search_transcript", "transcript", "recent", "timeline", "streams",
                          "frames", "thumbnail", "stats", "rebuild", "memory_report", "delete_stream", "expire",
                          "event_tokens", "purge_stream", "erase_stream", "set_retention"}:
            raise ValueError(f"MemoryActor has no read method {method!r}")
        read = functools.partial(getattr(self.store, method), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._readers, read)
