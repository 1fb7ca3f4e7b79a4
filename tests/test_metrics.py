"""The metric definitions and the values the recording helpers derive (scraping is tests/integration/test_prometheus.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from deploy import prometheus
from operators.frames import SegmentInfo
from pipelines import metric_specs, metrics
from pipelines.config import KafkaConfig
from pipelines.kafka.client import ensure_topics
from pipelines.kafka.offsets import OffsetTracker

# Prometheus' metric and label name rules, and the base units its conventions allow in a livelens name's suffix.
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_UNIT_SUFFIXES = ("_total", "_seconds", "_bytes", "_records", "_frames", "_tokens", "_entries", "_segments")
_UNITLESS = {"livelens_source_paused", "livelens_kafka_fast_checksum"}  # 0/1 states


@pytest.mark.parametrize("spec", metric_specs.REGISTRY.values(), ids=lambda s: s.name)
def test_definitions_follow_prometheus_conventions(spec: metric_specs.MetricSpec):
    assert _NAME.match(spec.name) and spec.name.startswith("livelens_")
    assert spec.name.endswith(_UNIT_SUFFIXES) or spec.name in _UNITLESS, f"{spec.name}: no unit or _total suffix"
    assert spec.kind != "counter" or spec.name.endswith("_total")
    assert spec.kind == "counter" or not spec.name.endswith("_total")
    assert all(_NAME.match(label) and not label.startswith("__") for label in spec.labels)
    assert not set(spec.labels) & {"le", *metric_specs.RAY_LABELS}, "a label Prometheus or Ray sets itself"
    assert spec.description
    if spec.kind == "histogram":
        assert list(spec.boundaries) == sorted(set(spec.boundaries)) and spec.boundaries[0] > 0
        # Histograms multiply series by their buckets: never per stream.
        assert "stream" not in spec.labels


def test_definitions_cover_what_operators_ask_for():
    """The issue's list, by name: a renamed or dropped metric breaks dashboards and alerts."""
    wanted = {"livelens_segments_in_total", "livelens_segments_out_total", "livelens_frames_in_total",
              "livelens_frames_out_total", "livelens_stage_latency_seconds", "livelens_encode_batch_frames",
              "livelens_frames_skipped_total", "livelens_tokens_dropped_total", "livelens_memory_tokens",
              "livelens_memory_bytes", "livelens_consumer_lag_records", "livelens_dead_letters_total",
              "livelens_query_latency_seconds", "livelens_alerts_total"}
    assert wanted <= set(metric_specs.REGISTRY)


@pytest.mark.parametrize(
    ("kind", "name", "error"),
    [
        ("counter", "livelens_x", "end in _total"),
        ("gauge", "livelens_x_total", "end in _total"),
        ("gauge", "other_x", "named livelens_"),
        ("histogram", "livelens_x_seconds", "boundaries"),
        ("counter", "livelens_segments_in_total", "defined twice"),
    ],
)
def test_bad_definitions_are_refused(kind, name, error):
    with pytest.raises(ValueError, match=error):
        metric_specs._define(kind, name, "d")


def test_recording_checks_labels_and_is_a_no_op_outside_ray():
    info = SegmentInfo("t", "s", 0, 0.0, 0.0, 2.0)
    call = metrics.StageCall("decode", info)
    assert call.done([1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ValueError, match="takes labels"):
        metrics.inc(metrics.SEGMENTS_IN, stage="decode", tenant="t")
    with pytest.raises(ValueError, match="cannot go down"):
        metrics.inc(metrics.FRAMES_IN, -1, stage="decode", tenant="t", stream="s")


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        # Before tiers: the indexes only.
        ({"frames": 10, "indexed": 9, "text_frames": 4, "text_indexed": 4, "tenants": 1},
         {("livelens_memory_stored_entries", "index", "visual"): 10, ("livelens_memory_indexed_entries", "index", "visual"): 9,
          ("livelens_memory_stored_entries", "index", "text"): 4, ("livelens_memory_indexed_entries", "index", "text"): 4}),
        # Every tier the store reports becomes series, one it adds later ("archive") too; other keys are not tiers.
        ({"frames": 1, "indexed": 1, "text_frames": 0, "text_indexed": 0, "index_sizes": {"t": 1},
          "index_types": {"t/visual": "flat"}, "short_entries": 1, "short_tokens": 64, "short_bytes": 8192,
          "mid_tokens": 0, "archive_bytes": 5},
         {("livelens_memory_stored_entries", "index", "visual"): 1, ("livelens_memory_indexed_entries", "index", "visual"): 1,
          ("livelens_memory_stored_entries", "index", "text"): 0, ("livelens_memory_indexed_entries", "index", "text"): 0,
          ("livelens_memory_entries", "tier", "short"): 1, ("livelens_memory_tokens", "tier", "short"): 64,
          ("livelens_memory_bytes", "tier", "short"): 8192, ("livelens_memory_tokens", "tier", "mid"): 0,
          ("livelens_memory_bytes", "tier", "archive"): 5}),
    ],
)
def test_memory_readings(stats, expected):
    got = {(spec.name, *next(iter(labels.items()))): value for spec, value, labels in metrics.memory_readings(stats)}
    assert got == expected


def test_frames_skipped_counts_the_difference_of_totals():
    before = {("t", "a"): 3, ("t", "b"): 5}
    after = {("t", "a"): 7, ("t", "b"): 5, ("t", "c"): 2}
    assert metrics.frames_skipped(before, after) == 6
    # A stream whose state was forgotten restarts from 0: nothing negative is counted.
    assert metrics.frames_skipped({("t", "a"): 9}, {("t", "a"): 1}) == 0


def test_consumer_lag_is_end_offset_minus_commit_point(kafka_broker):
    kafka = KafkaConfig(bootstrap=kafka_broker.address, topic_prefix=f"m{uuid.uuid4().hex[:8]}.", partitions=2)
    ensure_topics(kafka)
    topic = kafka.topic("segments")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    # One record per batch: the local broker (tansu) answers ListOffsets(latest) with the last *batch's* base
    # offset + 1, which is the log end offset only when every batch holds one record (Kafka counts records).
    for partition, n in ((0, 5), (1, 3)):
        for _ in range(n):
            producer.send(topic, value=b"x", partition=partition).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer.assign([p0, p1])
    tracker = OffsetTracker()
    for offset in range(5):  # partition 0 read whole; 0-2 durable, 3 and 4 in flight
        tracker.add(p0, offset)
    tracker.done(p0, [0, 1, 2])
    try:
        # Partition 1: nothing read, so everything from the position (the start) on is lag.
        assert metrics.SourceGauges.lags(consumer, tracker) == {p0: 2, p1: 3}
        tracker.done(p0, [3, 4])
        assert metrics.SourceGauges.lags(consumer, tracker)[p0] == 0
    finally:
        consumer.close()


def test_scrape_config_is_valid_and_strips_rays_prefix(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool not found; `make setup` installs it (Debian package prometheus)")
    config = prometheus.scrape_config(["127.0.0.1:9100", "10.0.0.2:9100"], interval_s=5)
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    relabel = config["scrape_configs"][0]["metric_relabel_configs"][0]
    # Prometheus anchors the regex; Python's fullmatch is the same test.
    assert re.fullmatch(relabel["regex"], "ray_livelens_frames_in_total")[1] == "livelens_frames_in_total"
    assert re.fullmatch(relabel["regex"], "ray_tasks") is None
