"""Publishing video to the segments topic, and putting chunked segments back together.

Publisher side (`SegmentPublisher`): segment a source (pipelines.segmenter),
describe each segment with a `VideoSegment`, split it into records that fit
the broker's message limit (`messages.segment_record`: raw bytes, the metadata
in a record header), and send them keyed by stream_id, so one stream's
records stay on one partition, in order, with a segment's chunks contiguous.

Consumer side (`SegmentAssembler`): one per partition; it collects the chunks
of each stream's current segment and hands back whole segments, together with
the offsets they spanned so the caller commits only past finished work.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from contracts import messages
from contracts.messages import VideoSegment
from pipelines.config import KafkaConfig
from pipelines.kafka.client import ensure_topics, make_producer
from pipelines.live import live_segments
from pipelines.reconnect import Backoff
from pipelines.segmenter import MediaSegment, is_url, iter_segments

Pace = Literal["realtime", "fast"]

# How long the final flush may take before publishing counts as failed. The producer retries
# transient errors on its own; this only bounds waiting for a broker that is gone.
FLUSH_TIMEOUT_S = 60.0


class PublishError(RuntimeError):
    """A record could not be delivered; nothing after it is guaranteed to have been written."""


@dataclass
class PublishStats:
    segments: int = 0
    records: int = 0
    bytes: int = 0  # record values and headers sent, what the broker stores
    chunked_segments: int = 0  # segments that needed more than one record
    media_seconds: float = 0.0
    wall_seconds: float = 0.0  # from after topic creation to the last acknowledgement
    gaps: int = 0  # segments after a stretch without video (a live source away, stalled or restarted)
    gap_seconds: float = 0.0
    timestamp_repairs: dict[str, int] = field(default_factory=dict)  # packets repaired, by kind

    def count(self, media: MediaSegment, records: int) -> None:
        """One more segment sent, in ``records`` records."""
        self.segments += 1
        self.records += records
        self.chunked_segments += records > 1
        self.media_seconds += media.duration_s
        self.gaps += media.gap_before_s > 0
        self.gap_seconds += media.gap_before_s
        for kind, n in media.repairs.items():
            self.timestamp_repairs[kind] = self.timestamp_repairs.get(kind, 0) + n


class SegmentPublisher:
    """Publishes a video source to ``kafka.topic("segments")``.

    ``producer``: an existing producer to share (the caller closes it); by default the
    publisher makes one with `make_producer` (idempotent, acks=all) and `close` closes it.
    """

    def __init__(self, *, kafka: KafkaConfig, producer: KafkaProducer | None = None):
        self._kafka = kafka
        self._owns_producer = producer is None
        self._producer = producer if producer is not None else make_producer(kafka)

    def __enter__(self) -> SegmentPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the producer if the publisher made it. Waits up to FLUSH_TIMEOUT_S for records
        still queued: without a bound, kafka-python waits forever for a broker that is gone."""
        if self._owns_producer:
            try:
                self._producer.close(timeout=FLUSH_TIMEOUT_S)
            except KafkaError as exc:
                raise PublishError(f"records still unacknowledged when closing the producer: {exc!r}") from exc

    def publish(
        self,
        source: str,
        *,
        stream_id: str,
        tenant_id: str = "default",
        pace: Pace = "realtime",
        loop: bool = False,
        target_s: float = 2.0,
        wallclock_start: datetime | None = None,
        stop: threading.Event | None = None,
        on_segment: Callable[[VideoSegment], None] | None = None,
        media_offset_s: float = 0.0,
        reconnect: Backoff | None = Backoff(),
        options: dict[str, str] | None = None,
    ) -> PublishStats:
        """Send every segment of ``source`` (see `iter_segments`) and return what was sent.

        pace="realtime" behaves like a live encoder: a segment goes out once it is complete,
        at ``wallclock_start + media_start_s + duration_s``; "fast" sends as fast as Kafka takes it. A live
        source (a URL, `pipelines.live`) is never re-paced: each segment goes out as soon as it has arrived.
        A URL reconnects with ``reconnect`` (None: the first drop raises SourceError) and takes FFmpeg
        ``options`` (e.g. ``{"rtsp_transport": "udp"}``); ``loop`` is for files.
        ``wallclock_start`` is the wall-clock time of the stream's first frame (default: now).
        ``stop`` ends publishing after the segment in progress (a live source's is sent once complete; a
        file's pacing wait is interrupted) and ends a wait for a live source.
        ``on_segment`` sees each segment's header once all its records are handed to the producer.
        Each call is a new publishing session (a fresh ``session`` id, seq from 0), so publishing a stream id
        again stores again; ``media_offset_s`` is the stream time it starts at, where an earlier session of
        the stream left off (`pipelines.kafka.sessions.continuing_offset_s`), so the stream's timeline continues.
        Returns after every record is acknowledged; a failed send raises `PublishError`.
        """
        if wallclock_start is not None and wallclock_start.tzinfo is None:
            raise ValueError("wallclock_start must be timezone-aware (UTC), got a naive datetime")
        ensure_topics(self._kafka, tenant_id=tenant_id)
        topic = self._kafka.topic("segments", tenant_id)
        key = stream_id.encode()
        started = time.monotonic()
        start = wallclock_start or datetime.now(UTC)
        # Pace against the monotonic clock, anchored once: a wall-clock step (NTP) must not
        # stall or burst the stream.
        anchor = started - (datetime.now(UTC) - start).total_seconds()
        stats = PublishStats()
        session = new_session_id()
        in_flight: deque[tuple[str, FutureRecordMetadata]] = deque()

        if is_url(source):
            segments = live_segments(source, target_s=target_s, reconnect=reconnect, options=options, stop=stop)
        else:
            segments = iter_segments(source, target_s=target_s, loop=loop)
        for media in segments:
            if (pace == "realtime" and not media.live
                    and not _wait_until(anchor + media.media_start_s + media.duration_s, stop)):
                break
            segment = segment_header(media, stream_id=stream_id, tenant_id=tenant_id, start=start, session=session,
                                     media_offset_s=media_offset_s)
            records = 0
            for chunk_header, chunk in messages.chunk_segment(segment, media.payload, self._kafka.max_message_bytes):
                value, headers = messages.segment_record(chunk_header, chunk)
                in_flight.append((f"{segment.key} chunk {chunk_header.chunk_index}",
                                  self._send(topic, key, value, headers)))
                records += 1
                stats.bytes += len(value) + sum(len(k) + len(v) for k, v in headers)
            stats.count(media, records)
            _raise_failed(in_flight, wait=False)  # fail early; also keeps the deque to unacknowledged sends
            if on_segment is not None:
                on_segment(segment.model_copy(update={"chunk_count": records}))
            if stop is not None and stop.is_set():
                break  # after sending: a live segment that completed after the stop is whole, so it goes out

        try:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            raise PublishError(f"records of {stream_id} not acknowledged within {FLUSH_TIMEOUT_S} s: {exc!r}") from exc
        _raise_failed(in_flight, wait=True)
        stats.wall_seconds = time.monotonic() - started
        return stats

    def _send(self, topic: str, key: bytes, value: bytes | memoryview, headers: messages.Headers
              ) -> FutureRecordMetadata:
        try:
            return self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:
            raise PublishError(f"cannot send to {topic}: {exc}") from exc


def new_session_id() -> str:
    """A publishing session's id: random, so two publishers of one stream id never share one."""
    return uuid.uuid4().hex[:16]


def segment_header(media: MediaSegment, *, stream_id: str, tenant_id: str, start: datetime, session: str = "",
                   media_offset_s: float = 0.0) -> VideoSegment:
    """The contract header of one segment. ``start``: wall-clock time of the session's first frame (used
    when the segment brings no clock of its own: a file); ``media_offset_s``: stream time at which this
    session begins (0 for a new stream)."""
    if media.wallclock_s is not None:
        wallclock = datetime.fromtimestamp(media.wallclock_s, UTC)
    else:
        wallclock = start + timedelta(seconds=media.media_start_s)
    return VideoSegment(
        tenant_id=tenant_id,
        stream_id=stream_id,
        session=session,
        seq=media.seq,
        codec=media.codec,
        container=media.container,
        wallclock_start=wallclock,
        wallclock_source=media.clock,
        gap_before_s=round(media.gap_before_s, 6),
        timestamp_repairs=dict(media.repairs),
        media_start_s=media_offset_s + media.media_start_s,
        duration_s=media.duration_s,
        width=media.width,
        height=media.height,
        payload_bytes=len(media.payload),
        source=media.source,
        tracks=list(media.tracks),
    )


def _wait_until(deadline: float, stop: threading.Event | None) -> bool:
    """Sleep until the monotonic ``deadline``; False when ``stop`` was set meanwhile."""
    delay = deadline - time.monotonic()
    if stop is None:
        if delay > 0:
            time.sleep(delay)
        return True
    return not stop.wait(max(0.0, delay))


def _raise_failed(in_flight: deque[tuple[str, FutureRecordMetadata]], *, wait: bool) -> None:
    """Drop acknowledged sends from the front of ``in_flight``; raise on the first failed one.
    ``wait``: every send must be finished (after a flush); one still open is a failure too."""
    while in_flight and (wait or in_flight[0][1].is_done):
        what, future = in_flight.popleft()
        try:
            future.get(timeout=0 if wait else None)
        except KafkaError as exc:
            raise PublishError(f"{what} was not written: {exc!r}") from exc


# --- consumer side ---------------------------------------------------------------------------


class PendingBytesExceeded(RuntimeError):
    """Incomplete segments would hold more memory than the assembler's bound."""


@dataclass(frozen=True)
class Discarded:
    """Records of a segment that will never be whole; the caller dead-letters each offset.

    ``code`` is stable: ``incomplete_segment`` (superseded by another seq of the stream, or idle
    too long) or ``inconsistent_chunk`` (chunk metadata or sizes that do not add up).
    """

    tenant_id: str
    stream_id: str
    seq: int
    offsets: list[int]
    code: Literal["incomplete_segment", "inconsistent_chunk"]
    reason: str


@dataclass
class _Pending:
    header: VideoSegment
    chunks: dict[int, bytes | memoryview] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=list)
    size: int = 0
    last_seen: float = 0.0


# Header fields that may differ between the chunks of one segment; everything else must match.
_PER_CHUNK_FIELDS = {"chunk_index"}


class SegmentAssembler:
    """Reassembles chunked segments from one partition (offsets are that partition's).

    A publisher writes a segment's chunks back to back for its stream, so each stream has at
    most one segment in progress: a chunk of any other seq means the pending one will never
    complete (its publisher restarted or died). Such segments, and chunks that contradict
    their segment, are discarded and reported by `expire` for dead-lettering.

    ``max_pending_bytes`` bounds the memory held by incomplete segments of all streams; a chunk
    that would pass it raises `PendingBytesExceeded` (the partition carries more concurrent
    large segments than this consumer was sized for). Raising it costs memory; lowering it
    fails sooner.
    """

    def __init__(self, *, max_pending_bytes: int = 256 << 20, clock: Callable[[], float] = time.monotonic):
        self._max_pending_bytes = max_pending_bytes
        self._clock = clock
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._pending_bytes = 0
        self._discarded: list[Discarded] = []

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def add(self, segment: VideoSegment, chunk: bytes | memoryview, offset: int
            ) -> tuple[VideoSegment, bytes, list[int]] | None:
        """Take one record. Returns (header of chunk 0, whole payload, offsets of every record it
        spanned, duplicates included) when this record completes its segment, else None. ``chunk`` may be a
        view into the record (`messages.decode`); the whole payload is new bytes, the segment's one copy."""
        stream = (segment.tenant_id, segment.stream_id)
        problem = _chunk_problem(segment, chunk)
        if problem:
            self._discard_record(segment, offset, problem)
            return None
        pending = self._pending.get(stream)
        if pending is not None:
            problem = _mismatch(pending, segment, chunk)
            if problem:
                superseded = (pending.header.session, pending.header.seq) != (segment.session, segment.seq)
                code = "incomplete_segment" if superseded else "inconsistent_chunk"
                self._discard(stream, code, problem)
                pending = None
        if pending is not None and segment.chunk_index in pending.chunks:
            # An identical replay of a chunk we hold (_mismatch compared the bytes): keep its
            # offset so it is committed with the segment.
            pending.offsets.append(offset)
            pending.last_seen = self._clock()
            return None
        held = pending.chunks if pending is not None else {}
        if len(held) + 1 < segment.chunk_count and self._pending_bytes + len(chunk) > self._max_pending_bytes:
            raise PendingBytesExceeded(
                f"{segment.key} chunk {segment.chunk_index}: incomplete segments would hold "
                f"{self._pending_bytes + len(chunk)} bytes, over max_pending_bytes={self._max_pending_bytes}"
            )
        if pending is None:
            pending = self._pending[stream] = _Pending(header=segment)
        pending.chunks[segment.chunk_index] = chunk
        pending.offsets.append(offset)
        pending.size += len(chunk)
        pending.last_seen = self._clock()
        self._pending_bytes += len(chunk)
        if len(pending.chunks) < segment.chunk_count:
            return None
        payload = b"".join(pending.chunks[i] for i in range(segment.chunk_count))
        if len(payload) != segment.payload_bytes:
            self._discard(stream, "inconsistent_chunk",
                          f"chunks add up to {len(payload)} bytes, header says {segment.payload_bytes}")
            return None
        self._drop(stream)
        return pending.header.model_copy(update={"chunk_index": 0}), payload, pending.offsets

    def expire(self, max_idle_s: float | None = None) -> list[Discarded]:
        """What was discarded since the last call, plus, when ``max_idle_s`` is given, segments
        that got no chunk for that long (their publisher stopped mid-segment: without this
        they would hold the partition's commit point forever)."""
        if max_idle_s is not None:
            now = self._clock()
            for stream, pending in list(self._pending.items()):
                if now - pending.last_seen > max_idle_s:
                    self._discard(stream, "incomplete_segment",
                                  f"no chunk for {now - pending.last_seen:.1f} s (max_idle_s={max_idle_s})")
        out, self._discarded = self._discarded, []
        return out

    def extend_idle(self, seconds: float) -> None:
        """Move every pending segment's idle clock back by ``seconds``: time its partition spent paused by the
        consumer (backpressure), when no chunk could arrive, is not the publisher's silence."""
        for pending in self._pending.values():
            pending.last_seen += seconds

    def pending_offsets(self) -> list[int]:
        """Offsets held by incomplete segments, ascending: the commit point must not pass the first.
        Discarded records leave this list at once, so take `expire` and dead-letter them before
        committing."""
        return sorted(o for p in self._pending.values() for o in p.offsets)

    def _discard(self, stream: tuple[str, str], code: Literal["incomplete_segment", "inconsistent_chunk"],
                 reason: str) -> None:
        pending = self._drop(stream)
        h = pending.header
        have = sorted(pending.chunks)
        self._discarded.append(Discarded(h.tenant_id, h.stream_id, h.seq, pending.offsets, code,
                                         f"{reason}; had chunks {have} of {h.chunk_count}"))

    def _discard_record(self, segment: VideoSegment, offset: int, reason: str) -> None:
        self._discarded.append(Discarded(segment.tenant_id, segment.stream_id, segment.seq, [offset],
                                         "inconsistent_chunk", reason))

    def _drop(self, stream: tuple[str, str]) -> _Pending:
        pending = self._pending.pop(stream)
        self._pending_bytes -= pending.size
        return pending


def _chunk_problem(segment: VideoSegment, chunk: bytes | memoryview) -> str | None:
    """What is wrong with a record on its own, if anything."""
    if segment.chunk_index >= segment.chunk_count:
        return f"chunk_index {segment.chunk_index} out of range for chunk_count {segment.chunk_count}"
    if segment.chunk_count == 1 and len(chunk) != segment.payload_bytes:
        return f"single-record segment of {len(chunk)} bytes, header says {segment.payload_bytes}"
    if len(chunk) > segment.payload_bytes:
        return f"chunk of {len(chunk)} bytes is larger than the whole segment ({segment.payload_bytes})"
    return None


def _mismatch(pending: _Pending, segment: VideoSegment, chunk: bytes | memoryview) -> str | None:
    """Why ``segment`` cannot belong to the pending segment of its stream, if it cannot."""
    if (pending.header.session, pending.header.seq) != (segment.session, segment.seq):
        return f"superseded by {messages.segment_id(segment.session, segment.seq)}"
    theirs = segment.model_dump(exclude=_PER_CHUNK_FIELDS)
    ours = pending.header.model_dump(exclude=_PER_CHUNK_FIELDS)
    differ = sorted(k for k in ours if ours[k] != theirs[k])
    if differ:
        return f"chunk {segment.chunk_index} disagrees with the segment's other chunks on {differ}"
    held = pending.chunks.get(segment.chunk_index)
    if held is not None and held != chunk:
        return f"chunk {segment.chunk_index} arrived twice with different bytes"
    return None
