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

A crash anywhere before 4 replays the segment: a segment whose clip location was
recorded (its whole chain finished) is recognised before decode and skipped; one
that stopped earlier goes through again, and the memory writer sees the segment
marker and changes nothing.

Failures (pipelines/failures.py): bad input is dead-lettered; a dependency
that is away (Redis, the broker, a Ray actor) makes the segment wait and retry with
capped backoff for as long as it takes, never a dead letter. Each stream's segments
queue in a lane (pipelines/ingest/lanes.py): a waiting segment holds back the rest
of its stream, so retries never reorder a stream.

Backpressure: at most `max_inflight_segments` held (in the DAG or waiting); past
that the source pauses its partitions but keeps calling poll(), so it never misses
the group's poll deadline and is never kicked out of the group for being slow.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from contracts import messages
from operators.frames import SegmentInfo, StageError
from pipelines import metrics
from pipelines.clips import ClipKeeper
from pipelines.config import LivelensConfig
from pipelines.failures import Backoff, PredecessorFailed, dependency_of
from pipelines.ingest.lanes import Held, StreamLanes
from pipelines.kafka import dead_letters, tenancy
from pipelines.kafka.client import ensure_topics, make_consumer, make_producer
from pipelines.kafka.offsets import OffsetTracker
from pipelines.kafka.publish import PendingBytesExceeded, SegmentAssembler
from pipelines.redis_io import redis_client
from pipelines.stream_state import StreamGate

log = logging.getLogger(__name__)


class IngestBackend(Protocol):
    """Where segments go. `pipelines.ray.sources.RayIngest` is the real one; tests may use an in-process one."""

    def submit(self, info: SegmentInfo, payload: bytes, *, after: Sequence[Any] = ()) -> Any:
        """Start the segment through the DAG; ``after``: the handles of the earlier segments of its stream still
        in flight, whose writes must be stored (or refused as bad input) first, else this one fails with
        PredecessorFailed: the source retries it after them, so a stream is never reordered."""
        ...

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any:
        """The write's result; raises StageError for bad input, DependencyUnavailable (or a client library's
        connection error) when infrastructure is away, anything else for a crash (pipelines/failures.py)."""
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
        gap_before_s=segment.gap_before_s,
    )


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
    loop_crashes: int = 0  # unexpected errors the loop recovered from by rebuilding its clients
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
        self._lanes = StreamLanes()
        self._inflight: dict[Any, Held] = {}
        # Partitions the group took away or gave, told by the rebalance listener on kafka-python's IO thread
        # and applied by the loop thread (`_apply_rebalances`), which alone touches the state above.
        self._rebalances: queue.SimpleQueue[tuple[str, list[TopicPartition]]] = queue.SimpleQueue()
        self._backoff = Backoff(config.pipeline.retry_initial_s, config.pipeline.retry_max_s)
        self._paused_since: float | None = None
        self._reported_waiting: set[str] = set()
        self._topics = tenancy.TopicWatch(config.kafka, "segments")
        self._consumer = None
        self._producer = None
        self._clips = ClipKeeper(config, redis_client(config.redis))
        self._gate = StreamGate(redis_client(config.redis), config.streams.state_ttl_s)
        self._gauges = metrics.SourceGauges(source_id, config.kafka.ingest_group, config.metrics.lag_interval_s)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set. Supervised: whatever goes wrong (a broker away for any time, topics lost
        in a broker restart, an unexpected error of our own), the loop drops its clients, waits with capped
        backoff and starts again from the committed offsets; writes are idempotent, so nothing is lost or
        doubled. It returns only when `stop` is set."""
        failures = 0
        while not stop.is_set():
            try:
                self._connect()
                failures = 0
                while not stop.is_set():
                    self._step()
            except Exception as exc:
                failures += 1
                delay = self._backoff.delay(failures)
                dependency = dependency_of(exc)
                if dependency is None:
                    self.stats.loop_crashes += 1
                    log.exception("%s: unexpected error in the source loop; rebuilding its clients in %.1f s",
                                  self.source_id, delay)
                else:
                    self.stats.reconnects += 1
                    log.warning("%s: waiting for %s (%s); reconnecting in %.1f s", self.source_id, dependency,
                                exc, delay)
                metrics.source_waiting(self.source_id, dependency or "crash", 1)
                self._disconnect(drain=False)
                stop.wait(delay)
                metrics.source_waiting(self.source_id, dependency or "crash", 0)
        self._disconnect(drain=True)

    def _connect(self) -> None:
        ensure_topics(self.config.kafka)
        self._producer = make_producer(self.config.kafka)
        self._consumer = make_consumer(
            self.config.kafka, self.config.kafka.ingest_group, [],
            client_id=self.source_id, max_poll_records=self.config.pipeline.max_inflight_segments * 4,
        )
        # Subscribe with a listener, so the state of revoked partitions is dropped before any record of the
        # next assignment is accepted; with tenant topics, to every tenant's segments topic (`_step` refreshes).
        self._topics.subscribe(self._consumer, listener=_Rebalance(self._rebalances))

    def _disconnect(self, *, drain: bool) -> None:
        """Close the clients and forget every held segment: a new connection resumes from the committed
        offsets. With ``drain``, finish what is in flight and commit it first (best effort: after a failure
        the broker or a dependency may be away, and the records are then simply read again)."""
        if drain:
            try:
                self._drain(list(self._inflight), timeout_s=30)
                self._commit()
            except Exception as exc:
                log.warning("%s: final drain and commit failed (%s); the records will be replayed", self.source_id,
                            exc)
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    client.close(timeout=5) if client is self._producer else client.close()
                except Exception:  # closing a client of a dead broker may raise; nothing left to save
                    log.debug("close failed", exc_info=True)
        self._consumer = self._producer = None
        self._tracker = OffsetTracker()
        self._assemblers = {}
        self._lanes.clear()
        self._inflight = {}
        self._rebalances = queue.SimpleQueue()  # what the old consumer was told concerns only it
        self._paused_since = None
        self.stats.paused = False

    # -- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        self._topics.refresh(self._consumer)
        if not self._topics.topics:  # tenant topics, and no tenant has published yet
            time.sleep(0.1)
            return
        # Held segments count against the limit whether in flight or waiting: a stream waiting for Redis
        # pauses intake instead of piling up segments.
        room = self.config.pipeline.max_inflight_segments - len(self._lanes)
        self._set_paused(room <= 0)
        batch = self._consumer.poll(timeout_ms=50, max_records=max(1, room * 4))
        # A rebalance happens inside poll(): forget what was revoked before accepting what the new assignment
        # fetched (it may hand a partition back, from its committed offset).
        self._apply_rebalances()
        for tp, records in batch.items():
            for record in records:
                self._accept(tp, record)
        self._submit_ready()
        self._collect(timeout_s=0.0 if batch else 0.05)
        self._submit_ready()
        self._commit()
        self._gauges.maybe_report(self._consumer, self._tracker, inflight=len(self._lanes), paused=self.stats.paused)

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
        for dropped in assembler.expire(max_idle_s=self.config.pipeline.chunk_idle_s):
            self._dead_letter(tp, dropped.offsets, segment, "source", dropped.code, dropped.reason, 0,
                              stream_id=dropped.stream_id, tenant_id=dropped.tenant_id)
        if whole is not None:
            seg, payload, offsets = whole
            # Paused and deleted streams (pipelines/stream_state.py): acknowledged, counted, never decoded.
            if not self._gate.admit(seg, tp, offsets):
                self._tracker.done(tp, offsets)
                return
            if self._kept_before(seg):
                # A replay of a segment whose whole chain finished before (read again after a crash or a
                # rebalance): recognised here, before any decoding, and done.
                self.stats.segments_replayed += 1
                metrics.segment_stored(seg)
                self._tracker.done(tp, offsets)
                return
            self._lanes.add(Held(tp, offsets, seg, payload))

    def _kept_before(self, segment: messages.VideoSegment) -> bool:
        try:
            return self._clips.kept(segment)
        except Exception as exc:  # Redis away: unknown, so the segment goes through the DAG (and waits there)
            log.debug("%s: could not ask whether %s was kept: %s", self.source_id, segment.key, exc)
            return False

    def _submit_ready(self) -> None:
        self._lanes.submit_ready(time.monotonic(), self._submit)

    def _submit(self, item: Held, after: list) -> Any:
        handle = self.backend.submit(segment_info(item.segment, item.tp, max(item.offsets)), item.payload,
                                     after=after)
        self._inflight[handle] = item
        self.stats.segments_submitted += 1
        if item.attempt == 1 and item.waits == 0:
            metrics.segment_in("source", item.segment)
        return handle

    def _collect(self, timeout_s: float) -> None:
        if not self._inflight:
            return
        for handle in self.backend.wait(list(self._inflight), timeout_s):
            item = self._inflight.pop(handle)
            try:
                result = self.backend.result(handle)
            except StageError as exc:
                self._lanes.finished(item)
                self._dead_letter(item.tp, item.offsets, item.segment, exc.stage or "pipeline", exc.code,
                                  exc.reason, item.segment.payload_bytes, attempts=item.attempt)
                continue
            except Exception as exc:  # infrastructure away, or a crash: the segment waits and is retried whole
                self._failed(item, exc)
                continue
            try:
                # Durable in memory: now its clip location (and archive copy), before the offsets may commit.
                self._clips.keep(item.segment, item.payload, item.tp, item.offsets)
            except Exception as exc:  # Redis or the archive's store is in trouble: not the segment's fault
                self._failed(item, exc)
                continue
            self._lanes.finished(item)
            if result is None:
                self.stats.segments_replayed += 1
            else:
                self.stats.segments_stored += 1
                self.stats.latencies_s.append(time.time() - item.segment.produced_at.timestamp())
            metrics.segment_stored(item.segment)
            self._tracker.done(item.tp, item.offsets)
        self._report_waiting()

    def _failed(self, item: Held, exc: Exception) -> None:
        """Infrastructure failures wait and retry for as long as it takes; a crash of our code on the segment
        gets `pipeline.segment_attempts` tries, then a dead letter (pipelines/failures.py)."""
        dependency = dependency_of(exc)
        if dependency is None:
            if item.attempt >= self.config.pipeline.segment_attempts:
                self._lanes.finished(item)
                self._dead_letter(item.tp, item.offsets, item.segment, "pipeline", "pipeline_error",
                                  f"{type(exc).__name__}: {exc}", item.segment.payload_bytes, attempts=item.attempt)
                return
            item.attempt += 1
            dependency, delay = "crash", self._backoff.delay(item.attempt - 1)
        else:
            item.waits += 1
            # Behind a failed predecessor: go again right after it (the lane keeps the order), no extra wait.
            delay = 0.0 if isinstance(exc, PredecessorFailed) else self._backoff.delay(item.waits)
        self._lanes.wait(item, time.monotonic() + delay, dependency)
        self.stats.retries += 1
        metrics.segment_retry(self.source_id, dependency)
        log_at = log.info if isinstance(exc, PredecessorFailed) else log.warning
        log_at("%s: segment %s waits for %s, retry in %.1f s (failure %d): %s", self.source_id, item.segment.key,
               dependency, delay, item.waits + item.attempt - 1, str(exc)[:300])

    def _report_waiting(self) -> None:
        waiting = self._lanes.waiting_by_dependency()
        for dependency in set(waiting) | self._reported_waiting:
            metrics.source_waiting(self.source_id, dependency, waiting.get(dependency, 0))
        self._reported_waiting = set(waiting)

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
            self._paused_since = time.monotonic()
        else:
            self._consumer.resume(*assignment)
            self._stop_pause_clock()
        self.stats.paused = paused

    def _stop_pause_clock(self) -> None:
        """The idle clock of half-reassembled segments stands still while we hold their partitions paused: the
        publisher was not quiet, we were not reading."""
        if self._paused_since is not None:
            held_s = time.monotonic() - self._paused_since
            for assembler in self._assemblers.values():
                assembler.extend_idle(held_s)
        self._paused_since = None
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

    def _apply_rebalances(self) -> None:
        """Apply what the rebalance listener told, in order. Revoked partitions are dropped, not drained: their
        new owner resumes from the last commit (the loop commits every step, so little), and a replayed
        segment whose chain finished is recognised before decode (`_kept_before`); writes still running in
        the DAG complete and are idempotent."""
        while True:
            try:
                event, partitions = self._rebalances.get_nowait()
            except queue.Empty:
                return
            if event == "assigned":
                # pause() does not carry over to newly assigned partitions; the next step re-applies it.
                self._stop_pause_clock()
                self.stats.paused = False
                continue
            for item in self._lanes.drop_partitions(partitions):
                self._inflight.pop(item.handle, None)
            self._tracker.forget(partitions)
            self._gauges.revoked(partitions)
            for tp in partitions:
                self._assemblers.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):
    """Hands the group's changes to the source's loop thread, and returns at once.

    kafka-python 3 calls a synchronous listener on its IO thread, the one that sends heartbeats: draining
    in-flight segments there (seconds while the DAG is busy) missed heartbeats and got the member evicted
    mid-rebalance, after which the local broker could leave the whole group stalled; and a blocking commit
    there is refused outright ("Cannot block on net.run() from the IO thread"). So nothing here blocks or
    touches the loop's state: it only queues the partitions."""

    def __init__(self, events: queue.SimpleQueue):
        self.events = events

    def on_partitions_revoked(self, revoked):
        self.events.put(("revoked", list(revoked)))

    def on_partitions_assigned(self, assigned):
        self.events.put(("assigned", list(assigned)))
