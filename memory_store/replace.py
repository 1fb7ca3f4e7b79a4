"""Replacing a stored segment: what a rebuild (a replay after a model or threshold change) writes over.

A normal write of a segment that is already durable changes nothing (the
segment marker makes replays no-ops). A replacing write instead removes every
trace of the stored version and writes the new one, in the same MULTI/EXEC
(`RedisTier.write_segment(..., replace=True)`): a reader sees the old segment or
the new one, never neither and never a mix.

What goes: the old frames' hashes and thumbnails, their members in the id sets,
the timeline and the short tier, and their share of the stream's frame and
segment counts (and, through `memory_store.tiers`, their share of the tier budgets).
The new frames get new index ids from ``next_id`` (ids are never reused). A FAISS
snapshot taken before the replace still holds the old ids; the rebuild removes
every id Redis no longer holds (`memory_store.rebuild`). Event segments already
built from the old version stay as they were: a replaced segment's frames are
older than the stream's open event, so they are not folded into events again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from memory_store import keys


@dataclass(frozen=True)
class StoredSegment:
    """The version of a segment that a replacing write removes, read under WATCH before MULTI."""

    tenant_id: str
    stream_id: str
    segment_id: str  # SegmentInfo.segment_id
    frame_keys: tuple[str, ...]
    ids: tuple[int, ...]  # visual index ids of frame_keys, same order
    in_short_tier: tuple[str, ...]  # the frame keys that still hold tokens

    @classmethod
    def read(cls, pipe: redis.client.Pipeline, tenant_id: str, stream_id: str, segment_id: str) -> StoredSegment:
        """Read the stored version (the pipeline is in immediate mode: WATCH is on)."""
        frame_keys = tuple(sorted(k.decode() for k in pipe.smembers(keys.segment(tenant_id, stream_id, segment_id))))
        if not frame_keys:
            return cls(tenant_id, stream_id, segment_id, (), (), ())
        scores = pipe.zmscore(keys.ids(tenant_id), list(frame_keys))
        if None in scores:
            raise LookupError(f"segment {tenant_id}/{stream_id}/{segment_id} names frames without an index id: "
                              f"{[k for k, s in zip(frame_keys, scores) if s is None]}")
        short = pipe.zmscore(keys.short_tier(tenant_id, stream_id), list(frame_keys))
        return cls(tenant_id, stream_id, segment_id, frame_keys, tuple(int(s) for s in scores),
                   tuple(k for k, s in zip(frame_keys, short) if s is not None))

    def queue_removal(self, pipe: redis.client.Pipeline) -> None:
        """Queue (after MULTI) the commands that remove this version; the new version's writes follow them."""
        if not self.frame_keys:
            return
        t, s, members = self.tenant_id, self.stream_id, list(self.frame_keys)
        pipe.delete(*(keys.frame(t, k) for k in members), *(keys.thumbnail(t, k) for k in members))
        for zset in (keys.ids(t), keys.text_ids(t), keys.timeline(t, s), keys.short_tier(t, s)):
            pipe.zrem(zset, *members)
        pipe.hincrby(keys.stream_stats(t, s), "frames", -len(members))
        pipe.hincrby(keys.stream_stats(t, s), "segments", -1)
        pipe.delete(keys.segment(t, s, self.segment_id))
