"""Every livelens metric, defined once, and the helpers the actor wrappers call to record them.

The metrics go out through Ray's own metrics export (`ray.util.metrics`): each Ray
process reports what it recorded to its node's metrics agent, which serves them all in
Prometheus text format on the node's metrics export port (`ray.nodes()[i]["MetricsExportPort"]`,
fixed with `ray start --metrics-export-port` or `ray.init(_metrics_export_port=...)`).
Outside a Ray worker (a unit test, a plain script) recording is a no-op, so callers never check.

Names. Ray prefixes every application metric with ``ray_`` (its exporter's fixed
namespace), so the agent serves ``ray_livelens_segments_in_total``. The scrape config
strips that prefix back off (`deploy.prometheus.scrape_config`, and the same relabelling belongs in a
ServiceMonitor's ``metricRelabelings``), so what Prometheus stores, and what the Grafana
dashboards under ``deploy/grafana/`` query, are the names defined here. Counters are
defined with their ``_total`` suffix: Ray keeps a name that already ends in ``_total`` as
it is (and only appends one, plus a deprecated gauge twin, to names that do not).
Ray adds its own labels to every series (``WorkerId``, ``NodeAddress``, ``SessionName``,
``Component``, ``Version``): aggregate them away with ``sum by (...)``.

Labels and cardinality. ``stage`` (source, decode, encode, compress, ocr, memory), ``tier``,
``index``, ``state``, ``kind``, ``event``, ``reason``, ``outcome`` and ``mode`` take a handful of
values each. ``tenant`` is bounded by the tenants of a deployment and ``shard``, ``source``,
``topic`` and ``partition`` by its configuration. ``stream`` is the one label that grows with the
business: it is only on counters and gauges (one series per stream and stage, never per histogram
bucket). Ray's metrics agent keeps every label set it was given until the Ray session ends (it has
no call to remove one), so the bound is set where series are made: each process names at most
``metrics.max_stream_series`` streams (`StreamLabels`) and counts every later one under
``stream="_other"``. To drop the label altogether, drop it at scrape time
(``metric_relabel_configs: [{action: labeldrop, regex: stream}]``): every dashboard but the
per-stream one keeps working. Histograms carry ``stage`` (or nothing) only.

Metric objects are created lazily, once per process, on first use: importing this module
touches no Ray state, and `REGISTRY` can be read anywhere (the dashboard test reads it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from kafka.structs import TopicPartition

    from contracts import messages
    from operators.frames import CompressedBatch

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

# Labels Ray adds to every series it exports; never defined here, never needed in a query.
RAY_LABELS = ("Component", "NodeAddress", "SessionName", "Version", "WorkerId", "otel_scope_name",
              "otel_scope_schema_url", "otel_scope_version")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what Prometheus stores under which name, with which labels."""

    kind: Kind
    name: str
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def series_names(self) -> tuple[str, ...]:
        """The names a PromQL query may use for it: a histogram is stored as three series."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


REGISTRY: dict[str, MetricSpec] = {}


def _define(kind: Kind, name: str, description: str, labels: tuple[str, ...] = (),
            boundaries: tuple[float, ...] = ()) -> MetricSpec:
    if not name.startswith("livelens_"):
        raise ValueError(f"metric {name!r}: livelens metrics are named livelens_*")
    if (kind == "counter") != name.endswith("_total"):
        raise ValueError(f"metric {name!r}: counters, and only counters, end in _total")
    if kind == "histogram" and not boundaries:
        raise ValueError(f"histogram {name!r} needs bucket boundaries")
    if name in REGISTRY:
        raise ValueError(f"metric {name!r} defined twice")
    spec = MetricSpec(kind, name, description, labels, boundaries)
    REGISTRY[name] = spec
    return spec


# Seconds: a memory write of a small segment takes ~1 ms, an OCR re-read of 1080p ~250 ms, a tiny-model
# encode ~1 ms per frame and a GPU batch of 512 frames ~70 ms; a segment stuck behind a full batch queue
# takes seconds. 1 ms to 30 s covers both ends without empty buckets at either.
_STAGE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Produce-to-searchable: a segment is 1-4 s of video, so a healthy stream sits around 0.1-5 s; minutes is a
# stream falling behind.
_INGEST_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_QUERY_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Moderation's target is RED within 3 s of the first evidence frame.
_ALERT_SECONDS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_FRAMES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_STREAM = ("stage", "tenant", "stream")

SEGMENTS_IN = _define("counter", "livelens_segments_in_total",
                      "Segments a stage received (source: submitted to the DAG, first attempt only).", _STREAM)
SEGMENTS_OUT = _define("counter", "livelens_segments_out_total",
                       "Segments a stage finished (source: durable in memory, replays included).", _STREAM)
FRAMES_IN = _define("counter", "livelens_frames_in_total", "Frames a stage received.", _STREAM)
FRAMES_OUT = _define("counter", "livelens_frames_out_total",
                     "Frames a stage produced (decode: sampled frames; memory: frames newly stored).", _STREAM)
STAGE_SECONDS = _define("histogram", "livelens_stage_latency_seconds",
                        "Seconds per segment in a stage's actor call (encode: including the wait for a batch).",
                        ("stage",), _STAGE_SECONDS)
ENCODE_BATCH_FRAMES = _define("histogram", "livelens_encode_batch_frames",
                              "Frames per encoder forward pass, across streams (skipped frames not counted).",
                              (), _BATCH_FRAMES)
ENCODE_BATCH_SECONDS = _define("histogram", "livelens_encode_batch_seconds",
                               "Seconds per encoder forward pass.", (), _STAGE_SECONDS)
FRAMES_SKIPPED = _define("counter", "livelens_frames_skipped_total",
                         "Frames whose picture barely changed, given the previous features (no ViT run).",
                         ("tenant", "stream"))
TOKENS_KEPT = _define("counter", "livelens_tokens_kept_total", "Visual tokens kept by the compressor.",
                      ("tenant", "stream"))
TOKENS_DROPPED = _define("counter", "livelens_tokens_dropped_total",
                         "Visual tokens dropped by the compressor (redundant with the previous frame, or pruned).",
                         ("tenant", "stream"))
INGEST_SECONDS = _define("histogram", "livelens_ingest_latency_seconds",
                         "Seconds from a segment's produce to the publisher's broker to it being searchable.",
                         ("tenant",), _INGEST_SECONDS)
STREAM_LAST_STORED = _define("gauge", "livelens_stream_last_stored_timestamp_seconds",
                             "Wall-clock end (epoch seconds) of a stream's newest stored segment.",
                             ("tenant", "stream"))
SEGMENT_RETRIES = _define("counter", "livelens_segment_retries_total",
                          "Segments resubmitted whole after a failure, by what was away (redis, kafka, ray-actor, "
                          "network, predecessor: an earlier segment of the stream; crash: our code failed).",
                          ("source", "dependency"))
SOURCE_WAITING = _define("gauge", "livelens_source_waiting_segments",
                         "Segments a source holds waiting for a dependency to come back, by dependency (1 for "
                         "kafka / redis / crash while its loop itself waits to reconnect).", ("source", "dependency"))
SEGMENTS_SKIPPED = _define("counter", "livelens_segments_skipped_total",
                           "Segments acknowledged without ingest because their stream is paused or deleted "
                           "(`livelens streams`), by that state.", ("tenant", "stream", "state"))
DEAD_LETTERS = _define("counter", "livelens_dead_letters_total",
                       "Records sent to the dead-letters topic, by the stage that refused them and its reason code.",
                       ("stage", "reason", "tenant"))
CONSUMER_LAG = _define("gauge", "livelens_consumer_lag_records",
                       "Records of a partition not yet durably processed: log end offset minus the commit point. "
                       "0 from a source for a partition it no longer owns, so sum by (topic, partition).",
                       ("group", "topic", "partition", "source"))
INFLIGHT = _define("gauge", "livelens_source_inflight_segments", "Segments a source has in the DAG.", ("source",))
PAUSED = _define("gauge", "livelens_source_paused", "1 while a source holds its partitions paused (backpressure).",
                 ("source",))
MEMORY_STORED = _define("gauge", "livelens_memory_stored_entries",
                        "Entries (frames, and event segments where the store keeps them) Redis holds for a shard's "
                        "tenants, per index (visual, text): what the index should hold.", ("shard", "index"))
MEMORY_INDEXED = _define("gauge", "livelens_memory_indexed_entries",
                         "Vectors a shard's FAISS indexes hold, per index; equals livelens_memory_stored_entries "
                         "when all is well.", ("shard", "index"))
MEMORY_ENTRIES = _define("gauge", "livelens_memory_entries",
                         "Entries (frames, event segments, merged centroids) a shard's memory holds, per tier.",
                         ("shard", "tier"))
MEMORY_TOKENS = _define("gauge", "livelens_memory_tokens", "Visual tokens a shard's memory holds, per tier.",
                        ("shard", "tier"))
MEMORY_BYTES = _define("gauge", "livelens_memory_bytes", "Bytes a shard's memory holds, per tier.",
                       ("shard", "tier"))
QUERIES = _define("counter", "livelens_queries_total", "Queries answered (HTTP and Kafka), by outcome.",
                  ("tenant", "mode", "outcome"))
QUERY_SECONDS = _define("histogram", "livelens_query_latency_seconds",
                        "Seconds from a query's arrival at the engine to its answer.", ("mode", "outcome"),
                        _QUERY_SECONDS)
ALERTS = _define("counter", "livelens_alerts_total", "Alerts sent to the alerts topic.",
                 ("tenant", "kind", "state", "event"))
ALERT_SECONDS = _define("histogram", "livelens_alert_latency_seconds",
                        "Wall-clock seconds from an alert's first evidence frame to its decision.", ("kind",),
                        _ALERT_SECONDS)
KAFKA_FAST_CHECKSUM = _define("gauge", "livelens_kafka_fast_checksum",
                              "1 while a process's Kafka clients checksum record batches in C; 0: pure Python, "
                              "about 8 MB/s per process (install kafka-python's crc32c extra).", ("role",))
WEBHOOK_FAILURES = _define("counter", "livelens_alert_webhook_failures_total",
                           "Alert webhooks that failed (the alerts topic still has the alert).", ("kind",))
# What publishers of live sources met, as their segments' headers say (VideoSegment v3): counted when a segment
# is durable, replays included (like segments_out), because the publisher's own process exports no metrics.
TIMESTAMP_REPAIRS = _define("counter", "livelens_timestamp_repairs_total",
                            "Packets whose timestamps the publisher repaired (pipelines/timestamps.py), by kind.",
                            ("tenant", "stream", "kind"))
SOURCE_GAPS = _define("counter", "livelens_source_gaps_total",
                      "Stretches without video before a stored segment: the live source dropped or restarted.",
                      ("tenant", "stream"))
SOURCE_GAP_SECONDS = _define("counter", "livelens_source_gap_seconds_total",
                             "Stream seconds without video: the live source was away.", ("tenant", "stream"))


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
