"""The tiers of one stream, kept within budget inside the transaction that writes a segment.

    short  the newest frames with all their kept tokens (frame hashes; ``ll:{t}:short:<s>``)
    mid    event segments, the frames between two boundaries, with the tokens that do not repeat
           within the event (``memory_store.events``; ``ll:{t}:mid:<s>``)
    long   every index entry of the stream, searchable through FAISS: frames, closed event
           segments (their mean embedding) and merged entries (``ll:{t}:long:<s>``)

A frame is in the long tier from its write on, and in the short tier while it
holds tokens; an event is in the mid tier while it holds its token blob, and in
the long tier once it is closed (a boundary, or ``max_event_s``). Bytes are
counted per tier, so the three add up: short counts tokens and positions, mid
the event blobs, long the entries' other fields and thumbnails.

One segment write (`StreamTxn`, used by `RedisTier.write_segment`) does, in one
MULTI/EXEC, after the frames: fold them into events, then bring each tier within
its budgets, oldest first:

1. short: frames past ``recent_frames``, ``short_max_tokens`` or ``short_max_bytes``
   lose their tokens (the frame stays a long-tier entry);
2. mid: closed events past ``mid_max_tokens`` / ``mid_max_bytes`` lose their blob;
3. long: past ``long_max_entries`` / ``long_max_bytes``, the oldest entries that are
   older than the short tier and the open event, and not events still in the mid
   tier, are merged by time-ordered k-means
   (`memory_store.merge`) down to ``merge_low_water`` of the budget: each centroid
   replaces its members (hashes, thumbnails, index ids) with one merged entry;
4. retention: entries that ended more than ``retention_s`` before the stream's
   newest frame are deleted from every tier.

Everything is decided from what Redis holds, read under WATCH, and the segment's
frames: the same segments written in the same order give the same memory, ids
included. Nothing is logged until EXEC succeeds (redis-py reruns a transaction
whose watched keys changed); `StreamTxn.log` and ``warnings`` hold the lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.events import Reference
from memory_store.records import EncodedFrame, IndexEntry
from memory_store.tiers.budgets import BudgetSteps
from memory_store.tiers.entries import COUNTERS, ENTRY_FIELDS, Entry, Pipeline
from memory_store.tiers.events import EventSteps, OpenEvent
from memory_store.tiers.merging import MergeSteps
from memory_store.tiers.retention import RetentionSteps

log = logging.getLogger(__name__)


class StreamTxn(EventSteps, BudgetSteps, MergeSteps, RetentionSteps):
    """One transaction's changes to one stream's tiers: reads run at once (under WATCH), writes are queued.

    refs: the writer's cache of open events' references (event key -> Reference), valid for the blob
        length it names; `commit` returns the entries to store back after EXEC.
    """

    def __init__(
        self,
        pipe: Pipeline,
        config: MemoryConfig,
        tenant_id: str,
        stream_id: str,
        refs: dict[str, Reference],
    ):
        self.pipe, self.config, self.t, self.s = pipe, config, tenant_id, stream_id
        self._refs = refs
        self.stats_key = keys.stream_stats(tenant_id, stream_id)
        # One round trip, on another connection: what it reads is watched, so a change after it fails EXEC.
        reads = pipe.pipeline(transaction=False)
        reads.hmget(self.stats_key, (*COUNTERS, "open_event"))
        reads.get(keys.next_id(tenant_id))
        reads.zcard(keys.long_tier(tenant_id, stream_id))
        values, next_id, self.long_count = reads.execute()
        self.counters = {name: int(v or 0) for name, v in zip(COUNTERS, values)}
        self._open_key = values[-1].decode() if values[-1] else None
        self._open: OpenEvent | None = None
        self._open_loaded = False
        self.next_id = int(next_id or 0)
        self.frame_writes: list[Callable[[Pipeline], object]] = []
        self.writes: list[Callable[[Pipeline], object]] = []
        self.added: list[IndexEntry] = []
        self.text_added: list[IndexEntry] = []
        self.removed: list[int] = []
        self.log: list[str] = []
        self.warnings: list[str] = []
        self.ref_updates: dict[str, Reference | None] = {}
        self.evicted_short = 0
        # Entries this transaction already deleted, and budgets it already took them out of: a later step reads
        # Redis, which still holds them until EXEC.
        self._deleted: set[str] = set()
        self._left_short: set[str] = set()
        self._left_mid: set[str] = set()
        self._closed: set[str] = set()  # events this transaction closed

    # -- ids -------------------------------------------------------------------------------

    def allocate(self, n: int) -> list[int]:
        ids = list(range(self.next_id + 1, self.next_id + 1 + n))
        self.next_id += n
        return ids

    # -- frames ----------------------------------------------------------------------------

    def add_frames(self, frames: Sequence[EncodedFrame], ids: Sequence[int]) -> None:
        """Queue the frames' hashes and their places in the short and long tiers."""
        t, s = self.t, self.s
        for frame_id, f in zip(ids, frames):
            fields = {**f.fields, "id": frame_id}
            self.frame_writes.append(lambda p, k=f.key, m=fields: p.hset(keys.frame(t, k), mapping=m))
            if f.thumbnail is not None:
                self.frame_writes.append(lambda p, k=f.key, b=f.thumbnail: p.set(keys.thumbnail(t, k), b))
            if f.fields.get("boundary"):
                self.frame_writes.append(lambda p, k=f.key, w=f.wallclock: p.zadd(keys.boundaries(t, s), {k: w}))
            self.counters["short_tokens"] += int(f.fields["n_tokens"])
            self.counters["short_bytes"] += int(f.fields["token_bytes"])
            self.counters["long_bytes"] += int(f.fields["bytes"])
        self.long_count += len(frames)
        self.frame_writes.append(lambda p: p.zadd(keys.long_tier(t, s), {f.key: f.wallclock for f in frames}))
        self.frame_writes.append(lambda p: p.zadd(keys.short_tier(t, s), {f.key: f.pts for f in frames}))

    def remove_frames(self, frame_keys: Sequence[str]) -> None:
        """Account for frames another step deletes (a replaced segment's): their share of each tier's budget."""
        for entry in self._read(frame_keys):
            self._uncount(entry)
        self.writes.append(lambda p: p.zrem(keys.long_tier(self.t, self.s), *frame_keys))
        self.writes.append(lambda p: p.zrem(keys.boundaries(self.t, self.s), *frame_keys))

    # -- shared steps ----------------------------------------------------------------------

    def _index(
        self,
        key: str,
        entry_id: int,
        wallclock: float,
        vector: np.ndarray,
        n_bytes: int,
    ) -> None:
        self.writes.append(lambda p: p.zadd(keys.ids(self.t), {key: entry_id}))
        self.writes.append(lambda p: p.zadd(keys.long_tier(self.t, self.s), {key: wallclock}))
        self.added.append(IndexEntry(entry_id, key, self.s, wallclock, np.asarray(vector, np.float32)))
        self.long_count += 1
        self.counters["long_bytes"] += n_bytes

    def _delete(self, entries: Sequence[Entry]) -> None:
        """Queue the deletion of entries from every tier and index."""
        t, s = self.t, self.s
        members = [e.key for e in entries]
        for entry in entries:
            self._uncount(entry)
            self.removed.append(entry.id)
        doomed_keys = (
            [keys.frame(t, k) for k in members]
            + [keys.thumbnail(t, k) for k in members]
            + [keys.event_tokens(t, e.key) for e in entries if e.kind == "event"]
        )
        self.writes.append(lambda p: p.delete(*doomed_keys))
        for zset in (
            keys.ids(t),
            keys.text_ids(t),
            keys.long_tier(t, s),
            keys.timeline(t, s),
            keys.short_tier(t, s),
            keys.mid_tier(t, s),
        ):
            self.writes.append(lambda p, z=zset: p.zrem(z, *members))

    def _uncount(self, entry: Entry) -> None:
        self._deleted.add(entry.key)
        self.long_count -= 1
        self.counters["long_bytes"] -= int(entry.num("bytes"))
        if entry.in_short and entry.key not in self._left_short:
            self.counters["short_tokens"] -= int(entry.num("n_tokens"))
            self.counters["short_bytes"] -= int(entry.num("token_bytes"))
        if entry.key not in self._left_mid:
            self.counters["mid_tokens"] -= int(entry.num("blob_tokens"))
            self.counters["mid_bytes"] -= int(entry.num("blob_bytes"))

    def _read(self, entry_keys: Sequence[str]) -> list[Entry]:
        found = self.pipe.pipeline(transaction=False)
        for key in entry_keys:
            found.hmget(keys.frame(self.t, key), ENTRY_FIELDS)
        entries = []
        for key, values in zip(entry_keys, found.execute()):
            if values[0] is None:
                raise LookupError(f"entry {key} of {self.t}/{self.s} is in a tier but not stored")
            entries.append(Entry(key, dict(zip(ENTRY_FIELDS, values))))
        return entries

    # -- commit ----------------------------------------------------------------------------

    def queue_forget(self) -> None:
        """Queue the deletions and the removal of the stream's remaining bookkeeping (nothing of it is left)."""
        for write in self.writes:
            write(self.pipe)
        t, s = self.t, self.s
        self.pipe.delete(
            self.stats_key,
            keys.short_tier(t, s),
            keys.mid_tier(t, s),
            keys.long_tier(t, s),
            keys.boundaries(t, s),
            keys.gaps(t, s),
            keys.segments(t, s),
            keys.timeline(t, s),
        )

    def queue(self, stats: dict[str, float | int | str]) -> None:
        """Queue everything (call after ``pipe.multi()``): frames first, then the steps in the order they ran."""
        event = self._open
        if event is not None:
            self._flush_event(event, still_open=True)
        for write in self.frame_writes + self.writes:
            write(self.pipe)
        self.pipe.set(keys.next_id(self.t), self.next_id)
        self.pipe.hset(
            self.stats_key,
            mapping={
                **stats,
                **self.counters,
                "open_event": event.key if event is not None else "",
            },
        )
