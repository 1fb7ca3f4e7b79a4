"""What was said, live: captioned and subtitled streams published to Kafka, through the Ray actors (the
transcript actor among them), found by a question and by a standing query on the spoken words."""

from __future__ import annotations

import shutil

import pytest

from contracts import messages
from pipelines.api.client import Client
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments
from tests.integration.test_pipeline import stored_segments
from tests.integration.conftest import wait_for
from tests.transcripts.media import CUES, ROLL_UP, write_subtitled_video

pytestmark = pytest.mark.integration


def test_live_captions_and_subtitles_are_found_and_fire_standing_queries(deployed, muxjs, tmp_path):
    config = deployed(http=True, ocr=dict(enabled=False))
    client = Client(config, timeout_s=60)
    standing = client.register_standing(text="the storm is coming ashore", stream_ids=["talk"])
    news = tmp_path / "news.ts"
    shutil.copy(muxjs / ROLL_UP, news)
    talk = write_subtitled_video(tmp_path / "talk.mkv", "matroska", "subrip", duration_s=6.0)
    for stream, path in (("news", news), ("talk", talk)):
        n = sum(1 for _ in iter_segments(str(path)))
        SegmentPublisher(kafka=config.kafka).publish(str(path), stream_id=stream, pace="fast")
        wait_for(lambda stream=stream, n=n: stored_segments(config, stream) == n, 120, f"{n} segments of {stream}")

    answer = client.ask_kafka(messages.Query(tenant_id="default", text="stay indoors tonight", top_k=1,
                                             adaptive_k=False))
    [said] = answer.evidence
    assert (said.stream_id, said.source, said.text) == ("talk", "subtitle", CUES[1][2])
    assert abs(said.t_start - CUES[1][0]) <= 2.0
    caption = client.ask_kafka(messages.Query(tenant_id="default", stream_ids=["news"], text="question", top_k=1))
    assert caption.evidence and caption.evidence[0].source == "caption"

    [alert] = client.follow_alerts(query_id=standing["query_id"], from_beginning=True, timeout_s=8)
    assert alert.evidence[0].source == "subtitle" and alert.evidence[0].text == CUES[0][2]
