"""Replacing writes (a rebuild after a model or threshold change), on a real redis-server and FAISS."""

from __future__ import annotations

import numpy as np
import pytest

from memory_store import keys
from tests.memory_store.batches import make_batch, unit
from tests.memory_store.conftest import StoreFactory

TENANT, STREAM = "acme", "cam-1"


def stored_keys(store, zset: str) -> list[str]:
    return sorted(m.decode() for m in store.tier.r.zrange(zset, 0, -1))


@pytest.mark.parametrize("new_frames", [2, 1])  # same frame keys as before; one frame fewer (a key leaves)
def test_replace_swaps_a_segment_everywhere(open_store: StoreFactory, new_frames: int):
    # Snapshot after 8 frames: taken before the replace, so a reopened store must drop the old ids from it.
    store = open_store(recent_frames=8, snapshot_every_frames=8)
    for seq in range(4):
        store.write(make_batch(tenant=TENANT, stream=STREAM, seq=seq))
    old = store.tier.segment_frame_keys(TENANT, STREAM, 1)
    old_ids = [r.id for r in store.frames(TENANT, old)]
    old_vector = store.frames(TENANT, old[:1])[0].embedding
    assert store.write(make_batch(tenant=TENANT, stream=STREAM, seq=1)) is None  # plain writes still skip

    new_embedding = unit(np.eye(new_frames, 64) + 0.01)
    new = make_batch(tenant=TENANT, stream=STREAM, seq=1, frames=new_frames, fps=new_frames / 2,
                     embedding=new_embedding)
    result = store.write(new, replace=True)
    assert result is not None and sorted(result.removed_ids) == sorted(old_ids)
    assert min(result.ids) > max(old_ids)  # fresh ids: the id sets only ever gain larger ids

    now = store.tier.segment_frame_keys(TENANT, STREAM, 1)
    assert now == [new.segment.frame_key(p) for p in new.pts_s]
    gone = set(old) - set(now)
    assert len(gone) == 2 - new_frames
    r = store.tier.r
    for key in gone:
        assert not r.exists(keys.frame(TENANT, key)) and not r.exists(keys.thumbnail(TENANT, key))
    for zset in (keys.ids(TENANT), keys.timeline(TENANT, STREAM), keys.short_tier(TENANT, STREAM)):
        assert not gone & set(stored_keys(store, zset)), zset
    records = store.frames(TENANT, now)
    assert [rec.id for rec in records] == list(result.ids)
    assert np.allclose(np.stack([rec.embedding for rec in records]), new_embedding, atol=1e-6)
    # Kept positions are the new version's: the old frame hash was deleted, not merged into.
    assert [len(rec.positions) for rec in records] == [int(k.sum()) for k in new.kept]
    info = store.tier.stream_info(TENANT, STREAM)
    assert (info.frames, info.segments) == (6 + new_frames, 4)
    # All frames fit the short tier: the leaving version must not count against it (nothing evicted).
    assert len(stored_keys(store, keys.short_tier(TENANT, STREAM))) == 6 + new_frames

    for reopened in (store, open_store(recent_frames=8, snapshot_every_frames=8)):  # live index; snapshot + rebuild
        stats = reopened.stats()
        assert stats["frames"] == stats["indexed"] == 6 + new_frames
        assert not set(old_ids) & set(reopened.indexes.get(TENANT, "visual").ids().tolist())
        hit = reopened.search(TENANT, new_embedding[0], k=1)[0]
        assert (hit.frame_key, hit.score) == (now[0], pytest.approx(1.0, abs=1e-5))
        assert all(h.frame_key not in gone for h in reopened.search(TENANT, old_vector, k=8))


def test_replacing_a_segment_never_stored_is_a_plain_write(open_store: StoreFactory):
    store = open_store()
    result = store.write(make_batch(tenant=TENANT, stream=STREAM, seq=0), replace=True)
    assert result is not None and result.removed_ids == ()
    assert store.stats()["frames"] == store.stats()["indexed"] == 2
