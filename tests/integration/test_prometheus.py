"""The livelens metrics, scraped for real: pipeline traffic -> Ray's metrics export -> a Prometheus server.

A real deployed pipeline ingests the sample broadcast (plus one unreadable record), answers a query
and fires a standing query; a Prometheus server (Debian package) on loopback scrapes the Ray node's
metrics export port every second, and its HTTP API must then hold every livelens metric the traffic
touched, under its own name, with values that agree with what Redis holds.
"""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from kafka import KafkaProducer

from contracts import messages
from deploy.processes import start_prometheus
from memory_store.redis_tier import RedisTier
from pipelines.api.client import Client
from pipelines.kafka.publish import SegmentPublisher
from pipelines.metric_specs import MEMORY_TOKENS
from pipelines.metrics import memory_readings
from pipelines.ray.query import query_engine
from pipelines.ray.dag import find_stages
from pipelines.segmenter import iter_segments
from tests.integration.conftest import RAY_INIT, redis_client, wait_for

pytestmark = pytest.mark.integration


def promql(prometheus: str, expr: str) -> dict[tuple, float]:
    """Instant query: {label values sorted by name: value}."""
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}


def scalar(prometheus: str, expr: str) -> float | None:
    values = list(promql(prometheus, expr).values())
    assert len(values) <= 1, f"{expr} has {len(values)} series"
    return values[0] if values else None


def matchers(labels: dict[str, str]) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in labels.items())


def by(prometheus: str, label: str, expr: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in promql(prometheus, expr).items()}


@pytest.fixture(scope="module")
def ray_runtime():
    """A Ray runtime of this module's own. Ray's metrics agent keeps exporting the series of the actors that
    earlier tests started, under the same labels, so the counts below are exact only in a fresh runtime."""
    was_running = ray.is_initialized()
    ray.shutdown()
    ray.init(**RAY_INIT)
    yield
    ray.shutdown()
    if was_running:  # later tests find the session's runtime as they expect it: up
        ray.init(**RAY_INIT)


@pytest.fixture
def prometheus(tmp_path, ray_runtime):
    # This node's metrics export port (the driver's ray.init picked it); Prometheus listens on loopback.
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    record = start_prometheus(tmp_path, [f"127.0.0.1:{port}"], scrape_interval_s=1)
    yield record.address
    record.stop()


def test_pipeline_metrics_reach_prometheus(deployed, sample_video, prometheus):
    video, truth = sample_video
    config = deployed(metrics={"lag_interval_s": 1.0, "memory_interval_s": 1.0})
    watched = truth["headlines"][0]["text"]
    query_engine(config).register_standing("default", text=f"news about {watched.lower()}", stream_ids=["news"])
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="news", pace="fast")
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap)
    producer.send(config.kafka.topic("segments"), key=b"news", value=b"not a segment").get(timeout=30)
    producer.close()
    tier = RedisTier(redis_client(config), config.memory)

    def stored() -> int:
        info = tier.stream_info("default", "news")
        return info.segments if info else 0

    wait_for(lambda: stored() == n, 120, f"{n} segments in memory")
    answer = Client(config, timeout_s=60).ask_kafka(messages.Query(tenant_id="default", stream_ids=["news"],
                                                                   text="what is on screen", top_k=3))
    assert answer.error is None
    frames = tier.stream_info("default", "news").frames
    # Writes are over: the memory gauges must come to show exactly this reading of the store.
    memory = memory_readings(ray.get(find_stages(config).memory[0].call.remote("stats")))

    def memory_shown() -> bool:
        return all(scalar(prometheus, f"sum({spec.name}{{{matchers(labels)}}})") == value
                   for spec, value, labels in memory)

    # Ray exports every ~10 s, Prometheus scrapes every second: wait for the last of the traffic to show.
    news = 'tenant="default", stream="news"'

    def pending() -> list[str]:
        """What Prometheus does not show yet (named, so a timeout says which)."""
        checks = {
            "segments out of the source": lambda: scalar(
                prometheus, f'sum(livelens_segments_out_total{{stage="source", {news}}})') == n,
            "the query": lambda: scalar(prometheus, 'sum(livelens_queries_total{outcome="ok"})') == 1,
            "memory gauges": memory_shown,
            "zero lag": lambda: scalar(prometheus, "sum(livelens_consumer_lag_records)") == 0,
            # Each actor exports on its own ~10 s cycle: wait for every one whose numbers are read below.
            "every stage": lambda: len(by(prometheus, "stage",
                                          f"sum by (stage) (livelens_segments_in_total{{{news}}})")) == 7,
            "the standing query's alert": lambda: (scalar(
                prometheus, 'sum(livelens_alerts_total{kind="standing_query"})') or 0) >= 1,
            "the dead letter": lambda: scalar(prometheus, "sum(livelens_dead_letters_total)") == 1,
        }
        return [name for name, check in checks.items() if not check()]

    try:
        wait_for(lambda: not pending(), 90, "the traffic in Prometheus")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still missing: {pending()}") from None

    # Every stage saw every segment, and memory stored exactly the frames Redis holds.
    # At least once: a segment whose DAG call failed (an actor restarting, say) goes through again whole, so the
    # decoder sees every attempt and each later stage those that got as far as it; memory's idempotent write
    # stores its frames once.
    retried = scalar(prometheus, "sum(livelens_segment_retries_total)") or 0
    stages = ["source", "decode", "encode", "compress", "ocr", "transcript", "memory"]
    seen = by(prometheus, "stage", f"sum by (stage) (livelens_segments_in_total{{{news}}})")
    assert seen["source"] == n and seen["decode"] == n + retried, (seen, retried)
    assert set(seen) == set(stages) and all(n <= seen[s] <= n + retried for s in stages[2:]), (seen, retried)
    frames_out = by(prometheus, "stage", f"sum by (stage) (livelens_frames_out_total{{{news}}})")
    # The transcript stage counts the lines it read (none: the sample's words are in a sidecar, not the segments).
    assert frames_out["memory"] == frames and all(frames_out[s] >= frames for s in stages[1:] if s != "transcript"), (
        frames_out)
    latency_counts = by(prometheus, "stage", "sum by (stage) (livelens_stage_latency_seconds_count)")
    assert set(latency_counts) == set(stages[1:]) and all(n <= latency_counts[s] <= seen[s] for s in stages[1:]), (
        latency_counts, seen)
    p95 = by(prometheus, "stage", "histogram_quantile(0.95, sum by (stage, le) (livelens_stage_latency_seconds_bucket))")
    assert all(0 < v < 30 for v in p95.values()), p95

    # Encoder batches gather segments (Ray rebuilds a histogram's _sum from bucket midpoints: count it is).
    batches = scalar(prometheus, "sum(livelens_encode_batch_frames_count)")
    assert 1 <= batches <= n + retried and scalar(prometheus, "sum(livelens_encode_batch_seconds_count)") == batches
    # The compressor kept some tokens of every frame.
    kept = scalar(prometheus, f"sum(livelens_tokens_kept_total{{{news}}})")
    dropped = scalar(prometheus, f"sum(livelens_tokens_dropped_total{{{news}}})") or 0
    assert kept >= frames and dropped >= 0

    # Delivery: end-to-end latency per segment, freshness of the stream, lag per partition, the dead letter.
    assert scalar(prometheus, 'sum(livelens_ingest_latency_seconds_count{tenant="default"})') == n
    last = scalar(prometheus, f"max(livelens_stream_last_stored_timestamp_seconds{{{news}}})")
    assert time.time() - 600 < last <= time.time() + 60
    lag = promql(prometheus, "sum by (topic, partition) (livelens_consumer_lag_records)")
    assert {dict(k)["partition"] for k in lag} == {str(p) for p in range(config.kafka.partitions)}
    assert by(prometheus, "stage", "sum by (stage) (livelens_dead_letters_total)") == {"source": 1}
    # Memory's tiers as the store reports them (the readings compared above), the short tier holding tokens.
    assert any(spec is MEMORY_TOKENS and labels == {"tier": "short"} and value > 0 for spec, value, labels in memory)

    # The query, and the standing query's alerts (one per episode of the headline).
    assert scalar(prometheus, 'sum(livelens_query_latency_seconds_count{mode="text", outcome="ok"})') == 1
    alerts = by(prometheus, "state", 'sum by (state) (livelens_alerts_total{kind="standing_query"})')
    assert set(alerts) == {"MATCH"} and alerts["MATCH"] >= 1

    # The scrape config stores them under their own names: nothing left under Ray's prefix.
    assert promql(prometheus, '{__name__=~"ray_livelens_.+"}') == {}
