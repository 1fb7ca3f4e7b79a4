"""10,000 short-lived streams through the compress step of the live actors (synthetic features, no model):
per-stream state stays within pipeline.max_streams_per_actor, and streams idle past stream_idle_s go."""

from __future__ import annotations

import numpy as np

from operators.frames import FeatureBatch, SegmentInfo
from pipelines.config import LivelensConfig
from pipelines.ingest.chain import CompressStep
from pipelines.ingest.idle import StreamStates


def _features(stream: str, rng: np.random.Generator) -> FeatureBatch:
    info = SegmentInfo(tenant_id="t", stream_id=stream, seq=0, wallclock_start=1e9, media_start_s=0, duration_s=1)
    embedding = rng.standard_normal((2, 8)).astype(np.float32)
    return FeatureBatch(segment=info, pts_s=np.array([0.0, 0.5]), tokens=rng.standard_normal((2, 4, 8)).astype(np.float32),
                        embedding=embedding / np.linalg.norm(embedding, axis=1, keepdims=True), grid=(2, 2))


def _streams_held(step: CompressStep) -> tuple[int, int]:
    return len(step.compressor.snapshot()["streams"]), len(step.boundaries.snapshot()["streams"])


def test_ten_thousand_short_lived_streams_leave_bounded_state():
    config = LivelensConfig(pipeline=dict(max_streams_per_actor=256, stream_idle_s=3600))
    step = CompressStep.build(config)
    states = StreamStates(step, idle_s=config.pipeline.stream_idle_s, max_streams=config.pipeline.max_streams_per_actor)
    rng = np.random.default_rng(0)
    for i in range(10_000):
        batch = _features(f"s{i}", rng)
        states.seen("t", batch.segment.stream_id)
        step.compress(batch, None)
    assert len(states) == 256 and states.evicted == 10_000 - 256
    assert _streams_held(step) == (256, 256)


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
