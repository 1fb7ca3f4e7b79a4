"""Every livelens metric, defined once: its name, kind, labels and buckets (pipelines/metrics.py records them).

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

`REGISTRY` holds every definition and can be read anywhere (the dashboard test reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
OCR_FRAMES_UNREAD = _define("counter", "livelens_ocr_frames_unread_total",
                             "Changed frames the live OCR reader did not read because it was behind (ocr.max_lag_s): "
                             "stored as 'text not read'.", ("tenant", "stream"))
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
