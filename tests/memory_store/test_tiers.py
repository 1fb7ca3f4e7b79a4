"""Hierarchical memory on a real redis-server: budgets over hours of stream time, retrieval against brute force,
boundaries, merges, retention, stream end, and a crash between a FAISS snapshot and a Kafka offset commit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from deploy.processes import ProcessRecord
from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.merge import contiguous_kmeans
from memory_store.report import stream_tiers
from memory_store.service import MemoryStore
from memory_store.vector_index import MANIFEST
from tests.memory_store.batches import WALL0, unit
from tests.memory_store.conftest import StoreFactory
from tests.memory_store.crash import kill_and_restart, wait_loaded
from tests.memory_store.streams import EMBED_DIM, Truth, synthetic_stream

TENANT, STREAM = "acme", "cam-1"
# Small budgets, so that hours of stream time at 1 fps cross every one of them many times.
BUDGETS = dict(
    recent_frames=300,
    short_max_tokens=1500,
    short_max_bytes=50_000,
    mid_max_tokens=8000,
    mid_max_bytes=300_000,
    long_max_entries=800,
    long_max_bytes=400_000,
    max_event_s=120.0,
    retention_s=2.5 * 3600,
    snapshot_every_frames=1000,
)


def test_a_long_stream_stays_within_every_budget(open_store: StoreFactory, client: redis.Redis) -> None:
    store = open_store(**BUDGETS)
    config = store.config
    rows = []
    for batch in synthetic_stream(seconds=3 * 3600):
        store.write(batch)
        stream_s = float(batch.pts_s[-1]) + 1
        if stream_s % 900 == 0:
            report = stream_tiers(client, config, TENANT, STREAM)
            rows.append((stream_s, report))
            short, mid, long = (report.tier(t) for t in ("short", "mid", "long"))
            assert short.entries <= config.recent_frames and short.tokens <= config.short_max_tokens
            assert short.bytes <= config.short_max_bytes
            assert mid.tokens <= config.mid_max_tokens and mid.bytes <= config.mid_max_bytes
            assert long.entries <= config.long_max_entries and long.bytes <= config.long_max_bytes
            # Everything since the start, or since the retention horizon, stays covered by the long tier; an
            # entry that began before the horizon stays until it has ended before it (merged spans last minutes).
            horizon = WALL0 + stream_s - config.retention_s
            if horizon <= WALL0:
                assert long.first_wallclock == WALL0
            else:
                assert horizon - 900 <= long.first_wallclock <= horizon + 10
            assert long.last_wallclock == WALL0 + stream_s

    print("\nstream time | tier  | entries | tokens | bytes   | covers (s)")
    for stream_s, report in rows:
        for t in report.tiers:
            print(
                f"{stream_s / 3600:9.2f} h | {t.tier:5} | {t.entries:7} | {t.tokens:6} | {t.bytes:7} | "
                f"{t.covered_s:8.0f}"
            )
    final = rows[-1][1]
    print(f"long tier by kind: {final.kinds}; boundaries kept: {final.boundaries}")
    assert final.kinds["merged"] > 0 and final.kinds["event"] > 0 and final.kinds["frame"] >= config.recent_frames
    # The counters the budgets are enforced on agree with what Redis holds.
    assert_counters_match(client, store)
    stats = store.stats()
    assert stats["frames"] == stats["indexed"] == stats["long_entries"]


def assert_counters_match(client: redis.Redis, store: MemoryStore) -> None:
    t, s = TENANT, STREAM
    counters = {
        k.decode(): int(float(v))
        for k, v in client.hgetall(keys.stream_stats(t, s)).items()
        if k.decode().split("_")[0] in ("short", "mid", "long")
    }
    short = [m.decode() for m in client.zrange(keys.short_tier(t, s), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for key in short:
        pipe.hmget(keys.frame(t, key), ("n_tokens", "token_bytes"))
    short_values = pipe.execute()
    mid = [m.decode() for m in client.zrange(keys.mid_tier(t, s), 0, -1)]
    for key in mid:
        pipe.strlen(keys.event_tokens(t, key))
        pipe.hget(keys.frame(t, key), "blob_tokens")
    mid_values = pipe.execute()
    long = [m.decode() for m in client.zrange(keys.long_tier(t, s), 0, -1)]
    for key in long:
        pipe.hget(keys.frame(t, key), "bytes")
    assert counters == {
        "short_tokens": sum(int(n) for n, _ in short_values),
        "short_bytes": sum(int(b) for _, b in short_values),
        "mid_tokens": sum(int(n) for n in mid_values[1::2]),
        "mid_bytes": sum(mid_values[0::2]),
        "long_bytes": sum(int(b) for b in pipe.execute()),
    }
    assert len(store.tier.id_set(t)) == len(long)


def test_retrieval_from_compressed_memory_agrees_with_brute_force(
    open_store: StoreFactory,
) -> None:
    """Top-10 evidence from the tiered memory (an hour, mostly merged) vs exact search over every frame."""
    store = open_store(
        **{
            **BUDGETS,
            "recent_frames": 60,
            "long_max_entries": 300,
            "long_max_bytes": 10**9,
        }
    )
    truth = Truth([], [], [])
    for batch in synthetic_stream(seconds=3600, truth=truth, seed=1):
        store.write(batch)
    frames, times = np.stack(truth.embeddings), np.array(truth.wallclocks)
    report = stream_tiers(store.tier.r, store.config, TENANT, STREAM)
    rng = np.random.default_rng(2)
    overlaps, errors = [], []
    for at in rng.choice(len(frames), 40, replace=False):
        query = unit(frames[at] + 0.2 * unit(rng.standard_normal(EMBED_DIM)))
        exact = times[np.argsort(-(frames @ query), kind="stable")[:10]]
        hits = store.search(TENANT, query, k=10, stream_ids=[STREAM])
        spans = [(h.wallclock_start, max(h.wallclock_end, h.wallclock_start + 1.0)) for h in hits]
        # A frame counts as found when a hit's time span holds it; its time error is the distance to the nearest.
        distance = [min(0.0 if a <= t < b else min(abs(t - a), abs(t - b)) for a, b in spans) for t in exact]
        overlaps.append(np.mean([d == 0.0 for d in distance]))
        errors.append(np.mean(distance))
    mean_span = np.mean([b - a for a, b in spans])
    print(
        f"\nretrieval agreement@10 over 40 queries, {report.tier('long').entries} long-tier entries for 3600 frames "
        f"({report.kinds}): overlap {np.mean(overlaps):.2f}, mean time error {np.mean(errors):.1f} s, "
        f"median {np.median(errors):.1f} s, mean hit span {mean_span:.0f} s"
    )
    assert np.mean(overlaps) >= 0.6
    assert np.median(errors) <= 30.0


def test_boundaries_split_events_and_show_on_the_timeline(
    open_store: StoreFactory,
) -> None:
    store = open_store(**BUDGETS)
    truth = Truth([], [], [])
    for batch in synthetic_stream(seconds=600, truth=truth):
        store.write(batch)
    timeline = store.timeline(TENANT, STREAM)
    marked = [f.wallclock_start for f in timeline if f.boundary]
    # Every cut after the first scene's (which opens the stream, not an event change) is a boundary.
    assert marked == truth.cuts[1:]
    report = stream_tiers(store.tier.r, store.config, TENANT, STREAM)
    assert report.boundaries == len(truth.cuts) - 1
    # One event per scene; all but the open last one are indexed, each spanning its scene.
    events = [f for f in store.frames(TENANT, [keys.event_key(TENANT, STREAM, c - WALL0) for c in truth.cuts[:-1]])]
    assert [e.kind for e in events] == ["event"] * (len(truth.cuts) - 1)
    assert [e.wallclock_end for e in events] == truth.cuts[1:]
    assert all(len(e.representatives) == 2 and e.covers == round(e.t_end_s - e.pts_s) for e in events)
    assert report.open_event == keys.event_key(TENANT, STREAM, truth.cuts[-1] - WALL0)
    # An event's tokens: its first frame whole, then only what changed; fewer than its frames kept in all.
    event = events[-1]  # recent: its frames still hold their tokens (short tier)
    records = store.event_tokens(TENANT, event.frame_key)
    members = [f for f in timeline if event.wallclock_start <= f.wallclock_start < event.wallclock_end]
    assert sorted(records["pos"][records["dt"] == 0].tolist()) == list(range(64))
    assert len(records) <= sum(len(f.positions) for f in store.frames(TENANT, [m.frame_key for m in members]))
    assert set(records["dt"].tolist()) <= {round(1000 * (m.pts_s - event.pts_s)) for m in members}


def test_contiguous_kmeans_finds_the_runs_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((3, 16)))
    lengths = [7, 20, 5]
    vectors = np.concatenate([unit(c + 0.05 * rng.standard_normal((n, 16))) for c, n in zip(centres, lengths)])
    runs = contiguous_kmeans(vectors, np.ones(len(vectors)), 3)
    assert [(r.start, r.stop) for r in runs] == [(0, 7), (7, 27), (27, 32)]
    assert contiguous_kmeans(vectors, np.ones(len(vectors)), 3) == runs
    assert [len(r) for r in contiguous_kmeans(vectors, np.ones(len(vectors)), 40)] == [1] * 32


def test_crash_between_snapshot_and_offset_commit_rebuilds_the_same_index(
    redis_server: ProcessRecord, tmp_path: Path
) -> None:
    """The memory actor snapshots FAISS (covering offset M), then the process dies before the source commits
    M: redis-server is killed too. The restart loads the snapshot, reconciles it with Redis, and the source
    replays from the committed offset: every replayed segment is a no-op and the index is the one before."""
    config = MemoryConfig(
        **{
            **BUDGETS,
            "snapshot_every_frames": 97,
            "long_max_entries": 200,
            "long_max_bytes": 10**9,
            "recent_frames": 40,
        }
    )
    client = redis.Redis.from_url(redis_server.address)
    store = MemoryStore(client, config, index_dir=tmp_path / "faiss")
    batches = list(synthetic_stream(seconds=1800, seed=3))
    for batch in batches:
        store.write(batch)
    manifest = json.loads((tmp_path / "faiss" / "tenant-acme" / MANIFEST).read_text())
    covered = manifest["offsets"]["segs:0"]
    committed = covered - 3  # the source had committed up to before the snapshot's last three segments
    assert manifest["epoch"] == store.tier.epoch(TENANT) and 0 < committed < len(batches) - 1
    queries = unit(np.random.default_rng(5).standard_normal((12, EMBED_DIM)))
    before = store.indexes.get(TENANT, "visual")
    expected_ids, expected = (
        before.ids().tolist(),
        [store.search(TENANT, q, k=10) for q in queries],
    )
    assert store.stats()["frames"] == len(expected_ids) and store.tier.offsets(TENANT) == {"segs:0": len(batches) - 1}

    restarted = kill_and_restart(redis_server, tmp_path)
    client.close()
    client = redis.Redis.from_url(restarted.address)
    try:
        wait_loaded(client)
        store = MemoryStore(client, config, index_dir=tmp_path / "faiss")
        replayed = [store.write(batch) for batch in batches[committed + 1 :]]
        assert replayed == [None] * len(replayed)
        index = store.indexes.get(TENANT, "visual")
        assert index.ids().tolist() == expected_ids and len(index) == len(expected_ids)
        assert [store.search(TENANT, q, k=10) for q in queries] == expected
        # Without the snapshot, from Redis alone: the same again.
        fresh = MemoryStore(client, config)
        assert fresh.indexes.get(TENANT, "visual").ids().tolist() == expected_ids
        assert [fresh.search(TENANT, q, k=10) for q in queries] == expected
        client.close()
    finally:
        restarted.stop()


def test_a_deleted_or_paused_stream_stays_searchable_until_retention(
    open_store: StoreFactory,
) -> None:
    store = open_store(**BUDGETS)
    for batch in synthetic_stream(seconds=900, stream="gone"):
        store.write(batch)
    for batch in synthetic_stream(seconds=300, stream="paused", seed=4, start_s=1800):
        store.write(batch)
    before = stream_tiers(store.tier.r, store.config, TENANT, "gone")
    assert before.open_event is not None

    assert store.delete_stream(TENANT, "gone") and not store.delete_stream(TENANT, "never-was")
    after = stream_tiers(store.tier.r, store.config, TENANT, "gone")
    assert after.open_event is None and after.ended_at == pytest.approx(time.time(), abs=60)
    assert after.kinds["event"] == before.kinds["event"] + 1  # the open event, closed and indexed
    last_event = store.frames(TENANT, [before.open_event])[0]
    hits = store.search(TENANT, last_event.embedding, k=3, stream_ids=["gone"])
    assert before.open_event in [h.frame_key for h in hits] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    stats = store.stats()
    assert stats["frames"] == stats["indexed"]

    end = {s.stream_id: s.last_wallclock for s in store.streams(TENANT)}
    retention = store.config.retention_s
    assert store.expire(now=WALL0 + retention - 1) == 0  # nothing is old enough yet
    assert [s.stream_id for s in store.streams(TENANT)] == ["gone", "paused"]
    # Past the horizon of the deleted stream only: it goes from every tier and index, the paused one stays.
    deleted = store.expire(now=end["gone"] + retention + 1)
    assert deleted == after.tier("long").entries
    assert [s.stream_id for s in store.streams(TENANT)] == ["paused"]
    assert store.search(TENANT, last_event.embedding, k=5, stream_ids=["gone"]) == []
    assert not [k for k in store.tier.r.scan_iter(match="*gone*")]
    stats = store.stats()
    assert (
        stats["frames"]
        == stats["indexed"]
        == stream_tiers(store.tier.r, store.config, TENANT, "paused").tier("long").entries
    )


def test_memory_command_prints_the_tiers(open_store: StoreFactory, redis_server: ProcessRecord,
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli.main import app

    store = open_store(**BUDGETS)
    for batch in synthetic_stream(seconds=600):
        store.write(batch)
    monkeypatch.setenv("LIVELENS_REDIS_URL", redis_server.address)
    monkeypatch.setenv("LIVELENS_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LIVELENS_MEMORY__RECENT_FRAMES", "300")  # the budget the table shows entries against
    shown = CliRunner().invoke(app, ["memory", STREAM, "--tenant", TENANT])
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): line for line in shown.output.splitlines() if line.count("│") > 5}
    assert {"short", "mid", "long"} <= set(rows)
    short = stream_tiers(store.tier.r, store.config, TENANT, STREAM).tier("short")
    assert f"{short.entries} / 300" in rows["short"] and f"{short.tokens} / 60000" in rows["short"]
    assert "stored up to Kafka offsets: segs:0@59" in shown.output
    missing = CliRunner().invoke(app, ["memory", "nope", "--tenant", TENANT])
    assert missing.exit_code == 1
