"""Live load shedding of on-screen text (ocr.max_lag_s) through the real DAG: late frames are stored as
"text not read", frames on time are read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memory_store.redis_tier import RedisTier
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments
from tests.integration.conftest import redis_client, wait_for
from tests.integration.test_pipeline import assert_each_segment_once, segment_ids, stored_segments

pytestmark = pytest.mark.integration


def stored_frames(config, stream: str) -> list:
    tier = RedisTier(redis_client(config), config.memory)
    keys = [k for name in segment_ids(config, stream) for k in tier.segment_frame_keys("default", stream, name)]
    return [r for r in tier.frames("default", keys) if r is not None]


def test_frames_past_the_deadline_are_stored_as_text_not_read(deployed, sample_video):
    video, truth = sample_video
    # Generous enough that a slow CI machine never makes the on-time stream late.
    config = deployed(ocr={"max_lag_s": 60.0})
    n = sum(1 for _ in iter_segments(str(video)))
    publisher = SegmentPublisher(kafka=config.kafka)
    # A stream whose clock says its segments ended an hour ago: every changed frame is past the deadline.
    publisher.publish(str(video), stream_id="late", pace="fast", wallclock_start=datetime.now(UTC) - timedelta(hours=1))
    publisher.publish(str(video), stream_id="on-time", pace="fast")
    for stream in ("late", "on-time"):
        wait_for(lambda s=stream: stored_segments(config, s) == n, 180, f"the {stream} stream")
        assert_each_segment_once(config, stream, n)

    late, on_time = stored_frames(config, "late"), stored_frames(config, "on-time")
    # Nothing was ever read on the late stream, so no frame could reuse a read: all are unknown, none empty-read.
    assert late and all(not f.text_read and f.text == "" and f.lines == [] for f in late)
    assert all(f.text_read for f in on_time)
    headlines = {h["text"] for h in truth["headlines"]}
    assert any(h in f.text for f in on_time for h in headlines)
