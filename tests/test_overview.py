"""The ops overview's numbers, without a browser: status rules and frame rates table-driven, and the rows
read from a real redis-server holding segments written by the memory tier and alerts in the alert log."""

from __future__ import annotations

import io

import pytest
import redis
from rich.console import Console

from contracts import messages
from memory_store.redis_tier import RedisTier
from pipelines.api.overview import (
    FrameRate,
    Overview,
    overview_table,
    stream_status,
    tier_usage,
)
from pipelines.config import DashboardConfig, LivelensConfig
from pipelines.moderation.alerts import AlertLog
from tests.memory_store.batches import WALL0, make_batch

SETTINGS = DashboardConfig(stalled_after_s=10, ended_after_s=300)


@pytest.mark.parametrize(
    "quiet_s, backlog, expected",
    [
        (0.0, False, "live"),
        (9.9, False, "live"),
        (9.9, True, "live"),
        (10.0, False, "stalled"),
        (299.0, False, "stalled"),
        (300.0, False, "ended"),
        (3600.0, False, "ended"),
        (3600.0, True, "stalled"),  # a source that does not answer may still hold its segments
    ],
)
def test_stream_status(quiet_s, backlog, expected):
    assert stream_status(quiet_s, backlog=backlog, config=SETTINGS) == expected


@pytest.mark.parametrize(
    "readings, expected",
    [
        ([(0.0, 10)], None),  # one reading: no rate yet
        ([(0.0, 10), (0.5, 12)], None),  # readings closer than a second apart
        ([(0.0, 10), (2.0, 14)], 2.0),
        ([(0.0, 10), (5.0, 10)], 0.0),  # stalled: nothing stored
        # The window is 10 s: the reference is the newest reading at or before now - 10 s.
        ([(0.0, 0), (5.0, 100), (12.0, 110), (20.0, 120)], (120 - 100) / (20 - 5)),
        ([(0.0, 0), (10.0, 10), (11.0, 20), (21.0, 30)], (30 - 20) / (21 - 11)),
        # The count went down (the stream was deleted and written again): start over.
        ([(0.0, 50), (2.0, 60), (4.0, 4)], None),
        ([(0.0, 50), (2.0, 60), (4.0, 4), (6.0, 8)], 2.0),
    ],
)
def test_frame_rate(readings, expected):
    rate = FrameRate(window_s=10.0)
    got = [rate.observe(("t", "s"), at, frames) for at, frames in readings][-1]
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_frame_rate_keeps_streams_apart_and_forgets_unlisted_ones():
    rate = FrameRate(window_s=10.0)
    rate.observe(("t", "a"), 0.0, 0)
    rate.observe(("t", "b"), 0.0, 100)
    assert rate.observe(("t", "a"), 2.0, 2) == pytest.approx(1.0)
    assert rate.observe(("t", "b"), 2.0, 110) == pytest.approx(5.0)
    rate.forget_except({("t", "a")})
    assert rate.observe(("t", "b"), 4.0, 120) is None


@pytest.mark.parametrize(
    "stats_hash, expected",
    [
        ({b"frames": b"4", b"last_seq": b"1"}, {}),  # a memory that does not count per tier
        ({b"frames": b"4", b"short_tokens": b"90", b"short_bytes": b"11700", b"mid_tokens": b"0",
          b"mid_bytes": b"0", b"long_bytes": b"5120"},
         {"short": {"tokens": 90, "bytes": 11700}, "mid": {"tokens": 0, "bytes": 0}, "long": {"bytes": 5120}}),
        ({b"short_tokens": b"7", b"shortish_bytes": b"1", b"open_event": b""}, {"short": {"tokens": 7}}),
    ],
)
def test_tier_usage(stats_hash, expected):
    assert tier_usage(stats_hash) == expected


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


HEALTHY = {"source-0": {"alive": True, "records": 3}, "memory-0": {"frames": 8, "tier_bytes": {"short": 1}}}


@pytest.fixture
def client(redis_server):
    client = redis.Redis.from_url(redis_server.address)
    yield client
    client.close()


def overview(client, redis_server, clock, actors=HEALTHY, **config) -> Overview:
    config = LivelensConfig(redis={"url": redis_server.address}, **config)
    return Overview(config, client, actor_stats=lambda: actors, clock=clock)


def write(client, memory, *, tenant="acme", stream="cam", seqs=range(2), keep=0.5, frames=2, **batch):
    tier = RedisTier(client, memory)
    for seq in seqs:
        assert tier.write_segment(make_batch(tenant=tenant, stream=stream, seq=seq, keep=keep, frames=frames,
                                             **batch)) is not None


def test_rows_read_from_memory_and_the_alert_log(client, redis_server):
    clock = Clock(WALL0 + 100.0)
    ov = overview(client, redis_server, clock, memory={"recent_frames": 3})
    memory = ov.config.memory
    write(client, memory, stream="cam", seqs=range(3))  # 6 frames at 1 fps: t = 0..5 s, tokens in the newest 3
    write(client, memory, stream="quiet", seqs=range(1))
    write(client, memory, tenant="globex", stream="cam", seqs=range(1))
    log = AlertLog(client, "ll")
    for alert_id, stream, state in [("a1", "cam", "YELLOW"), ("a2", "quiet", "RED"), ("a3", "cam", "RED")]:
        log.record(messages.Alert(tenant_id="acme", stream_id=stream, alert_id=alert_id, state=state, score=0.8,
                                  reason=f"reason {alert_id}"))
    log.ack("acme", "a3", by="reviewer")

    first = ov.collect(["acme"])
    rows = {r.stream_id: r for r in first.streams}
    assert set(rows) == {"cam", "quiet"} and first.actors == HEALTHY
    cam = rows["cam"]
    assert (cam.frames, cam.segments) == (6, 3)
    # The last frame ends at t = 6 s (segment 2 lasts 2 s from t = 4 s).
    assert cam.last_frame_at.timestamp() == pytest.approx(WALL0 + 6.0)
    assert cam.ingest_lag_s == pytest.approx(100.0 - 6.0)
    # Tokens kept: the newest 3 frames' kept tokens, as the short tier holds them.
    kept = [make_batch(tenant="acme", stream="cam", seq=seq, keep=0.5).kept for seq in (1, 2)]
    newest = [kept[0][1], kept[1][0], kept[1][1]]
    assert cam.tokens_kept == sum(int(k.sum()) for k in newest)
    assert cam.token_bytes == cam.tokens_kept * (2 * 64 + 2)  # float16 tokens of dim 64, int16 positions
    assert cam.kept_share == pytest.approx(cam.tokens_kept / (3 * 64), abs=1e-4)
    assert cam.fps is None  # one read so far
    # Memory's own per-tier counters agree with the short tier read frame by frame, and give its size.
    assert cam.tiers["short"] == {"tokens": cam.tokens_kept, "bytes": cam.token_bytes}
    assert cam.memory_bytes == sum(tier["bytes"] for tier in cam.tiers.values()) > cam.token_bytes
    assert (cam.last_alert.alert_id, cam.last_alert.state, cam.last_alert.acked) == ("a3", "RED", True)
    assert (rows["quiet"].last_alert.alert_id, rows["quiet"].last_alert.acked) == ("a2", False)

    # Every tenant, when none is named.
    assert {(r.tenant_id, r.stream_id) for r in ov.collect().streams} == {
        ("acme", "cam"), ("acme", "quiet"), ("globex", "cam")}

    # Two more segments of cam land; 2 s later fps covers the frames stored since the first read.
    write(client, memory, stream="cam", seqs=range(3, 5))
    clock.now += 2.0
    cam = {r.stream_id: r for r in ov.collect(["acme"]).streams}["cam"]
    assert (cam.frames, cam.fps) == (10, pytest.approx(4 / 2.0))
    assert cam.tokens_kept == sum(int(make_batch(tenant="acme", stream="cam", seq=s, keep=0.5).kept[i].sum())
                                  for s, i in [(3, 1), (4, 0), (4, 1)])


@pytest.mark.parametrize(
    "quiet_s, actors, expected",
    [
        (5.0, HEALTHY, "live"),
        (60.0, HEALTHY, "stalled"),
        (3600.0, HEALTHY, "ended"),
        (3600.0, {"source-0": {"error": "no answer within 5 s"}}, "stalled"),
        (3600.0, {"source-0": {"alive": False}}, "stalled"),
        (3600.0, {}, "stalled"),  # no source reported at all
    ],
)
def test_status_follows_quiet_time_and_source_health(client, redis_server, quiet_s, actors, expected):
    memory = LivelensConfig().memory
    write(client, memory, seqs=range(1))
    stored_at = RedisTier(client, memory).stream_info("acme", "cam").updated_at
    ov = overview(client, redis_server, Clock(stored_at + quiet_s), actors=actors)
    assert ov.collect(["acme"]).streams[0].status == expected


def test_stream_detail_marks_event_boundaries_and_lists_the_streams_alerts(client, redis_server):
    ov = overview(client, redis_server, Clock(WALL0 + 20.0))
    memory = ov.config.memory
    # The default boundary signal is the kept share of tokens: steady near 0.1, then a jump to ~0.95 at t = 6 s.
    write(client, memory, seqs=range(3), keep=0.1)
    write(client, memory, seqs=range(3, 5), keep=0.95)
    AlertLog(client, "ll").record(messages.Alert(tenant_id="acme", stream_id="cam", alert_id="x", state="MATCH",
                                                 score=0.7, reason="standing query matched"))
    detail = ov.stream("acme", "cam")
    assert [f.t_start for f in detail.frames] == [float(t) for t in range(10)]
    assert [f.t_start for f in detail.frames if f.boundary] == [6.0]
    assert all(f.thumbnail and f.thumbnail.startswith("ll:{acme}:thumb:") for f in detail.frames)
    assert [a.alert_id for a in detail.alerts] == ["x"] and detail.stream.frames == 10
    assert ov.stream("acme", "nope") is None


def test_timeline_shows_the_newest_frames(client, redis_server):
    ov = overview(client, redis_server, Clock(WALL0 + 20.0), dashboard={"timeline_frames": 4})
    write(client, ov.config.memory, seqs=range(4))
    assert [f.t_start for f in ov.stream("acme", "cam").frames] == [4.0, 5.0, 6.0, 7.0]


def test_terminal_table(client, redis_server):
    ov = overview(client, redis_server, Clock(WALL0 + 30.0))
    write(client, ov.config.memory, seqs=range(2))
    AlertLog(client, "ll").record(messages.Alert(tenant_id="acme", stream_id="cam", state="RED", score=0.9,
                                                 reason="violence"))
    out = io.StringIO()
    Console(file=out, width=200).print(overview_table(ov.collect()))
    text = out.getvalue()
    for expected in ("acme", "cam", "live", "26.0 s", "4 frames", "RED violence"):
        assert expected in text, text
