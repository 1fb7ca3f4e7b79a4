"""Replay: re-read a bounded range of the segments topic into memory, replacing what memory holds.

What it is for: after a change of the encoder, a compression threshold or any
other setting that shapes memory, rebuild memory from what the topic still
holds. Each replayed segment goes through the chain backfill uses
(`Backfill.process`: parallel decode, batched encode, compress, OCR, memory
write), built from the configuration in effect for the replay, and is written
with ``replace=True``: memory's version of the segment (frames, kept tokens,
text, index vectors) is replaced by the new one (`memory_store.replace`). A
stream replayed from its first segment is purged first, so its memory ends
exactly as a fresh ingest leaves it, event segments included; a range that
starts mid-stream replaces frames and keeps the events built before it.

Reading: a consumer without a group (``group_id=None``) assigned the partitions
explicitly. It never joins or commits for any group, so the live ingest group's
offsets and assignments are untouched. The range per partition is half-open,
``[start, stop)``:

- start: ``from_offset`` (clamped to what the partition still holds) or the first
  record whose Kafka timestamp is at or after ``from_time`` (``offsets_for_times``);
- stop: ``to_offset`` or the first record at or after ``to_time``, else the end
  offset captured when the replay starts: records published meanwhile are not read.

Times are Kafka record timestamps (when the publisher sent the record), not the
video's own wall clock. Chunked segments are reassembled as the live source does
(`SegmentAssembler`); a segment whose first chunk lies in the range is read to
its last chunk even past ``stop`` (up to the captured end), and chunks at the
start of the range whose segment began before it are skipped (counted in
``ReplaySummary.chunks_outside``).

Per-stream state (the compressor's previous frame, the OCR reader's last read,
the frame skipper's reference) starts empty at each stream's first replayed
segment, as after a restart of the live stages: replaying a stream from its
first segment stores exactly what a fresh ingest with the same configuration
stores.

Where it writes is the caller's choice of `MemoryClient` (`pipelines.ray.clients.memory_writer`): through a
deployed pipeline's memory actors, whose FAISS indexes then drop the replaced ids in the same call, else to
Redis directly (memory actors started later rebuild from it).

Bad records (malformed, inconsistent chunks, undecodable video, any StageError)
go to the dead-letters topic with the record's partition and offset and a
stable code and reason, as in live ingest; the replay goes on. A replay has no
manifest: rerunning the same range redoes it, and replacing writes make that
safe (the result is the same memory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from contracts import messages
from memory_store.client import MemoryClient
from operators.frames import SegmentInfo, StageError
from operators.parallel_decode import ParallelDecoder
from pipelines.config import LivelensConfig
from pipelines.ingest.backfill import Backfill, BackfillSummary
from pipelines.ingest.source import segment_info
from pipelines.kafka import dead_letters, tenancy
from pipelines.kafka.client import make_producer, make_reader
from pipelines.kafka.publish import PendingBytesExceeded, SegmentAssembler

log = logging.getLogger(__name__)

# A partition that still owes records (its captured end is not reached) but returns none for this long
# is an error, not a reason to wait forever: the broker lost them (a restarted in-memory broker) or is gone.
_STALL_S = 30.0


class ReplayError(Exception):
    """The range cannot be replayed as asked: bad bounds, unknown topic or partition, a stalled broker."""


@dataclass(frozen=True)
class ReplayRange:
    """What to replay: ``[from, to)`` of each chosen partition of ``topic`` (module docstring).

    Exactly one of from_offset / from_time; at most one of to_offset / to_time. Times must be
    timezone-aware. partitions: empty for all of the topic's partitions.
    """

    topic: str
    from_offset: int | None = None
    from_time: datetime | None = None
    to_offset: int | None = None
    to_time: datetime | None = None
    partitions: tuple[int, ...] = ()
    # Only these (tenant, stream) pairs; empty for every stream. Others' records are read past, untouched.
    streams: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.from_offset is None) == (self.from_time is None):
            raise ReplayError("give exactly one start: from_offset or from_time")
        if self.to_offset is not None and self.to_time is not None:
            raise ReplayError("give at most one end: to_offset or to_time")
        for name in ("from_time", "to_time"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ReplayError(f"{name} must be timezone-aware (e.g. 2026-03-01T12:00:00+00:00), got {value}")
        for name in ("from_offset", "to_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ReplayError(f"{name} must be >= 0, got {value}")


@dataclass
class ReplaySummary(BackfillSummary):
    """Backfill's totals plus what was read: records, and per partition the [start, stop) replayed."""

    records: int = 0
    chunks_outside: int = 0  # chunks at the range's start whose segment began before it
    bounds: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class _Partition:
    tp: TopicPartition
    start: int
    stop: int
    end: int  # the end offset captured at the start: nothing at or past it is read
    assembler: SegmentAssembler = field(default_factory=SegmentAssembler)
    open_streams: set[tuple[str, str]] = field(default_factory=set)  # streams with a segment begun, not whole
    done: bool = False


class Replay:
    """Replays ranges of a segments topic into ``store`` through the backfill chain, replacing segments.

    workers: decoder processes, as for `Backfill`.
    replace: replace what memory holds (`livelens replay`); False writes only the segments memory lacks, each
        exactly once (a resumed stream's catch-up, pipelines/streams/catchup.py).
    """

    def __init__(self, config: LivelensConfig, store: MemoryClient, *, workers: int = 1,
                 progress: bool = True, replace: bool = True):
        self.config = config
        self.workers = workers
        self.show_progress = progress
        self._chain = Backfill(config, store, workers=workers, progress=False, replace=replace,
                               on_dead_letter=self._stage_failed)
        self._producer: KafkaProducer | None = None
        # Where each submitted segment came from, for its dead letter: (tenant, stream, seq) -> (tp, offsets).
        self._origin: dict[tuple[str, str, str], tuple[TopicPartition, list[int], int]] = {}
        self._streams: set[tuple[str, str]] = set()

    def run(self, what: ReplayRange) -> ReplaySummary:
        kafka = self.config.kafka
        consumer = make_reader(kafka)
        summary = ReplaySummary()
        started = time.perf_counter()
        try:
            partitions = self._bounds(consumer, what)
            summary.bounds = {p.tp.partition: (p.start, p.stop) for p in partitions}
            self._producer = make_producer(kafka)
            total = sum(p.stop - p.start for p in partitions)
            with _progress(self.show_progress) as progress, \
                    ParallelDecoder(self.config.decode, workers=self.workers) as decoder:
                task = progress.add_task(f"replay {what.topic}", total=total)

                def done(info: SegmentInfo) -> None:
                    self._origin.pop((info.tenant_id, info.stream_id, info.segment_id), None)
                    summary.stream_seconds += info.duration_s

                self._streams = set(what.streams)
                records = self._segments(consumer, partitions, summary, lambda n: progress.advance(task, n))
                self._chain.process(decoder.decode(records), summary, done)
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.close(timeout=30)
                self._producer = None
        summary.wall_seconds = time.perf_counter() - started
        return summary

    # -- the range -----------------------------------------------------------------------------

    def _bounds(self, consumer: KafkaConsumer, what: ReplayRange) -> list[_Partition]:
        known = consumer.partitions_for_topic(what.topic)
        if not known:
            raise ReplayError(f"topic {what.topic!r} does not exist (or has no partitions)")
        chosen = sorted(what.partitions or known)
        unknown = sorted(set(chosen) - known)
        if unknown:
            raise ReplayError(f"topic {what.topic!r} has no partitions {unknown} (it has {sorted(known)})")
        tps = [TopicPartition(what.topic, p) for p in chosen]
        consumer.assign(tps)
        first, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        starts = self._offsets(consumer, tps, what.from_offset, what.from_time, first, end)
        stops = self._offsets(consumer, tps, what.to_offset, what.to_time, first, end) \
            if what.to_offset is not None or what.to_time is not None else end
        out = []
        for tp in tps:
            start, stop = starts[tp], max(starts[tp], stops[tp])
            if what.from_offset is not None and what.from_offset < first[tp]:
                log.warning("%s: offsets below %d are gone (retention); replaying from there", tp, first[tp])
            consumer.seek(tp, start)
            out.append(_Partition(tp, start, stop, end[tp], done=start >= stop))
            log.info("%s: replaying offsets [%d, %d) (end %d)", tp, start, stop, end[tp])
        return out

    @staticmethod
    def _offsets(consumer: KafkaConsumer, tps: list[TopicPartition], offset: int | None, when: datetime | None,
                 first: dict, end: dict) -> dict[TopicPartition, int]:
        """Per partition: ``offset`` clamped to what it holds, or the first offset at or after ``when``."""
        if offset is not None:
            return {tp: min(max(offset, first[tp]), end[tp]) for tp in tps}
        found = consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
        # None: no record at or after the time, so the bound is the end.
        return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in tps}

    # -- reading -------------------------------------------------------------------------------

    def _segments(self, consumer: KafkaConsumer, partitions: list[_Partition], summary: ReplaySummary,
                  advance) -> Iterator[tuple[SegmentInfo, bytes]]:
        """Whole segments of the range in partition order (each stream's in order), bad records dead-lettered."""
        by_tp = {p.tp: p for p in partitions}
        consumer.pause(*[p.tp for p in partitions if p.done])
        last_record = time.monotonic()
        while not all(p.done for p in partitions):
            batch = consumer.poll(timeout_ms=500)
            if batch:
                last_record = time.monotonic()
            elif time.monotonic() - last_record > _STALL_S:
                owed = {p.tp.partition: (consumer.position(p.tp), p.end) for p in partitions if not p.done}
                raise ReplayError(f"no records for {_STALL_S:.0f} s though partitions owe more "
                                  f"(partition: (position, end)) {owed}")
            for tp, records in batch.items():
                part = by_tp[tp]
                for record in records:
                    if part.done:
                        break
                    if record.offset >= part.end:
                        self._finish(consumer, part, summary)
                        break
                    summary.records += 1
                    if record.offset < part.stop:
                        advance(1)
                    whole = self._accept(part, record, summary)
                    if whole is not None:
                        yield whole
                    if record.offset + 1 >= part.end:
                        self._finish(consumer, part, summary)
            for part in partitions:
                if not part.done and consumer.position(part.tp) >= part.stop and not part.open_streams:
                    self._finish(consumer, part, summary)

    def _accept(self, part: _Partition, record, summary: ReplaySummary) -> tuple[SegmentInfo, bytes] | None:
        in_range = record.offset < part.stop
        try:
            segment, chunk = messages.decode(record.value, expect=messages.VideoSegment, headers=record.headers)
        except messages.MessageError as exc:
            if in_range:
                self._send_dead_letter(part.tp, [record.offset], None, "source", exc.code, exc.reason,
                                       len(record.value or b""))
            return None
        if refused := tenancy.refusal(self.config.kafka, "segments", part.tp.topic, segment.tenant_id):
            if in_range:  # as the live source: filed under the topic's tenant, never run for the claimed one
                self._send_dead_letter(part.tp, [record.offset], segment, "source", tenancy.TENANT_MISMATCH,
                                       refused.reason, len(chunk), tenant_id=refused.owner)
            return None
        stream = (segment.tenant_id, segment.stream_id)
        if self._streams and stream not in self._streams:
            return None
        if segment.chunk_index > 0 and stream not in part.open_streams:
            # The rest of a segment that began before the range (or one already dead-lettered).
            summary.chunks_outside += in_range
            return None
        if not in_range and segment.chunk_index == 0:
            return None  # past the range: only segments begun inside it are finished
        try:
            whole = part.assembler.add(segment, chunk, record.offset)
        except PendingBytesExceeded as exc:
            self._send_dead_letter(part.tp, [record.offset], segment, "source", "oversize_segment", str(exc),
                                   len(chunk))
            return None
        if segment.chunk_count > 1:
            part.open_streams.add(stream)
        self._dead_letter_discarded(part, segment)
        if whole is None:
            return None
        part.open_streams.discard(stream)
        header, payload, offsets = whole
        info = segment_info(header)
        self._origin[(info.tenant_id, info.stream_id, info.segment_id)] = (part.tp, offsets, header.payload_bytes)
        return info, payload

    def _finish(self, consumer: KafkaConsumer, part: _Partition, summary: ReplaySummary) -> None:
        """Stop reading the partition; segments still incomplete at its captured end are dead letters."""
        part.done = True
        consumer.pause(part.tp)
        self._dead_letter_discarded(part, None, expired=True)  # every pending segment: no more chunks will come
        part.open_streams.clear()

    def _dead_letter_discarded(self, part: _Partition, segment: messages.VideoSegment | None, *,
                               expired: bool = False) -> None:
        for dropped in part.assembler.expire(max_idle_s=-1.0 if expired else None):
            part.open_streams.discard((dropped.tenant_id, dropped.stream_id))
            self._send_dead_letter(part.tp, dropped.offsets, segment, "source", dropped.code, dropped.reason, 0,
                                   stream_id=dropped.stream_id, tenant_id=dropped.tenant_id)

    # -- dead letters --------------------------------------------------------------------------

    def _stage_failed(self, info: SegmentInfo, exc: StageError) -> None:
        tp, offsets, size = self._origin[(info.tenant_id, info.stream_id, info.segment_id)]
        self._send_dead_letter(tp, offsets, None, exc.stage or "pipeline", exc.code, exc.reason, size,
                               stream_id=info.stream_id, tenant_id=info.tenant_id)

    def _send_dead_letter(self, tp: TopicPartition, offsets: list[int], segment: messages.VideoSegment | None,
                          stage: str, code: str, reason: str, size: int, *, stream_id: str | None = None,
                          tenant_id: str | None = None) -> None:
        letter = dead_letters.dead_letter(tp, offsets, stage=stage, code=code, reason=f"replay: {reason}",
                                          record_bytes=size, segment=segment, stream_id=stream_id,
                                          tenant_id=tenant_id)
        assert self._producer is not None
        dead_letters.send(self._producer, self.config.kafka, letter, wait_s=30)
        log.warning("replay: dead letter %s at %s[%d]@%d: %s", code, tp.topic, tp.partition, min(offsets),
                    reason[:200])


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def replay_range(config: LivelensConfig, *, topic: str | None, from_offset: int | None, from_time: str | None,
                 to_offset: int | None, to_time: str | None, partitions: Sequence[int]) -> ReplayRange:
    """A ReplayRange from command-line values (ISO 8601 times; a time without an offset is UTC)."""

    def when(text: str | None) -> datetime | None:
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ReplayError(f"{text!r} is not an ISO 8601 time") from exc
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    return ReplayRange(topic or config.kafka.topic("segments"), from_offset, when(from_time), to_offset,
                       when(to_time), tuple(partitions))
