"""10,000 short-lived streams through the compress step of the live actors (synthetic features, no model):
per-stream state stays within pipeline.max_streams_per_actor, and streams idle past stream_idle_s go; what is
kept of the evicted streams in Redis expires (pipeline.evicted_state_ttl_s)."""

from __future__ import annotations

import numpy as np

from operators.frames import FeatureBatch, SegmentInfo
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.ingest.chain import CompressStep
from pipelines.ingest.idle import StreamStates
from pipelines.ingest.snapshots import EvictedStates
from pipelines.redis_io import redis_client


def _features(stream: str, rng: np.random.Generator) -> FeatureBatch:
    info = SegmentInfo(tenant_id="t", stream_id=stream, seq=0, wallclock_start=1e9, media_start_s=0, duration_s=1)
    embedding = rng.standard_normal((2, 8)).astype(np.float32)
    return FeatureBatch(segment=info, pts_s=np.array([0.0, 0.5]), tokens=rng.standard_normal((2, 4, 8)).astype(np.float32),
                        embedding=embedding / np.linalg.norm(embedding, axis=1, keepdims=True), grid=(2, 2))


def _streams_held(step: CompressStep) -> tuple[int, int]:
    return len(step.compressor.snapshot()["streams"]), len(step.boundaries.snapshot()["streams"])


def test_ten_thousand_short_lived_streams_leave_bounded_state(redis_server):
    config = LivelensConfig(pipeline=dict(max_streams_per_actor=256, stream_idle_s=3600, evicted_state_ttl_s=600),
                            redis=dict(url=redis_server.address))
    step = CompressStep.build(config)
    client = redis_client(config.redis)
    states = StreamStates(step, idle_s=config.pipeline.stream_idle_s, max_streams=config.pipeline.max_streams_per_actor,
                          kept=EvictedStates(client, "compress", config.pipeline.evicted_state_ttl_s))
    rng = np.random.default_rng(0)
    for i in range(10_000):
        batch = _features(f"s{i}", rng)
        states.seen("t", batch.segment.stream_id)
        step.compress(batch, None)
    assert len(states) == 256 and states.evicted == 10_000 - 256
    assert _streams_held(step) == (256, 256)
    # What the actor evicted waits in Redis for its stream's return, each for evicted_state_ttl_s at most.
    kept = list(client.scan_iter(match="ll:{t}:evicted:*", count=1000))
    assert len(kept) == 10_000 - 256
    assert all(0 < client.pttl(key) <= 600_000 for key in kept[:: 97])


def test_a_stream_idle_past_the_limit_is_forgotten_and_without_a_store_starts_afresh_when_it_returns():
    now = [0.0]
    config = LivelensConfig(pipeline=dict(stream_idle_s=60))
    step = CompressStep.build(config)
    states = StreamStates(step, idle_s=60, max_streams=1000, clock=lambda: now[0])
    rng = np.random.default_rng(1)
    for stream in ("quiet", "busy"):
        states.seen("t", stream)
        step.compress(_features(stream, rng), None)
    now[0] = 61.0
    states.seen("t", "busy")  # any batch lets the actor notice who went quiet
    assert _streams_held(step) == (1, 1) and len(states) == 1
    returning = step.compress(_features("quiet", rng), None)
    assert bool(returning.kept[0].all())  # its first frame is kept whole: no stale reference to compare with


def test_ten_thousand_streams_make_a_bounded_number_of_metric_series():
    # Ray cannot remove a series, so each process names at most metrics.max_stream_series streams.
    labels = metrics.StreamLabels(limit=100)
    seen = {labels.label("t", f"s{i}") for i in range(10_000)}
    assert len(seen) == 101 and metrics.StreamLabels.OTHER_STREAMS in seen
    assert labels.label("t", "s7") == "s7" and labels.label("u", "s7") == "_other"  # the first 100 keep their names
    tags = metrics._tags(metrics.SEGMENTS_IN, {"stage": "memory", "tenant": "t", "stream": "s-new"})
    assert tags["stream"] == "s-new"  # the process-wide budget (2000 by default) is not spent here
    metrics.configure(LivelensConfig(metrics=dict(max_stream_series=0)).metrics)
    try:
        assert metrics._tags(metrics.SEGMENTS_IN, {"stage": "memory", "tenant": "t", "stream": "s-newer"})[
            "stream"] == "_other"
    finally:
        metrics.configure(LivelensConfig().metrics)
