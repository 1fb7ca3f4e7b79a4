"""The Redis tier: everything memory keeps about a frame, written once per segment, atomically.

A segment is written in one MULTI/EXEC transaction: its frames, thumbnails,
index ids, stream stats, short-tier bookkeeping and, last, its segment marker.
Either all of it exists or none of it, so the marker's presence means "this
segment is durable" and a replay can return at once.

Durability: the local stack runs redis-server with AOF ``appendfsync always``.
Redis then fsyncs the AOF before it replies to EXEC, so EXEC returning means the
segment survives a crash of redis-server. That is what lets the Kafka source
commit the segment's offsets as soon as ``write_segment`` returns.

Short tier: only the newest ``MemoryConfig.recent_frames`` frames of a stream (by
pts) keep their tokens; the write that pushes a frame out of that window deletes
its token fields in the same transaction. Metadata and embedding stay forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import redis

from memory_store import keys
from operators.frames import CompressedBatch, StageError
from pipelines.config import MemoryConfig

# The fields of a frame hash that leave when the frame leaves the short tier.
TOKEN_FIELDS = ("positions", "tokens", "token_shape")
_META_FIELDS = ("id", "stream_id", "seq", "pts_s", "t_end_s", "wallclock", "embedding", "drop_ratio", "grid",
                "thumbnail")
_STATS_FIELDS = ("first_wallclock", "last_wallclock", "first_media_s", "last_media_s", "last_seq")
# Positions are stored as int16.
_MAX_TOKENS_PER_FRAME = 1 << 15


@dataclass(frozen=True)
class WriteResult:
    """A segment that this call made durable. ``tokens_evicted``: frames of the stream that left the short tier."""

    tenant_id: str
    stream_id: str
    seq: int
    frame_keys: tuple[str, ...]
    ids: tuple[int, ...]
    wallclocks: tuple[float, ...]
    tokens_evicted: int


@dataclass(frozen=True)
class StreamInfo:
    """What a tenant's stream has stored: wallclock (epoch s) and media (s from stream start) ranges covered."""

    stream_id: str
    first_wallclock: float
    last_wallclock: float
    first_media_s: float
    last_media_s: float
    frames: int
    segments: int
    last_seq: int
    updated_at: float


@dataclass
class FrameRecord:
    """One stored frame. ``positions``/``tokens`` are None once the frame has left the short tier.

    tokens: float16 [K, D], the kept tokens; positions: int16 [K], their index in the frame's token grid.
    """

    id: int
    frame_key: str
    stream_id: str
    seq: int
    pts_s: float
    t_end_s: float
    wallclock_start: float
    wallclock_end: float
    embedding: np.ndarray
    drop_ratio: float
    grid: tuple[int, int]
    thumbnail: str | None
    positions: np.ndarray | None
    tokens: np.ndarray | None


class IndexEntry(NamedTuple):
    """What the vector index needs of a frame."""

    id: int
    frame_key: str
    stream_id: str
    wallclock: float
    embedding: np.ndarray


class RedisTier:
    """Frames, thumbnails and stream stats of every tenant in one Redis (binary-safe client required)."""

    def __init__(self, client: redis.Redis, config: MemoryConfig, *, page_size: int = 1000):
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisTier stores binary arrays: give it a client with decode_responses=False")
        self.r = client
        self.config = config
        self.page_size = page_size

    # -- writing -------------------------------------------------------------------------------

    def write_segment(self, batch: CompressedBatch) -> WriteResult | None:
        """Store a segment atomically; None when it was already stored (a replay changes nothing)."""
        seg = batch.segment
        tenant, stream = seg.tenant_id, seg.stream_id
        frames = _encode_frames(batch)
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
            pipe.set(counter, ids[-1])
            pipe.zadd(keys.timeline(tenant, stream), {f.key: f.wallclock for f in frames})
            pipe.zadd(short, {f.key: f.pts for f in frames})
            if victims:
                pipe.zrem(short, *victims)
                for victim in victims:
                    pipe.hdel(keys.frame(tenant, victim), *TOKEN_FIELDS)
            pipe.sadd(keys.streams(tenant), stream)
            pipe.hset(stats, mapping=_merged_stats(old_stats, batch, frames))
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
        return [_stream_info(s, h) for s, h in zip(stream_ids, pipe.execute())]

    def stream_info(self, tenant_id: str, stream_id: str) -> StreamInfo | None:
        found = self.r.hgetall(keys.stream_stats(tenant_id, stream_id))
        return _stream_info(stream_id, found) if found else None

    def frames(self, tenant_id: str, frame_keys: Sequence[str], *, tokens: bool = True) -> list[FrameRecord | None]:
        """The frames in the order asked; None for a key not stored. ``tokens=False`` skips the token fields."""
        fields = _META_FIELDS + TOKEN_FIELDS if tokens else _META_FIELDS
        pipe = self.r.pipeline(transaction=False)
        for key in frame_keys:
            pipe.hmget(keys.frame(tenant_id, key), fields)
        return [_frame_record(key, dict(zip(fields, values))) if values[0] is not None else None
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

    def index_entries(self, tenant_id: str, frame_keys: Sequence[str]) -> list[IndexEntry]:
        """Index entries of stored frames; raises if one is missing (ids and frames are written together)."""
        fields = ("id", "stream_id", "wallclock", "embedding")
        pipe = self.r.pipeline(transaction=False)
        for key in frame_keys:
            pipe.hmget(keys.frame(tenant_id, key), fields)
        entries = []
        for key, (frame_id, stream, wallclock, embedding) in zip(frame_keys, pipe.execute()):
            if frame_id is None:
                raise LookupError(f"frame {key} of tenant {tenant_id} is indexed but not stored")
            entries.append(IndexEntry(int(frame_id), key, stream.decode(), float(wallclock),
                                      np.frombuffer(embedding, dtype=np.float32)))
        return entries

    def frames_since(self, tenant_id: str, after_id: int) -> Iterator[IndexEntry]:
        """Every frame with id > after_id, in id order, read a page at a time (for rebuilding the index)."""
        while True:
            page = self.r.zrangebyscore(keys.ids(tenant_id), f"({after_id}", "+inf", start=0, num=self.page_size,
                                        withscores=True)
            if not page:
                return
            yield from self.index_entries(tenant_id, [member.decode() for member, _ in page])
            after_id = int(page[-1][1])

    def frame_count(self, tenant_id: str) -> int:
        return self.r.zcard(keys.ids(tenant_id))

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

    def thumbnail(self, key: str) -> bytes | None:
        """JPEG bytes under a thumbnail key (as `FrameRecord.thumbnail` gives it); other keys are refused."""
        if not keys.is_thumbnail(key):
            raise ValueError(f"{key!r} is not a thumbnail key")
        return self.r.get(key)


@dataclass(frozen=True)
class _Frame:
    key: str
    pts: float
    wallclock: float
    t_end: float
    fields: dict[str, bytes | str | int | float]
    thumbnail: bytes | None


def _encode_frames(batch: CompressedBatch) -> list[_Frame]:
    """Frame hashes of a segment, validated before anything is written."""
    seg = batch.segment
    n = len(batch)
    if n == 0:
        raise StageError("empty_segment", f"segment {seg.seq} of {seg.stream_id} has no frames to store",
                         stage="memory")
    embedding = np.ascontiguousarray(batch.embedding, dtype=np.float32)
    if embedding.ndim != 2 or not np.isfinite(embedding).all() or not np.linalg.norm(embedding, axis=1).all():
        # A zero vector has no direction: cosine search cannot place it.
        raise StageError("bad_embedding", f"embedding must be finite, non-zero rows [N, E], got {embedding.shape}",
                         stage="memory")
    if batch.kept.shape[1] > _MAX_TOKENS_PER_FRAME:
        raise ValueError(f"{batch.kept.shape[1]} tokens per frame; positions are stored as int16")
    if batch.thumbnails and len(batch.thumbnails) != n:
        raise ValueError(f"{len(batch.thumbnails)} thumbnails for {n} frames")
    pts = [float(p) for p in batch.pts_s]
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError(f"pts of segment {seg.seq} of {seg.stream_id} must be strictly increasing")
    # A frame lasts until the next one; the last until the segment ends. A publisher may not
    # know the duration (0 is valid on the wire): the last frame then ends where it starts.
    ends = pts[1:] + [max(seg.media_start_s + seg.duration_s, pts[-1])]
    counts = batch.kept.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    tokens = batch.tokens.astype(np.float16, copy=False)
    frames = []
    for i in range(n):
        key = seg.frame_key(pts[i])
        wallclock = seg.wallclock_start + (pts[i] - seg.media_start_s)
        kept_tokens = tokens[starts[i] : starts[i + 1]]
        fields: dict[str, bytes | str | int | float] = {
            "stream_id": seg.stream_id,
            "seq": seg.seq,
            "pts_s": pts[i],
            "t_end_s": ends[i],
            "wallclock": wallclock,
            "embedding": embedding[i].tobytes(),
            "drop_ratio": float(batch.drop_ratio[i]),
            "grid": f"{batch.grid[0]},{batch.grid[1]}",
            "positions": np.flatnonzero(batch.kept[i]).astype(np.int16).tobytes(),
            "tokens": np.ascontiguousarray(kept_tokens).tobytes(),
            "token_shape": f"{kept_tokens.shape[0]},{kept_tokens.shape[1]}",
        }
        thumbnail = batch.thumbnails[i] if batch.thumbnails else None
        if thumbnail is not None:
            fields["thumbnail"] = keys.thumbnail(seg.tenant_id, key)
        frames.append(_Frame(key, pts[i], wallclock, ends[i], fields, thumbnail))
    if len({f.key for f in frames}) != n:
        raise StageError("duplicate_frame_key", f"two frames of segment {seg.seq} share a millisecond pts",
                         stage="memory")
    return frames


def _merged_stats(old: list[float | None], batch: CompressedBatch, frames: list[_Frame]) -> dict[str, float | int]:
    """Stream stats widened by this segment; segments may arrive out of order, so min/max, not last-wins."""
    first_wc, last_wc, first_media, last_media, last_seq = old
    seg_end_wc = frames[-1].wallclock + (frames[-1].t_end - frames[-1].pts)
    return {
        "first_wallclock": min(frames[0].wallclock, first_wc if first_wc is not None else np.inf),
        "last_wallclock": max(seg_end_wc, last_wc if last_wc is not None else -np.inf),
        "first_media_s": min(frames[0].pts, first_media if first_media is not None else np.inf),
        "last_media_s": max(frames[-1].t_end, last_media if last_media is not None else -np.inf),
        "last_seq": max(batch.segment.seq, int(last_seq) if last_seq is not None else -1),
        "updated_at": time.time(),
    }


def _stream_info(stream_id: str, h: dict[bytes, bytes]) -> StreamInfo:
    return StreamInfo(
        stream_id=stream_id,
        first_wallclock=float(h[b"first_wallclock"]),
        last_wallclock=float(h[b"last_wallclock"]),
        first_media_s=float(h[b"first_media_s"]),
        last_media_s=float(h[b"last_media_s"]),
        frames=int(h[b"frames"]),
        segments=int(h[b"segments"]),
        last_seq=int(h[b"last_seq"]),
        updated_at=float(h[b"updated_at"]),
    )


def _frame_record(frame_key: str, h: dict[str, bytes | None]) -> FrameRecord:
    pts, t_end, wallclock = float(h["pts_s"]), float(h["t_end_s"]), float(h["wallclock"])
    rows, cols = (int(x) for x in h["grid"].split(b","))
    positions = tokens = None
    if h.get("tokens") is not None:
        k, d = (int(x) for x in h["token_shape"].split(b","))
        positions = np.frombuffer(h["positions"], dtype=np.int16)
        tokens = np.frombuffer(h["tokens"], dtype=np.float16).reshape(k, d)
    return FrameRecord(
        id=int(h["id"]),
        frame_key=frame_key,
        stream_id=h["stream_id"].decode(),
        seq=int(h["seq"]),
        pts_s=pts,
        t_end_s=t_end,
        wallclock_start=wallclock,
        wallclock_end=wallclock + (t_end - pts),
        embedding=np.frombuffer(h["embedding"], dtype=np.float32),
        drop_ratio=float(h["drop_ratio"]),
        grid=(rows, cols),
        thumbnail=h["thumbnail"].decode() if h["thumbnail"] is not None else None,
        positions=positions,
        tokens=tokens,
    )
