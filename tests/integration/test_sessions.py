"""The same stream id published twice: both sessions stored, in time order, answerable; a replay of the
topic afterwards (a new consumer group reading it all again) changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import ray

from memory_store.redis_tier import RedisTier
from contracts import messages
from pipelines.api.client import Client
from pipelines.ray.sources import SourceActor
from pipelines.ray.placement import actor_options
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments
from pipelines.kafka.sessions import continuing_offset_s
from tests.integration.conftest import redis_client, wait_for
from tests.integration.test_pipeline import assert_each_segment_once, segment_ids, stored_segments

pytestmark = pytest.mark.integration


def _frames_by_session(config, stream: str) -> dict[str, list]:
    tier = RedisTier(redis_client(config), config.memory)
    out: dict[str, list] = {}
    for name in segment_ids(config, stream):
        session = name.rsplit("-", 1)[0]
        out.setdefault(session, []).extend(tier.frames("default", tier.segment_frame_keys("default", stream, name)))
    return out


@pytest.mark.timeout(600)  # two ingests of the 24 s sample and a replay of both: ~5 min on a loaded 2-core box
def test_publishing_a_stream_id_again_stores_it_and_a_replay_changes_nothing(deployed, sample_video):
    video, _ = sample_video
    config = deployed()
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="news", pace="fast")
    wait_for(lambda: stored_segments(config, "news") == n, 120, "the first session stored")
    # The broadcaster restarts its encoder 5 s after the first session's last frame: seq from 0 again, a new
    # session, continuing the stream's time. (Published fast, as a live one would have been in real time.)
    first = RedisTier(redis_client(config), config.memory).stream_info("default", "news")
    restart = datetime.fromtimestamp(first.last_wallclock + 5.0, UTC)
    offset = continuing_offset_s(config, "default", "news", now=restart.timestamp())
    assert offset == pytest.approx(first.last_media_s + 5.0, abs=0.01)
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="news", pace="fast", wallclock_start=restart,
                                                 media_offset_s=offset)
    wait_for(lambda: stored_segments(config, "news") == 2 * n, 120, "the second session stored too")
    assert_each_segment_once(config, "news", 2 * n)

    sessions = _frames_by_session(config, "news")
    assert len(sessions) == 2
    first, second = sorted(sessions.values(), key=lambda frames: min(f.wallclock_start for f in frames))
    assert len(first) == len(second) > 0
    # Time-ordered on both clocks: the second session follows the first in wall clock and in stream time.
    assert max(f.wallclock_start for f in first) < min(f.wallclock_start for f in second)
    assert max(f.pts_s for f in first) < min(f.pts_s for f in second)

    # Queryable: "what is on screen now" answers from the second session; a time scope reaches the first.
    client = Client(config, timeout_s=60)
    now = client.ask_kafka(messages.Query(tenant_id="default", stream_ids=["news"], top_k=3))
    second_keys = {f.frame_key for f in second}
    assert now.error is None and now.evidence and all(e.frame_key in second_keys for e in now.evidence)
    early = messages.TimeScope(start=datetime.fromtimestamp(min(f.wallclock_start for f in first), UTC),
                               end=datetime.fromtimestamp(max(f.wallclock_end for f in first), UTC))
    then = client.ask_kafka(messages.Query(tenant_id="default", stream_ids=["news"], text="what happened",
                                           scope=early, top_k=3))
    first_keys = {f.frame_key for f in first}
    assert then.error is None and then.evidence and all(e.frame_key in first_keys for e in then.evidence)

    # A replay: one more source on the same topic and the same stages, in a consumer group that never
    # committed, reads every record again. Memory stays exactly as it was; each segment is found stored.
    tier = RedisTier(redis_client(config), config.memory)
    before = (tier.stream_info("default", "news"), segment_ids(config, "news"))
    replay_config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"ingest_group": "replay"})})
    replaying = SourceActor.options(**actor_options(config, "source")).remote(replay_config, "source-replay")
    try:
        wait_for(lambda: ray.get(replaying.stats.remote(), timeout=60)["segments_replayed"] >= 2 * n, 180,
                 "the replaying source to see every segment")
        stats = ray.get(replaying.stats.remote(), timeout=60)
    finally:
        ray.kill(replaying)
    after = (tier.stream_info("default", "news"), segment_ids(config, "news"))
    assert (after[0].frames, after[0].segments, after[1]) == (before[0].frames, before[0].segments, before[1])
    assert (stats["segments_replayed"], stats["segments_stored"], stats["dead_letters"]) == (2 * n, 0, {})
