"""The Kafka source: consume video segments, push them through the DAG, commit what is durable.

The order of things is the delivery guarantee (at-least-once, made exactly-once
in effect by idempotent memory writes):

1. A record's offset is tracked as pending the moment it is polled.
2. Chunks are reassembled; a whole segment is submitted to the ingest backend.
3. When the backend says the segment's memory write returned (durable: Redis
   runs appendfsync always) and its clip location (and archive copy) is
   recorded (`pipelines.clips.ClipKeeper`), or its dead letter was acknowledged
   by the broker, every offset it spanned is marked done.
4. Only then can the partition's commit point pass it (`OffsetTracker`).

A crash anywhere before 4 replays the segment; the memory writer sees the
segment marker and changes nothing.

Backpressure: at most `max_inflight_segments` in the DAG; past that the source
pauses its partitions but keeps calling poll(), so it never misses the group's
poll deadline and is never kicked out of the group for being slow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from contracts import messages
from operators.frames import SegmentInfo, StageError
from pipelines import metrics
from pipelines.clips import ClipKeeper
from pipelines.config import LivelensConfig
from pipelines.kafka import dead_letters, tenancy
from pipelines.kafka.client import ensure_topics, make_consumer, make_producer
from pipelines.kafka.offsets import OffsetTracker
from pipelines.kafka.publish import PendingBytesExceeded, SegmentAssembler
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)


class IngestBackend(Protocol):
    """Where segments go. `pipelines.ray.dag.RayIngest` is the real one; tests may use an in-process one."""

    def submit(self, info: SegmentInfo, payload: bytes) -> Any: ...

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any:
        """The write's result; raises StageError for bad input, anything else for infrastructure failures."""
        ...


def segment_info(segment: messages.VideoSegment, tp: TopicPartition | None = None, offset: int = -1) -> SegmentInfo:
    """The DAG's view of a segment; ``tp`` / ``offset``: where its last record was read (memory's snapshot
    manifest records the offsets it covers)."""
    return SegmentInfo(
        tenant_id=segment.tenant_id,
        stream_id=segment.stream_id,
        seq=segment.seq,
        wallclock_start=segment.wallclock_start.timestamp(),
        media_start_s=segment.media_start_s,
        duration_s=segment.duration_s,
        codec=segment.codec,
        container=segment.container,
        topic=tp.topic if tp is not None else "",
        partition=tp.partition if tp is not None else -1,
        offset=offset,
        session=segment.session,
    )


@dataclass
class _InFlight:
    tp: TopicPartition
    offsets: list[int]
    segment: messages.VideoSegment
    payload: bytes
    attempt: int = 1


@dataclass
class SourceStats:
    records: int = 0
    segments_submitted: int = 0
    segments_stored: int = 0
    segments_replayed: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    commits: int = 0
    reconnects: int = 0
    paused: bool = False
    # Seconds from the publisher's produce to the segment being visible in memory.
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "latencies_s"}
        out["latencies_s"] = list(self.latencies_s)
        return out


class KafkaSegmentSource:
    def __init__(self, config: LivelensConfig, backend: IngestBackend, *, source_id: str = "source-0"):
        self.config = config
        self.backend = backend
        self.source_id = source_id
        self.stats = SourceStats()
        self._tracker = OffsetTracker()
        # One assembler per partition: a stream's chunks all arrive on its partition, and a revoked
        # partition's half-assembled segments are dropped with it.
        self._assemblers: dict[TopicPartition, SegmentAssembler] = {}
        self._inflight: dict[Any, _InFlight] = {}
        self._topics = tenancy.TopicWatch(config.kafka, "segments")
        self._consumer = None
        self._producer = None
        self._clips = ClipKeeper(config, redis_client(config.redis))
        self._gauges = metrics.SourceGauges(source_id, config.kafka.ingest_group, config.metrics.lag_interval_s)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set. Survives broker restarts: reconnects, recreates topics, resumes."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self._connect()
                backoff = 0.5
                while not stop.is_set():
                    self._step()
            except KafkaError as exc:
                self.stats.reconnects += 1
                log.warning("%s: Kafka error (%s); reconnecting in %.1f s", self.source_id, exc, backoff)
                self._disconnect(drain=True)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._disconnect(drain=True)

    def _connect(self) -> None:
        ensure_topics(self.config.kafka)
        self._producer = make_producer(self.config.kafka)
        self._consumer = make_consumer(
            self.config.kafka, self.config.kafka.ingest_group, [],
            client_id=self.source_id, max_poll_records=self.config.pipeline.max_inflight_segments * 4,
        )
        # Subscribe with a listener, so revoked partitions are drained and committed first; with tenant topics,
        # to every tenant's segments topic (rebuilt when a tenant's appears: `_step`).
        self._topics.subscribe(self._consumer, listener=_Rebalance(self))

    def _disconnect(self, *, drain: bool) -> None:
        if drain:
            self._drain(list(self._inflight), timeout_s=30)
            try:
                self._commit()
            except KafkaError as exc:
                log.warning("%s: final commit failed (%s); the records will be replayed", self.source_id, exc)
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a client of a dead broker may raise; nothing left to save
                    log.debug("close failed", exc_info=True)
        self._consumer = self._producer = None
        self._tracker = OffsetTracker()
        self._assemblers = {}

    # -- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        self._topics.refresh(self._consumer)
        if not self._topics.topics:  # tenant topics, and no tenant has published yet
            time.sleep(0.1)
            return
        room = self.config.pipeline.max_inflight_segments - len(self._inflight)
        self._set_paused(room <= 0)
        batch = self._consumer.poll(timeout_ms=50, max_records=max(1, room * 4))
        for tp, records in batch.items():
            for record in records:
                self._accept(tp, record)
        self._collect(timeout_s=0.0 if batch else 0.05)
        self._commit()
        self._gauges.maybe_report(self._consumer, self._tracker, inflight=len(self._inflight), paused=self.stats.paused)

    def _accept(self, tp: TopicPartition, record: Any) -> None:
        self.stats.records += 1
        self._tracker.add(tp, record.offset)
        try:
            segment, chunk = messages.decode(record.value, expect=messages.VideoSegment, headers=record.headers)
        except messages.MessageError as exc:
            self._dead_letter(tp, [record.offset], None, "source", exc.code, exc.reason, len(record.value or b""))
            return
        if refused := tenancy.refusal(self.config.kafka, "segments", tp.topic, segment.tenant_id):
            # The topic's tenant is the one ACLs let write there: the letter is filed under it, not the claim.
            self._dead_letter(tp, [record.offset], segment, "source", tenancy.TENANT_MISMATCH, refused.reason,
                              len(chunk), tenant_id=refused.owner)
            return
        assembler = self._assemblers.setdefault(tp, SegmentAssembler())
        try:
            whole = assembler.add(segment, chunk, record.offset)
        except PendingBytesExceeded as exc:
            self._dead_letter(tp, [record.offset], segment, "source", "oversize_segment", str(exc), len(chunk))
            return
        # Superseded or inconsistent partial segments, and ones whose publisher went quiet mid-segment:
        # dead-letter them, or they would hold the partition's commit point forever.
        for dropped in assembler.expire(max_idle_s=self.config.kafka.session_timeout_ms / 1000 * 10):
            self._dead_letter(tp, dropped.offsets, segment, "source", dropped.code, dropped.reason, 0,
                              stream_id=dropped.stream_id, tenant_id=dropped.tenant_id)
        if whole is not None:
            seg, payload, offsets = whole
            self._submit(_InFlight(tp, offsets, seg, payload))

    def _submit(self, item: _InFlight) -> None:
        handle = self.backend.submit(segment_info(item.segment, item.tp, max(item.offsets)), item.payload)
        self._inflight[handle] = item
        self.stats.segments_submitted += 1
        if item.attempt == 1:
            metrics.segment_in("source", item.segment)

    def _collect(self, timeout_s: float) -> None:
        if not self._inflight:
            return
        for handle in self.backend.wait(list(self._inflight), timeout_s):
            item = self._inflight.pop(handle)
            try:
                result = self.backend.result(handle)
            except StageError as exc:
                self._dead_letter(item.tp, item.offsets, item.segment, exc.stage or "pipeline", exc.code,
                                  exc.reason, item.segment.payload_bytes, attempts=item.attempt)
                continue
            except Exception as exc:  # an actor died or a node went away: the segment is retried whole
                self._retry(item, exc)
                continue
            try:
                # Durable in memory: now its clip location (and archive copy), before the offsets may commit.
                self._clips.keep(item.segment, item.payload, item.tp, item.offsets)
            except Exception as exc:  # Redis or the archive's store is in trouble: not the segment's fault
                self._retry(item, exc)
                continue
            if result is None:
                self.stats.segments_replayed += 1
            else:
                self.stats.segments_stored += 1
                self.stats.latencies_s.append(time.time() - item.segment.produced_at.timestamp())
            metrics.segment_stored(item.segment)
            self._tracker.done(item.tp, item.offsets)

    def _retry(self, item: _InFlight, exc: Exception) -> None:
        if item.attempt < self.config.pipeline.segment_attempts:
            self.stats.retries += 1
            metrics.segment_retry(self.source_id)
            log.warning("%s: segment %s failed; retry %d: %s", self.source_id, item.segment.key, item.attempt, exc)
            item.attempt += 1
            self._submit(item)
        else:
            self._dead_letter(item.tp, item.offsets, item.segment, "pipeline", "pipeline_error",
                              f"{type(exc).__name__}: {exc}"[:4000], item.segment.payload_bytes,
                              attempts=item.attempt)

    def _commit(self) -> None:
        offsets = self._tracker.to_commit()
        if not offsets or self._consumer is None:
            return
        # Only partitions we still own: committing a revoked one would fail the whole request.
        owned = self._consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        if not offsets:
            return
        self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        self._tracker.mark_committed(offsets)
        self.stats.commits += 1

    def _drain(self, handles: list[Any], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        wanted = set(handles)
        while wanted & set(self._inflight) and time.monotonic() < deadline:
            self._collect(timeout_s=0.1)

    def _set_paused(self, paused: bool) -> None:
        if paused == self.stats.paused:
            return
        assignment = self._consumer.assignment()
        if paused:
            self._consumer.pause(*assignment)
        else:
            self._consumer.resume(*assignment)
        self.stats.paused = paused

    def _dead_letter(self, tp: TopicPartition, offsets: list[int], segment: messages.VideoSegment | None,
                     stage: str, code: str, reason: str, size: int, *, attempts: int = 1,
                     stream_id: str | None = None, tenant_id: str | None = None) -> None:
        letter = dead_letters.dead_letter(tp, offsets, stage=stage, code=code, reason=reason, record_bytes=size,
                                          segment=segment, stream_id=stream_id, tenant_id=tenant_id,
                                          attempts=attempts)
        # Wait for the broker's ack: the offset may only be committed once the letter is durable.
        dead_letters.send(self._producer, self.config.kafka, letter, wait_s=30)
        self.stats.dead_letters[code] = self.stats.dead_letters.get(code, 0) + 1
        log.warning("%s: dead letter %s at %s[%d]@%d: %s", self.source_id, code, tp.topic, tp.partition,
                    min(offsets), reason[:200])
        self._tracker.done(tp, offsets)

    # -- rebalancing -------------------------------------------------------------------------

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish and commit what we hold for partitions that move, so their new owner redoes little."""
        mine = [h for h, item in self._inflight.items() if item.tp in set(revoked)]
        self._drain(mine, timeout_s=self.config.kafka.session_timeout_ms / 1000)
        try:
            self._commit()
        except KafkaError as exc:
            log.warning("%s: commit on revoke failed (%s); the new owner replays", self.source_id, exc)
        for handle in [h for h, item in self._inflight.items() if item.tp in set(revoked)]:
            self._inflight.pop(handle)  # the new owner replays these; writes are idempotent
        self._tracker.forget(revoked)
        self._gauges.revoked(revoked)
        for tp in revoked:
            self._assemblers.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSegmentSource):
        self.source = source

    def on_partitions_revoked(self, revoked):
        self.source.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned):
        # pause() does not carry over to newly assigned partitions; re-apply on the next step.
        self.source.stats.paused = False
