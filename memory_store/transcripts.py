"""What was said: transcript lines (captions, subtitles, recognised speech) in Redis, and their search index.

A line is not a frame: it has its own span, and a caption row may outlast many segments. So lines are records
of their own (``keys.line``), keyed by what they are (``keys.line_key``: stream, source, channel, start), with
a per-tenant FAISS index of their MiniLM embeddings, the model on-screen text is embedded with, so one query
vector searches both (`pipelines.query.engine`).

Writes come with their segment (`MemoryStore.write`): after the segment's own transaction, one transaction
per segment writes its new lines (a line already stored is left alone: replays are no-ops), then their
vectors go into the index. Like the frame indexes, the transcript index is derived state: `rebuild` reads it
back from Redis on start. Lines leave with retention (their start older than the horizon) and with a purge.

Bad input raises StageError with stage "memory":
    bad_transcript    not one finite, non-zero embedding per line, or embeddings of another size than the index
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import redis

from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.hits import Hit
from memory_store.vector_index import VectorIndex
from operators.frames import SegmentInfo, StageError

if TYPE_CHECKING:
    from operators.transcribe import Transcript

log = logging.getLogger(__name__)

_FIELDS = ("id", "stream_id", "seq", "start_s", "end_s", "wallclock", "text", "source", "language", "confidence",
           "channel", "words")


@dataclass(frozen=True)
class LineRecord:
    """One stored transcript line. Times: ``start_s`` / ``end_s`` stream seconds, ``wallclock_*`` epoch seconds.
    words: [text, start_s, end_s, confidence] per word, where the engine gave word timings."""

    id: int
    line_key: str
    stream_id: str
    seq: int
    start_s: float
    end_s: float
    wallclock_start: float
    wallclock_end: float
    text: str
    source: str
    language: str
    confidence: float
    channel: str
    words: list


@dataclass(frozen=True)
class TranscriptHit(Hit):
    """A transcript line matched by a text query. ``frame_key`` is the line's key; ``thumbnail`` the frame shown
    when it started, when memory still has one."""

    text: str
    source: str
    language: str
    confidence: float
    channel: str
    words: list


def _record(line_key: str, h: dict[str, bytes | None]) -> LineRecord:
    start, end, wallclock = float(h["start_s"]), float(h["end_s"]), float(h["wallclock"])
    return LineRecord(int(h["id"]), line_key, h["stream_id"].decode(), int(h["seq"]), start, end, wallclock,
                      wallclock + (end - start), h["text"].decode(), h["source"].decode(), h["language"].decode(),
                      float(h["confidence"]), h["channel"].decode(), json.loads(h["words"]))


class TranscriptMemory:
    """Transcript lines of every tenant of one memory shard: Redis records plus one vector index per tenant."""

    def __init__(self, client: redis.Redis, config: MemoryConfig, tenants: Callable[[], list[str]]):
        self.r = client
        self.config = config
        self._tenants = tenants
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()

    def write(self, seg: SegmentInfo, transcript: Transcript | None) -> int:
        """Store the segment's lines not stored yet and index them; how many were new."""
        if transcript is None or not len(transcript):
            return 0
        vectors = np.ascontiguousarray(transcript.embeddings, dtype=np.float32)
        if not np.isfinite(vectors).all() or not np.linalg.norm(vectors, axis=1).all():
            raise StageError("bad_transcript", "transcript embeddings must be finite, non-zero vectors", stage="memory")
        index = self._index_for(seg.tenant_id, vectors.shape[1])
        line_keys = [keys.line_key(seg.tenant_id, seg.stream_id, line.source, line.channel.replace("/", "_"),
                                   line.start_s) for line in transcript.lines]
        pipe = self.r.pipeline(transaction=False)
        for key in line_keys:
            pipe.exists(keys.line(seg.tenant_id, key))
        fresh = [i for i, (key, found) in enumerate(zip(line_keys, pipe.execute()))
                 if not found and key not in line_keys[:i]]
        if not fresh:
            return 0
        last_id = self.r.incrby(keys.line_next_id(seg.tenant_id), len(fresh))
        ids = list(range(last_id - len(fresh) + 1, last_id + 1))
        wallclocks = [seg.wallclock_start + (transcript.lines[i].start_s - seg.media_start_s) for i in fresh]
        pipe = self.r.pipeline(transaction=True)
        for entry_id, i, wallclock in zip(ids, fresh, wallclocks):
            line = transcript.lines[i]
            pipe.hset(keys.line(seg.tenant_id, line_keys[i]), mapping={
                "id": entry_id, "stream_id": seg.stream_id, "seq": seg.seq, "start_s": line.start_s,
                "end_s": line.end_s, "wallclock": wallclock, "text": line.text, "source": line.source,
                "language": line.language, "confidence": line.confidence, "channel": line.channel,
                "words": json.dumps([[w.text, w.start_s, w.end_s, w.confidence] for w in line.words]),
                "embedding": vectors[i].tobytes()})
            pipe.zadd(keys.lines(seg.tenant_id, seg.stream_id), {line_keys[i]: wallclock})
            pipe.zadd(keys.line_ids(seg.tenant_id), {line_keys[i]: entry_id})
        pipe.execute()
        return index.add(ids, vectors[fresh], [seg.stream_id] * len(fresh), wallclocks)

    def _index_for(self, tenant_id: str, dim: int) -> VectorIndex:
        with self._lock:
            index = self._indexes.get(tenant_id)
            if index is None:
                index = self._indexes[tenant_id] = VectorIndex(dim, ivf_min_vectors=self.config.ivf_min_vectors,
                                                               nprobe=self.config.ivf_nprobe)
        if index.dim != dim:
            raise StageError("bad_transcript", f"tenant {tenant_id} indexes {index.dim}-dim transcript embeddings; "
                             f"this segment has {dim}", stage="memory")
        return index

    def search(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[TranscriptHit]:
        """The k lines most similar to ``vector`` (cosine, best first); scope as `MemoryStore.search`."""
        with self._lock:
            index = self._indexes.get(tenant_id)
        if index is None or k < 1:
            return []
        found = index.search(vector, k, stream_ids=stream_ids, t_from=t_from, t_to=t_to)
        pipe = self.r.pipeline(transaction=False)
        for entry_id, _ in found:
            pipe.zrangebyscore(keys.line_ids(tenant_id), entry_id, entry_id)
        line_keys = [members[0].decode() if members else None for members in pipe.execute()]
        records = self.records(tenant_id, [key for key in line_keys if key is not None])
        hits = []
        for (_, score), record in zip(found, records):
            if record is None:
                continue  # deleted by retention between the search and the read
            hits.append(TranscriptHit(record.line_key, record.stream_id, record.seq, record.start_s, record.end_s,
                                      record.wallclock_start, record.wallclock_end, score,
                                      self._thumbnail_at(tenant_id, record), record.text, record.source,
                                      record.language, record.confidence, record.channel, record.words))
        return hits

    def _thumbnail_at(self, tenant_id: str, record: LineRecord) -> str | None:
        """The thumbnail of the stream's frame on screen when the line started (the last at or before it)."""
        found = self.r.zrevrangebyscore(keys.timeline(tenant_id, record.stream_id), record.wallclock_start, "-inf",
                                        start=0, num=1)
        if not found:
            return None
        thumbnail = self.r.hget(keys.frame(tenant_id, found[0].decode()), "thumbnail")
        return thumbnail.decode() if thumbnail is not None else None

    def records(self, tenant_id: str, line_keys: Sequence[str]) -> list[LineRecord | None]:
        pipe = self.r.pipeline(transaction=False)
        for key in line_keys:
            pipe.hmget(keys.line(tenant_id, key), _FIELDS)
        return [_record(key, dict(zip(_FIELDS, values))) if values[0] is not None else None
                for key, values in zip(line_keys, pipe.execute())]

    def lines(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
              limit: int = 1000) -> list[LineRecord]:
        """A stream's lines starting in [t_from, t_to] (epoch s; None: open), oldest first."""
        members = self.r.zrangebyscore(keys.lines(tenant_id, stream_id), "-inf" if t_from is None else t_from,
                                       "+inf" if t_to is None else t_to, start=0, num=limit)
        return [r for r in self.records(tenant_id, [m.decode() for m in members]) if r is not None]

    def expire(self, tenant_id: str, stream_id: str, horizon: float) -> int:
        """Delete the stream's lines that started before ``horizon`` (epoch s); how many went."""
        members = [m.decode() for m in self.r.zrangebyscore(keys.lines(tenant_id, stream_id), "-inf", f"({horizon}")]
        if not members:
            return 0
        ids = [int(i) for i in self.r.zmscore(keys.line_ids(tenant_id), members) if i is not None]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*[keys.line(tenant_id, m) for m in members])
        pipe.zrem(keys.lines(tenant_id, stream_id), *members)
        pipe.zrem(keys.line_ids(tenant_id), *members)
        pipe.execute()
        with self._lock:
            index = self._indexes.get(tenant_id)
        if index is not None:
            index.remove(ids)
        return len(members)

    def rebuild(self) -> None:
        """Every tenant's index from the lines Redis holds (the transcript index keeps no snapshot; lines are
        few beside frames). `MemoryStore.rebuild` calls it on start."""
        indexes: dict[str, VectorIndex] = {}
        for tenant in self._tenants():
            members = self.r.zrange(keys.line_ids(tenant), 0, -1, withscores=True)
            if not members:
                continue
            pipe = self.r.pipeline(transaction=False)
            for key, _ in members:
                pipe.hmget(keys.line(tenant, key.decode()), ("embedding", "stream_id", "wallclock"))
            rows = [(int(score), row) for (_, score), row in zip(members, pipe.execute()) if row[0] is not None]
            if not rows:
                continue
            vectors = np.stack([np.frombuffer(row[0], dtype=np.float32) for _, row in rows])
            index = VectorIndex(vectors.shape[1], ivf_min_vectors=self.config.ivf_min_vectors,
                                nprobe=self.config.ivf_nprobe)
            index.add([i for i, _ in rows], vectors, [row[1].decode() for _, row in rows],
                      [float(row[2]) for _, row in rows])
            indexes[tenant] = index
            log.info("tenant %s: %d transcript lines indexed from Redis", tenant, len(rows))
        with self._lock:
            self._indexes = indexes

    def size(self, tenant_id: str) -> int:
        with self._lock:
            index = self._indexes.get(tenant_id)
        return len(index) if index is not None else 0
