"""An evicted stream's state is kept in a real redis-server and restored when the stream returns: the live
compress step (no Ray) continues exactly as one that never evicted it."""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import redis

from deploy.processes import start_redis
from memory_store import keys
from operators.frame_skip import FrameSkipper
from operators.frames import CompressedBatch, FeatureBatch, FrameBatch, SegmentInfo
from pipelines.config import LivelensConfig, RedisConfig
from pipelines.ingest.chain import CompressStep, EncodeStep
from pipelines.ingest.idle import StreamStates
from pipelines.ingest.snapshots import EvictedStates
from pipelines.redis_io import redis_client

FRAMES, TOKENS, WIDTH = 4, 16, 8


def _segments(stream: str, count: int, seed: int) -> list[FeatureBatch]:
    """``count`` one-second segments of a slowly changing scene with a cut in the middle: most tokens barely
    change from frame to frame (the compressor drops them), and the cut is an event boundary."""
    rng = np.random.default_rng(seed)
    scene = rng.standard_normal((TOKENS, WIDTH)).astype(np.float32)
    out = []
    for seq in range(count):
        if seq == count // 2:
            scene = rng.standard_normal((TOKENS, WIDTH)).astype(np.float32)
        tokens = np.stack([scene + 0.02 * rng.standard_normal((TOKENS, WIDTH)).astype(np.float32)
                           for _ in range(FRAMES)])
        tokens[:, rng.integers(TOKENS)] += rng.standard_normal(WIDTH).astype(np.float32)  # one token moves
        embedding = tokens.mean(axis=1)
        info = SegmentInfo(tenant_id="t", stream_id=stream, seq=seq, wallclock_start=1e9 + seq, media_start_s=seq,
                           duration_s=1)
        out.append(FeatureBatch(segment=info, pts_s=seq + np.arange(FRAMES) / FRAMES, tokens=tokens,
                                embedding=embedding / np.linalg.norm(embedding, axis=1, keepdims=True), grid=(4, 4)))
    return out


@pytest.fixture
def client(redis_server) -> redis.Redis:
    return redis_client(RedisConfig(url=redis_server.address, socket_timeout_s=2, connect_timeout_s=2))


def _config(**pipeline) -> LivelensConfig:
    return LivelensConfig(pipeline=dict(stream_idle_s=60, **pipeline), prune=dict(keep_fraction=0.5),
                          boundaries=dict(min_event_s=0.5))


def _run(segments: list[FeatureBatch], *, evict_before: int | None, kept: EvictedStates | None,
         config: LivelensConfig) -> tuple[list[CompressedBatch], StreamStates]:
    """The segments through one live compress step; before segment ``evict_before`` the stream goes quiet for
    longer than stream_idle_s while another stream keeps the actor busy (so the actor evicts it)."""
    now = [0.0]
    step = CompressStep.build(config)
    states = StreamStates(step, idle_s=config.pipeline.stream_idle_s, max_streams=1000, kept=kept,
                          clock=lambda: now[0])
    out = []
    for i, batch in enumerate(segments):
        if i == evict_before:
            now[0] += config.pipeline.stream_idle_s + 1
            other = _segments("other", 1, seed=99)[0]
            states.seen("t", "other")
            step.compress(other, None)
            assert step.snapshot_stream("t", batch.segment.stream_id) is None  # evicted: nothing held in the actor
        states.seen("t", batch.segment.stream_id)
        out.append(step.compress(batch, None))
        now[0] += 1
    return out, states


def test_a_returning_stream_continues_from_its_kept_state_exactly_as_if_never_evicted(client):
    config = _config()
    segments = _segments("cam", 8, seed=1)
    returned, states = _run(segments, evict_before=3, kept=EvictedStates(client, "compress", 3600), config=config)
    never, _ = _run(segments, evict_before=None, kept=None, config=config)
    assert states.evicted == 1 and states.restored == 1
    # The first frame back is compared with the stream's last frame (tokens dropped), not kept whole ...
    assert returned[3].drop_ratio[0] > 0.5
    # ... and every mask, drop ratio and boundary is what an actor that never evicted the stream computes.
    for got, want in zip(returned, never):
        np.testing.assert_array_equal(got.kept, want.kept)
        np.testing.assert_array_equal(got.drop_ratio, want.drop_ratio)
        np.testing.assert_array_equal(got.boundaries, want.boundaries)
    boundaries = [batch.boundaries for batch in returned]
    assert np.concatenate(boundaries).any()  # the cut after the return was found: its event went on
    # Restored once: the key is gone, so a later restart of the actor never goes back to that state.
    assert client.get(keys.evicted_state("t", "cam", "compress")) is None


def test_without_a_store_the_returning_stream_starts_afresh(client):
    returned, states = _run(_segments("cam", 5, seed=2), evict_before=3, kept=None, config=_config())
    assert states.restored == 0 and returned[3].drop_ratio[0] == 0  # its first frame back is kept whole


def test_the_kept_state_expires_after_its_ttl(client):
    config = _config()
    step = CompressStep.build(config)
    now = [0.0]
    states = StreamStates(step, idle_s=60, max_streams=1000, kept=EvictedStates(client, "compress", 90),
                          clock=lambda: now[0])
    states.seen("t", "cam")
    step.compress(_segments("cam", 1, seed=3)[0], None)
    now[0] = 61
    states.seen("t", "other")
    ttl_ms = client.pttl(keys.evicted_state("t", "cam", "compress"))
    assert 80_000 < ttl_ms <= 90_000


def test_redis_away_at_eviction_keeps_the_state_and_raises_so_the_segment_is_retried(tmp_path):
    server = start_redis(tmp_path)
    try:
        client = redis_client(RedisConfig(url=server.address, socket_timeout_s=1, connect_timeout_s=1))
        step = CompressStep.build(_config())
        now = [0.0]
        states = StreamStates(step, idle_s=60, max_streams=1000, kept=EvictedStates(client, "compress", 3600),
                              clock=lambda: now[0])
        for stream in ("cam", "other"):
            states.seen("t", stream)
            step.compress(_segments(stream, 1, seed=4)[0], None)
        now[0] = 61
        server.stop()  # "other" is known here, so its next batch asks Redis nothing but to keep "cam"
        with pytest.raises(redis.ConnectionError):  # the actor call fails as "redis away": the segment waits
            states.seen("t", "other")
        assert step.snapshot_stream("t", "cam") is not None and states.evicted == 0  # nothing forgotten
        server = start_redis(Path(server.log).parents[1], port=server.port)  # back, on its port
        states.seen("t", "other")  # the retried segment
        assert states.evicted == 1 and client.exists(keys.evicted_state("t", "cam", "compress"))
    finally:
        server.stop()


def test_state_kept_by_another_configuration_is_refused_loudly_and_the_stream_starts_afresh(client, caplog):
    kept = EvictedStates(client, "compress", 3600)
    pixel = CompressStep.build(LivelensConfig(drop=dict(mode="pixel")))
    kept.put("t", "cam", {"compressor": {**pixel.compressor.snapshot(), "streams": []}})
    step = CompressStep.build(_config())
    states = StreamStates(step, idle_s=60, max_streams=1000, kept=kept)
    with caplog.at_level(logging.WARNING, logger="pipelines.ingest.idle"):
        states.seen("t", "cam")
    assert states.restored == 0 and "starts afresh" in caplog.text
    assert step.compress(_segments("cam", 1, seed=5)[0], None).drop_ratio[0] == 0  # kept whole


def test_the_encode_step_keeps_the_frame_skip_state_and_not_the_token_cache():
    """The skipper's state goes and comes back; the encoder (its ViT token cache, its stats) is not asked for any:
    the step here has no encoder at all, so touching it would fail."""
    config = LivelensConfig(cache=dict(skip_frames=True, skip=dict(grid=(2, 2))))
    step = EncodeStep(encoder=None, skipper=FrameSkipper(config.cache.skip))
    info = SegmentInfo(tenant_id="t", stream_id="cam", seq=0, wallclock_start=1e9, media_start_s=0, duration_s=1)
    images = np.full((2, 64, 64, 3), 90, np.uint8)
    batch = FrameBatch(info, np.array([0.0, 0.5]), images)
    mask = step.skipper.plan(batch)
    encoded = FeatureBatch(info, batch.pts_s[mask], np.ones((int(mask.sum()), 4, 8), np.float32),
                           np.ones((int(mask.sum()), 8), np.float32), (2, 2))
    step.skipper.fill(batch, encoded, mask)
    state = step.snapshot_stream("t", "cam")
    assert set(state) == {"skipper"}
    returned = EncodeStep(encoder=None, skipper=FrameSkipper(config.cache.skip))
    returned.restore_stream("t", "cam", state)
    again = FrameBatch(replace(info, seq=1), np.array([1.0]), images[:1])
    assert not returned.skipper.plan(again).any()  # the same picture: skipped, as before the eviction
    assert FrameSkipper(config.cache.skip).plan(again).all()  # a fresh skipper would encode it
