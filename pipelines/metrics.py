"""Recording livelens's metrics: the helpers the actor wrappers call.

The metrics go out through Ray's own metrics export (`ray.util.metrics`): each Ray
process reports what it recorded to its node's metrics agent, which serves them all in
Prometheus text format on the node's metrics export port (`ray.nodes()[i]["MetricsExportPort"]`,
fixed with `ray start --metrics-export-port` or `ray.init(_metrics_export_port=...)`).
Outside a Ray worker (a unit test, a plain script) recording is a no-op, so callers never check.

What each metric is (its name, labels, cardinality) is defined in `pipelines.metric_specs`.

Metric objects are created lazily, once per process, on first use: importing this module
touches no Ray state.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.metric_specs import (
    ALERTS,
    ALERT_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    ENCODE_BATCH_FRAMES,
    ENCODE_BATCH_SECONDS,
    FRAMES_IN,
    FRAMES_OUT,
    FRAMES_SKIPPED,
    INFLIGHT,
    INGEST_SECONDS,
    MEMORY_BYTES,
    MEMORY_ENTRIES,
    MEMORY_INDEXED,
    MEMORY_STORED,
    MEMORY_TOKENS,
    MetricSpec,
    OCR_FRAMES_UNREAD,
    PAUSED,
    QUERIES,
    QUERY_SECONDS,
    SEGMENTS_IN,
    SEGMENTS_OUT,
    SEGMENTS_SKIPPED,
    SEGMENT_RETRIES,
    SOURCE_GAPS,
    SOURCE_GAP_SECONDS,
    SOURCE_WAITING,
    STAGE_SECONDS,
    STREAM_LAST_STORED,
    TIMESTAMP_REPAIRS,
    TOKENS_DROPPED,
    TOKENS_KEPT,
    WEBHOOK_FAILURES,
)

if TYPE_CHECKING:
    from kafka.structs import TopicPartition

    from contracts import messages
    from operators.frames import CompressedBatch, SegmentInfo


log = logging.getLogger(__name__)

# -- recording -----------------------------------------------------------------------------------

_live: dict[str, Any] = {}
_live_lock = threading.Lock()


def _metric(spec: MetricSpec) -> Any:
    metric = _live.get(spec.name)
    if metric is None:
        with _live_lock:
            metric = _live.get(spec.name)
            if metric is None:
                from ray.util import metrics as ray_metrics

                if spec.kind == "counter":
                    metric = ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.labels)
                elif spec.kind == "gauge":
                    metric = ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.labels)
                else:
                    metric = ray_metrics.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries),
                                                   tag_keys=spec.labels)
                _live[spec.name] = metric
    return metric


class StreamLabels:
    """The values the ``stream`` label takes in this process: a stream's own id for the first ``limit``
    (tenant, stream) pairs that record anything, `OTHER_STREAMS` for every later one. Series Ray was given
    stay until its session ends, so forgetting an evicted stream would free nothing; a fixed budget keeps the
    series a process makes bounded however many streams come and go (issue: 10,000 short-lived streams)."""

    OTHER_STREAMS = "_other"

    def __init__(self, limit: int):
        self.limit = limit
        self._named: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def label(self, tenant: str, stream: str) -> str:
        key = (tenant, stream)
        if key in self._named:
            return stream
        with self._lock:
            if len(self._named) >= self.limit:
                return self.OTHER_STREAMS
            self._named.add(key)
        return stream

    def __len__(self) -> int:
        return len(self._named)


STREAM_LABELS = StreamLabels(limit=2000)


def configure(config: Any) -> None:
    """Apply ``metrics`` settings (pipelines.config.MetricsConfig) to this process; every actor calls it."""
    STREAM_LABELS.limit = config.max_stream_series


def _tags(spec: MetricSpec, labels: Mapping[str, Any]) -> dict[str, str]:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {tuple(labels)}")
    tags = {k: str(v) for k, v in labels.items()}
    if "stream" in tags:
        tags["stream"] = STREAM_LABELS.label(tags.get("tenant", ""), tags["stream"])
    return tags


def inc(spec: MetricSpec, value: float = 1.0, **labels: Any) -> None:
    if value < 0:
        raise ValueError(f"{spec.name}: a counter cannot go down ({value})")
    if value:  # Ray refuses a zero increment; nothing happened anyway
        _metric(spec).inc(value, _tags(spec, labels))


def observe(spec: MetricSpec, value: float, **labels: Any) -> None:
    _metric(spec).observe(value, _tags(spec, labels))


def set_gauge(spec: MetricSpec, value: float, **labels: Any) -> None:
    _metric(spec).set(value, _tags(spec, labels))


# -- stages --------------------------------------------------------------------------------------


class _Segment(Protocol):
    tenant_id: str
    stream_id: str


def segment_in(stage: str, segment: _Segment, frames: int | None = None) -> None:
    inc(SEGMENTS_IN, stage=stage, tenant=segment.tenant_id, stream=segment.stream_id)
    if frames:
        inc(FRAMES_IN, frames, stage=stage, tenant=segment.tenant_id, stream=segment.stream_id)


def segment_out(stage: str, segment: _Segment, frames: int | None = None) -> None:
    inc(SEGMENTS_OUT, stage=stage, tenant=segment.tenant_id, stream=segment.stream_id)
    if frames:
        inc(FRAMES_OUT, frames, stage=stage, tenant=segment.tenant_id, stream=segment.stream_id)


class StageCall:
    """One segment's call into a stage: counts it in now, and out (with its latency) at `done`.

        call = StageCall("decode", info)
        return call.done(decoder.decode(info, payload))

    A call that raises never reaches `done`: it shows as in without out (its dead letter or retry is
    counted by the source).
    """

    def __init__(self, stage: str, segment: _Segment, frames_in: int | None = None):
        self.stage, self.segment = stage, segment
        self.started = time.perf_counter()
        segment_in(stage, segment, frames_in)

    def done(self, result: Any, frames: int | None = None) -> Any:
        """Returns `result`. frames: frames produced, when `len(result)` is not that (or not defined)."""
        observe(STAGE_SECONDS, time.perf_counter() - self.started, stage=self.stage)
        segment_out(self.stage, self.segment, len(result) if frames is None else frames)
        return result


def encoder_batch(frames: int, seconds: float) -> None:
    """One forward pass of the encoder over `frames` frames (of any number of streams)."""
    if frames:
        observe(ENCODE_BATCH_FRAMES, frames)
        observe(ENCODE_BATCH_SECONDS, seconds)


def frames_skipped(before: Mapping[tuple[str, str], int], after: Mapping[tuple[str, str], int]) -> int:
    """Count the frames skipped between two readings of per-(tenant, stream) skip totals; returns them."""
    total = 0
    for (tenant, stream), skipped in after.items():
        new = skipped - before.get((tenant, stream), 0)
        # < 0: the stream's state was forgotten and restarted in between; that round's skips go uncounted
        if new > 0:
            inc(FRAMES_SKIPPED, new, tenant=tenant, stream=stream)
            total += new
    return total


def tokens(batch: CompressedBatch) -> None:
    """Tokens the compressor kept and dropped in one segment."""
    kept = int(batch.kept.sum())
    seg = batch.segment
    inc(TOKENS_KEPT, kept, tenant=seg.tenant_id, stream=seg.stream_id)
    inc(TOKENS_DROPPED, int(batch.kept.size) - kept, tenant=seg.tenant_id, stream=seg.stream_id)


def ocr_unread(segment: SegmentInfo, frames: int) -> None:
    """Changed frames of a segment the live OCR reader did not read (it was behind)."""
    if frames:
        inc(OCR_FRAMES_UNREAD, frames, tenant=segment.tenant_id, stream=segment.stream_id)


# -- source --------------------------------------------------------------------------------------


def segment_stored(segment: messages.VideoSegment) -> None:
    """A segment the source submitted is durable in memory (or was already: a replay)."""
    segment_out("source", segment)
    observe(INGEST_SECONDS, max(0.0, time.time() - segment.produced_at.timestamp()), tenant=segment.tenant_id)
    set_gauge(STREAM_LAST_STORED, segment.wallclock_start.timestamp() + segment.duration_s,
              tenant=segment.tenant_id, stream=segment.stream_id)
    for kind, packets in segment.timestamp_repairs.items():
        inc(TIMESTAMP_REPAIRS, packets, tenant=segment.tenant_id, stream=segment.stream_id, kind=kind)
    if segment.gap_before_s > 0:
        inc(SOURCE_GAPS, tenant=segment.tenant_id, stream=segment.stream_id)
        inc(SOURCE_GAP_SECONDS, segment.gap_before_s, tenant=segment.tenant_id, stream=segment.stream_id)


def segment_skipped(segment: messages.VideoSegment, state: str) -> None:
    """A segment the source acknowledged without ingest: its stream is paused or deleted."""
    inc(SEGMENTS_SKIPPED, tenant=segment.tenant_id, stream=segment.stream_id, state=state)


def segment_retry(source: str, dependency: str) -> None:
    inc(SEGMENT_RETRIES, source=source, dependency=dependency)


def source_waiting(source: str, dependency: str, segments: int) -> None:
    set_gauge(SOURCE_WAITING, segments, source=source, dependency=dependency)


def dead_letter(stage: str, reason: str, tenant: str) -> None:
    inc(DEAD_LETTERS, stage=stage, reason=reason, tenant=tenant)


class _Positions(Protocol):
    def commit_point(self, tp: TopicPartition) -> int | None: ...


class SourceGauges:
    """A source's gauges, refreshed at most every `interval_s`: consumer lag asks the broker for end
    offsets (one request for all partitions), which is too dear per message and needless per poll."""

    def __init__(self, source: str, group: str, interval_s: float):
        self.source, self.group, self.interval_s = source, group, interval_s
        self._last = float("-inf")

    def maybe_report(self, consumer: Any, positions: _Positions, *, inflight: int, paused: bool) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        set_gauge(INFLIGHT, inflight, source=self.source)
        set_gauge(PAUSED, int(paused), source=self.source)
        for tp, lag in self.lags(consumer, positions).items():
            self._set_lag(tp, lag)

    @staticmethod
    def lags(consumer: Any, positions: _Positions) -> dict[TopicPartition, int]:
        """Per partition the consumer owns: its log end offset minus its commit point (one broker request)."""
        owned = list(consumer.assignment())
        if not owned:
            return {}
        out = {}
        for tp, end in consumer.end_offsets(owned).items():
            # A partition with nothing read yet has nothing in flight either: its commit point is the position.
            point = positions.commit_point(tp)
            out[tp] = max(0, end - (consumer.position(tp) if point is None else point))
        return out

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Lag of partitions that moved is their new owner's to report: this source's share becomes 0."""
        for tp in partitions:
            self._set_lag(tp, 0)

    def _set_lag(self, tp: TopicPartition, lag: int) -> None:
        set_gauge(CONSUMER_LAG, lag, group=self.group, topic=tp.topic, partition=tp.partition, source=self.source)


# -- memory --------------------------------------------------------------------------------------


# `MemoryStore.stats()` reports each tier flat: short_tokens, mid_bytes, long_entries, ...
_TIER_KEY = re.compile(r"^([a-z][a-z0-9]*)_(entries|tokens|bytes)$")


def memory_readings(stats: Mapping[str, Any]) -> list[tuple[MetricSpec, float, dict[str, str]]]:
    """The memory gauges (spec, value, labels other than ``shard``) in one `MemoryStore.stats()` reading.

    Per index: ``frames`` / ``indexed`` (visual) and ``text_frames`` / ``text_indexed`` (text). Per tier: every
    ``<tier>_entries`` / ``<tier>_tokens`` / ``<tier>_bytes`` key, so a tier the store adds later needs no
    change here.
    """
    out = []
    for index, prefix in (("visual", ""), ("text", "text_")):
        out.append((MEMORY_STORED, stats[f"{prefix}frames"], {"index": index}))
        out.append((MEMORY_INDEXED, stats[f"{prefix}indexed"], {"index": index}))
    of = {"entries": MEMORY_ENTRIES, "tokens": MEMORY_TOKENS, "bytes": MEMORY_BYTES}
    for key, value in sorted(stats.items()):
        match = _TIER_KEY.match(key)
        if match:
            out.append((of[match[2]], value, {"tier": match[1]}))
    return out


def memory_stats(shard: int, stats: Mapping[str, Any]) -> None:
    """Set the memory gauges from one `MemoryStore.stats()` reading."""
    for spec, value, labels in memory_readings(stats):
        set_gauge(spec, value, shard=shard, **labels)


def report_memory_every(interval_s: float, shard: int, read_stats: Callable[[], Mapping[str, Any]]) -> threading.Thread:
    """Start a daemon thread that sets the memory gauges from `read_stats()` every `interval_s`, for as long as
    the process (the memory actor) lives."""

    def loop() -> None:
        while True:
            try:
                memory_stats(shard, read_stats())
            except Exception:  # a Redis hiccup must not end the reporting; the next round retries
                log.warning("memory shard %d: stats for metrics failed", shard, exc_info=True)
            time.sleep(interval_s)

    thread = threading.Thread(target=loop, name=f"memory-{shard}-metrics", daemon=True)
    thread.start()
    return thread


# -- queries and alerts --------------------------------------------------------------------------


def query_mode(query: messages.Query) -> str:
    """image, text, or recent (neither: "what is on now")."""
    if query.image_jpeg_b64:
        return "image"
    return "text" if query.text.strip() else "recent"


@contextmanager
def query(q: messages.Query) -> Iterator[None]:
    """Times one query through the engine; an exception counts it as an error and goes on up."""
    started, outcome = time.perf_counter(), "error"
    try:
        yield
        outcome = "ok"
    finally:
        mode = query_mode(q)
        observe(QUERY_SECONDS, time.perf_counter() - started, mode=mode, outcome=outcome)
        inc(QUERIES, tenant=q.tenant_id, mode=mode, outcome=outcome)


def record_alert(alert: messages.Alert) -> None:
    """Count an alert once it is on the alerts topic (call after the broker's ack), and its latency."""
    inc(ALERTS, tenant=alert.tenant_id, kind=alert.kind, state=alert.state, event=alert.event)
    if alert.latency_s is not None:
        observe(ALERT_SECONDS, max(0.0, alert.latency_s), kind=alert.kind)


def webhook_failed(kind: str) -> None:
    inc(WEBHOOK_FAILURES, kind=kind)


# -- scraping ------------------------------------------------------------------------------------
