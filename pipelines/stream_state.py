"""Each stream's state as operators set it (live, paused, deleted), and the check the source makes with it.

The state lives in Redis (`keys.stream_control`), written by `pipelines.streams.StreamControl` (HTTP, CLI and
the stream-control topic all go through it) and read by every source before it submits a segment
(`StreamGate.admit`, cached for ``streams.state_ttl_s``, so a pause reaches ingest within that):

- live: the segment goes on into the DAG.
- paused: it is acknowledged and skipped (counted, a metric, not a dead letter); the offsets skipped are
  recorded per partition under the pause's id, which `resume --catch-up` reads back.
- deleted: segments of the publishing sessions the stream had when it was deleted, and any produced before
  it, are skipped the same way. A segment of a new session produced after it starts the stream again, as
  a new publishing session (`pipelines.kafka.sessions`): the state turns live by itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

import redis
from kafka.structs import TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from contracts import messages
from memory_store import keys
from pipelines import metrics

log = logging.getLogger(__name__)

State = Literal["live", "paused", "deleted"]
# How long a pause's record of skipped offsets is kept: longer than any topic retention worth catching up from.
SKIPPED_TTL_S = 30 * 86400


class StreamState(BaseModel):
    """A stream's control state. ``changed_*`` say who set it and when (epoch seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    state: State = "live"
    changed_at: float | None = None
    changed_by: str = ""
    pause_id: str = Field("", description="Names the current (or last) pause: its skipped offsets' record.")
    paused_at: float | None = None
    deleted_at: float | None = None
    stopped_sessions: tuple[str, ...] = Field((), description="Publishing sessions a delete stopped for good.")
    purged_at: float | None = None

    def skips(self, segment: messages.VideoSegment) -> bool:
        if self.state == "paused":
            return True
        if self.state != "deleted":
            return False
        return (segment.session in self.stopped_sessions
                or segment.produced_at.timestamp() <= (self.deleted_at or 0.0))


class StreamStates:
    """Read and write stream states and their skip records in Redis."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def get(self, tenant_id: str, stream_id: str) -> StreamState:
        raw = self.r.get(keys.stream_control(tenant_id, stream_id))
        return StreamState.model_validate_json(raw) if raw else StreamState()

    def exists(self, tenant_id: str, stream_id: str) -> bool:
        return bool(self.r.exists(keys.stream_control(tenant_id, stream_id)))

    def put(self, tenant_id: str, stream_id: str, state: StreamState) -> None:
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(keys.stream_control(tenant_id, stream_id), state.model_dump_json())
            pipe.sadd(keys.controlled_streams(tenant_id), stream_id)
            pipe.execute()

    def controlled(self, tenant_id: str) -> list[str]:
        return sorted(s.decode() for s in self.r.smembers(keys.controlled_streams(tenant_id)))

    def skipped(self, tenant_id: str, stream_id: str) -> int:
        return int(self.r.hget(keys.stream_counters(tenant_id, stream_id), "segments_skipped") or 0)

    def record_skip(self, tenant_id: str, stream_id: str, pause_id: str, tp: TopicPartition,
                    offsets: Sequence[int]) -> None:
        """Count a skipped segment, and widen the pause's span of skipped offsets on its partition."""
        span = keys.stream_skipped(tenant_id, stream_id, pause_id or "none")
        where = f"{tp.topic}|{tp.partition}"
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.stream_counters(tenant_id, stream_id), "segments_skipped", 1)
            pipe.hsetnx(span, f"{where}|from", min(offsets))
            pipe.hset(span, f"{where}|to", max(offsets) + 1)  # a partition's offsets only grow
            pipe.expire(span, SKIPPED_TTL_S)
            pipe.execute()

    def skipped_span(self, tenant_id: str, stream_id: str, pause_id: str) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition, the half-open offset range ``[from, to)`` the pause skipped."""
        raw = {k.decode(): int(v) for k, v in self.r.hgetall(keys.stream_skipped(tenant_id, stream_id,
                                                                                    pause_id)).items()}
        spans: dict[TopicPartition, tuple[int, int]] = {}
        for field, start in raw.items():
            topic, partition, end = field.rsplit("|", 2)
            if end == "from":
                spans[TopicPartition(topic, int(partition))] = (start, raw[f"{topic}|{partition}|to"])
        return spans

    def forget_skipped(self, tenant_id: str, stream_id: str, pause_id: str) -> None:
        self.r.delete(keys.stream_skipped(tenant_id, stream_id, pause_id))

    def audit(self, tenant_id: str, event: dict) -> None:
        """One line of the tenant's stream audit trail: ids, times, who; never content. Survives a purge."""
        body = {"at": time.time(), **event}
        self.r.xadd(keys.stream_audit(tenant_id), {"event": json.dumps(body, default=str)}, maxlen=100_000,
                    approximate=True)

    def audit_trail(self, tenant_id: str, stream_id: str | None = None, limit: int = 100) -> list[dict]:
        out = []
        for entry_id, fields in self.r.xrevrange(keys.stream_audit(tenant_id), count=10 * limit):
            event = json.loads(fields[b"event"])
            if stream_id is None or event.get("stream_id") == stream_id:
                out.append({"id": entry_id.decode(), **event})
                if len(out) == limit:
                    break
        return out


class StreamSettings:
    """A stream's own sampling rate (``sample_fps`` in its settings), cached like `StreamGate`'s states: the
    live DAG stamps it on each segment's SegmentInfo before decode (`pipelines.ray.sources.RayIngest`)."""

    def __init__(self, client: redis.Redis, ttl_s: float, *, clock=time.monotonic):
        self.r = client
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, float | None]] = {}

    def sample_fps(self, tenant_id: str, stream_id: str) -> float | None:
        now = self.clock()
        cached = self._cache.get((tenant_id, stream_id))
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            raw = self.r.hget(keys.stream_settings(tenant_id, stream_id), "sample_fps")
        except redis.RedisError as exc:
            log.warning("settings of %s/%s unreadable (%s): keeping the last read", tenant_id, stream_id, exc)
            return cached[1] if cached else None
        if len(self._cache) > 100_000:
            self._cache.clear()
        value = float(raw) if raw else None
        self._cache[(tenant_id, stream_id)] = (now, value)
        return value


class StreamGate:
    """The source's one check before it submits a segment: does its stream's state let it in?

    States are cached per stream for ``ttl_s``: one Redis read per stream per ttl, whatever the segment rate.
    """

    def __init__(self, client: redis.Redis, ttl_s: float, *, clock=time.monotonic):
        self.states = StreamStates(client)
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, StreamState]] = {}
        self._lock = threading.Lock()

    def state(self, tenant_id: str, stream_id: str) -> StreamState:
        now = self.clock()
        with self._lock:
            cached = self._cache.get((tenant_id, stream_id))
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            state = self.states.get(tenant_id, stream_id)
        except redis.RedisError as exc:
            # Redis is in trouble: the memory write retries the segment anyway. Until Redis answers, the state
            # last read holds (a stream never read is taken as live), loudly.
            log.warning("stream state of %s/%s unreadable (%s): keeping %s", tenant_id, stream_id, exc,
                        cached[1].state if cached else "live")
            return cached[1] if cached else StreamState()
        with self._lock:
            if len(self._cache) > 100_000:  # streams come and go: never let the cache outgrow them
                self._cache.clear()
            self._cache[(tenant_id, stream_id)] = (now, state)
        return state

    def admit(self, segment: messages.VideoSegment, tp: TopicPartition, offsets: Sequence[int]) -> bool:
        """True: ingest it. False: it was skipped (counted); the caller acknowledges its offsets."""
        tenant, stream = segment.tenant_id, segment.stream_id
        state = self.state(tenant, stream)
        if state.state == "deleted" and not state.skips(segment):
            self._revive(segment, state)
            return True
        if not state.skips(segment):
            return True
        metrics.segment_skipped(segment, state.state)
        try:
            self.states.record_skip(tenant, stream, state.pause_id if state.state == "paused" else "", tp, offsets)
        except redis.RedisError as exc:
            log.warning("skipped %s (%s) but could not record it (%s): a catch-up will not re-read it",
                        segment.key, state.state, exc)
        return False

    def _revive(self, segment: messages.VideoSegment, state: StreamState) -> None:
        """A new publishing session of a deleted stream: the stream is live again, as a new session."""
        revived = StreamState(state="live", changed_at=time.time(), changed_by=f"new session {segment.session!r}")
        self.states.put(segment.tenant_id, segment.stream_id, revived)
        self.states.audit(segment.tenant_id, {"stream_id": segment.stream_id, "action": "revived",
                                              "by": revived.changed_by})
        with self._lock:
            self._cache[(segment.tenant_id, segment.stream_id)] = (self.clock(), revived)
