"""Erasing a stream (a purge) and per-stream retention, on a real redis-server."""

from __future__ import annotations

import inspect

import numpy as np
import redis

from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.service import MemoryStore
from tests.memory_store.batches import WALL0, make_batch
from tests.memory_store.conftest import StoreFactory


def _stream_keys(client: redis.Redis, tenant: str, stream: str) -> list[str]:
    """Every key that names the stream (or holds its entry keys)."""
    return sorted(k.decode() for k in client.scan_iter(match=f"ll:{{{tenant}}}:*")
                  if f":{stream}" in k.decode() or f"{tenant}/{stream}/" in k.decode())


def test_erase_leaves_nothing_of_the_stream_and_everything_of_its_neighbours(open_store: StoreFactory, client):
    store = open_store(recent_frames=3, long_max_entries=50)
    for seq in range(6):
        for stream in ("cam", "cam:2", "other"):  # "cam:2" shares a prefix with "cam": globs must not confuse them
            store.write(make_batch(stream=stream, seq=seq, frames=3))
    # Beside memory: a clip location, a standing query's firing state and a room's state, per stream.
    for stream in ("cam", "cam:2"):
        client.hset(keys.clip_keys("acme", stream)[0], "s-0", "{}")
        client.hset(keys.standing_state("acme", "q1"), stream, "{}")
        client.set(keys.moderation_room("acme", stream), b"x")
    client.set(keys.stream_control("acme", "cam"), b"{}")
    query = make_batch(stream="cam", seq=2, frames=3).embedding[0]
    assert store.search("acme", query, k=1)[0].stream_id == "cam"
    # "segment:cam:2" is the marker of cam's segment 2 (a bare seq), not one of cam:2's keys.
    neighbour_keys = [k for k in _stream_keys(client, "acme", "cam:2")
                      if k not in {keys.segment("acme", "cam", seq) for seq in range(6)}]

    erased = store.erase_stream("acme", "cam")

    assert erased > 0
    left = [k for k in _stream_keys(client, "acme", "cam") if k not in neighbour_keys]
    assert left == [keys.stream_control("acme", "cam")], left  # the operator's state of it, nothing else
    assert not any(m.decode().startswith("acme/cam/") for m in client.zrange(keys.ids("acme"), 0, -1))
    assert client.hkeys(keys.standing_state("acme", "q1")) == [b"cam:2"]
    assert [s.stream_id for s in store.streams("acme")] == ["cam:2", "other"]
    # No query path finds it: not by vector, not in time, not as recent frames.
    assert all(h.stream_id != "cam" for h in store.search("acme", query, k=100))
    assert store.timeline("acme", "cam") == []
    assert all(f.stream_id != "cam" for f in store.recent("acme", n=100))
    # Its neighbours are whole.
    assert _stream_keys(client, "acme", "cam:2") == neighbour_keys
    assert store.stats()["indexed"] == store.stats()["frames"] == 2 * 18
    # A restarted memory actor (snapshot + Redis) does not bring it back, and a second erase finds nothing.
    restarted = open_store(recent_frames=3, long_max_entries=50)
    assert all(h.stream_id != "cam" for h in restarted.search("acme", query, k=100))
    assert restarted.erase_stream("acme", "cam") == 0


def test_a_stream_of_its_own_retention_is_evicted_alone(open_store: StoreFactory, client):
    store = open_store()
    for seq in range(10):  # 20 s of each stream, from WALL0
        store.write(make_batch(stream="short-lived", seq=seq))
        store.write(make_batch(stream="kept", seq=seq))
    # Applied at once against the clock: WALL0 is long past, so all of it goes, and only it.
    assert store.set_retention("acme", "short-lived", 5.0) == 20
    store.expire(now=WALL0 + 20.0)  # a sweep within the global retention leaves the other stream alone
    by_stream = {s.stream_id: s for s in store.streams("acme")}
    assert "kept" in by_stream and by_stream["kept"].first_wallclock == WALL0
    assert store.timeline("acme", "short-lived") == []
    # A write to it applies its own retention against its newest frame: 5 s, not the global week.
    for seq in range(10, 20):
        store.write(make_batch(stream="short-lived", seq=seq))
    newest = WALL0 + 40.0
    stored = store.timeline("acme", "short-lived")
    assert stored and min(f.wallclock_start for f in stored) >= newest - 5.0 - 2.0
    assert len(store.timeline("acme", "kept")) == 20
    # Cleared: back to the global retention.
    store.set_retention("acme", "short-lived", None)
    assert client.hget(keys.stream_settings("acme", "short-lived"), "retention_s") is None


def test_every_per_stream_key_is_erased_or_kept_on_purpose():
    """A key builder of keys.py that takes a stream must build a key the erase registry covers (or one kept
    on purpose): a new tier that forgets to register its keys fails here, not in a user's purge."""
    tenant, stream = "acme", "cam"
    covered = set(keys.stream_keys(tenant, stream))
    patterns = keys.stream_key_patterns(tenant, stream)
    for name, builder in inspect.getmembers(keys, inspect.isfunction):
        params = list(inspect.signature(builder).parameters)
        if params[:2] != ["tenant_id", "stream_id"] or name in ("stream_keys", "stream_key_patterns",
                                                                 "entry_member_pattern", "event_key", "merged_key",
                                                                 "line_key"):
            continue
        extra = ["x"] * (len(params) - 2)
        built = builder(tenant, stream, *extra)
        for key in (built if isinstance(built, tuple) else (built,)):
            kind = key.split(":", 2)[2].rsplit(f":{stream}", 1)[0]
            assert (key in covered or any(_matches(p, key) for p in patterns)
                    or kind in keys.KEPT_ON_PURGE), f"{name} builds {key}, which a purge would leave behind"
    # Keys named by an entry key are covered by pattern: a frame's, a transcript line's.
    for key in (keys.frame(tenant, "acme/cam/s-0/1000"), keys.line(tenant, keys.line_key(tenant, stream, "asr", "", 1.0))):
        assert any(_matches(p, key) for p in patterns), key


def _matches(pattern: str, key: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(key, pattern.replace("\\", ""))


def test_retention_must_be_positive(client):
    store = MemoryStore(client, MemoryConfig())
    try:
        store.set_retention("acme", "cam", 0.0)
    except ValueError as exc:
        assert "retention" in str(exc)
    else:
        raise AssertionError("a zero retention was accepted")
    assert np.isfinite(store.tier.retention_s("acme", "cam"))
