"""RedisTier against a real redis-server (AOF, appendfsync always)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis

from deploy.processes import ProcessRecord
from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.redis_tier import RedisTier
from operators.frames import StageError
from tests.memory_store.batches import WALL0, make_batch
from tests.memory_store.crash import kill_and_restart


@pytest.fixture
def tier(client: redis.Redis) -> RedisTier:
    return RedisTier(client, MemoryConfig())


def dump_all(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.scan_iter(count=1000)}


def test_write_stores_every_field(tier: RedisTier) -> None:
    batch = make_batch(frames=3, tokens=64, token_dim=64)
    result = tier.write_segment(batch)

    assert result is not None and result.ids == (1, 2, 3)
    records = tier.frames("acme", result.frame_keys)
    for i, record in enumerate(records):
        positions, tokens = batch.frame_tokens(i)
        assert record is not None and record.id == i + 1
        assert record.frame_key == batch.segment.frame_key(batch.pts_s[i])
        assert (record.stream_id, record.seq, record.grid) == ("cam-1", 0, (8, 8))
        assert record.pts_s == batch.pts_s[i]
        assert record.wallclock_start == WALL0 + batch.pts_s[i]
        assert record.wallclock_end == record.wallclock_start + (record.t_end_s - record.pts_s)
        np.testing.assert_array_equal(record.embedding, batch.embedding[i])
        np.testing.assert_array_equal(record.positions, positions)
        np.testing.assert_array_equal(record.tokens, tokens.astype(np.float16))
        assert record.drop_ratio == pytest.approx(batch.drop_ratio[i])
        assert tier.thumbnail(record.thumbnail) == batch.thumbnails[i]
    assert tier.frames("acme", ["acme/cam-1/9/0"]) == [None]


@pytest.mark.parametrize(
    ("pts", "duration", "ends"),
    [
        ([0.0, 1.0], 2.0, [1.0, 2.0]),  # the last frame lasts until the segment ends
        ([0.0, 0.25, 1.5], 2.0, [0.25, 1.5, 2.0]),  # irregular sampling
        ([0.0, 1.0], 0.0, [1.0, 1.0]),  # duration unknown: the last frame ends where it starts
    ],
)
def test_frame_end_is_next_frame_or_segment_end(tier: RedisTier, pts: list[float], duration: float,
                                                ends: list[float]) -> None:
    batch = make_batch(frames=len(pts), pts=pts, duration=duration)
    result = tier.write_segment(batch)
    assert [f.t_end_s for f in tier.frames("acme", result.frame_keys)] == ends


def test_replay_changes_nothing(client: redis.Redis, tier: RedisTier) -> None:
    batch = make_batch()
    first = tier.write_segment(batch)
    before = dump_all(client)

    assert tier.write_segment(make_batch()) is None
    assert dump_all(client) == before
    assert tier.segment_frame_keys("acme", "cam-1", 0) == list(first.frame_keys)


def test_ids_are_dense_per_tenant_in_write_order(client: redis.Redis, tier: RedisTier) -> None:
    writes = [("acme", "cam-1", 0), ("acme", "cam-2", 0), ("other", "cam-1", 0), ("acme", "cam-1", 1)]
    results = [tier.write_segment(make_batch(tenant=t, stream=s, seq=q)) for t, s, q in writes]

    assert [r.ids for r in results] == [(1, 2), (3, 4), (1, 2), (5, 6)]
    assert tier.tenants() == ["acme", "other"]
    for tenant in ("acme", "other"):
        for member, score in client.zrange(keys.ids(tenant), 0, -1, withscores=True):
            assert tier.frames(tenant, [member.decode()])[0].id == int(score)


def test_concurrent_writers_get_distinct_dense_ids(redis_server: ProcessRecord) -> None:
    """Several writers (each its own connection) on one tenant, plus all of them racing on one segment."""
    writers, segments = 4, 8
    stored_shared: list[object] = []

    def write(worker: int) -> None:
        tier = RedisTier(redis.Redis.from_url(redis_server.address), MemoryConfig(recent_frames=5))
        for seq in range(segments):
            assert tier.write_segment(make_batch(stream=f"cam-{worker}", seq=seq)) is not None
            stored_shared.append(tier.write_segment(make_batch(stream="shared", seq=seq)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    client = redis.Redis.from_url(redis_server.address)
    tier = RedisTier(client, MemoryConfig())
    assert sum(r is not None for r in stored_shared) == segments
    frames = (writers + 1) * segments * 2
    entries = list(tier.frames_since("acme", 0))
    assert [e.id for e in entries] == list(range(1, frames + 1))
    assert int(client.get(keys.next_id("acme"))) == frames
    assert {s.stream_id: s.frames for s in tier.streams("acme")}["shared"] == segments * 2


@pytest.mark.parametrize("arrival", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_short_tier_keeps_tokens_of_newest_frames_only(client: redis.Redis, arrival: list[int]) -> None:
    tier = RedisTier(client, MemoryConfig(recent_frames=3))
    batches = {seq: make_batch(seq=seq) for seq in range(4)}
    evicted = sum(tier.write_segment(batches[seq]).tokens_evicted for seq in arrival)

    all_keys = [b.segment.frame_key(p) for b in batches.values() for p in b.pts_s]  # pts order
    records = tier.frames("acme", all_keys)
    assert evicted == 5
    assert [r.tokens is not None for r in records] == [False] * 5 + [True] * 3
    assert all(r.positions is None for r in records[:5])
    # Metadata and embeddings stay for every frame.
    assert all(r.embedding.shape == (64,) and r.thumbnail for r in records)
    assert [m.decode() for m in client.zrange(keys.short_tier("acme", "cam-1"), 0, -1)] == all_keys[5:]


@pytest.mark.parametrize("budget", [
    pytest.param(dict(recent_frames=9), id="frames: as many as a write adds"),
    pytest.param(dict(recent_frames=4), id="frames: many at once"),
    # About 40 tokens a frame here: 160 keeps the newest 3-4, evicting ~36 in one write, read in growing pages.
    pytest.param(dict(short_max_tokens=160), id="tokens: many at once"),
])
def test_a_smaller_short_budget_takes_the_oldest_tokens_in_one_write(client: redis.Redis, budget: dict) -> None:
    batches = [make_batch(seq=seq, frames=2, tokens=80, keep=0.5) for seq in range(21)]
    wide = RedisTier(client, MemoryConfig())
    for batch in batches[:-1]:
        wide.write_segment(batch)
    narrow = RedisTier(client, MemoryConfig(**budget))
    narrow.write_segment(batches[-1])

    all_keys = [b.segment.frame_key(p) for b in batches for p in b.pts_s]
    holding = [r.tokens is not None for r in narrow.frames("acme", all_keys)]
    kept = sum(holding)
    assert holding == [False] * (len(all_keys) - kept) + [True] * kept  # the newest keep theirs
    tokens = sum(r.tokens.shape[0] for r in narrow.frames("acme", all_keys[-kept:]))
    assert kept <= budget.get("recent_frames", 600) and tokens <= budget.get("short_max_tokens", 60_000)
    assert kept + 1 > budget.get("recent_frames", 600) or tokens + 40 > budget.get("short_max_tokens", 60_000)
    assert [m.decode() for m in client.zrange(keys.short_tier("acme", "cam-1"), 0, -1)] == all_keys[-kept:]


def test_stream_stats_widen_with_out_of_order_segments(tier: RedisTier) -> None:
    for seq in (2, 0, 1):
        tier.write_segment(make_batch(seq=seq))
    tier.write_segment(make_batch(stream="cam-2", seq=0))

    info = tier.stream_info("acme", "cam-1")
    assert (info.first_media_s, info.last_media_s) == (0.0, 6.0)
    assert (info.first_wallclock, info.last_wallclock) == (WALL0, WALL0 + 6.0)
    assert (info.frames, info.segments, info.last_seq) == (6, 3, 2)
    assert [s.stream_id for s in tier.streams("acme")] == ["cam-1", "cam-2"]
    assert tier.stream_info("acme", "cam-9") is None


def test_frames_since_pages_in_id_order(client: redis.Redis) -> None:
    tier = RedisTier(client, MemoryConfig(), page_size=3)
    batches = [make_batch(seq=seq) for seq in range(5)]
    for batch in batches:
        tier.write_segment(batch)

    entries = list(tier.frames_since("acme", 0))
    assert [e.id for e in entries] == list(range(1, 11))
    np.testing.assert_array_equal(np.stack([e.embedding for e in entries]),
                                  np.concatenate([b.embedding for b in batches]))
    assert [e.id for e in tier.frames_since("acme", 4)] == list(range(5, 11))
    assert list(tier.frames_since("acme", 10)) == []


def test_recent_is_newest_by_wallclock_oldest_first(tier: RedisTier) -> None:
    # cam-2 runs half a second behind cam-1, so their frames interleave in wallclock.
    for seq in range(3):
        tier.write_segment(make_batch(stream="cam-1", seq=seq))
        tier.write_segment(make_batch(stream="cam-2", seq=seq, pts=[0.5, 1.5]))

    assert [f.frame_key for f in tier.recent("acme", None, 3)] == ["acme/cam-2/2/4500", "acme/cam-1/2/5000",
                                                                   "acme/cam-2/2/5500"]
    assert [f.frame_key for f in tier.recent("acme", ["cam-1"], 2)] == ["acme/cam-1/2/4000", "acme/cam-1/2/5000"]
    assert tier.recent("acme", None, 0) == []
    assert tier.recent("acme", None, 1)[0].tokens is not None
    # Scoped in wallclock: the newest frames inside [t_from, t_to], not the newest of all.
    last = tier.recent("acme", ["cam-1"], 1)[0].wallclock_start
    assert [f.frame_key for f in tier.recent("acme", ["cam-1"], 2, last - 2.5, last - 0.5)] == [
        "acme/cam-1/1/3000", "acme/cam-1/2/4000"]
    assert tier.recent("acme", None, 5, t_to=0.0) == []


@pytest.mark.parametrize("key", ["ll:tenants", "ll:{acme}:next_id", "ll:{acme}:frame:acme/cam-1/0/0", "other",
                                 "ll:{acme}:thumb:acme/cam-1/0/0\n"])
def test_thumbnail_refuses_keys_that_are_not_thumbnails(tier: RedisTier, key: str) -> None:
    tier.write_segment(make_batch())
    with pytest.raises(ValueError, match="not a thumbnail key"):
        tier.thumbnail(key)
    assert tier.thumbnail(keys.thumbnail("acme", "acme/cam-1/7/0")) is None


@pytest.mark.parametrize(
    ("batch", "error", "code"),
    [
        (lambda: make_batch(tenant="a{b}"), ValueError, None),
        (lambda: make_batch(stream="cam/1"), ValueError, None),
        (lambda: make_batch(tenant="acme\n"), ValueError, None),
        (lambda: make_batch(frames=0), StageError, "empty_segment"),
        (lambda: make_batch(embedding=np.full((2, 64), np.nan)), StageError, "bad_embedding"),
        (lambda: make_batch(embedding=np.zeros((2, 64))), StageError, "bad_embedding"),
        (lambda: make_batch(pts=[0.0, 0.0001]), StageError, "duplicate_frame_key"),
    ],
)
def test_bad_segments_are_refused_before_any_write(client: redis.Redis, tier: RedisTier, batch, error, code) -> None:
    with pytest.raises(error) as raised:
        tier.write_segment(batch())
    assert getattr(raised.value, "code", None) == code
    assert client.dbsize() == 0


def test_text_decoding_client_is_refused(redis_server: ProcessRecord) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisTier(redis.Redis.from_url(redis_server.address, decode_responses=True), MemoryConfig())


def test_acknowledged_segments_survive_redis_sigkill(redis_server: ProcessRecord, tmp_path) -> None:
    client = redis.Redis.from_url(redis_server.address)
    tier = RedisTier(client, MemoryConfig(recent_frames=4))
    acknowledged = [tier.write_segment(make_batch(stream=f"cam-{seq % 2}", seq=seq)) for seq in range(20)]
    restarted = kill_and_restart(redis_server, tmp_path)  # right after the last write returned
    client.close()
    try:
        tier = RedisTier(redis.Redis.from_url(restarted.address), MemoryConfig(recent_frames=4))
        for result in acknowledged:
            assert tier.segment_frame_keys("acme", result.stream_id, result.seq) == list(result.frame_keys)
            assert [f.id for f in tier.frames("acme", result.frame_keys)] == list(result.ids)
            assert tier.write_segment(make_batch(stream=result.stream_id, seq=result.seq)) is None
        assert [e.id for e in tier.frames_since("acme", 0)] == list(range(1, 41))
    finally:
        restarted.stop()


def test_a_gap_before_a_segment_is_recorded_once_and_listed_with_the_stream(tier: RedisTier) -> None:
    """A live source was away 5 s before segment 2 (VideoSegment.gap_before_s): memory lists the gap."""
    import dataclasses

    from memory_store.records import StreamGap

    tier.write_segment(make_batch(seq=0))
    gapped = make_batch(seq=2)
    gapped = dataclasses.replace(gapped, segment=dataclasses.replace(gapped.segment, gap_before_s=2.0))
    tier.write_segment(gapped)
    tier.write_segment(gapped)  # a replay of the same record: the same gap, once
    info = tier.stream_info("acme", "cam-1")
    assert info.gaps == (StreamGap(start_s=2.0, end_s=4.0, resumed_at=WALL0 + 4.0, segment="2"),)
    assert [s.gaps for s in tier.streams("acme")] == [info.gaps]
