"""The Redis tier: everything memory keeps about a frame, written once per segment, atomically.

A segment is written in one MULTI/EXEC transaction: its frames (on-screen text
included), thumbnails, index ids, stream stats, short-tier bookkeeping and, last,
its segment marker. Either all of it exists or none of it, so the marker's
presence means "this segment is durable" and a replay can return at once.

Durability: the local stack runs redis-server with AOF ``appendfsync always``.
Redis then fsyncs the AOF before it replies to EXEC, so EXEC returning means the
segment survives a crash of redis-server. That is what lets the Kafka source
commit the segment's offsets as soon as ``write_segment`` returns.

Id sets: ``ll:{t}:ids`` holds every frame, ``ll:{t}:text_ids`` the frames with a
text embedding, both scored by frame id. Ids are allocated from ``next_id`` in
the transaction that adds them to both sets, and transactions on a tenant are
serialised by WATCH on ``next_id``; so each set only ever gains ids larger than
all it holds. The service's rebuild relies on that (see ``memory_store.rebuild``).

Short tier: only the newest ``MemoryConfig.recent_frames`` frames of a stream (by
pts) keep their tokens; the write that pushes a frame out of that window deletes
its token fields in the same transaction. Metadata, embedding and text stay forever.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import redis

from memory_store import keys
from memory_store.records import (META_FIELDS, TOKEN_FIELDS, VECTOR_FIELD, FrameRecord, IndexEntry, IndexKind,
                                  StreamInfo, WriteResult, encode_frames, frame_record, merged_stats, stream_info)
from operators.frames import CompressedBatch
from pipelines.config import MemoryConfig

if TYPE_CHECKING:
    from operators.ocr import FrameText  # why TYPE_CHECKING: see memory_store.text

_STATS_FIELDS = ("first_wallclock", "last_wallclock", "first_media_s", "last_media_s", "last_seq")


class RedisTier:
    """Frames, thumbnails and stream stats of every tenant in one Redis (binary-safe client required)."""

    def __init__(self, client: redis.Redis, config: MemoryConfig, *, page_size: int = 1000):
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisTier stores binary arrays: give it a client with decode_responses=False")
        self.r = client
        self.config = config
        self.page_size = page_size

    # -- writing -------------------------------------------------------------------------------

    def write_segment(self, batch: CompressedBatch, texts: Sequence[FrameText] | None = None) -> WriteResult | None:
        """Store a segment atomically; None when it was already stored (a replay changes nothing, texts included).

        texts: one per frame, in pts order, or None; stored in the same transaction as the frames.
        """
        seg = batch.segment
        tenant, stream = seg.tenant_id, seg.stream_id
        frames = encode_frames(batch, texts)
        marker = keys.segment(tenant, stream, seg.seq)
        counter = keys.next_id(tenant)
        stats = keys.stream_stats(tenant, stream)
        short = keys.short_tier(tenant, stream)
        # Before the transaction, so a tenant whose frames are durable is always listed for rebuild;
        # outside it, because this key is in no tenant's hash slot.
        self.r.sadd(keys.TENANTS, tenant)

        def transaction(pipe: redis.client.Pipeline) -> WriteResult | None:
            # Reads run at once, under WATCH: if another writer touches any watched key before
            # EXEC, EXEC fails and redis-py runs this function again on fresh values.
            if pipe.exists(marker):
                pipe.unwatch()
                return None
            first_id = int(pipe.get(counter) or 0) + 1
            old_stats = [None if v is None else float(v) for v in pipe.hmget(stats, _STATS_FIELDS)]
            victims = self._short_tier_victims(pipe, short, [(f.pts, f.key) for f in frames])
            ids = list(range(first_id, first_id + len(frames)))

            pipe.multi()
            for frame_id, f in zip(ids, frames):
                pipe.hset(keys.frame(tenant, f.key), mapping={**f.fields, "id": frame_id})
                if f.thumbnail is not None:
                    pipe.set(keys.thumbnail(tenant, f.key), f.thumbnail)
            pipe.zadd(keys.ids(tenant), {f.key: i for i, f in zip(ids, frames)})
            with_text = {f.key: i for i, f in zip(ids, frames) if f.text_indexed}
            if with_text:
                pipe.zadd(keys.text_ids(tenant), with_text)
            pipe.set(counter, ids[-1])
            pipe.zadd(keys.timeline(tenant, stream), {f.key: f.wallclock for f in frames})
            pipe.zadd(short, {f.key: f.pts for f in frames})
            if victims:
                pipe.zrem(short, *victims)
                for victim in victims:
                    pipe.hdel(keys.frame(tenant, victim), *TOKEN_FIELDS)
            pipe.sadd(keys.streams(tenant), stream)
            pipe.hset(stats, mapping=merged_stats(old_stats, batch, frames))
            pipe.hincrby(stats, "frames", len(frames))
            pipe.hincrby(stats, "segments", 1)
            pipe.sadd(marker, *(f.key for f in frames))
            return WriteResult(tenant, stream, seg.seq, tuple(f.key for f in frames), tuple(ids),
                               tuple(f.wallclock for f in frames), len(victims))

        return self.r.transaction(transaction, marker, counter, stats, short, value_from_callable=True)

    def _short_tier_victims(self, pipe: redis.client.Pipeline, short: str, new: list[tuple[float, str]]) -> list[str]:
        """Frame keys whose tokens must go so that the stream keeps tokens for its newest frames only.

        Ordered by (pts, frame key), as Redis orders the sorted set, so the outcome does not
        depend on the order segments arrive in.
        """
        excess = pipe.zcard(short) + len(new) - self.config.recent_frames
        if excess <= 0:
            return []
        # The `excess` oldest of (existing + new) can only include the `excess` oldest existing ones.
        oldest = [(score, member.decode()) for member, score in pipe.zrange(short, 0, excess - 1, withscores=True)]
        return [key for _, key in sorted(oldest + new)[:excess]]

    # -- reading -------------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        return sorted(t.decode() for t in self.r.smembers(keys.TENANTS))

    def streams(self, tenant_id: str) -> list[StreamInfo]:
        stream_ids = sorted(s.decode() for s in self.r.smembers(keys.streams(tenant_id)))
        pipe = self.r.pipeline(transaction=False)
        for stream in stream_ids:
            pipe.hgetall(keys.stream_stats(tenant_id, stream))
        return [stream_info(s, h) for s, h in zip(stream_ids, pipe.execute())]

    def stream_info(self, tenant_id: str, stream_id: str) -> StreamInfo | None:
        found = self.r.hgetall(keys.stream_stats(tenant_id, stream_id))
        return stream_info(stream_id, found) if found else None

    def frames(self, tenant_id: str, frame_keys: Sequence[str], *, tokens: bool = True) -> list[FrameRecord | None]:
        """The frames in the order asked; None for a key not stored. ``tokens=False`` skips the token fields."""
        fields = META_FIELDS + TOKEN_FIELDS if tokens else META_FIELDS
        pipe = self.r.pipeline(transaction=False)
        for key in frame_keys:
            pipe.hmget(keys.frame(tenant_id, key), fields)
        return [frame_record(key, dict(zip(fields, values))) if values[0] is not None else None
                for key, values in zip(frame_keys, pipe.execute())]

    def frame_keys_for_ids(self, tenant_id: str, ids: Sequence[int]) -> list[str | None]:
        pipe = self.r.pipeline(transaction=False)
        for frame_id in ids:
            pipe.zrangebyscore(keys.ids(tenant_id), frame_id, frame_id)
        return [found[0].decode() if found else None for found in pipe.execute()]

    def segment_frame_keys(self, tenant_id: str, stream_id: str, seq: int) -> list[str]:
        """Frame keys of a stored segment in pts order; empty when the segment is not stored."""
        found = [k.decode() for k in self.r.smembers(keys.segment(tenant_id, stream_id, seq))]
        return sorted(found, key=lambda k: int(k.rsplit("/", 1)[1]))

    def index_entries(self, tenant_id: str, frame_keys: Sequence[str], kind: IndexKind = "visual") -> list[IndexEntry]:
        """Entries of stored frames for the ``kind`` index, in the order given.

        Raises if a frame is missing (ids and frames are written together). Every frame has a
        visual embedding; for "text", frames without a text embedding are left out.
        """
        fields = ("id", "stream_id", "wallclock", VECTOR_FIELD[kind])
        pipe = self.r.pipeline(transaction=False)
        for key in frame_keys:
            pipe.hmget(keys.frame(tenant_id, key), fields)
        entries = []
        for key, (frame_id, stream, wallclock, vector) in zip(frame_keys, pipe.execute()):
            if frame_id is None:
                raise LookupError(f"frame {key} of tenant {tenant_id} is indexed but not stored")
            if vector is None and kind == "text":
                continue
            entries.append(IndexEntry(int(frame_id), key, stream.decode(), float(wallclock),
                                      np.frombuffer(vector, dtype=np.float32)))
        return entries

    def frames_since(self, tenant_id: str, after_id: int, kind: IndexKind = "visual") -> Iterator[IndexEntry]:
        """Every frame of the ``kind`` index with id > after_id, in id order, read a page at a time (for rebuilds)."""
        id_set = _id_set(tenant_id, kind)
        while True:
            page = self.r.zrangebyscore(id_set, f"({after_id}", "+inf", start=0, num=self.page_size, withscores=True)
            if not page:
                return
            yield from self.index_entries(tenant_id, [member.decode() for member, _ in page], kind)
            after_id = int(page[-1][1])

    def frame_count(self, tenant_id: str, kind: IndexKind = "visual") -> int:
        """Frames that belong in the ``kind`` index: all frames for "visual", those with a text embedding for "text"."""
        return self.r.zcard(_id_set(tenant_id, kind))

    def frame_count_upto(self, tenant_id: str, kind: IndexKind, max_id: int) -> int:
        """Frames of the ``kind`` index with id <= max_id."""
        return self.r.zcount(_id_set(tenant_id, kind), "-inf", max_id)

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None, n: int) -> list[FrameRecord]:
        """The n newest frames by wallclock over the given streams (None: all of the tenant's), oldest first."""
        if n < 1:
            return []
        if stream_ids is None:
            stream_ids = [s.stream_id for s in self.streams(tenant_id)]
        pipe = self.r.pipeline(transaction=False)
        for stream in stream_ids:
            pipe.zrevrange(keys.timeline(tenant_id, stream), 0, n - 1, withscores=True)
        newest = sorted((score, member.decode()) for found in pipe.execute() for member, score in found)[-n:]
        found = self.frames(tenant_id, [key for _, key in newest])
        missing = [key for (_, key), f in zip(newest, found) if f is None]
        if missing:
            raise LookupError(f"frames {missing} of tenant {tenant_id} are on a timeline but not stored")
        return found

    def timeline(self, tenant_id: str, stream_id: str, t_from: float | None, t_to: float | None,
                 limit: int) -> list[FrameRecord]:
        """A stream's frames with wallclock in [t_from, t_to] (epoch s; None: open), oldest first, no tokens."""
        members = self.r.zrangebyscore(keys.timeline(tenant_id, stream_id), "-inf" if t_from is None else t_from,
                                       "+inf" if t_to is None else t_to, start=0, num=limit)
        return [f for f in self.frames(tenant_id, [m.decode() for m in members], tokens=False) if f is not None]

    def thumbnail(self, key: str) -> bytes | None:
        """JPEG bytes under a thumbnail key (as `FrameRecord.thumbnail` gives it); other keys are refused."""
        if not keys.is_thumbnail(key):
            raise ValueError(f"{key!r} is not a thumbnail key")
        return self.r.get(key)


def _id_set(tenant_id: str, kind: IndexKind) -> str:
    return keys.ids(tenant_id) if kind == "visual" else keys.text_ids(tenant_id)
