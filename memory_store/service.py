"""The memory service: Redis holds what is durable, FAISS finds it.

Every tenant has up to two vector indexes, keyed by entry id: "visual" (the
embedding of every frame, event segment and merged entry) and "text" (the
embedding of an entry's on-screen text, for those that have some). Each stream's
memory is tiered, short / mid / long, within budgets (`memory_store.tiers`).

The order of a write is what keeps Redis and the indexes consistent:

1. Redis, one transaction per segment (`RedisTier.write_segment`): the frames and
   their text, their events, and whatever the tiers' budgets and retention evict,
   merge or delete. EXEC returning means durable (AOF ``appendfsync always``), so
   the caller may commit the segment's Kafka offsets once `write` returns.
2. FAISS, only after EXEC: removals first, then adds. An entry becomes searchable
   only once it is durable, and stops being found once Redis has deleted it. A
   crash between 1 and 2 loses nothing: the restarted actor rebuilds from Redis,
   and a replay of the segment (same process, an earlier attempt failed after
   EXEC) reconciles the tenant's indexes with Redis.
3. A snapshot of an index every ``snapshot_every_frames`` changes to it, with a
   manifest of the Redis epoch and the Kafka offsets of the segments applied. It
   only shortens the next rebuild; a failed or corrupt one costs a longer
   rebuild, no data.

On start (`rebuild`), for every tenant Redis knows and each of its indexes: load
the snapshot if it is of this Redis's data, remove what Redis has deleted since,
add what Redis holds beyond it (`memory_store.rebuild`). A restarted memory actor
thus serves exactly what Redis holds, and a replay from the committed offsets
(segments between the committed offset and the snapshot's) changes nothing.

Threads: the Ray actor serves several calls at once. Each `VectorIndex` has its
own lock, and `memory_store.indexes.TenantIndexes` guards the map of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from memory_store.config import MemoryConfig
from memory_store.erase import erase_stream
from memory_store.hits import Hit, TextHit, merge_episodes
from memory_store.indexes import KINDS, TenantIndexes
from memory_store.rebuild import add_entries, rebuild_index, reconcile
from memory_store.records import FrameRecord, StreamInfo, WriteResult
from memory_store.redis_tier import RedisTier
from memory_store.report import TIERS, stream_tiers
from memory_store.text import check_texts
from memory_store.transcripts import TranscriptHit, TranscriptMemory
from operators.frames import CompressedBatch, FrameText, SegmentInfo, StageError

if TYPE_CHECKING:
    from operators.transcribe import Transcript

log = logging.getLogger(__name__)

# Text search reads this many frames per hit wanted first, then 4 times more per round while the k
# best episodes may still be incomplete, up to the last factor: 128 frames per hit is a headline on
# screen for two minutes at 1 fps, and reading that many frames back from Redis takes milliseconds.
_TEXT_DEPTH_FIRST, _TEXT_DEPTH_GROWTH, _TEXT_DEPTH_MAX = 4, 4, 128
# Frames with the same text share one embedding, so their scores tie up to float rounding.
_SAME_SCORE = 1e-4


class MemoryStore:
    """Write segments, search and read frames, for every tenant of one memory shard.

    index_dir: where FAISS snapshots go (one folder per tenant, the text index's in its
        ``text`` subfolder); None keeps the indexes in memory only, so every start reads
        all embeddings from Redis.
    owns_tenant: which tenants this shard serves when ``MemoryConfig.shards`` > 1
        (all tenants share one Redis; each shard indexes only its own). None: all.
    """

    def __init__(self, client: redis.Redis, config: MemoryConfig, *, index_dir: Path | None = None,
                 owns_tenant: Callable[[str], bool] | None = None):
        self.config = config
        self.tier = RedisTier(client, config)
        self._owns = owns_tenant or (lambda tenant_id: True)
        self.indexes = TenantIndexes(self.tier, config, Path(index_dir) if index_dir is not None else None)
        # What was said: lines with their own records and index (memory_store.transcripts).
        self.transcripts = TranscriptMemory(client, config, self._tenants)
        self.rebuild()

    # -- writing -------------------------------------------------------------------------------

    def write(self, batch: CompressedBatch, texts: Sequence[FrameText] | None = None, *,
              replace: bool = False, transcript: Transcript | None = None) -> WriteResult | None:
        """Store a segment, and with it the on-screen text of its frames; None when it was already stored (a replay).

        texts: one FrameText per frame of the batch, in pts order (StageError ``text_mismatch``
            otherwise), or None when the segment was not read for text.
        replace: a rebuild (`livelens replay`): a stored version of the segment is replaced, in Redis
            atomically (`memory_store.replace`), then its old ids leave the indexes. Never None then.
        transcript: the segment's transcript lines (operators.transcribe), stored after its frames
            (`memory_store.transcripts`); lines already stored are left as they are, so a replay adds nothing.
        """
        seg = batch.segment
        if not self._owns(seg.tenant_id):
            raise ValueError(f"tenant {seg.tenant_id} belongs to another memory shard")
        if batch.embedding.ndim != 2:
            raise StageError("bad_embedding", f"embedding must be [N, E], got {batch.embedding.shape}", stage="memory")
        # The tier validates the texts again; here they are needed first, for the check below.
        stored_texts = check_texts(batch, texts)
        with_text = [i for i, t in enumerate(stored_texts) if t is not None and t.embedding is not None]
        text_vectors = np.stack([stored_texts[i].embedding for i in with_text]) if with_text else None
        # Checked before Redis: a vector FAISS cannot take must never become durable.
        index = self.indexes.for_write(seg.tenant_id, "visual", batch.embedding.shape[1])
        text_index = self.indexes.for_write(seg.tenant_id, "text", text_vectors.shape[1]) if with_text else None
        result = self.tier.write_segment(batch, texts, replace=replace)
        # Before returning either way: a replay after a failure between the two writes stores the lines then.
        self.transcripts.write(seg, transcript)
        self.transcripts.expire(seg.tenant_id, seg.stream_id,
                                seg.wallclock_start + seg.duration_s - self.tier.retention_s(seg.tenant_id, seg.stream_id))
        if result is None:
            self._repair(seg)
            return None
        # Removals first: a merge may remove an entry and add its centroid in one write. A crash before the
        # indexes catch up costs nothing: Redis is done, and the restart reconciles the indexes with it.
        self.indexes.remove(seg.tenant_id, result.removed_ids)
        added = index.add(result.ids, batch.embedding, [seg.stream_id] * len(result.ids), result.wallclocks)
        if result.entries:
            added += add_entries(index, result.entries)
        self.indexes.changed(seg.tenant_id, "visual", added)
        if text_index is not None:
            added = text_index.add([result.ids[i] for i in with_text], text_vectors, [seg.stream_id] * len(with_text),
                                   [result.wallclocks[i] for i in with_text])
            self.indexes.changed(seg.tenant_id, "text", added)
        if result.text_entries:
            text_index = self.indexes.for_write(seg.tenant_id, "text", len(result.text_entries[0].embedding))
            self.indexes.changed(seg.tenant_id, "text", add_entries(text_index, result.text_entries))
        if seg.partition >= 0:
            self.indexes.applied(seg.tenant_id, f"{seg.topic}:{seg.partition}", seg.offset)
        return result

    def write_transcript(self, seg: SegmentInfo, transcript: Transcript) -> int:
        """Transcript lines without frames of their own: a stream's captions still on screen when it ended,
        written with its last segment (``seg``). Idempotent like `write`; returns the lines that were new."""
        return self.transcripts.write(seg, transcript)

    def _repair(self, seg: SegmentInfo) -> None:
        """Reconcile the tenant's indexes with Redis when a segment it already holds is written again.

        An earlier attempt may have failed between EXEC and the index updates; the indexes then lack
        entries Redis has, or hold entries a merge removed. Replays are rare (after a failure or a
        restart), so a walk over the tenant's id set is affordable here.
        """
        for kind in KINDS:
            index = self.indexes.get(seg.tenant_id, kind)
            if index is None:
                rebuilt = rebuild_index(self.tier, seg.tenant_id, kind, None)
                if rebuilt.index is None:
                    continue
                index = self.indexes.adopt(seg.tenant_id, kind, rebuilt.index)
                added, removed = rebuilt.from_redis, 0
            else:
                added, removed = reconcile(self.tier, seg.tenant_id, kind, index)
            if added or removed:
                log.warning("replay of %s/%s/%d: the %s index lacked %d entries Redis holds and held %d it no longer "
                            "does; reconciled", seg.tenant_id, seg.stream_id, seg.seq, kind, added, removed)
                self.indexes.changed(seg.tenant_id, kind, added + removed)

    # -- reading -------------------------------------------------------------------------------

    def search(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[Hit]:
        """The k frames most similar to ``vector`` within the scope, best first.

        stream_ids: None for every stream of the tenant. t_from / t_to: epoch seconds,
        inclusive, compared with a frame's start; None leaves that side open.
        """
        index = self.indexes.get(tenant_id, "visual")
        if index is None:
            return []
        found = index.search(vector, k, stream_ids=stream_ids, t_from=t_from, t_to=t_to)
        return [Hit(r.frame_key, r.stream_id, r.seq, r.pts_s, r.t_end_s, r.wallclock_start, r.wallclock_end, score,
                    r.thumbnail) for (_, score), r in zip(found, self._records(tenant_id, found))]

    def search_text(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                    t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[TextHit]:
        """The k on-screen text episodes most similar to ``vector`` (a `TextEmbedder` vector), best first.

        Scope as in `search`, applied to frames. Matching frames of one stream with the same text
        in a row become one hit spanning them all (`hits.merge_episodes`). The search reads deeper
        until no unread frame scores as high as the k-th episode, so the k are the best and hold
        every frame that scores as high as they do (frames of one text share its embedding), or
        the scope is exhausted, or it has read `_TEXT_DEPTH_MAX` * k frames.
        """
        index = self.indexes.get(tenant_id, "text")
        if index is None or k < 1:
            return []
        depth = _TEXT_DEPTH_FIRST * k
        while True:
            found = index.search(vector, depth, stream_ids=stream_ids, t_from=t_from, t_to=t_to)
            episodes = merge_episodes([
                TextHit(r.frame_key, r.stream_id, r.seq, r.pts_s, r.t_end_s, r.wallclock_start, r.wallclock_end,
                        score, r.thumbnail, r.text, r.lines)
                for (_, score), r in zip(found, self._records(tenant_id, found))])
            exhausted = len(found) < depth
            settled = len(episodes) >= k and found[-1][1] < episodes[k - 1].score - _SAME_SCORE
            if exhausted or settled or depth >= _TEXT_DEPTH_MAX * k:
                return episodes[:k]
            depth = min(depth * _TEXT_DEPTH_GROWTH, _TEXT_DEPTH_MAX * k)

    def search_transcript(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                          t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[TranscriptHit]:
        """The k transcript lines (captions, subtitles, recognised speech) most similar to ``vector`` (a
        `TextEmbedder` vector, as for `search_text`), best first; scope as in `search`."""
        return self.transcripts.search(tenant_id, vector, stream_ids=stream_ids, t_from=t_from, t_to=t_to, k=k)

    def transcript(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                   limit: int = 1000) -> list:
        """The stream's transcript lines (`memory_store.transcripts.LineRecord`) starting in [t_from, t_to]
        (epoch s), oldest first."""
        return self.transcripts.lines(tenant_id, stream_id, t_from, t_to, limit)

    def _records(self, tenant_id: str, found: list[tuple[int, float]]) -> list[FrameRecord]:
        """The frames of search results, in their order (without tokens)."""
        frame_keys = self.tier.frame_keys_for_ids(tenant_id, [frame_id for frame_id, _ in found])
        records = self.tier.frames(tenant_id, [key for key in frame_keys if key is not None], tokens=False)
        if len(records) != len(found) or None in records:
            raise LookupError(f"ids {[i for i, _ in found]} of tenant {tenant_id} are not all in Redis: restart "
                              "the memory actor to rebuild its index from what Redis holds")
        return records

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None = None, n: int = 8, *,
               t_from: float | None = None, t_to: float | None = None) -> list[FrameRecord]:
        """The n newest frames by wallclock (None: of every stream) within [t_from, t_to] (epoch s; None: open),
        oldest first, tokens included while kept."""
        return self.tier.recent(tenant_id, stream_ids, n, t_from, t_to)

    def timeline(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                 limit: int = 1000) -> list[FrameRecord]:
        """The stream's frames, and the merged entries that replaced older ones, oldest first. ``boundary`` marks
        a frame that began an event (or a merged entry covering one); ``kind`` and ``covers`` say what a record
        stands for."""
        return self.tier.timeline(tenant_id, stream_id, t_from, t_to, limit)

    def streams(self, tenant_id: str) -> list[StreamInfo]:
        return self.tier.streams(tenant_id)

    def frames(self, tenant_id: str, frame_keys: Sequence[str]) -> list[FrameRecord | None]:
        return self.tier.frames(tenant_id, frame_keys)

    def thumbnail(self, key: str) -> bytes | None:
        return self.tier.thumbnail(key)

    def event_tokens(self, tenant_id: str, event_key: str) -> np.ndarray | None:
        """The tokens an event segment keeps while in the mid tier (a hit of kind "event" names its key); a frame's
        own tokens, while in the short tier, come with `frames`."""
        return self.tier.event_tokens(tenant_id, event_key)

    def stats(self) -> dict[str, Any]:
        """Entries Redis holds against vectors the indexes hold (this shard's tenants): equal when all is well.

        frames / indexed / index_sizes: the visual indexes (frames, event segments and merged entries);
        text_frames / text_indexed / text_index_sizes: entries with a text embedding and the text indexes;
        index_types: "tenant/kind" -> flat or ivf; short_* / mid_* / long_* (entries, tokens, bytes): the
        tiers summed over the shard's streams (per stream: `memory_report`).
        """
        tenants = self._tenants()
        indexes = self.indexes.by_tenant()
        sizes = {kind: {tenant: len(index) for (tenant, of), index in indexes.items() if of == kind} for kind in KINDS}
        types = {f"{tenant}/{kind}": index.kind for (tenant, kind), index in indexes.items()}
        return {
            "tenants": len(tenants),
            "frames": sum(self.tier.frame_count(t, "visual") for t in tenants),
            "indexed": sum(sizes["visual"].values()),
            "index_sizes": sizes["visual"],
            "text_frames": sum(self.tier.frame_count(t, "text") for t in tenants),
            "text_indexed": sum(sizes["text"].values()),
            "text_index_sizes": sizes["text"],
            "index_types": types,
            "transcript_indexed": sum(self.transcripts.size(t) for t in tenants),
            **self._tier_totals(tenants),
        }

    def _tier_totals(self, tenants: Sequence[str]) -> dict[str, int]:
        """Per tier, summed over the shard's streams: ``<tier>_entries``, ``<tier>_tokens``, ``<tier>_bytes``."""
        totals = {f"{tier}_{what}": 0 for tier in TIERS for what in ("entries", "tokens", "bytes")}
        for tenant in tenants:
            for stream in self.tier.streams(tenant):
                report = stream_tiers(self.tier.r, self.config, tenant, stream.stream_id, by_kind=False)
                for usage in report.tiers if report is not None else ():
                    totals[f"{usage.tier}_entries"] += usage.entries
                    totals[f"{usage.tier}_tokens"] += usage.tokens
                    totals[f"{usage.tier}_bytes"] += usage.bytes
        return totals

    def memory_report(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        """A stream's tiers (`memory_store.report.StreamTiers`) and its tenant's indexes: type and size."""
        report = stream_tiers(self.tier.r, self.config, tenant_id, stream_id)
        if report is None:
            return None
        indexes = {kind: (index.kind, len(index)) for (tenant, kind), index in self.indexes.by_tenant().items()
                   if tenant == tenant_id}
        return {"tiers": report, "indexes": indexes}

    # -- stream end and retention --------------------------------------------------------------

    def delete_stream(self, tenant_id: str, stream_id: str) -> bool:
        """End a stream (deleted at its source, or stopped for good): its open event is closed and indexed, and
        all its history stays searchable until retention removes it (`expire`). False for an unknown stream.

        A paused stream needs no call: it simply writes nothing, and keeps everything until retention. A
        stream that writes again after either is live again.
        """
        closed = self.tier.end_stream(tenant_id, stream_id, time.time())
        if closed is None:
            return False
        if closed:
            index = self.indexes.for_write(tenant_id, "visual", len(closed[0].embedding))
            self.indexes.changed(tenant_id, "visual", add_entries(index, closed))
        return True

    def purge_stream(self, tenant_id: str, stream_id: str) -> int:
        """Delete everything memory holds of a stream, at once: a rebuild from its first segment (`livelens
        replay`) then stores exactly what a fresh ingest would, events included. Returns entries deleted."""
        result = self.tier.expire_stream(tenant_id, stream_id, float("inf"))
        self.indexes.remove(tenant_id, result.removed_ids)
        self.transcripts.expire(tenant_id, stream_id, float("inf"))
        log.info("purged %s/%s: %d entries", tenant_id, stream_id, result.deleted)
        return result.deleted

    def expire(self, now: float | None = None) -> int:
        """Apply retention against the clock to every stream of this shard (writing streams apply it on each
        write, against their newest frame; this reaches paused and ended ones). Returns entries deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for tenant in self._tenants():
            for stream in self.tier.streams(tenant):
                deleted += self._expire_stream(tenant, stream.stream_id, stream.first_wallclock, now)
        return deleted

    def _expire_stream(self, tenant_id: str, stream_id: str, first_wallclock: float, now: float) -> int:
        horizon = now - self.tier.retention_s(tenant_id, stream_id)
        self.transcripts.expire(tenant_id, stream_id, horizon)
        if first_wallclock >= horizon:
            return 0
        result = self.tier.expire_stream(tenant_id, stream_id, horizon)
        self.indexes.remove(tenant_id, result.removed_ids)
        return result.deleted

    def set_retention(self, tenant_id: str, stream_id: str, seconds: float | None) -> int:
        """Give a stream a retention of its own (None: the global ``memory.retention_s`` again), applied at once
        against the clock and from then on on every write and sweep. Returns the entries it deleted now."""
        self.tier.set_retention_s(tenant_id, stream_id, seconds)
        info = self.tier.stream_info(tenant_id, stream_id)
        if info is None:
            return 0
        return self._expire_stream(tenant_id, stream_id, info.first_wallclock, time.time())

    def erase_stream(self, tenant_id: str, stream_id: str) -> int:
        """Erase everything of a stream now, irreversibly (`memory_store.erase`): every tier, its index entries
        (and the snapshots on disk, rewritten without them), thumbnails, text, the clip ledger, markers,
        settings. Returns the keys deleted; 0 when nothing of it was left."""
        expired = self.tier.expire_stream(tenant_id, stream_id, float("inf"))  # also drops cached event refs
        self.transcripts.expire(tenant_id, stream_id, float("inf"))  # its lines and their transcript index entries
        erased = erase_stream(self.tier.r, tenant_id, stream_id)
        self.indexes.remove(tenant_id, sorted(set(expired.removed_ids) | set(erased.ids)))
        for kind in KINDS:
            self.indexes.snapshot(tenant_id, kind)
        log.info("erased %s/%s: %d keys, %d index entries, %d per-stream fields", tenant_id, stream_id,
                 erased.keys, len(expired.removed_ids) + len(erased.ids), erased.fields)
        return erased.keys + expired.deleted

    # -- restart -------------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Make every index hold exactly the entries Redis holds for it (`TenantIndexes.rebuild`), and the
        transcript index too. Runs in the constructor, before the actor serves anything; it replaces the
        indexes, so it must not run beside writes."""
        self.indexes.rebuild(self._tenants())
        self.transcripts.rebuild()

    def _tenants(self) -> list[str]:
        return [tenant for tenant in self.tier.tenants() if self._owns(tenant)]
