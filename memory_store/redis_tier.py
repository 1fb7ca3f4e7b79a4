"""The Redis tier: everything memory keeps about a frame, written once per segment, atomically.

A segment is written in one MULTI/EXEC transaction: its frames (on-screen text
included), thumbnails, index ids, stream stats, short-tier bookkeeping and, last,
its segment marker. Either all of it exists or none of it, so the marker's
presence means "this segment is durable" and a replay can return at once.

Durability: the local stack runs redis-server with AOF ``appendfsync always``.
Redis then fsyncs the AOF before it replies to EXEC, so EXEC returning means the
segment survives a crash of redis-server. That is what lets the Kafka source
commit the segment's offsets as soon as ``write_segment`` returns.

Id sets: ``ll:{t}:ids`` holds every index entry (frames, event segments, merged
entries), ``ll:{t}:text_ids`` those with a text embedding, both scored by id. Ids
are allocated from ``next_id`` in the transaction that adds them to the sets, and
transactions on a tenant are serialised by WATCH on ``next_id``, so an id is
never handed out twice; an entry leaves the sets in the transaction that deletes
it. The service's rebuild relies on both (see ``memory_store.rebuild``).

Tiers: the same transaction folds the frames into the stream's events and keeps
the short, mid and long tiers within their budgets and the retention horizon
(`memory_store.tiers`). It also records the segment's Kafka offset and, on the
tenant's first write, its data epoch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.events import Reference, read_blob
from memory_store.records import (
    MAX_GAPS_LISTED,
    META_FIELDS,
    TOKEN_FIELDS,
    VECTOR_FIELD,
    FrameRecord,
    IndexEntry,
    IndexKind,
    StreamGap,
    StreamInfo,
    WriteResult,
    encode_frames,
    frame_record,
    merged_stats,
    stream_info,
)
from memory_store.replace import StoredSegment
from memory_store.tiers.transaction import StreamTxn
from operators.frames import CompressedBatch, FrameText

log = logging.getLogger(__name__)

_STATS_FIELDS = ("first_wallclock", "last_wallclock", "first_media_s", "last_media_s", "last_seq")


@dataclass(frozen=True)
class ExpireResult:
    """What retention deleted from a stream: entries, their index ids, and whether the stream is now gone."""

    deleted: int
    removed_ids: tuple[int, ...]
    forgotten: bool


class RedisTier:
    """Frames, thumbnails and stream stats of every tenant in one Redis (binary-safe client required)."""

    def __init__(self, client: redis.Redis, config: MemoryConfig, *, page_size: int = 1000):
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisTier stores binary arrays: give it a client with decode_responses=False")
        self.r = client
        self.config = config
        self.page_size = page_size
        # Open events' token references (memory_store.events), so a write need not read the event's blob back.
        self._refs: dict[str, Reference] = {}

    # -- writing -------------------------------------------------------------------------------

    def write_segment(self, batch: CompressedBatch, texts: Sequence[FrameText] | None = None, *,
                      replace: bool = False) -> WriteResult | None:
        """Store a segment atomically; None when it was already stored (a replay changes nothing, texts included).

        texts: one per frame, in pts order, or None; stored in the same transaction as the frames.
        replace: a stored version of the segment is removed in the same transaction and this one written
            instead (`memory_store.replace`); the result names the removed ids. Never None then.
        """
        seg = batch.segment
        tenant, stream = seg.tenant_id, seg.stream_id
        frames = encode_frames(batch, texts)
        marker = keys.segment(tenant, stream, seg.segment_id)
        counter = keys.next_id(tenant)
        stats = keys.stream_stats(tenant, stream)
        short = keys.short_tier(tenant, stream)
        # Before the transaction, so a tenant whose frames are durable is always listed for rebuild;
        # outside it, because this key is in no tenant's hash slot.
        self.r.sadd(keys.TENANTS, tenant)

        source = f"{seg.topic}:{seg.partition}" if seg.partition >= 0 else None

        def transaction(pipe: redis.client.Pipeline) -> tuple[WriteResult, StreamTxn] | None:
            # Reads run at once, under WATCH: if another writer touches any watched key before
            # EXEC, EXEC fails and redis-py runs this function again on fresh values. The first ones go in
            # one round trip, on another connection of the pool (its replies are as fresh as WATCH's).
            reads = pipe.pipeline(transaction=False)
            reads.exists(marker)
            reads.hmget(stats, _STATS_FIELDS)
            reads.hget(keys.stream_settings(tenant, stream), "retention_s")
            if source is not None:  # a segment from Kafka: the highest offset stored of its partition
                reads.hget(keys.offsets(tenant), source)
            exists, stat_values, retention, *offset = reads.execute()
            stored = None
            if exists:
                if not replace:
                    pipe.unwatch()
                    return None
                stored = StoredSegment.read(pipe, tenant, stream, seg.segment_id)
            txn = StreamTxn(pipe, self.config, tenant, stream, self._refs)
            if stored is not None:
                txn.remove_frames(stored.frame_keys)
            old_stats = [None if v is None else float(v) for v in stat_values]
            old_offset = int(offset[0] or -1) if offset else -1
            ids = txn.allocate(len(frames))
            for f, event in zip(frames, txn.fold(batch, frames)):
                if event is not None:
                    f.fields["event"] = event
            txn.add_frames(frames, ids)
            new_stats = merged_stats(old_stats, batch, frames)
            # Retention first: what it deletes need not be evicted or merged.
            if txn.retain(new_stats["last_wallclock"] - self._retention(retention)):
                new_stats.update(txn.first_remaining(frames))
            txn.evict_short(frames, leaving=stored.in_short_tier if stored else ())
            txn.evict_mid()
            txn.merge_long(frames)

            pipe.multi()
            if stored is not None:
                stored.queue_removal(pipe)  # first: the new version's keys may be the same as the old one's
            with_text = {f.key: i for i, f in zip(ids, frames) if f.text_indexed}
            pipe.zadd(keys.ids(tenant), {f.key: i for i, f in zip(ids, frames)})
            if with_text:
                pipe.zadd(keys.text_ids(tenant), with_text)
            pipe.zadd(keys.timeline(tenant, stream), {f.key: f.wallclock for f in frames})
            txn.queue(new_stats)
            pipe.sadd(keys.streams(tenant), stream)
            pipe.hincrby(stats, "frames", len(frames))
            pipe.hincrby(stats, "segments", 1)
            pipe.hdel(stats, "ended_at")  # a stream that writes again is live again
            pipe.set(keys.epoch(tenant), uuid.uuid4().hex, nx=True)
            if source is not None and seg.offset > old_offset:
                pipe.hset(keys.offsets(tenant), source, seg.offset)
            pipe.zadd(keys.segments(tenant, stream), {seg.segment_id: new_stats["last_wallclock"]})
            if seg.gap_before_s > 0:
                gap = StreamGap(seg.media_start_s - seg.gap_before_s, seg.media_start_s, seg.wallclock_start,
                                seg.segment_id)
                pipe.zadd(keys.gaps(tenant, stream), {gap.member(): seg.wallclock_start})
            pipe.sadd(marker, *(f.key for f in frames))
            result = WriteResult(tenant, stream, seg.seq, tuple(f.key for f in frames), tuple(ids),
                                 tuple(f.wallclock for f in frames), txn.evicted_short,
                                 (stored.ids if stored else ()) + tuple(txn.removed), tuple(txn.added),
                                 tuple(txn.text_added))
            return result, txn

        done = self.r.transaction(transaction, marker, counter, stats, short, value_from_callable=True)
        if done is None:
            return None
        result, txn = done
        self._committed(txn)
        return result

    def end_stream(self, tenant_id: str, stream_id: str, now: float) -> list[IndexEntry] | None:
        """Mark a stream ended: its open event is closed; its history stays until retention. Returns the index
        entries that creates (for the caller's index), None if the stream is unknown. A later segment of the
        stream makes it live again."""
        stats = keys.stream_stats(tenant_id, stream_id)

        def transaction(pipe: redis.client.Pipeline) -> StreamTxn | None:
            if not pipe.exists(stats):
                pipe.unwatch()
                return None
            txn = StreamTxn(pipe, self.config, tenant_id, stream_id, self._refs)
            txn.close_open_event()
            pipe.multi()
            txn.queue({"ended_at": now})
            return txn

        txn = self.r.transaction(transaction, stats, keys.next_id(tenant_id), value_from_callable=True)
        if txn is None:
            return None
        self._committed(txn)
        return txn.added

    def expire_stream(self, tenant_id: str, stream_id: str, horizon: float) -> ExpireResult:
        """Apply retention to a stream that may no longer write (paused, ended): delete what ended before
        ``horizon`` (epoch s). A stream left with nothing is forgotten (its stats and id in the stream set)."""
        stats = keys.stream_stats(tenant_id, stream_id)

        def transaction(pipe: redis.client.Pipeline) -> tuple[ExpireResult, StreamTxn]:
            txn = StreamTxn(pipe, self.config, tenant_id, stream_id, self._refs)
            deleted = txn.retain(horizon)
            remaining = txn.first_remaining(())
            pipe.multi()
            if remaining or txn.has_open_event():
                txn.queue(remaining)
            else:
                txn.queue_forget()
                pipe.srem(keys.streams(tenant_id), stream_id)
            return ExpireResult(deleted, tuple(txn.removed), not (remaining or txn.has_open_event())), txn

        result, txn = self.r.transaction(transaction, stats, keys.next_id(tenant_id), value_from_callable=True)
        self._committed(txn)
        return result

    def retention_s(self, tenant_id: str, stream_id: str) -> float:
        """The stream's retention: its own (`livelens streams set --retention`) or memory.retention_s."""
        return self._retention(self.r.hget(keys.stream_settings(tenant_id, stream_id), "retention_s"))

    def _retention(self, value: bytes | None) -> float:
        return float(value) if value else self.config.retention_s

    def set_retention_s(self, tenant_id: str, stream_id: str, seconds: float | None) -> None:
        """Give the stream a retention of its own; None: back to memory.retention_s."""
        if seconds is None:
            self.r.hdel(keys.stream_settings(tenant_id, stream_id), "retention_s")
        elif seconds <= 0:
            raise ValueError(f"retention must be > 0 seconds, got {seconds}")
        else:
            self.r.hset(keys.stream_settings(tenant_id, stream_id), "retention_s", repr(float(seconds)))

    def _committed(self, txn: StreamTxn) -> None:
        """After EXEC: the cached event references and the log lines the transaction held back."""
        for key, ref in txn.ref_updates.items():
            if ref is None:
                self._refs.pop(key, None)
            else:
                self._refs[key] = ref
        for line in txn.log:
            log.info(line)
        for line in txn.warnings:
            log.warning(line)

    # -- reading -------------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        return sorted(t.decode() for t in self.r.smembers(keys.TENANTS))

    def streams(self, tenant_id: str) -> list[StreamInfo]:
        stream_ids = sorted(s.decode() for s in self.r.smembers(keys.streams(tenant_id)))
        pipe = self.r.pipeline(transaction=False)
        for stream in stream_ids:
            pipe.hgetall(keys.stream_stats(tenant_id, stream))
            pipe.zrange(keys.gaps(tenant_id, stream), -MAX_GAPS_LISTED, -1)
        found = pipe.execute()
        return [stream_info(s, h, g) for s, h, g in zip(stream_ids, found[::2], found[1::2])]

    def stream_info(self, tenant_id: str, stream_id: str) -> StreamInfo | None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.stream_stats(tenant_id, stream_id))
        pipe.zrange(keys.gaps(tenant_id, stream_id), -MAX_GAPS_LISTED, -1)
        found, gaps = pipe.execute()
        return stream_info(stream_id, found, gaps) if found else None

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

    def segment_frame_keys(self, tenant_id: str, stream_id: str, seq: int | str) -> list[str]:
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

    def id_set(self, tenant_id: str, kind: IndexKind = "visual") -> dict[int, str]:
        """Every id of the ``kind`` index with its entry key, read a page at a time (for rebuilds)."""
        id_set, out, start = _id_set(tenant_id, kind), {}, 0
        while page := self.r.zrange(id_set, start, start + self.page_size * 10 - 1, withscores=True):
            out.update((int(score), member.decode()) for member, score in page)
            start += len(page)
        return out

    def epoch(self, tenant_id: str) -> str | None:
        """The tenant's data epoch (set by its first write): a snapshot of another epoch indexed other data."""
        found = self.r.get(keys.epoch(tenant_id))
        return found.decode() if found is not None else None

    def offsets(self, tenant_id: str) -> dict[str, int]:
        """Per "topic:partition", the highest Kafka offset of a segment the tenant stored."""
        return {k.decode(): int(v) for k, v in self.r.hgetall(keys.offsets(tenant_id)).items()}

    def frame_count(self, tenant_id: str, kind: IndexKind = "visual") -> int:
        """Frames that belong in the ``kind`` index: all frames for "visual", those with a text embedding for "text"."""
        return self.r.zcard(_id_set(tenant_id, kind))

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None, n: int, t_from: float | None = None,
               t_to: float | None = None) -> list[FrameRecord]:
        """The n newest frames by wallclock in [t_from, t_to] (None: open) over the given streams (None: all of
        the tenant's), oldest first."""
        if n < 1:
            return []
        if stream_ids is None:
            stream_ids = [s.stream_id for s in self.streams(tenant_id)]
        pipe = self.r.pipeline(transaction=False)
        for stream in stream_ids:
            pipe.zrevrangebyscore(keys.timeline(tenant_id, stream), "+inf" if t_to is None else t_to,
                                  "-inf" if t_from is None else t_from, start=0, num=n, withscores=True)
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

    def event_tokens(self, tenant_id: str, event_key: str) -> np.ndarray | None:
        """An event's mid-tier tokens (records with fields dt (ms after the event's first frame), pos, tok), or None
        when the event is not stored or has given up its tokens (`memory_store.events`)."""
        token_dim, blob_bytes = self.r.hmget(keys.frame(tenant_id, event_key), ("token_dim", "blob_bytes"))
        if token_dim is None or not int(blob_bytes):
            return None
        return read_blob(self.r.get(keys.event_tokens(tenant_id, event_key)) or b"", int(token_dim))

    def thumbnail(self, key: str) -> bytes | None:
        """JPEG bytes under a thumbnail key (as `FrameRecord.thumbnail` gives it); other keys are refused."""
        if not keys.is_thumbnail(key):
            raise ValueError(f"{key!r} is not a thumbnail key")
        return self.r.get(key)


def _id_set(tenant_id: str, kind: IndexKind) -> str:
    return keys.ids(tenant_id) if kind == "visual" else keys.text_ids(tenant_id)
