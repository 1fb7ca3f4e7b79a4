"""MemoryStore: Redis first, then FAISS; restart, snapshot and crash paths against a real redis-server."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import redis

from deploy.processes import ProcessRecord
from memory_store.config import MemoryConfig
from memory_store.redis_tier import RedisTier
from memory_store.service import MemoryStore
from memory_store.vector_index import MANIFEST
from operators.frames import CompressedBatch, StageError
from tests.memory_store.batches import WALL0, make_batch, unit
from tests.memory_store.conftest import StoreFactory
from tests.memory_store.crash import kill_and_restart


def workload() -> list[CompressedBatch]:
    """Two tenants, three streams, segments of two frames."""
    return [make_batch(tenant=t, stream=s, seq=q) for q in range(6) for t, s in
            [("acme", "cam-1"), ("acme", "cam-2"), ("other", "cam-1")]]


def queries(n: int = 6) -> np.ndarray:
    return unit(np.random.default_rng(7).standard_normal((n, 64)))


# stats() of a store whose segments came without text (the text tier has its own tests).
NO_TEXT = dict(text_frames=0, text_indexed=0, text_index_sizes={})
CORE = ("tenants", "frames", "indexed", "index_sizes", "text_frames", "text_indexed", "text_index_sizes")


def core(stats: dict) -> dict:
    """The index bookkeeping of stats() (the tier totals have their own tests, in test_tiers)."""
    return {k: stats[k] for k in CORE}

SCOPES = [dict(), dict(stream_ids=["cam-2"]), dict(t_from=WALL0 + 3, t_to=WALL0 + 7),
          dict(stream_ids=["cam-1"], t_from=WALL0 + 5)]


def answers(store: MemoryStore) -> list[list]:
    return [store.search(tenant, q, k=4, **scope) for tenant in ("acme", "other") for q in queries()
            for scope in SCOPES]


def test_write_then_search_returns_the_frame(open_store: StoreFactory) -> None:
    store = open_store()
    batch = make_batch(seq=3)
    result = store.write(batch)

    (hit, *_) = store.search("acme", batch.embedding[1], k=2)
    assert hit.frame_key == result.frame_keys[1] == "acme/cam-1/3/7000"
    assert (hit.stream_id, hit.seq, hit.t_start, hit.t_end) == ("cam-1", 3, 7.0, 8.0)
    assert (hit.wallclock_start, hit.wallclock_end) == (WALL0 + 7, WALL0 + 8)
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert store.thumbnail(hit.thumbnail) == batch.thumbnails[1]
    assert store.search("nobody", batch.embedding[1]) == []


def test_writing_a_segment_twice_changes_nothing(open_store: StoreFactory) -> None:
    store = open_store()
    first = store.write(make_batch())
    before = store.stats()

    assert store.write(make_batch()) is None
    assert store.stats() == before
    assert core(before) == dict(tenants=1, frames=2, indexed=2, index_sizes={"acme": 2}, **NO_TEXT)
    assert [f.id for f in store.frames("acme", first.frame_keys)] == list(first.ids)


def test_replay_indexes_frames_that_were_durable_but_not_searchable(open_store: StoreFactory,
                                                                    client: redis.Redis) -> None:
    """An earlier attempt made the segment durable and died before the FAISS add."""
    store = open_store()
    batch = make_batch(seq=1)
    RedisTier(client, MemoryConfig()).write_segment(batch)
    assert store.search("acme", batch.embedding[0]) == []

    assert store.write(batch) is None
    assert store.search("acme", batch.embedding[0], k=1)[0].frame_key == "acme/cam-1/1/2000"
    assert store.stats()["indexed"] == 2


@pytest.mark.parametrize("scope", SCOPES[1:])
def test_store_filters_are_exact(open_store: StoreFactory, scope: dict) -> None:
    store = open_store()
    query = queries(1)[0]
    rng = np.random.default_rng(5)
    in_scope: dict[str, np.ndarray] = {}
    for seq in range(5):
        for stream in ("cam-1", "cam-2"):
            probe = make_batch(stream=stream, seq=seq)
            starts = probe.segment.wallclock_start + (probe.pts_s - probe.segment.media_start_s)
            inside = [(scope.get("stream_ids") is None or stream in scope["stream_ids"])
                      and start >= scope.get("t_from", -np.inf) and start <= scope.get("t_to", np.inf)
                      for start in starts]
            # Frames outside the scope are the closest to the query; inside, random.
            embedding = np.stack([unit(rng.standard_normal(64)) if ok else unit(query + 0.01 * rng.standard_normal(64))
                                  for ok in inside])
            result = store.write(make_batch(stream=stream, seq=seq, embedding=embedding))
            in_scope.update({key: e for key, e, ok in zip(result.frame_keys, embedding, inside) if ok})

    hits = store.search("acme", query, k=3, **scope)

    best = sorted(in_scope, key=lambda key: -float(in_scope[key] @ query))[:3]
    assert [h.frame_key for h in hits] == best


def test_dimension_change_is_refused_before_redis(open_store: StoreFactory) -> None:
    store = open_store()
    store.write(make_batch(seq=0))
    with pytest.raises(StageError) as raised:
        store.write(make_batch(seq=1, embed_dim=32))
    assert raised.value.code == "embedding_dim_mismatch"
    assert store.stats()["frames"] == 2


def test_new_store_on_the_same_redis_serves_the_same(open_store: StoreFactory, caplog) -> None:
    old = open_store(snapshots=False)
    for batch in workload():
        old.write(batch)

    with caplog.at_level(logging.INFO, logger="memory_store"):
        new = open_store(snapshots=False)
    assert "tenant acme: 0 entries from snapshot (0 of its removed since), 24 from Redis" in caplog.text
    assert new.stats() == old.stats()
    assert core(new.stats()) == dict(tenants=2, frames=36, indexed=36, index_sizes={"acme": 24, "other": 12}, **NO_TEXT)
    assert answers(new) == answers(old)


def test_new_store_loads_the_snapshot_and_catches_up(open_store: StoreFactory, tmp_path: Path, caplog) -> None:
    old = open_store(snapshot_every_frames=10)
    for batch in workload():  # acme: 24 frames, snapshots at 10 and 20; other: 12 frames, one at 10
        old.write(batch)
    assert (tmp_path / "faiss" / "tenant-acme" / MANIFEST).exists()

    with caplog.at_level(logging.INFO, logger="memory_store"):
        new = open_store(snapshot_every_frames=10)
    assert "tenant acme: 20 entries from snapshot (0 of its removed since), 4 from Redis" in caplog.text
    assert "tenant other: 10 entries from snapshot (0 of its removed since), 2 from Redis" in caplog.text
    assert new.stats() == old.stats()
    assert answers(new) == answers(old)
    new.write(make_batch(stream="cam-3", seq=0))
    assert new.search("acme", make_batch(stream="cam-3").embedding[0], k=1)[0].stream_id == "cam-3"


def test_corrupt_snapshot_is_ignored_and_the_index_rebuilt(open_store: StoreFactory, tmp_path: Path,
                                                           caplog) -> None:
    old = open_store(snapshot_every_frames=4)
    for batch in workload():
        old.write(batch)
    snapshot = tmp_path / "faiss" / "tenant-acme"
    for data in snapshot.glob("index-*.npz"):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    with caplog.at_level(logging.INFO):
        new = open_store(snapshot_every_frames=4)
    assert "ignoring FAISS snapshot" in caplog.text
    assert "tenant acme: 0 entries from snapshot (0 of its removed since), 24 from Redis" in caplog.text
    assert answers(new) == answers(old)


def test_snapshot_of_a_lost_redis_is_discarded(open_store: StoreFactory, client: redis.Redis, caplog) -> None:
    """Redis lost its data (say, a volume wiped) while the snapshot survived: ids now name other frames."""
    old = open_store(snapshot_every_frames=2)
    for seq in range(3):
        old.write(make_batch(stream="old", seq=seq))
    client.flushall()
    fresh = MemoryStore(client, MemoryConfig())
    for seq in range(4):  # ids 1..8 again, for other frames
        fresh.write(make_batch(stream="new", seq=seq))

    with caplog.at_level(logging.WARNING):
        new = open_store(snapshot_every_frames=2)
    assert "does not match Redis" in caplog.text
    assert new.stats()["index_sizes"] == {"acme": 8}
    assert {h.stream_id for h in new.search("acme", queries(1)[0], k=10)} == {"new"}


def test_acknowledged_writes_survive_redis_sigkill(redis_server: ProcessRecord, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server.address)
    store = MemoryStore(client, MemoryConfig(snapshot_every_frames=8), index_dir=tmp_path / "faiss")
    acknowledged = [store.write(batch) for batch in workload()]
    restarted = kill_and_restart(redis_server, tmp_path)  # right after the last write returned
    client.close()
    try:
        client = redis.Redis.from_url(restarted.address)
        new = MemoryStore(client, MemoryConfig(snapshot_every_frames=8), index_dir=tmp_path / "faiss")
        assert new.stats() == store.stats()
        for result in acknowledged:
            assert [f.id for f in new.frames(result.tenant_id, result.frame_keys)] == list(result.ids)
        assert answers(new) == answers(store)
        client.close()
    finally:
        restarted.stop()


def test_a_shard_indexes_only_its_tenants(open_store: StoreFactory, client: redis.Redis) -> None:
    everyone = open_store(snapshots=False)
    for batch in workload():
        everyone.write(batch)

    shard = MemoryStore(client, MemoryConfig(), owns_tenant=lambda tenant: tenant == "other")
    assert core(shard.stats()) == dict(tenants=1, frames=12, indexed=12, index_sizes={"other": 12}, **NO_TEXT)
    with pytest.raises(ValueError, match="another memory shard"):
        shard.write(make_batch(tenant="acme", seq=9))


def test_read_side_calls(open_store: StoreFactory) -> None:
    store = open_store()
    for batch in workload():
        store.write(batch)

    assert [s.stream_id for s in store.streams("acme")] == ["cam-1", "cam-2"]
    assert [f.frame_key for f in store.recent("acme", ["cam-2"], n=2)] == ["acme/cam-2/5/10000",
                                                                         "acme/cam-2/5/11000"]
    assert store.frames("other", ["acme/cam-1/0/0"]) == [None]  # another tenant's frame is not visible
